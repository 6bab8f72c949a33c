//! Several authz-server replicas on one PostgreSQL database (the URL picks the backend).

use std::time::Duration;

use system_tests::{all_refused, Authz, Gateway, Nats, PgDatabase, Upstream};

/// Two replicas revoking concurrently through one database: every revocation reaches every
/// gateway, and the stream holds each exactly once although both relays may publish it
/// (the message id de-duplicates). Both replicas watch for a snapshot to be due, and a new
/// gateway loads the one taken (from the shared database) whole.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_replicas_share_one_database() -> anyhow::Result<()> {
    let db = PgDatabase::create().await?;
    let nats = Nats::start()?;
    let (dir_a, dir_b) = (tempfile::tempdir()?, tempfile::tempdir()?);
    let key = dir_a.path().join("signing-key.pem");
    let common = format!(
        "database = \"{}\"\nsigning_key_file = {key:?}\nheartbeat_interval_ms = 200\n\
         snapshot_interval_ms = 100\nsnapshot_min_events = 20",
        db.url
    );
    let a = Authz::start_with(dir_a.path(), &[nats.url()], &common).await?;
    // Replicas sit behind one name: same issuer, same signing key.
    let b = Authz::start_with(
        dir_b.path(),
        &[nats.url()],
        &format!("{common}\nissuer = \"{}\"", a.url),
    )
    .await?;
    let upstream = Upstream::start().await?;
    let mut gateways = Vec::new();
    for id in ["gateway-1", "gateway-2"] {
        let gw = Gateway::start(id, &[nats.url()], &a, &upstream).await?;
        gw.wait_ready().await?;
        gateways.push(gw);
    }

    let mut tokens = Vec::new();
    for i in 0..20 {
        let issuer = if i % 2 == 0 { &a } else { &b };
        tokens.push(issuer.token("demo-client", "demo-secret").await?);
    }
    let http = reqwest::Client::new();
    for gw in &gateways {
        assert_eq!(
            gw.call(&http, "/echo/", &tokens[1]).await,
            200,
            "a token from replica B passes"
        );
    }
    // Revoke all twenty at once, half through each replica.
    let revocations = tokens.iter().enumerate().map(|(i, token)| {
        let replica = if i % 2 == 0 { &a } else { &b };
        replica.revoke("demo-client", "demo-secret", token)
    });
    for status in futures::future::join_all(revocations).await {
        assert_eq!(status?, 200);
    }
    let urls: Vec<String> = gateways.iter().map(|g| g.url.clone()).collect();
    all_refused(&urls, &tokens, Duration::from_secs(20)).await?;
    for gw in &gateways {
        assert_eq!(gw.metric("gateway_revocation_rules").await, 20.0);
        assert_eq!(
            gw.metric("gateway_revocation_last_sequence").await,
            20.0,
            "a revocation was stored twice"
        );
        assert_eq!(gw.readyz().await, 200);
    }
    // Both replicas list the same rules: one source of truth.
    for replica in [&a, &b] {
        let page: serde_json::Value = http
            .get(format!(
                "{}/admin/revocations?limit=1000",
                replica.admin_url
            ))
            .basic_auth("admin", Some("admin-secret"))
            .send()
            .await?
            .json()
            .await?;
        assert_eq!(page["revocations"].as_array().map(Vec::len), Some(20));
    }

    system_tests::eventually(Duration::from_secs(10), "a snapshot", || async {
        let published = a.metric("authz_snapshots_published_total").await
            + b.metric("authz_snapshots_published_total").await;
        (published >= 1.0).then_some(())
    })
    .await?;
    let late = Gateway::start_with(
        "gateway-3",
        "gateway-3",
        &[nats.url()],
        &a,
        &upstream,
        "replay_snapshot_min = 1",
    )
    .await?;
    late.wait_ready().await?;
    all_refused(
        std::slice::from_ref(&late.url),
        &tokens,
        Duration::from_secs(5),
    )
    .await?;
    assert_eq!(
        late.metric("gateway_revocation_snapshots_loaded_total")
            .await,
        1.0
    );
    assert_eq!(
        late.metric("gateway_revocation_snapshot_rules_total").await,
        20.0
    );
    assert_eq!(late.metric("gateway_revocation_rules").await, 20.0);
    Ok(())
}

