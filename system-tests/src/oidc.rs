//! A real, external OpenID provider: node's `oidc-provider` (pinned in
//! `system-tests/oidc-provider/package.json` and its lock file, installed into
//! `target/oidc-provider` by `deploy/ensure-oidc-provider.sh`, which `make test` runs), started
//! by `system-tests/oidc-provider/provider.mjs` as a process of its own on a dynamic loopback
//! port, plain HTTP, killed on drop.
//!
//! It issues RFC 9068 JWT access tokens for the resources it is given (client credentials,
//! and the authorization code flow through its development login and consent pages, which
//! [`OidcProvider::login`] drives over HTTP like a browser), and sends OpenID Connect
//! Back-Channel Logout tokens when [`OidcProvider::end_session`] ends a session.

use super::*;
use base64::Engine;
use reqwest::{StatusCode, Url};
use serde_json::{json, Value};

/// Where the provider sends the authorization code. Never contacted: [`OidcProvider::login`]
/// stops at the redirect and reads the code from it.
pub const REDIRECT_URI: &str = "http://127.0.0.1:9/callback";

/// A resource server (RFC 8707 resource indicator) the provider issues JWT access tokens for.
#[derive(Clone, Debug)]
pub struct OidcResource {
    /// The resource indicator; also the tokens' `aud`.
    pub uri: String,
    /// The scopes the resource has (space-separated).
    pub scope: String,
    /// `RS256`, or `ES256` (needs [`OidcProviderOptions::ec_kid`]).
    pub alg: String,
    /// Access token lifetime in seconds.
    pub ttl: u64,
}

impl OidcResource {
    /// RS256 tokens valid for 300 s.
    pub fn new(uri: &str, scope: &str) -> OidcResource {
        OidcResource {
            uri: uri.into(),
            scope: scope.into(),
            alg: "RS256".into(),
            ttl: 300,
        }
    }
}

/// A client registered at the provider.
#[derive(Clone, Debug)]
pub struct OidcClient {
    pub id: String,
    pub secret: String,
    /// The authorization code flow (true) or the client credentials grant (false).
    pub web: bool,
    /// Where the provider POSTs logout tokens (with `backchannel_logout_session_required`).
    pub backchannel_logout_uri: Option<String>,
}

impl OidcClient {
    /// A client of the client credentials grant only.
    pub fn service(id: &str, secret: &str) -> OidcClient {
        OidcClient {
            id: id.into(),
            secret: secret.into(),
            web: false,
            backchannel_logout_uri: None,
        }
    }

    /// A client of the authorization code flow, redirecting to [`REDIRECT_URI`].
    pub fn web(id: &str, secret: &str) -> OidcClient {
        OidcClient {
            web: true,
            ..OidcClient::service(id, secret)
        }
    }

    /// Registers a back-channel logout URI (and requires the sid in logout tokens).
    pub fn backchannel_logout(mut self, uri: &str) -> OidcClient {
        self.backchannel_logout_uri = Some(uri.into());
        self
    }

    /// The client's metadata as oidc-provider registers it.
    fn metadata(&self) -> Value {
        let mut metadata = if self.web {
            json!({
                "grant_types": ["authorization_code"],
                "response_types": ["code"],
                "redirect_uris": [REDIRECT_URI],
            })
        } else {
            json!({
                "grant_types": ["client_credentials"],
                "response_types": [],
                "redirect_uris": [],
            })
        };
        metadata["client_id"] = self.id.clone().into();
        metadata["client_secret"] = self.secret.clone().into();
        if let Some(uri) = &self.backchannel_logout_uri {
            metadata["backchannel_logout_uri"] = uri.clone().into();
            metadata["backchannel_logout_session_required"] = true.into();
        }
        metadata
    }
}

/// What the provider is started with.
#[derive(Clone, Debug)]
pub struct OidcProviderOptions {
    /// The `kid` of its RS256 key (made at start-up).
    pub rsa_kid: String,
    /// An ES256 key too, with this `kid`.
    pub ec_kid: Option<String>,
    pub resources: Vec<OidcResource>,
    pub clients: Vec<OidcClient>,
    /// The port to listen on, when its issuer must be known before it starts (a test's
    /// other services name it); any free port when `None`.
    pub port: Option<u16>,
}

impl Default for OidcProviderOptions {
    fn default() -> Self {
        OidcProviderOptions {
            port: None,
            rsa_kid: "oidc-rs256".into(),
            ec_kid: None,
            resources: Vec::new(),
            clients: Vec::new(),
        }
    }
}

