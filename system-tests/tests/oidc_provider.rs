//! The harness of the real OpenID provider (`system_tests::oidc`, node's `oidc-provider`):
//! what its tokens look like, verified with its own JWK Set over HTTP. Client credentials give
//! RFC 9068 JWTs (`typ: at+jwt`) for a resource; a login through its pages gives one that also
//! carries the session's `sid`; ending a session POSTs a form-encoded logout token for that
//! session only to the client's back-channel logout URI (a listener in the test).

use std::collections::{BTreeSet, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde_json::Value;
use system_tests::{bind, eventually, OidcClient, OidcProvider, OidcProviderOptions, OidcResource};

const API: &str = "https://api.test";
const API_EC: &str = "https://api-ec.test";
const RSA_KID: &str = "shared-kid";
const EC_KID: &str = "oidc-es256";

/// A back-channel logout endpoint: keeps every `logout_token` POSTed to it as a form
/// (axum's `Form` refuses any other content type).
struct LogoutReceiver {
    url: String,
    tokens: Arc<Mutex<Vec<String>>>,
    task: tokio::task::JoinHandle<()>,
}

impl LogoutReceiver {
    async fn start() -> LogoutReceiver {
        let listener = bind().await.unwrap();
        let url = format!(
            "http://127.0.0.1:{}/backchannel-logout",
            listener.local_addr().unwrap().port()
        );
        let tokens = Arc::new(Mutex::new(Vec::new()));
        let kept = tokens.clone();
        let app = axum::Router::new().route(
            "/backchannel-logout",
            axum::routing::post(
                move |axum::Form(form): axum::Form<HashMap<String, String>>| {
                    let kept = kept.clone();
                    async move {
                        kept.lock().unwrap().push(form["logout_token"].clone());
                        http::StatusCode::OK
                    }
                },
            ),
        );
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        LogoutReceiver { url, tokens, task }
    }

    fn tokens(&self) -> Vec<String> {
        self.tokens.lock().unwrap().clone()
    }
}

impl Drop for LogoutReceiver {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn provider(logout_uri: &str) -> OidcProvider {
    let mut ec = OidcResource::new(API_EC, "read");
    ec.alg = "ES256".into();
    OidcProvider::start(OidcProviderOptions {
        rsa_kid: RSA_KID.into(),
        ec_kid: Some(EC_KID.into()),
        resources: vec![OidcResource::new(API, "read write"), ec],
        clients: vec![
            OidcClient::service("svc", "svc-secret"),
            OidcClient::web("web", "web-secret").backchannel_logout(logout_uri),
        ],
        port: None,
    })
    .await
    .unwrap()
}

/// The token's header `typ`, `alg` and `kid`, and its claims once verified with the
/// provider's JWK Set (signature, `iss`, `aud`, `exp`).
async fn verify(
    provider: &OidcProvider,
    token: &str,
    aud: &str,
) -> (Option<String>, Algorithm, String, Value) {
    let header = jsonwebtoken::decode_header(token).unwrap();
    let kid = header.kid.clone().unwrap();
    let jwks = provider.jwks().await.unwrap();
    let jwk = jwks.find(&kid).expect("the kid is in the JWK Set");
    let mut validation = Validation::new(header.alg);
    validation.set_issuer(&[provider.issuer()]);
    validation.set_audience(&[aud]);
    validation.set_required_spec_claims(&["exp", "iss", "aud"]);
    let claims =
        jsonwebtoken::decode::<Value>(token, &DecodingKey::from_jwk(jwk).unwrap(), &validation)
            .unwrap()
            .claims;
    (header.typ, header.alg, kid, claims)
}

fn names(claims: &Value) -> BTreeSet<&str> {
    claims
        .as_object()
        .unwrap()
        .keys()
        .map(String::as_str)
        .collect()
}

#[tokio::test]
async fn client_credentials_give_rfc9068_jwts_for_the_resource() {
    let receiver = LogoutReceiver::start().await;
    let provider = provider(&receiver.url).await;

    let token = provider
        .client_credentials_token("svc", "svc-secret", API, "read")
        .await
        .unwrap();
    let (typ, alg, kid, claims) = verify(&provider, &token, API).await;
    assert_eq!(typ.as_deref(), Some("at+jwt"));
    assert_eq!((alg, kid.as_str()), (Algorithm::RS256, RSA_KID));
    println!("client credentials: typ={typ:?} alg={alg:?} kid={kid} {claims}");
    // Exactly these: no nbf, sub is the client.
    assert_eq!(
        names(&claims),
        BTreeSet::from([
            "aud",
            "client_id",
            "exp",
            "iat",
            "iss",
            "jti",
            "scope",
            "sub"
        ])
    );
    assert_eq!(claims["iss"], provider.issuer());
    assert_eq!(claims["aud"], API);
    assert_eq!(claims["sub"], "svc");
    assert_eq!(claims["client_id"], "svc");
    assert_eq!(claims["scope"], "read");
    assert!(claims["jti"].as_str().is_some_and(|j| !j.is_empty()));
    assert_eq!(
        claims["exp"].as_u64().unwrap() - claims["iat"].as_u64().unwrap(),
        300
    );

    // Another resource is signed with the ES256 key.
    let token = provider
        .client_credentials_token("svc", "svc-secret", API_EC, "read")
        .await
        .unwrap();
    let (typ, alg, kid, claims) = verify(&provider, &token, API_EC).await;
    assert_eq!(typ.as_deref(), Some("at+jwt"));
    assert_eq!((alg, kid.as_str()), (Algorithm::ES256, EC_KID));
    assert_eq!(claims["aud"], API_EC);

    // Scopes the resource does not have are dropped, not refused: a token without `scope`.
    let token = provider
        .client_credentials_token("svc", "svc-secret", API_EC, "write")
        .await
        .unwrap();
    let (_, _, _, claims) = verify(&provider, &token, API_EC).await;
    assert!(claims.get("scope").is_none(), "{claims}");

    // Resources it does not know and wrong secrets are refused.
    let refused = [
        ("svc-secret", "https://other.test", "read"),
        ("wrong", API, "read"),
    ];
    for (secret, resource, scope) in refused {
        let err = provider
            .client_credentials_token("svc", secret, resource, scope)
            .await;
        assert!(err.is_err(), "{resource} {scope}");
    }
}

#[tokio::test]
async fn a_login_gives_an_access_token_with_the_sessions_sid() {
    let receiver = LogoutReceiver::start().await;
    let provider = provider(&receiver.url).await;

    let session = provider.login("alice").await.unwrap();
    let (typ, alg, kid, claims) = verify(&provider, &session.access_token, API).await;
    assert_eq!(typ.as_deref(), Some("at+jwt"));
    assert_eq!((alg, kid.as_str()), (Algorithm::RS256, RSA_KID));
    println!("authorization code: typ={typ:?} alg={alg:?} kid={kid} {claims}");
    assert_eq!(
        names(&claims),
        BTreeSet::from([
            "aud",
            "client_id",
            "exp",
            "iat",
            "iss",
            "jti",
            "scope",
            "sid",
            "sub"
        ])
    );
    assert_eq!(claims["sub"], "alice");
    assert_eq!(claims["client_id"], "web");
    assert_eq!(claims["scope"], "read write");
    assert_eq!(claims["sid"], session.sid.as_str());

    // The ID token names the same session.
    let (typ, alg, kid, id_claims) = verify(&provider, &session.id_token, "web").await;
    println!("id token: typ={typ:?} alg={alg:?} kid={kid} {id_claims}");
    assert_eq!(id_claims["sid"], session.sid.as_str());
    assert_eq!(id_claims["sub"], "alice");
    assert!(receiver.tokens().is_empty());
}

#[tokio::test]
async fn ending_a_session_posts_a_logout_token_for_that_session_only() {
    let receiver = LogoutReceiver::start().await;
    let provider = provider(&receiver.url).await;

    let alice = provider.login("alice").await.unwrap();
    let again = provider.login("alice").await.unwrap();
    assert_ne!(alice.sid, again.sid, "two browsers, two sessions");

    provider.end_session(&alice).await.unwrap();
    // Delivered before the provider answered the confirmation.
    let tokens = receiver.tokens();
    assert_eq!(tokens.len(), 1, "one logout token, for the ended session");
    let token = &tokens[0];
    let (typ, alg, kid, claims) = verify(&provider, token, "web").await;
    println!("logout token: typ={typ:?} alg={alg:?} kid={kid} {claims}");
    assert_eq!(typ.as_deref(), Some("logout+jwt"));
    assert_eq!((alg, kid.as_str()), (Algorithm::RS256, RSA_KID));
    assert_eq!(
        names(&claims),
        BTreeSet::from(["aud", "events", "exp", "iat", "iss", "jti", "sid", "sub"])
    );
    assert_eq!(claims["sid"], alice.sid.as_str());
    assert_eq!(claims["sub"], "alice");
    assert_eq!(
        claims["events"],
        serde_json::json!({"http://schemas.openid.net/event/backchannel-logout": {}})
    );
    assert!(claims.get("nonce").is_none());

    // The other session is untouched until it ends too.
    assert_eq!(receiver.tokens().len(), 1);
    provider.end_session(&again).await.unwrap();
    let tokens = eventually(Duration::from_secs(5), "second logout token", || async {
        let tokens = receiver.tokens();
        (tokens.len() == 2).then_some(tokens)
    })
    .await
    .unwrap();
    let second = system_tests::oidc::jwt_claims(&tokens[1]).unwrap();
    assert_eq!(second["sid"], again.sid.as_str());
    assert_ne!(second["jti"], claims["jti"]);
}