/// One clock per interval (issue 14, part 7): a revocation that cannot be published makes
/// every gateway stale within `max_staleness`, even when it was committed by a replica whose
/// clock runs two minutes ahead. Before, the heartbeat compared that replica's `revoked_at`
/// with its own clock: the stuck revocation looked two minutes younger than it was, and both
/// replicas' heartbeats kept the gateway fresh, serving the revoked token, all that time.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_clock_ahead_cannot_hide_a_stuck_revocation() -> anyhow::Result<()> {
    use async_nats::jetstream::stream::DiscardPolicy;
    let db = PgDatabase::create().await?;
    let nats = Nats::start()?;
    let (dir_a, dir_b) = (tempfile::tempdir()?, tempfile::tempdir()?);
    let key = dir_a.path().join("signing-key.pem");
    let common = format!(
        "database = \"{}\"\nsigning_key_file = {key:?}\nheartbeat_interval_ms = 200\n\
         publish_wait_ms = 500",
        db.url
    );
    let a = Authz::start_with(dir_a.path(), &[nats.url()], &common).await?;
    let b = Authz::spawn_process_with_clock(
        dir_b.path(),
        &[nats.url()],
        &format!("{common}\nissuer = \"{}\"", a.url),
        120_000,
    )
    .await?;
    let upstream = Upstream::start().await?;
    let gw = Gateway::start_with(
        "gateway-1",
        "gateway-1",
        &[nats.url()],
        &a,
        &upstream,
        "max_staleness_ms = 1500",
    )
    .await?;
    gw.wait_ready().await?;
    let http = reqwest::Client::new();
    // One revocation through, so that the stream holds a message to be full with.
    let first = a.token("demo-client", "demo-secret").await?;
    assert_eq!(b.revoke("demo-client", "demo-secret", &first).await?, 200);
    all_refused(
        std::slice::from_ref(&gw.url),
        std::slice::from_ref(&first),
        Duration::from_secs(10),
    )
    .await?;
    let token = a.token("demo-client", "demo-secret").await?;
    assert_eq!(gw.call(&http, "/echo/", &token).await, 200);

    // The stream takes no new message: whatever is committed from now on stays unpublished.
    let (client, _) = system_tests::connect_nats_as(&nats.url(), "authz").await?;
    let js = revocation::stream::context(client);
    let mut stream = js.get_stream(revocation::stream::STREAM_NAME).await?;
    let info = stream.info().await?.clone();
    let mut full = info.config.clone();
    full.discard = DiscardPolicy::New;
    full.max_messages = info.state.messages as i64;
    js.update_stream(full).await?;

    // Committed through the replica whose clock is ahead.
    // Committed, and refused (503) since it cannot be published.
    let status = b.revoke("demo-client", "demo-secret", &token).await?;
    assert_eq!(status, 503, "acknowledged without being published");
    let stale = system_tests::eventually(
        Duration::from_secs(10),
        "the gateway to stop serving a token whose revocation is stuck",
        || async { Some(gw.call(&http, "/echo/", &token).await).filter(|s| *s != 200) },
    )
    .await?;
    assert_eq!(
        stale, 503,
        "stale, since the revocation is not in the stream"
    );
    assert_eq!(gw.readyz().await, 503);

    // The stream takes messages again: the revocation arrives, the gateway is fresh.
    js.update_stream(info.config.clone()).await?;
    system_tests::eventually(
        Duration::from_secs(30),
        "the revocation to arrive and the gateway to be fresh",
        || async { (gw.call(&http, "/echo/", &token).await == 401).then_some(()) },
    )
    .await?;
    assert_eq!(gw.readyz().await, 200);
    Ok(())
}