/// A user's session at the provider after a login, and the browser (cookie jar) that holds it.
pub struct ProviderSession {
    pub client_id: String,
    /// The login name, which is the `sub`.
    pub user: String,
    pub id_token: String,
    /// An RFC 9068 JWT for the resource the login asked for.
    pub access_token: String,
    /// The session's `sid` for this client (from the ID token).
    pub sid: String,
    browser: reqwest::Client,
}

/// The provider process, killed and its files removed on drop.
pub struct OidcProvider {
    issuer: String,
    options: OidcProviderOptions,
    http: reqwest::Client,
    process: Process,
    _dir: tempfile::TempDir,
}

/// The claims of a JWT, not verified (for tests that look at what they were given).
pub fn jwt_claims(token: &str) -> Result<Value> {
    let payload = token.split('.').nth(1).context("not a JWS")?;
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(payload)?;
    Ok(serde_json::from_slice(&bytes)?)
}

fn random_b64(bytes: usize) -> String {
    let mut buf = vec![0u8; bytes];
    aws_lc_rs::rand::fill(&mut buf).expect("random bytes");
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(buf)
}

/// The form whose hidden inputs include `marker` (`name="..." value="..."`): its action and
/// hidden fields. Enough HTML for oidc-provider's own pages.
fn form_with(html: &str, marker: &str) -> Option<(String, Vec<(String, String)>)> {
    html.split("<form").skip(1).find_map(|rest| {
        let form = rest.split("</form>").next()?;
        if !form.contains(marker) {
            return None;
        }
        let attr = |tag: &str, name: &str| {
            let start = tag.find(&format!("{name}=\""))? + name.len() + 2;
            Some(tag[start..].split('"').next()?.to_string())
        };
        let action = attr(form.split('>').next()?, "action")?;
        let fields = form
            .split("<input")
            .skip(1)
            .filter(|input| input.contains("type=\"hidden\""))
            .filter_map(|input| Some((attr(input, "name")?, attr(input, "value")?)))
            .collect();
        Some((action, fields))
    })
}

impl OidcProvider {
    /// Starts the provider (`node provider.mjs`) and waits until it serves its discovery
    /// document.
    pub async fn start(options: OidcProviderOptions) -> Result<OidcProvider> {
        let prefix = repo_root().join("target/oidc-provider");
        anyhow::ensure!(
            prefix
                .join("node_modules/oidc-provider/package.json")
                .exists(),
            "{} is missing: run deploy/ensure-oidc-provider.sh (make test does)",
            prefix.display()
        );
        let dir = tempfile::tempdir()?;
        let resources: serde_json::Map<String, Value> = options
            .resources
            .iter()
            .map(|r| {
                let info = json!({"scope": r.scope, "alg": r.alg, "ttl": r.ttl});
                (r.uri.clone(), info)
            })
            .collect();
        let config = json!({
            "port": options.port.unwrap_or(0),
            "rsa_kid": options.rsa_kid,
            "ec_kid": options.ec_kid,
            "clients": options.clients.iter().map(OidcClient::metadata).collect::<Vec<_>>(),
            "resources": resources,
        });
        let config_path = dir.path().join("config.json");
        std::fs::write(&config_path, serde_json::to_vec_pretty(&config)?)?;

        let mut node = Command::new("node");
        node.arg(repo_root().join("system-tests/oidc-provider/provider.mjs"))
            .env("OIDC_PROVIDER_PREFIX", &prefix)
            .env("OIDC_PROVIDER_CONFIG", &config_path)
            .env_remove("PORT");
        let mut process = Process::spawn_command(node, dir.path().join("provider.log"))?;

        // It binds before it prints its issuer (the port is in the issuer).
        let issuer = eventually(Duration::from_secs(20), "READY from oidc-provider", || {
            let ready = process
                .output()
                .lines()
                .find_map(|l| l.strip_prefix("READY ").map(str::to_string));
            let exited = process.exited();
            async move {
                match (ready, exited) {
                    (Some(issuer), _) => Some(Ok(issuer)),
                    (None, Some(status)) => Some(Err(status)),
                    (None, None) => None,
                }
            }
        })
        .await
        .with_context(|| process.output())?
        .map_err(|status| {
            anyhow::anyhow!("oidc-provider exited ({status}): {}", process.output())
        })?;

        let http = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .build()?;
        let discovery = format!("{issuer}/.well-known/openid-configuration");
        eventually(Duration::from_secs(10), "oidc-provider discovery", || {
            let (http, discovery, issuer) = (&http, &discovery, &issuer);
            async move {
                let metadata: Value = http.get(discovery).send().await.ok()?.json().await.ok()?;
                (metadata["issuer"] == issuer.as_str()).then_some(())
            }
        })
        .await?;
        Ok(OidcProvider {
            issuer,
            options,
            http,
            process,
            _dir: dir,
        })
    }

