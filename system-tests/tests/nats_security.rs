//! The NATS security model against a real nats-server: mutual TLS or nothing, identities
//! mapped from certificates, and gateways that may only read.

use std::path::Path;
use std::sync::atomic::Ordering;
use std::time::Duration;

use futures::StreamExt;
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

/// A gateway's certificate may read the revocation stream and the snapshots, and touch
/// nothing else. The streams live in NATS accounts of their own and gateways reach only the
/// reading part of their JetStream API, so every try below fails, and the streams, the other
/// gateway's consumer, its inbox and the heartbeats are as they were:
/// - push consumers delivering to another identity's inbox, to the heartbeat subject, to the
///   snapshot subjects and to the JetStream API: their deliveries stay in the stream's
///   account, where nobody listens;
/// - deleting another gateway's consumer, purging or deleting either stream, deleting or
///   changing what they hold, listing consumers: no such API where gateways are;
/// - publishing revocations, chunks, a forged manifest or heartbeats: refused;
/// - responses to its own requests aimed at the API or at the streams' subjects: they come
///   back to the gateways' account, where neither exists.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gateway_touches_nothing_but_its_own_reading() -> anyhow::Result<()> {
    use async_nats::jetstream::consumer::{pull, push, DeliverPolicy};
    use async_nats::jetstream::stream::State;
    use revocation::snapshot::{CHUNK_SUBJECT, MANIFEST_SUBJECT, SNAPSHOT_STREAM};
    use revocation::stream::{HEARTBEAT_SUBJECT, STREAM_NAME};

    let stack = Stack::start(0).await?;
    let url = stack.nats.url();
    let http = reqwest::Client::new();
    let revoked = stack.authz.token("demo-client", "demo-secret").await?;
    assert_eq!(
        stack
            .authz
            .revoke("demo-client", "demo-secret", &revoked)
            .await?,
        200
    );
    // The authz identity: a snapshot stream holding a manifest, and the revocation.
    let (authz, _) = system_tests::connect_nats_as(&url, "authz").await?;
    let snap = revocation::snapshot::context(authz.clone());
    let rev = revocation::stream::context(authz.clone());
    let mut snapshots = snap
        .get_or_create_stream(revocation::snapshot::stream_config(1))
        .await?;
    snap.publish(MANIFEST_SUBJECT, "the authz-server's manifest".into())
        .await?
        .await?;
    let mut revocations = eventually(Duration::from_secs(10), "the event in the stream", || {
        let rev = rev.clone();
        async move {
            let mut stream = rev.get_stream(STREAM_NAME).await.ok()?;
            (stream.info().await.ok()?.state.messages >= 1).then_some(stream)
        }
    })
    .await?;
    let held = |s: &State| (s.messages, s.first_sequence, s.last_sequence);
    let before = (
        held(&revocations.info().await?.state),
        held(&snapshots.info().await?.state),
    );

    // gateway-2 reads as a gateway does: a pull consumer, its inbox, the heartbeats.
    let (gw2, _) = system_tests::connect_nats_as(&url, "gateway-2").await?;
    let victim = revocation::stream::context(gw2.clone())
        .get_stream(STREAM_NAME)
        .await?
        .create_consumer(pull::Config {
            inactive_threshold: Duration::from_secs(120),
            ..Default::default()
        })
        .await?
        .cached_info()
        .name
        .clone();
    let mut inbox = gw2.subscribe("_INBOX_gateway-2.>").await?;
    let mut beats = gw2.subscribe(HEARTBEAT_SUBJECT).await?;

    // gateway-1 attacks.
    let (gw1, violations) = system_tests::connect_nats_as(&url, "gateway-1").await?;
    let stream = revocation::stream::context(gw1.clone())
        .get_stream(STREAM_NAME)
        .await?;
    let delete_victim = format!("$JS.API.CONSUMER.DELETE.{STREAM_NAME}.{victim}");
    for target in [
        "_INBOX_gateway-2.stolen",
        "_INBOX_authz.stolen",
        HEARTBEAT_SUBJECT,
        MANIFEST_SUBJECT,
        CHUNK_SUBJECT,
        "$JS.API.STREAM.DELETE.AUTHZ_REVOCATIONS",
        "$JS.API.STREAM.PURGE.AUTHZ_REVOCATIONS",
        &delete_victim,
    ] {
        // Creating one is allowed (deliveries stay in the stream's account); it must lead
        // nowhere.
        stream
            .create_consumer(push::Config {
                deliver_subject: target.to_string(),
                deliver_policy: DeliverPolicy::All,
                idle_heartbeat: Duration::from_millis(100),
                inactive_threshold: Duration::from_secs(60),
                ..Default::default()
            })
            .await?;
    }
    for prefix in ["JS.REV.API", "JS.SNAP.API"] {
        for api in [
            format!("CONSUMER.DELETE.{STREAM_NAME}.{victim}"),
            format!("CONSUMER.LIST.{STREAM_NAME}"),
            format!("CONSUMER.NAMES.{STREAM_NAME}"),
            format!("STREAM.PURGE.{STREAM_NAME}"),
            format!("STREAM.DELETE.{STREAM_NAME}"),
            format!("STREAM.UPDATE.{STREAM_NAME}"),
            format!("STREAM.MSG.DELETE.{STREAM_NAME}"),
            format!("STREAM.PURGE.{SNAPSHOT_STREAM}"),
            format!("STREAM.DELETE.{SNAPSHOT_STREAM}"),
            format!("STREAM.MSG.DELETE.{SNAPSHOT_STREAM}"),
            format!("CONSUMER.CREATE.{SNAPSHOT_STREAM}"),
            "STREAM.LIST".to_string(),
        ] {
            let subject = format!("{prefix}.{api}");
            let answer = gw1.request(subject.clone(), "{}".into()).await;
            assert!(
                matches!(&answer, Err(e) if e.kind() == async_nats::RequestErrorKind::NoResponders),
                "{subject}: {answer:?}"
            );
        }
    }
    let forged = br#"{"v":1,"id":"forged","epoch":1,"seq":1,"first_chunk":1,"last_chunk":1,"chunks":1,"rules":1,"created_at":1}"#;
    let refused = [
        "authz.revocations.v1.token",
        MANIFEST_SUBJECT,
        CHUNK_SUBJECT,
        HEARTBEAT_SUBJECT,
        "$JS.API.STREAM.DELETE.AUTHZ_REVOCATIONS",
        "$JS.API.STREAM.PURGE.AUTHZ_REVOCATION_SNAPSHOTS",
        delete_victim.as_str(),
    ];
    for subject in refused {
        gw1.publish(subject.to_string(), forged.to_vec().into())
            .await?;
    }
    // Responses aimed at the API and at the streams' subjects.
    let own = stream
        .create_consumer(pull::Config::default())
        .await?
        .cached_info()
        .name
        .clone();
    for reply in [
        "JS.REV.API.STREAM.PURGE.AUTHZ_REVOCATIONS",
        "JS.SNAP.API.STREAM.DELETE.AUTHZ_REVOCATION_SNAPSHOTS",
        "$JS.API.STREAM.DELETE.AUTHZ_REVOCATIONS",
        "authz.revocations.v1.token",
        MANIFEST_SUBJECT,
    ] {
        for request in [
            (
                format!("JS.REV.API.CONSUMER.MSG.NEXT.{STREAM_NAME}.{own}"),
                r#"{"batch":1,"no_wait":true}"#,
            ),
            (format!("JS.REV.API.STREAM.INFO.{STREAM_NAME}"), ""),
        ] {
            gw1.publish_with_reply(request.0, reply.to_string(), request.1.into())
                .await?;
        }
    }
    gw1.flush().await?;
    eventually(
        Duration::from_secs(5),
        "a permissions violation for every refused publish",
        || {
            let n = violations.load(Ordering::SeqCst);
            async move { (n >= refused.len()).then_some(()) }
        },
    )
    .await?;

    // Nothing reached gateway-2 but heartbeats, over a few heartbeat periods (the push
    // consumers' idle heartbeats alone come ten times a second).
    let quiet = tokio::time::timeout(Duration::from_millis(1500), inbox.next()).await;
    assert!(quiet.is_err(), "gateway-2's inbox got {quiet:?}");
    while let Ok(Some(beat)) = tokio::time::timeout(Duration::from_millis(10), beats.next()).await {
        let header = std::str::from_utf8(&beat.payload)
            .ok()
            .and_then(|jws| jsonwebtoken::decode_header(jws).ok());
        assert!(
            header.is_some_and(|h| h.typ.as_deref() == Some(revocation::freshness::HEARTBEAT_TYP)),
            "not a signed heartbeat on the heartbeat subject: {:?}",
            beat.payload
        );
    }
    // Both streams hold what they held, the manifest is the authz-server's, and gateway-2's
    // consumer is still there.
    assert_eq!(
        (
            held(&revocations.info().await?.state),
            held(&snapshots.info().await?.state)
        ),
        before
    );
    let manifest = snapshots
        .get_last_raw_message_by_subject(MANIFEST_SUBJECT)
        .await?;
    assert_eq!(&manifest.payload[..], b"the authz-server's manifest");
    rev.get_stream(STREAM_NAME)
        .await?
        .consumer_info(&victim)
        .await?;
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

