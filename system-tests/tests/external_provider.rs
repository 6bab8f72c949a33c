//! A real OpenID provider nobody here wrote — node's `oidc-provider` — as an external issuer:
//! its RFC 9068 access tokens pass the gateway beside our authz-server's, although both sign
//! under the same `kid`; a token claiming one issuer and signed with the other's key is
//! refused; and ending a session at the provider sends a back-channel logout to the hub, after
//! which every gateway refuses that session's tokens while another session's still pass.

use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::json;
use system_tests::{
    free_ports, Authz, Gateway, Nats, OidcClient, OidcProvider, OidcProviderOptions, OidcResource,
    Upstream,
};

const API: &str = "https://api.test";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oidc_provider_as_an_issuer() -> anyhow::Result<()> {
    // The provider's issuer is named before it starts: the hub and the gateway name it, and
    // it names the hub's logout endpoint.
    let port = free_ports(1)?[0];
    let provider_url = format!("http://127.0.0.1:{port}");
    let nats = Nats::start()?;
    let dir = tempfile::tempdir()?;
    let authz = Authz::start_with(
        dir.path(),
        &[nats.url()],
        &format!(
            "[[issuers]]\nissuer = \"{provider_url}\"\ndiscovery = \"openid\"\nbackchannel_logout_client_ids = [\"web-app\"]\n"
        ),
    )
    .await?;
    let our_kid = authz.signing_kid().await?;
    let provider = OidcProvider::start(OidcProviderOptions {
        port: Some(port),
        // Its key has the same kid as the authz-server's.
        rsa_kid: our_kid.clone(),
        resources: vec![OidcResource::new(API, "echo:read")],
        clients: vec![
            OidcClient::service("batch", "batch-secret"),
            OidcClient::web("web-app", "web-secret")
                .backchannel_logout(&format!("{}/oidc/backchannel-logout", authz.url)),
        ],
        ..Default::default()
    })
    .await?;
    assert_eq!(provider.issuer(), provider_url);
    let upstream = Upstream::start().await?;
    let gw = Gateway::start_with(
        "gateway-1",
        "gateway-1",
        &[nats.url()],
        &authz,
        &upstream,
        &format!(
            "{}\n[[issuers]]\nissuer = \"{provider_url}\"\naudiences = [\"{API}\"]\ndiscovery = \"openid\"\n",
            authz.as_hub_and_issuer()
        ),
    )
    .await?;
    gw.wait_ready().await?;
    let http = reqwest::Client::new();

    // Both issuers' tokens pass, under the same kid.
    let ours = authz.token("demo-client", "demo-secret").await?;
    let theirs = provider
        .client_credentials_token("batch", "batch-secret", API, "echo:read")
        .await?;
    let header = jsonwebtoken::decode_header(&theirs)?;
    assert_eq!(
        header.kid.as_deref(),
        Some(our_kid.as_str()),
        "a kid collision"
    );
    assert_eq!(header.typ.as_deref(), Some("at+jwt"));
    assert_eq!(gw.call(&http, "/echo/", &ours).await, 200, "our token");
    assert_eq!(
        gw.call(&http, "/echo/", &theirs).await,
        200,
        "the provider's token"
    );

    // Our signing key, claiming to be the provider (its claims, its audience, the shared
    // kid): the provider's key of that kid does not verify it.
    let pem = std::fs::read(dir.path().join("signing-key.pem"))?;
    let mut forged_claims = system_tests::jwt_claims(&theirs)?;
    forged_claims["jti"] = "forged-by-our-key".into();
    let mut forged_header = Header::new(Algorithm::RS256);
    forged_header.typ = Some("at+jwt".into());
    forged_header.kid = Some(our_kid.clone());
    let forged = jsonwebtoken::encode(
        &forged_header,
        &forged_claims,
        &EncodingKey::from_rsa_pem(&pem)?,
    )?;
    assert_eq!(
        gw.call(&http, "/echo/", &forged).await,
        401,
        "kid collision refused"
    );
    // And the other way: the provider's token relabelled as ours keeps its signature, which
    // none of our keys verifies.
    let relabelled = {
        use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
        use base64::Engine;
        let parts: Vec<&str> = theirs.split('.').collect();
        let mut claims = system_tests::jwt_claims(&theirs)?;
        claims["iss"] = authz.url.clone().into();
        claims["aud"] = "demo-api".into();
        format!(
            "{}.{}.{}",
            parts[0],
            B64.encode(claims.to_string()),
            parts[2]
        )
    };
    assert_eq!(
        gw.call(&http, "/echo/", &relabelled).await,
        401,
        "relabelled token refused"
    );

    // Two sessions of alice at the provider (two browsers): their tokens carry their sids.
    let first = provider.login("alice").await?;
    let second = provider.login("alice").await?;
    assert_ne!(first.sid, second.sid);
    for session in [&first, &second] {
        let claims = system_tests::jwt_claims(&session.access_token)?;
        assert_eq!(claims["sid"], session.sid.as_str());
        assert_eq!(gw.call(&http, "/echo/", &session.access_token).await, 200);
    }
    let signals = "authz_signals_total{kind=\"backchannel_logout\",outcome=\"revoked\"}";
    assert_eq!(authz.metric(signals).await, 0.0);

    // Ending the first session at the provider: it sends the logout token to the hub, which
    // answers once the session rule is committed and published.
    provider.end_session(&first).await?;
    assert_eq!(authz.metric(signals).await, 1.0, "{}", provider.output());
    gw.wait_refused(&first.access_token).await?;
    assert_eq!(
        gw.call(&http, "/echo/", &second.access_token).await,
        200,
        "the other session"
    );
    assert_eq!(
        gw.call(&http, "/echo/", &theirs).await,
        200,
        "the service's token"
    );
    assert_eq!(gw.call(&http, "/echo/", &ours).await, 200, "our token");
    let rules = authz.revocations().await?;
    let rule = &rules[0];
    assert_eq!(
        (&rule["kind"], &rule["iss"], &rule["sid"]),
        (&json!("session"), &json!(provider_url), &json!(first.sid))
    );
    Ok(())
}