    /// `http://127.0.0.1:<port>`, the `iss` of everything it issues.
    pub fn issuer(&self) -> &str {
        &self.issuer
    }

    /// Its JWK Set URL.
    pub fn jwks_uri(&self) -> String {
        format!("{}/jwks", self.issuer)
    }

    /// Its JWK Set (public keys).
    pub async fn jwks(&self) -> Result<jsonwebtoken::jwk::JwkSet> {
        Ok(self
            .http
            .get(self.jwks_uri())
            .send()
            .await?
            .error_for_status()?
            .json()
            .await?)
    }

    /// The provider's output so far (start-up warnings, `BACKCHANNEL ...` lines).
    pub fn output(&self) -> String {
        self.process.output()
    }

    fn client(&self, id: &str) -> Result<&OidcClient> {
        self.options
            .clients
            .iter()
            .find(|c| c.id == id)
            .with_context(|| format!("no client {id} registered"))
    }

    /// The token endpoint's answer to a client authenticated with HTTP Basic.
    async fn token_request(&self, id: &str, secret: &str, form: &[(&str, &str)]) -> Result<Value> {
        let response = self
            .http
            .post(format!("{}/token", self.issuer))
            .basic_auth(id, Some(secret))
            .form(form)
            .send()
            .await?;
        let status = response.status();
        let body: Value = response.json().await?;
        anyhow::ensure!(status.is_success(), "token endpoint: {status} {body}");
        Ok(body)
    }

    /// An access token from the client credentials grant for `resource` (a JWT, since every
    /// configured resource has JWT access tokens).
    pub async fn client_credentials_token(
        &self,
        client_id: &str,
        secret: &str,
        resource: &str,
        scope: &str,
    ) -> Result<String> {
        let body = self
            .token_request(
                client_id,
                secret,
                &[
                    ("grant_type", "client_credentials"),
                    ("resource", resource),
                    ("scope", scope),
                ],
            )
            .await?;
        Ok(body["access_token"]
            .as_str()
            .context("no access_token")?
            .to_string())
    }

    /// Logs `user` in with the first web client, for the first resource and all its scopes.
    pub async fn login(&self, user: &str) -> Result<ProviderSession> {
        let client = self
            .options
            .clients
            .iter()
            .find(|c| c.web)
            .context("no web client registered")?;
        let resource = self.options.resources.first().context("no resource")?;
        self.login_as(&client.id, user, &resource.uri, &resource.scope)
            .await
    }

