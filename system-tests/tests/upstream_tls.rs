//! The gateway talks to an upstream over mutual TLS: a real TLS upstream that requires a
//! client certificate from the development CA serves the gateway (which presents its own),
//! and refuses anyone else on the wire, so identity headers cannot be forged there.

use serde_json::Value;
use system_tests::{Gateway, Pki, Stack, TlsUpstream};

fn upstream_tls(ca: &std::path::Path, identity: Option<&str>) -> String {
    let certs = &Pki::get().certs;
    let mut section = format!("[upstream_tls]\nca_file = {:?}\n", ca.join("ca.pem"));
    if let Some(name) = identity {
        section.push_str(&format!(
            "cert_file = {:?}\nkey_file = {:?}\n",
            certs.join(format!("{name}.pem")),
            certs.join(format!("{name}-key.pem"))
        ));
    }
    section
}

fn routes(upstream: &str) -> String {
    format!(
        "\n[[routes]]\nprefix = \"/echo/\"\nupstream = \"{upstream}\"\nscopes = [\"echo:read\"]\n"
    )
}

/// Refused first: without a client certificate, or trusting another CA, the gateway gets
/// no answer from the upstream (502) and the upstream serves nothing; a direct client
/// without a certificate from the CA cannot reach it either. Then the gateway's own
/// certificate gets the request through, identity headers and all.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mutual_tls_to_the_upstream() -> anyhow::Result<()> {
    let stack = Stack::start(0).await?;
    let upstream = TlsUpstream::start().await?;
    let pki = Pki::get();
    let token = stack.authz.token("demo-client", "demo-secret").await?;
    let http = reqwest::Client::new();
    let nats = [stack.nats.url()];
    for (id, tls) in [
        ("gateway-2", upstream_tls(&pki.certs, None)),
        ("gateway-3", upstream_tls(&pki.other_ca, Some("gateway-3"))),
    ] {
        let gw = Gateway::start_with(
            id,
            id,
            &nats,
            &stack.authz,
            &stack.upstream,
            &format!("{tls}{}", routes(&upstream.url)),
        )
        .await?;
        gw.wait_ready().await?;
        assert_eq!(gw.call(&http, "/echo/x", &token).await, 502, "{id}");
        gw.service_stop().await;
    }
    assert_eq!(upstream.request_count(), 0);
    assert!(upstream.refused.load(std::sync::atomic::Ordering::SeqCst) >= 1);

    // On the wire, without the CA's client certificate: no connection, nothing served.
    let ca = reqwest::Certificate::from_pem(&std::fs::read(pki.certs.join("ca.pem"))?)?;
    let stranger = reqwest::Client::builder()
        .add_root_certificate(ca.clone())
        .build()?;
    let forged = stranger
        .get(format!("{}/echo/x", upstream.url))
        .header("x-auth-subject", "admin")
        .send()
        .await;
    assert!(forged.is_err(), "a client without a certificate was served");
    let other_identity = std::fs::read(pki.other_ca.join("gateway-1.pem"))?
        .into_iter()
        .chain(std::fs::read(pki.other_ca.join("gateway-1-key.pem"))?)
        .collect::<Vec<u8>>();
    let foreign = reqwest::Client::builder()
        .add_root_certificate(ca)
        .identity(reqwest::Identity::from_pem(&other_identity)?)
        .build()?;
    let forged = foreign
        .get(format!("{}/echo/x", upstream.url))
        .header("x-auth-subject", "admin")
        .send()
        .await;
    assert!(forged.is_err(), "a certificate of another CA was accepted");
    assert_eq!(upstream.request_count(), 0);

    let gw = Gateway::start_with(
        "gateway-1",
        "gateway-1",
        &nats,
        &stack.authz,
        &stack.upstream,
        &format!(
            "{}{}",
            upstream_tls(&pki.certs, Some("gateway-1")),
            routes(&upstream.url)
        ),
    )
    .await?;
    gw.wait_ready().await?;
    let response = http
        .get(format!("{}/echo/x", gw.url))
        .bearer_auth(&token)
        .header("x-auth-subject", "forged")
        .send()
        .await?;
    assert_eq!(response.status(), 200);
    let echo: Value = response.json().await?;
    assert_eq!(echo["headers"]["x-auth-subject"], "demo-client");
    assert_eq!(
        echo["headers"]["host"],
        "127.0.0.1:".to_string() + upstream.url.rsplit(':').next().unwrap_or("")
    );
    // Three more over the pooled connection.
    for _ in 0..3 {
        assert_eq!(gw.call(&http, "/echo/y", &token).await, 200);
    }
    assert_eq!(upstream.request_count(), 4);
    Ok(())
}
