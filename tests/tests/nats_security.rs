//! The NATS security model against a real nats-server: mutual TLS or nothing, identities
//! mapped from certificates, and gateways that may only read.

use std::path::Path;
use std::sync::atomic::Ordering;
use std::time::Duration;

use system_tests::{eventually, Gateway, Nats, Pki, Stack};

/// Tries to connect with the given client certificate (or none); returns whether it worked.
async fn connects(url: &str, ca: &Path, cert: Option<(&Path, &Path)>) -> bool {
    let mut options = async_nats::ConnectOptions::new()
        .require_tls(true)
        .add_root_certificates(ca.to_path_buf())
        .connection_timeout(Duration::from_secs(3));
    if let Some((cert, key)) = cert {
        options = options.add_client_certificate(cert.to_path_buf(), key.to_path_buf());
    }
    let attempt = async {
        let client = options.connect(url).await.ok()?;
        // TLS 1.3 can finish the handshake before the server rejects the certificate; a
        // round trip proves the connection was really accepted.
        client.flush().await.ok()
    };
    matches!(
        tokio::time::timeout(Duration::from_secs(5), attempt).await,
        Ok(Some(()))
    )
}

/// Refused: no client certificate, another CA's, the wrong key usage, expired, an unknown
/// identity, and plaintext. Accepted: the real identities.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_known_certificates_connect() -> anyhow::Result<()> {
    let nats = Nats::start()?;
    let pki = Pki::get();
    let ca = pki.certs.join("ca.pem");
    let pair = |dir: &Path, name: &str| {
        (
            dir.join(format!("{name}.pem")),
            dir.join(format!("{name}-key.pem")),
        )
    };

    assert!(
        !connects(&nats.url(), &ca, None).await,
        "no client certificate"
    );
    let (c, k) = pair(&pki.other_ca, "gateway-1");
    assert!(
        !connects(&nats.url(), &ca, Some((&c, &k))).await,
        "another CA"
    );
    for bad in ["bad-eku", "expired", "unknown"] {
        let (c, k) = pair(&pki.certs, bad);
        assert!(
            !connects(&nats.url(), &ca, Some((&c, &k))).await,
            "{bad} certificate"
        );
    }
    let plain = async_nats::ConnectOptions::new()
        .connection_timeout(Duration::from_secs(3))
        .connect(format!("nats://127.0.0.1:{}", nats.port));
    let plain = tokio::time::timeout(Duration::from_secs(5), async {
        plain.await.ok()?.flush().await.ok()
    })
    .await;
    assert!(!matches!(plain, Ok(Some(()))), "plaintext");

    for good in ["authz", "gateway-1", "gateway-2"] {
        let (c, k) = pair(&pki.certs, good);
        assert!(
            connects(&nats.url(), &ca, Some((&c, &k))).await,
            "{good} must connect"
        );
    }
    Ok(())
}