    /// The authorization code flow (with PKCE) in a browser of its own (a fresh cookie jar, so
    /// a fresh session): the authorization request, the development login page (any
    /// password), the consent page, the code exchanged at the token endpoint for an ID token
    /// and an access token for `resource`.
    pub async fn login_as(
        &self,
        client_id: &str,
        user: &str,
        resource: &str,
        scope: &str,
    ) -> Result<ProviderSession> {
        let client = self.client(client_id)?;
        let browser = reqwest::Client::builder()
            .cookie_store(true)
            .redirect(reqwest::redirect::Policy::none())
            .build()?;
        let verifier = random_b64(32);
        let challenge = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(
            aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, verifier.as_bytes()),
        );
        let (state, nonce) = (random_b64(16), random_b64(16));
        let issuer = Url::parse(&self.issuer)?;
        let mut next = Url::parse_with_params(
            &format!("{}/auth", self.issuer),
            [
                ("client_id", client_id),
                ("response_type", "code"),
                ("redirect_uri", REDIRECT_URI),
                ("scope", &format!("openid {scope}")),
                ("resource", resource),
                ("code_challenge", &challenge),
                ("code_challenge_method", "S256"),
                ("state", &state),
                ("nonce", &nonce),
            ],
        )?;
        let mut pages = Vec::new();
        // Redirects are followed here, so that the one to the client is caught.
        let code = loop {
            anyhow::ensure!(pages.len() < 12, "login did not finish: {pages:?}");
            if next.as_str().starts_with(REDIRECT_URI) {
                let param = |name: &str| {
                    next.query_pairs()
                        .find(|(k, _)| k == name)
                        .map(|(_, v)| v.into_owned())
                };
                anyhow::ensure!(param("state").as_deref() == Some(state.as_str()), "state");
                match param("code") {
                    Some(code) => break code,
                    None => bail!("authorization failed: {next}"),
                }
            }
            let response = browser.get(next.clone()).send().await?;
            pages.push(format!("{} {}", response.status(), next.path()));
            next = match response.status() {
                status if status.is_redirection() => {
                    let location = response
                        .headers()
                        .get(http::header::LOCATION)
                        .context("redirect without location")?
                        .to_str()?;
                    issuer.join(location)?
                }
                StatusCode::OK => {
                    let page = response.text().await?;
                    let (action, fields) = if let Some(form) =
                        form_with(&page, r#"name="prompt" value="login""#)
                    {
                        let mut form = form;
                        form.1.push(("login".into(), user.into()));
                        form.1.push(("password".into(), "any password".into()));
                        form
                    } else if let Some(form) = form_with(&page, r#"name="prompt" value="consent""#)
                    {
                        form
                    } else {
                        bail!("unexpected page at {next}: {page}");
                    };
                    let posted = browser
                        .post(issuer.join(&action)?)
                        .form(&fields)
                        .send()
                        .await?;
                    anyhow::ensure!(
                        posted.status().is_redirection(),
                        "{action}: {}",
                        posted.status()
                    );
                    let location = posted
                        .headers()
                        .get(http::header::LOCATION)
                        .context("redirect without location")?
                        .to_str()?;
                    issuer.join(location)?
                }
                status => bail!("{next}: {status} {}", response.text().await?),
            };
        };

        let tokens = self
            .token_request(
                client_id,
                &client.secret,
                &[
                    ("grant_type", "authorization_code"),
                    ("code", &code),
                    ("redirect_uri", REDIRECT_URI),
                    ("code_verifier", &verifier),
                    ("resource", resource),
                ],
            )
            .await?;
        let id_token = tokens["id_token"]
            .as_str()
            .context("no id_token")?
            .to_string();
        let claims = jwt_claims(&id_token)?;
        anyhow::ensure!(claims["nonce"] == nonce.as_str(), "nonce: {claims}");
        Ok(ProviderSession {
            client_id: client_id.into(),
            user: user.into(),
            sid: claims["sid"].as_str().context("no sid")?.to_string(),
            access_token: tokens["access_token"]
                .as_str()
                .context("no access_token")?
                .to_string(),
            id_token,
            browser,
        })
    }

    /// RP-initiated logout in the session's browser: the end-session request with the ID
    /// token as hint, then the confirmation page's form ("Yes, sign me out"). The provider
    /// sends the back-channel logout tokens before it answers the confirmation, so they have
    /// been delivered when this returns; fails if it reported a failed delivery for the
    /// session's sid.
    pub async fn end_session(&self, session: &ProviderSession) -> Result<()> {
        let issuer = Url::parse(&self.issuer)?;
        let url = Url::parse_with_params(
            &format!("{}/session/end", self.issuer),
            [
                ("id_token_hint", session.id_token.as_str()),
                ("client_id", session.client_id.as_str()),
            ],
        )?;
        let response = session.browser.get(url).send().await?;
        let status = response.status();
        let page = response.text().await?;
        anyhow::ensure!(status == StatusCode::OK, "end session: {status} {page}");
        let (action, mut fields) =
            form_with(&page, r#"name="xsrf""#).context("no logout form on the page")?;
        // The "Yes, sign me out" button is outside the form (form="op.logoutForm").
        fields.push(("logout".into(), "yes".into()));
        let confirmed = session
            .browser
            .post(issuer.join(&action)?)
            .form(&fields)
            .send()
            .await?;
        let status = confirmed.status();
        anyhow::ensure!(
            status.is_redirection(),
            "logout confirmation: {status} {}",
            confirmed.text().await?
        );
        let failed = format!("BACKCHANNEL error client={}", session.client_id);
        let sid = format!("sid={}:", session.sid);
        if let Some(line) = self
            .output()
            .lines()
            .find(|l| l.starts_with(&failed) && l.contains(&sid))
        {
            bail!("back-channel logout failed: {line}");
        }
        Ok(())
    }
}
