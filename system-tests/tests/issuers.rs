//! A gateway that accepts the tokens of two issuers: our authz-server (RFC 9068 tokens) and a
//! second issuer found through OpenID Connect Discovery, whose plain JWTs carry the client in
//! `azp`, roles as scopes and no `jti`. Each issuer's keys verify its own tokens only, even
//! under the same `kid`; routes may take one issuer's tokens only; revocation rules of one
//! issuer never touch the other's tokens.

use jsonwebtoken::{Algorithm, Header};
use serde_json::{json, Value};
use system_tests::{Stack, TestIssuer};

/// The gateway's issuers and routes: `/echo/` takes both issuers, `/ours/` only the
/// authz-server's tokens, `/theirs/` only the second issuer's.
fn config(ours: &str, theirs: &str, upstream: &str) -> String {
    format!(
        r#"
[hub]
jwks_url = "{ours}/.well-known/jwks.json"

[[issuers]]
issuer = "{ours}"
audiences = ["demo-api"]
jwks_url = "{ours}/.well-known/jwks.json"

[[issuers]]
issuer = "{theirs}"
audiences = ["account"]
discovery = "openid"
profile = "jwt"
client_id_claim = "azp"
scope_claim = "/realm_access/roles"
required_claims = ["sub", "azp"]

[[routes]]
prefix = "/echo/"
upstream = "{upstream}"
scopes = ["echo:read"]

[[routes]]
prefix = "/ours/"
upstream = "{upstream}"
issuers = ["{ours}"]

[[routes]]
prefix = "/theirs/"
upstream = "{upstream}"
issuers = ["{theirs}"]
"#
    )
}

/// Claims as a typical OpenID provider writes an access token: no `jti`, no `nbf`, the
/// client in `azp`, roles under `realm_access`.
fn their_claims(iss: &str, sub: &str) -> Value {
    let now = revocation::unix_now();
    json!({"iss": iss, "sub": sub, "aud": "account", "exp": now + 300, "iat": now,
        "azp": "web-app", "realm_access": {"roles": ["echo:read", "reader"]}})
}