/// A gateway whose certificate NATS refuses, or whose identity may not read the stream and
/// the heartbeats (mis-permissioned), never becomes ready and fails closed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_or_mispermissioned_gateway_fails_closed() -> anyhow::Result<()> {
    let stack = Stack::start(0).await?;
    let nats = [stack.nats.url()];
    let unknown =
        Gateway::start_as("gateway-1", "unknown", &nats, &stack.authz, &stack.upstream).await?;
    // The authz identity connects fine but may neither create a consumer nor hear heartbeats.
    let mispermissioned =
        Gateway::start_as("authz", "authz", &nats, &stack.authz, &stack.upstream).await?;
    let token = stack.authz.token("demo-client", "demo-secret").await?;
    let http = reqwest::Client::new();
    // Give them ample time to (fail to) connect, replay and hear a heartbeat.
    for _ in 0..20 {
        for gw in [&unknown, &mispermissioned] {
            assert_eq!(gw.readyz().await, 503);
            assert_eq!(gw.call(&http, "/echo/", &token).await, 503);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    for gw in [&unknown, &mispermissioned] {
        assert_eq!(
            gw.call(&http, "/public/x", "").await,
            200,
            "public routes keep working"
        );
    }
    assert!(
        mispermissioned
            .metric("gateway_nats_server_errors_total")
            .await
            >= 1.0,
        "the permission violations are counted"
    );
    Ok(())
}

/// The gateway identity's attempt to publish a revocation is refused by the server, and no
/// gateway applies it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gateway_identity_cannot_publish_revocations() -> anyhow::Result<()> {
    let stack = Stack::start(2).await?;
    let http = reqwest::Client::new();
    let victim = stack.authz.token("demo-client", "demo-secret").await?;
    let jti = claim(&victim, "jti");

    let (client, violations) =
        system_tests::connect_nats_as(&stack.nats.url(), "gateway-1").await?;
    let forged = serde_json::json!({
        "v": 1, "id": "forged-1", "kind": "token", "iss": stack.authz.url, "jti": jti,
        "expires_at": revocation::unix_now() + 300, "revoked_at": revocation::unix_now(),
    });
    client
        .publish(
            "authz.revocations.v1.token",
            serde_json::to_vec(&forged)?.into(),
        )
        .await?;
    client.flush().await?;
    eventually(
        Duration::from_secs(5),
        "the server to report a permissions violation",
        || {
            let n = violations.load(Ordering::SeqCst);
            async move { (n > 0).then_some(()) }
        },
    )
    .await?;

    // A real revocation published after the forged one: once a gateway enforces it, it has
    // handled everything before it, so the victim must still pass.
    let marker = stack.authz.token("demo-client", "demo-secret").await?;
    assert_eq!(
        stack
            .authz
            .revoke("demo-client", "demo-secret", &marker)
            .await?,
        200
    );
    for gw in &stack.gateways {
        gw.wait_refused(&marker).await?;
        assert_eq!(
            gw.call(&http, "/echo/", &victim).await,
            200,
            "forged revocation applied"
        );
        assert_eq!(gw.metric("gateway_revocation_rules").await, 1.0);
    }
    Ok(())
}

fn claim(token: &str, name: &str) -> String {
    use base64::Engine;
    let payload = token.split('.').nth(1).unwrap_or_default();
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(payload)
        .unwrap_or_default();
    let value: serde_json::Value = serde_json::from_slice(&bytes).unwrap_or_default();
    value[name].as_str().unwrap_or_default().to_string()
}

/// Only a NATS server may be a route: a server started with a certificate from another CA,
/// with a gateway's certificate, or with the authz-server's (both from the cluster's own CA)
/// cannot join the cluster (route traffic would bypass every client permission).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_servers_can_join_the_cluster() -> anyhow::Result<()> {
    let nodes = Nats::start_cluster()?;
    let log_value = |log: &str, needle: &str| -> Option<String> {
        log.lines()
            .find_map(|l| l.split(needle).nth(1).map(|v| v.trim().to_string()))
    };
    let route_port = log_value(
        &nodes[0].log(),
        "Listening for route connections on 127.0.0.1:",
    )
    .ok_or_else(|| anyhow::anyhow!("no route port in the log"))?;
    let monitor = log_value(&nodes[0].log(), "Starting http monitor on ")
        .ok_or_else(|| anyhow::anyhow!("no monitor address in the log"))?;

    let pki = Pki::get();
    // A certificates directory whose "server" certificate is `identity`'s, from `source`.
    let as_server = |source: &Path, identity: &str| -> anyhow::Result<tempfile::TempDir> {
        let dir = tempfile::tempdir()?;
        std::fs::copy(source.join("ca.pem"), dir.path().join("ca.pem"))?;
        std::fs::copy(
            source.join(format!("{identity}.pem")),
            dir.path().join("nats-server.pem"),
        )?;
        std::fs::copy(
            source.join(format!("{identity}-key.pem")),
            dir.path().join("nats-server-key.pem"),
        )?;
        Ok(dir)
    };
    let intruders = [
        (
            "another CA's server",
            as_server(&pki.other_ca, "nats-server")?,
        ),
        ("gateway-1", as_server(&pki.certs, "gateway-1")?),
        ("authz", as_server(&pki.certs, "authz")?),
    ];
    for (i, (who, certs)) in intruders.iter().enumerate() {
        let dir = tempfile::tempdir()?;
        let rogue_route = system_tests::free_ports(1)?[0];
        let name = format!("rogue-{i}");
        let rendered = std::process::Command::new(
            system_tests::repo_root().join("deploy/nats/render-config.sh"),
        )
        .arg("--certs")
        .arg(certs.path())
        .arg("--store")
        .arg(dir.path().join("store"))
        .args(["--port", "-1", "--server-name", &name])
        .args(["--cluster-port", &rogue_route.to_string()])
        .args(["--routes", &format!("127.0.0.1:{route_port}")])
        .output()?;
        anyhow::ensure!(rendered.status.success(), "render-config.sh failed");
        let config = dir.path().join("rogue.conf");
        std::fs::write(&config, rendered.stdout)?;
        let log = dir.path().join("rogue.log");
        let mut rogue = std::process::Command::new(system_tests::nats_server_binary())
            .arg("-c")
            .arg(&config)
            .arg("-l")
            .arg(&log)
            .spawn()?;
        // Refused by TLS (another CA) or by the route authorization (the same CA's clients).
        let refused = eventually(
            Duration::from_secs(10),
            "the route to be refused",
            || async {
                let text = std::fs::read_to_string(&log).unwrap_or_default();
                text.lines()
                    .find(|l| {
                        l.contains("[ERR]")
                            && l.contains("rid:")
                            && (l.contains("TLS") || l.contains("Authorization Violation"))
                    })
                    .map(str::to_string)
            },
        )
        .await;
        let routez: serde_json::Value = reqwest::get(format!("http://{monitor}/routez"))
            .await?
            .json()
            .await?;
        let _ = rogue.kill();
        let _ = rogue.wait();
        println!("{who}: refused: {}", refused?);
        let peers: std::collections::BTreeSet<String> = routez["routes"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|r| r["remote_name"].as_str().map(str::to_string))
            .collect();
        assert_eq!(
            peers.into_iter().collect::<Vec<_>>(),
            ["node-2", "node-3"],
            "{who} joined: {routez}"
        );
    }
    Ok(())
}

