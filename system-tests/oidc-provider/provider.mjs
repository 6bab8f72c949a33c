// A real OpenID provider for the system tests: node's oidc-provider (pinned in package.json
// next to this file, installed into target/oidc-provider by deploy/ensure-oidc-provider.sh),
// started by system-tests/src/oidc.rs. Plain HTTP on loopback, state in memory, keys made
// at start-up.
//
// Environment:
//   OIDC_PROVIDER_PREFIX  the npm prefix holding node_modules/oidc-provider (required)
//   OIDC_PROVIDER_CONFIG  path of a JSON file (required):
//     {
//       "port": 0,                        // 0 (or absent): any free port
//       "rsa_kid": "rs256-1",             // kid of the RS256 key (always present)
//       "ec_kid": "es256-1",              // optional: an ES256 key too, with this kid
//       "clients": [ <client metadata> ], // oidc-provider client metadata, as registered
//       "resources": {                    // RFC 8707 resource indicator -> resource server
//         "https://api.test": { "scope": "read write", "alg": "RS256", "ttl": 300 }
//       }
//     }
//   PORT                  overrides "port"
//
// Prints `READY <issuer>` on stdout once listening; then one line per event a test may want
// to see (`BACKCHANNEL ok|error ...`, `SERVER_ERROR ...`).

import { generateKeyPairSync, randomBytes } from 'node:crypto';
import { readFileSync } from 'node:fs';
import { createServer } from 'node:http';
import { createRequire } from 'node:module';
import { join } from 'node:path';
import { pathToFileURL } from 'node:url';

const prefix = process.env.OIDC_PROVIDER_PREFIX;
const configPath = process.env.OIDC_PROVIDER_CONFIG;
if (!prefix || !configPath) {
  console.error('OIDC_PROVIDER_PREFIX and OIDC_PROVIDER_CONFIG are required');
  process.exit(2);
}
const config = JSON.parse(readFileSync(configPath, 'utf8'));

// oidc-provider lives in target/, not next to this file: resolve it from the prefix.
const entry = createRequire(join(prefix, 'package.json')).resolve('oidc-provider');
const { default: Provider, errors } = await import(pathToFileURL(entry).href);

function privateJwk(keyObject, kid, alg) {
  return { ...keyObject.export({ format: 'jwk' }), kid, alg, use: 'sig' };
}

const keys = [
  privateJwk(
    generateKeyPairSync('rsa', { modulusLength: 2048 }).privateKey,
    config.rsa_kid ?? 'rs256-1',
    'RS256',
  ),
];
if (config.ec_kid) {
  keys.push(privateJwk(
    generateKeyPairSync('ec', { namedCurve: 'P-256' }).privateKey,
    config.ec_kid,
    'ES256',
  ));
}

const resources = config.resources ?? {};

// Listen first, so that the issuer can name the port actually bound.
const server = createServer();
const port = Number(process.env.PORT ?? config.port ?? 0);
await new Promise((resolve, reject) => {
  server.once('error', reject);
  server.listen(port, '127.0.0.1', resolve);
});
const issuer = `http://127.0.0.1:${server.address().port}`;

const provider = new Provider(issuer, {
  clients: config.clients ?? [],
  jwks: { keys },
  cookies: {
    keys: [randomBytes(32).toString('hex')],
  },
  // Account ids are the login names the development login page was given; sub is that name.
  async findAccount(ctx, sub) {
    return { accountId: sub, async claims() { return { sub }; } };
  },
  features: {
    // The development-only login and consent pages, driven over HTTP by the harness.
    devInteractions: { enabled: true },
    clientCredentials: { enabled: true },
    backchannelLogout: { enabled: true },
    rpInitiatedLogout: { enabled: true },
    resourceIndicators: {
      enabled: true,
      // An explicit resource is required (no default), and must be one of the configured ones.
      async defaultResource() { return undefined; },
      async useGrantedResource() { return true; },
      async getResourceServerInfo(ctx, resourceIndicator) {
        const resource = resources[resourceIndicator];
        if (!resource) {
          throw new errors.InvalidTarget();
        }
        return {
          scope: resource.scope ?? '',
          accessTokenTTL: resource.ttl ?? 300,
          accessTokenFormat: 'jwt',
          jwt: { sign: { alg: resource.alg ?? 'RS256' } },
        };
      },
    },
  },
  // Access tokens from a login carry the session's sid (the one the ID token and the
  // back-channel logout token carry), so that a rule keyed on sid can reach them.
  async extraTokenClaims(ctx, token) {
    return token.sid ? { sid: token.sid } : undefined;
  },
});

provider.on('backchannel.success', (ctx, client, accountId, sid) => {
  console.log(`BACKCHANNEL ok client=${client.clientId} sub=${accountId} sid=${sid}`);
});
provider.on('backchannel.error', (ctx, err, client, accountId, sid) => {
  console.log(`BACKCHANNEL error client=${client.clientId} sub=${accountId} sid=${sid}: ${err.message}`);
});
provider.on('server_error', (ctx, err) => {
  console.log(`SERVER_ERROR ${err.stack}`);
});

server.on('request', provider.callback());
for (const signal of ['SIGTERM', 'SIGINT']) {
  process.on(signal, () => server.close(() => process.exit(0)));
}
console.log(`READY ${issuer}`);