fn jwt_header() -> Header {
    let mut header = Header::new(Algorithm::RS256);
    header.typ = Some("JWT".into());
    header
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_issuers_side_by_side() -> anyhow::Result<()> {
    let stack = Stack::start(0).await?;
    // The second issuer's key is named like the authz-server's: a kid collision.
    let our_kid = stack.authz.signing_kid().await?;
    let theirs = TestIssuer::start(&our_kid).await?;
    let gw = stack
        .ready_gateway(
            "gateway-1",
            &config(&stack.authz.url, &theirs.url, &stack.upstream.url),
        )
        .await?;
    assert!(
        theirs
            .metadata_fetches
            .load(std::sync::atomic::Ordering::Relaxed)
            >= 1,
        "the second issuer's keys were found through its metadata"
    );
    let http = reqwest::Client::new();

    // Our token: the shared route and ours, not theirs.
    let ours = stack.authz.token("demo-client", "demo-secret").await?;
    assert_eq!(gw.call(&http, "/echo/", &ours).await, 200);
    assert_eq!(gw.call(&http, "/ours/", &ours).await, 200);
    assert_eq!(gw.call(&http, "/theirs/", &ours).await, 401);

    // Their token: plain JWT without jti or nbf; the shared route and theirs, not ours.
    let token = theirs.sign(jwt_header(), &their_claims(&theirs.url, "alice"));
    assert_eq!(gw.call(&http, "/echo/", &token).await, 200);
    assert_eq!(gw.call(&http, "/theirs/", &token).await, 200);
    assert_eq!(gw.call(&http, "/ours/", &token).await, 401);
    // A second call is a cache hit in that issuer's cache, and gets the same answers.
    assert_eq!(gw.call(&http, "/theirs/", &token).await, 200);
    assert_eq!(gw.call(&http, "/ours/", &token).await, 401);
    // The upstream sees the identity as that issuer writes it.
    let seen: Value = http
        .get(format!("{}/echo/x", gw.url))
        .bearer_auth(&token)
        .send()
        .await?
        .json()
        .await?;
    let header = |name: &str| seen["headers"][name].as_str().map(str::to_string);
    assert_eq!(
        header("x-auth-issuer").as_deref(),
        Some(theirs.url.as_str())
    );
    assert_eq!(header("x-auth-client-id").as_deref(), Some("web-app"));
    assert_eq!(header("x-auth-subject").as_deref(), Some("alice"));
    assert_eq!(header("x-auth-scope").as_deref(), Some("echo:read reader"));

    // Each issuer's rules: the second issuer's tokens need azp; its audience is its own;
    // a role missing means a scope missing (403 on /echo/).
    let refused = [
        (
            "no azp",
            {
                let mut c = their_claims(&theirs.url, "alice");
                c.as_object_mut().map(|o| o.remove("azp"));
                c
            },
            401,
        ),
        (
            "our audience",
            {
                let mut c = their_claims(&theirs.url, "alice");
                c["aud"] = "demo-api".into();
                c
            },
            401,
        ),
        (
            "roles not strings",
            {
                let mut c = their_claims(&theirs.url, "alice");
                c["realm_access"]["roles"] = json!([1]);
                c
            },
            401,
        ),
        (
            "no echo role",
            {
                let mut c = their_claims(&theirs.url, "alice");
                c["realm_access"]["roles"] = json!(["reader"]);
                c
            },
            403,
        ),
        (
            "an issuer nobody configured",
            their_claims("http://127.0.0.1:9", "alice"),
            401,
        ),
        (
            "the issuer with a trailing slash",
            their_claims(&format!("{}/", theirs.url), "alice"),
            401,
        ),
    ];
    for (name, claims, status) in refused {
        let token = theirs.sign(jwt_header(), &claims);
        assert_eq!(gw.call(&http, "/echo/", &token).await, status, "{name}");
    }
    // The `typ` of an ID token's cousin that the jwt profile does not take.
    let mut odd = jwt_header();
    odd.typ = Some("logout+jwt".into());
    let token = theirs.sign(odd, &their_claims(&theirs.url, "alice"));
    assert_eq!(gw.call(&http, "/echo/", &token).await, 401, "logout+jwt");

    // The kid collision: the second issuer's key, under the kid both issuers use, claiming
    // to be the authz-server (in our profile, with every claim ours need) is refused; the
    // same token claiming its own issuer passes. Their key never verifies our tokens.
    let now = revocation::unix_now();
    let as_ours = json!({"iss": stack.authz.url, "sub": "demo-client", "aud": "demo-api",
        "exp": now + 300, "iat": now, "jti": format!("collide-{now}"), "client_id": "demo-client",
        "scope": "echo:read", "azp": "web-app"});
    let mut at_jwt = Header::new(Algorithm::RS256);
    at_jwt.typ = Some("at+jwt".into());
    let forged = theirs.sign(at_jwt.clone(), &as_ours);
    assert_eq!(
        gw.call(&http, "/echo/", &forged).await,
        401,
        "kid collision"
    );
    let mut own = as_ours.clone();
    own["iss"] = theirs.url.clone().into();
    own["aud"] = "account".into();
    own["realm_access"] = json!({"roles": ["echo:read"]});
    let genuine = theirs.sign(at_jwt, &own);
    assert_eq!(gw.call(&http, "/echo/", &genuine).await, 200, "control");
    assert_eq!(
        gw.metric("gateway_auth_failures_total{reason=\"signature\"}")
            .await,
        1.0,
        "the collision was refused for its signature"
    );

    // Revocation is per issuer: a subject rule for "alice" at the authz-server does not
    // touch the second issuer's alice. (Rules for other issuers: see the hub's tests.)
    let (status, _) = stack
        .authz
        .admin_revoke(json!({"subject": "alice"}))
        .await?;
    assert!((200..300).contains(&status), "admin revoke: {status}");
    let alice = theirs.sign(jwt_header(), &their_claims(&theirs.url, "alice"));
    let (status, _) = stack
        .authz
        .admin_revoke(json!({"subject": "demo-client"}))
        .await?;
    assert!((200..300).contains(&status), "admin revoke: {status}");
    gw.wait_refused(&ours).await?;
    assert_eq!(
        gw.call(&http, "/echo/", &alice).await,
        200,
        "other issuer's alice"
    );

    // A gateway that takes the second issuer's tokens only still reads the hub's
    // heartbeats (it becomes ready) but never takes a token the hub signed.
    let only_theirs = config(&stack.authz.url, &theirs.url, &stack.upstream.url);
    let only_theirs = only_theirs.replacen(
        &format!(
            "[[issuers]]\nissuer = \"{ours}\"\naudiences = [\"demo-api\"]\njwks_url = \"{ours}/.well-known/jwks.json\"\n",
            ours = stack.authz.url
        ),
        "",
        1,
    );
    let only_theirs = only_theirs.replace(
        &format!("issuers = [\"{}\"]", stack.authz.url),
        &format!("issuers = [\"{}\"]", theirs.url),
    );
    assert!(
        !only_theirs.contains("audiences = [\"demo-api\"]"),
        "{only_theirs}"
    );
    let gw2 = stack.ready_gateway("gateway-2", &only_theirs).await?;
    let fresh = stack.authz.token("other-client", "other-secret").await?;
    assert_eq!(gw2.call(&http, "/echo/", &alice).await, 200);
    assert_eq!(
        gw2.call(&http, "/echo/", &fresh).await,
        401,
        "the hub is no issuer here"
    );
    Ok(())
}