/// A gateway's certificate cannot empty the revocation stream: not by asking
/// (`STREAM.PURGE` is outside its permissions), and not by aiming the response to one of its
/// own pull requests at the purge API, where the server would act with the account's full
/// rights: the stream refuses every purge and message delete (`deny_purge`, `deny_delete`).
/// The stream still holds every revocation, and a gateway started afterwards enforces them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gateway_cannot_empty_the_stream() -> anyhow::Result<()> {
    use async_nats::jetstream::consumer::pull;
    let stack = Stack::start(0).await?;
    let http = reqwest::Client::new();
    let revoked = stack.authz.token("demo-client", "demo-secret").await?;
    assert_eq!(
        stack
            .authz
            .revoke("demo-client", "demo-secret", &revoked)
            .await?,
        200
    );
    let (client, _) = system_tests::connect_nats_as(&stack.nats.url(), "gateway-1").await?;
    let js = async_nats::jetstream::new(client.clone());
    let mut stream = eventually(Duration::from_secs(10), "the event in the stream", || {
        let js = js.clone();
        async move {
            let mut stream = js.get_stream("AUTHZ_REVOCATIONS").await.ok()?;
            (stream.info().await.ok()?.state.messages >= 1).then_some(stream)
        }
    })
    .await?;
    let held = stream.info().await?.state.messages;
    let consumer = stream
        .create_consumer(pull::Config::default())
        .await?
        .cached_info()
        .name
        .clone();
    let next = format!("$JS.API.CONSUMER.MSG.NEXT.AUTHZ_REVOCATIONS.{consumer}");
    for (subject, reply) in [
        // Asked directly: refused by the permissions.
        (
            "$JS.API.STREAM.PURGE.AUTHZ_REVOCATIONS",
            "_INBOX_gateway-1.x",
        ),
        // Responses aimed at the API: the next message (an event), then a status (empty).
        (next.as_str(), "$JS.API.STREAM.PURGE.AUTHZ_REVOCATIONS"),
        (next.as_str(), "$JS.API.STREAM.PURGE.AUTHZ_REVOCATIONS"),
        (next.as_str(), "$JS.API.STREAM.MSG.DELETE.AUTHZ_REVOCATIONS"),
    ] {
        client
            .publish_with_reply(
                subject.to_string(),
                reply.to_string(),
                r#"{"batch":1,"no_wait":true}"#.into(),
            )
            .await?;
    }
    client.flush().await?;
    // The purge, had it been accepted, is done by the time the API answers the next request.
    for _ in 0..5 {
        assert_eq!(
            stream.info().await?.state.messages,
            held,
            "the stream lost events"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let late = Gateway::start(
        "gateway-2",
        &[stack.nats.url()],
        &stack.authz,
        &stack.upstream,
    )
    .await?;
    late.wait_ready().await?;
    assert_eq!(late.call(&http, "/echo/x", &revoked).await, 401);
    Ok(())
}