/// A gateway believes a heartbeat for its signature by the authz-server's heartbeat key, not
/// for the subject it came on. With the authz-server stopped, the gateway goes stale; then
/// heartbeats that claim it is fully up to date arrive on the heartbeat subject, published
/// with the authz identity itself (the one identity the server lets publish there), in every
/// form but the right one. Each is counted and skipped, and the gateway stays stale. The
/// same statement signed by the real heartbeat key (read from the authz-server's database)
/// then makes it fresh: what refused the others was the signature.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_signed_heartbeats_make_a_gateway_fresh() -> anyhow::Result<()> {
    use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
    use base64::Engine as _;
    use jsonwebtoken::{Algorithm, EncodingKey, Header};
    use revocation::freshness::{Heartbeat, HEARTBEAT_TYP, HEARTBEAT_VERSION};
    use revocation::stream::{HEARTBEAT_SUBJECT, STREAM_NAME};

    let mut stack = Stack::start(1).await?;
    let gw = &stack.gateways[0];
    gw.wait_ready().await?;
    // The two private keys of the authz-server: the heartbeat key in its database, the token
    // key in its key file.
    let store =
        authz_server::store::Store::open(&stack.authz.database().display().to_string()).await?;
    let heartbeat_pem = store.heartbeat_key("").await?;
    let heartbeat_kid = authz_server::keys::KeyObject::heartbeat_key(heartbeat_pem.as_bytes())?
        .kid()
        .to_string();
    let token_pem = std::fs::read(stack.authz.dir.join("signing-key.pem"))?;
    let token_kid = authz_server::keys::KeyObject::from_pem(&token_pem, Algorithm::RS256)?
        .kid()
        .to_string();
    let stranger_pem = authz_server::keys::generate_pem(Algorithm::EdDSA)?;

    stack.authz.runner.stop().await;
    eventually(
        Duration::from_secs(20),
        "the gateway to go stale",
        || async { (gw.readyz().await == 503).then_some(()) },
    )
    .await?;

    // What a heartbeat sent now would truthfully say.
    let (authz, _) = system_tests::connect_nats_as(&stack.nats.url(), "authz").await?;
    let mut stream = revocation::stream::context(authz.clone())
        .get_stream(STREAM_NAME)
        .await?;
    let info = stream.info().await?;
    let (epoch, seq) = (revocation::stream::epoch(info), info.state.last_sequence);
    let last_id = match seq {
        0 => None,
        seq => stream
            .get_raw_message(seq)
            .await?
            .headers
            .get(async_nats::header::NATS_MESSAGE_ID)
            .map(|v| v.as_str().to_string()),
    };
    let beat = || {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64);
        Heartbeat {
            v: HEARTBEAT_VERSION,
            instance: "forger".into(),
            epoch,
            seq,
            covers_until_ms: now,
            sent_at_ms: now,
            last_id: last_id.clone(),
        }
    };
    let sign = |key: EncodingKey, alg: Algorithm, typ: Option<&str>, kid: &str| {
        let mut header = Header::new(alg);
        header.typ = typ.map(str::to_string);
        header.kid = Some(kid.to_string());
        jsonwebtoken::encode(&header, &beat(), &key).map(String::into_bytes)
    };
    let ed = |pem: &str| EncodingKey::from_ed_pem(pem.as_bytes());
    let typ = Some(HEARTBEAT_TYP);
    let good = String::from_utf8(sign(
        ed(&heartbeat_pem)?,
        Algorithm::EdDSA,
        typ,
        &heartbeat_kid,
    )?)?;
    let tampered = {
        let parts: Vec<&str> = good.split('.').collect();
        let mut other = beat();
        other.instance = "tampered".into();
        format!(
            "{}.{}.{}",
            parts[0],
            B64.encode(serde_json::to_vec(&other)?),
            parts[2]
        )
    };
    let unsigned_header = B64.encode(format!(
        r#"{{"alg":"none","typ":"{HEARTBEAT_TYP}","kid":"{heartbeat_kid}"}}"#
    ));
    let forged: Vec<(&str, Vec<u8>)> = vec![
        ("the bare JSON", beat().to_json()),
        (
            "alg none",
            format!("{unsigned_header}.{}.", B64.encode(beat().to_json())).into_bytes(),
        ),
        (
            "another Ed25519 key under the heartbeat kid",
            sign(ed(&stranger_pem)?, Algorithm::EdDSA, typ, &heartbeat_kid)?,
        ),
        (
            "another Ed25519 key under its own kid",
            sign(ed(&stranger_pem)?, Algorithm::EdDSA, typ, "stranger")?,
        ),
        (
            "the token key",
            sign(
                EncodingKey::from_rsa_pem(&token_pem)?,
                Algorithm::RS256,
                typ,
                &token_kid,
            )?,
        ),
        (
            "the heartbeat key, typ JWT",
            sign(
                ed(&heartbeat_pem)?,
                Algorithm::EdDSA,
                Some("JWT"),
                &heartbeat_kid,
            )?,
        ),
        (
            "the heartbeat key, typ at+jwt",
            sign(
                ed(&heartbeat_pem)?,
                Algorithm::EdDSA,
                Some("at+jwt"),
                &heartbeat_kid,
            )?,
        ),
        (
            "the heartbeat key, no typ",
            sign(ed(&heartbeat_pem)?, Algorithm::EdDSA, None, &heartbeat_kid)?,
        ),
        (
            "another statement under a good signature",
            tampered.into_bytes(),
        ),
        (
            "a truncated signature",
            good.as_bytes()[..good.len() - 4].to_vec(),
        ),
        (
            "an oversized message",
            [good.as_bytes(), &[b' '; 4096][..]].concat(),
        ),
    ];
    for (i, (what, payload)) in forged.into_iter().enumerate() {
        authz.publish(HEARTBEAT_SUBJECT, payload.into()).await?;
        authz.flush().await?;
        eventually(Duration::from_secs(5), what, || async {
            (gw.metric("gateway_heartbeats_skipped_total").await >= (i + 1) as f64).then_some(())
        })
        .await?;
        assert_eq!(gw.readyz().await, 503, "{what} made the gateway fresh");
    }
    // The control: the same statement, signed as the authz-server signs it.
    let signed = sign(ed(&heartbeat_pem)?, Algorithm::EdDSA, typ, &heartbeat_kid)?;
    authz
        .publish(HEARTBEAT_SUBJECT, signed.clone().into())
        .await?;
    eventually(
        Duration::from_secs(5),
        "the signed heartbeat to count",
        || async { (gw.readyz().await == 200).then_some(()) },
    )
    .await?;
    // The very same heartbeat again (captured and replayed): not newer, not believed.
    let skipped = gw.metric("gateway_heartbeats_skipped_total").await;
    authz.publish(HEARTBEAT_SUBJECT, signed.into()).await?;
    eventually(
        Duration::from_secs(5),
        "the replay to be skipped",
        || async { (gw.metric("gateway_heartbeats_skipped_total").await > skipped).then_some(()) },
    )
    .await?;
    Ok(())
}
