//! A database outage is not staleness (issue 14, part 8). While no replica can commit, no
//! revocation can be acknowledged — and every revocation acknowledged was published first —
//! so the heartbeats go on vouching for the stream and the gateways stay fresh; the
//! revocation and admin calls answer 503 at once. A replica cut off from the database
//! vouches only for what is in the stream, which is everything acknowledged.

use std::time::{Duration, Instant};

use system_tests::{
    all_refused, eventually, Authz, Gateway, Nats, PrivatePostgres, Probe, TcpProxy, Upstream,
};

// Above the time the store's probe takes to call a hung database out of reach (two probes
// of at most a second, half a second apart), during which heartbeats wait.
const MAX_STALENESS_MS: u64 = 4000;
const BOUND: Duration = Duration::from_millis(MAX_STALENESS_MS);
const WAIT: Duration = Duration::from_secs(30);

/// The settings both replicas share: one database, one key, heartbeats every 200 ms, and a
/// short wait for publication.
fn replica_config(database: &str, dir: &std::path::Path, issuer: Option<&str>) -> String {
    let key = dir.join("signing-key.pem");
    let mut config = format!(
        "database = \"{database}\"\nsigning_key_file = {key:?}\nheartbeat_interval_ms = 200\n\
         publish_wait_ms = 1000"
    );
    if let Some(issuer) = issuer {
        config.push_str(&format!("\nissuer = \"{issuer}\""));
    }
    config
}

async fn bounded_gateways(
    nats: &Nats,
    authz: &Authz,
    upstream: &Upstream,
) -> anyhow::Result<Vec<Gateway>> {
    let mut gateways = Vec::new();
    for id in ["gateway-1", "gateway-2"] {
        let gw = Gateway::start_with(
            id,
            id,
            &[nats.url()],
            authz,
            upstream,
            &format!("max_staleness_ms = {MAX_STALENESS_MS}"),
        )
        .await?;
        gw.wait_ready().await?;
        gateways.push(gw);
    }
    Ok(gateways)
}

/// `n` tokens from `authz`, each watched by `probe`, with their probe indexes.
async fn watched(authz: &Authz, probe: &Probe, n: usize) -> anyhow::Result<Vec<(String, usize)>> {
    let mut tokens = Vec::new();
    for _ in 0..n {
        let token = authz.token("demo-client", "demo-secret").await?;
        let index = probe.watch(&token);
        tokens.push((token, index));
    }
    Ok(tokens)
}

/// A revocation through RFC 7009: its status, `Retry-After` and error description, and how
/// long it took.
async fn revoke(
    authz: &Authz,
    token: &str,
) -> anyhow::Result<(u16, Option<String>, String, Duration)> {
    let started = Instant::now();
    let response = reqwest::Client::new()
        .post(format!("{}/oauth2/revoke", authz.url))
        .basic_auth("demo-client", Some("demo-secret"))
        .form(&[("token", token), ("token_type_hint", "access_token")])
        .send()
        .await?;
    let status = response.status().as_u16();
    let retry_after = response
        .headers()
        .get("retry-after")
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    let body: serde_json::Value = response.json().await.unwrap_or_default();
    let description = body["error_description"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    Ok((status, retry_after, description, started.elapsed()))
}

/// The authz-server's `/readyz`: status and reasons.
async fn authz_readyz(authz: &Authz) -> (u16, String) {
    match reqwest::get(format!("{}/readyz", authz.admin_url)).await {
        Ok(response) => {
            let status = response.status().as_u16();
            (status, response.text().await.unwrap_or_default())
        }
        Err(_) => (0, String::new()),
    }
}

/// Every gateway answers `/readyz` 200 on every look for `period`.
async fn stay_ready(gateways: &[Gateway], period: Duration) {
    let until = Instant::now() + period;
    while Instant::now() < until {
        for gw in gateways {
            if gw.readyz().await != 200 {
                let body = reqwest::get(format!("{}/readyz", gw.admin_url)).await.ok();
                let body = match body {
                    Some(r) => r.text().await.unwrap_or_default(),
                    None => String::new(),
                };
                panic!("a gateway turned stale: {body}");
            }
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// PostgreSQL stopped under load: the gateways stay ready and go on enforcing every rule;
/// revocation and admin calls answer 503 with `Retry-After` at once and `/readyz` says why;
/// once PostgreSQL is back, revocations flow again within a heartbeat or so.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_database_stopped_under_load() -> anyhow::Result<()> {
    let pg = PrivatePostgres::start()?;
    let nats = Nats::start()?;
    let (dir_a, dir_b) = (tempfile::tempdir()?, tempfile::tempdir()?);
    let a = Authz::start_with(
        dir_a.path(),
        &[nats.url()],
        &replica_config(&pg.url(), dir_a.path(), None),
    )
    .await?;
    let b = Authz::start_with(
        dir_b.path(),
        &[nats.url()],
        &replica_config(&pg.url(), dir_a.path(), Some(&a.url)),
    )
    .await?;
    let upstream = Upstream::start().await?;
    let gateways = bounded_gateways(&nats, &a, &upstream).await?;
    let urls: Vec<String> = gateways.iter().map(|g| g.url.clone()).collect();
    let probe = Probe::start(urls.clone(), "/echo/", BOUND);
    let tokens = watched(&a, &probe, 3).await?;
    let (revoked, revoked_index) = tokens[0].clone();
    let (status, ..) = revoke(&a, &revoked).await?;
    assert_eq!(status, 200);
    probe.revoked(revoked_index);
    all_refused(&urls, std::slice::from_ref(&revoked), WAIT).await?;

    pg.stop()?;
    for replica in [&a, &b] {
        eventually(
            Duration::from_secs(10),
            "the replica to see the database gone",
            || async {
                let (status, body) = authz_readyz(replica).await;
                (status == 503 && body.contains("database_unreachable")).then_some(())
            },
        )
        .await?;
    }
    // Refused at once, with the reason and when to come back; nothing committed.
    for replica in [&a, &b] {
        let (status, retry_after, description, took) = revoke(replica, &tokens[1].0).await?;
        assert_eq!(status, 503);
        assert_eq!(retry_after.as_deref(), Some("1"));
        assert!(description.contains("database"), "{description}");
        assert!(took < Duration::from_secs(1), "a refusal took {took:?}");
        let started = Instant::now();
        let (status, _) = replica
            .admin_revoke(serde_json::json!({ "subject": "someone" }))
            .await?;
        assert_eq!(status, 503, "an admin call while the database is down");
        assert!(started.elapsed() < Duration::from_secs(1));
    }
    // The gateways stay fresh well past max_staleness, and keep enforcing the rules.
    stay_ready(&gateways, BOUND * 2).await;
    let http = reqwest::Client::new();
    for gw in &gateways {
        assert_eq!(gw.call(&http, "/echo/", &revoked).await, 401);
        assert_eq!(gw.call(&http, "/echo/", &tokens[1].0).await, 200);
    }

    // PostgreSQL back: revocations flow again.
    pg.start_again()?;
    let back = Instant::now();
    let (token, index) = tokens[1].clone();
    eventually(
        Duration::from_secs(10),
        "a revocation to be taken again",
        || async {
            let (status, ..) = revoke(&b, &token).await.ok()?;
            (status == 200).then_some(())
        },
    )
    .await?;
    probe.revoked(index);
    println!(
        "revocations taken again {:?} after PostgreSQL accepted connections",
        back.elapsed()
    );
    all_refused(&urls, &[revoked, token], WAIT).await?;
    let report = probe.finish().await;
    println!(
        "probe: {} requests, statuses {:?}",
        report.requests, report.by_status
    );
    assert!(report.requests > 0);
    assert!(report.violations.is_empty(), "{:?}", report.violations);
    assert_eq!(
        report.by_status.get(&503),
        None,
        "a gateway turned stale while the database was down"
    );
    Ok(())
}

/// One replica cut off from the database (a partition: its connections hang) while the other
/// keeps committing. The cut-off replica's heartbeats vouch only for what is in the stream;
/// that is enough, because nothing is acknowledged before it is there: a revocation
/// committed by the other replica while NATS is out of its reach is answered 503, not 200,
/// and no gateway ever serves an acknowledged revocation's token past max_staleness.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_cut_off_from_the_database() -> anyhow::Result<()> {
    let pg = PrivatePostgres::start()?;
    let to_pg = TcpProxy::start(pg.port).await?;
    let nats = Nats::start()?;
    let a_to_nats = TcpProxy::start(nats.port).await?;
    let (dir_a, dir_b) = (tempfile::tempdir()?, tempfile::tempdir()?);
    let a = Authz::start_with(
        dir_a.path(),
        &[a_to_nats.url()],
        &replica_config(&pg.url(), dir_a.path(), None),
    )
    .await?;
    let b_database = format!("postgres://postgres@127.0.0.1:{}/postgres", to_pg.port);
    let b = Authz::start_with(
        dir_b.path(),
        &[nats.url()],
        &replica_config(&b_database, dir_a.path(), Some(&a.url)),
    )
    .await?;
    let upstream = Upstream::start().await?;
    let gateways = bounded_gateways(&nats, &a, &upstream).await?;
    let urls: Vec<String> = gateways.iter().map(|g| g.url.clone()).collect();
    let probe = Probe::start(urls.clone(), "/echo/", BOUND);
    let tokens = watched(&a, &probe, 2).await?;

    to_pg.cut();
    eventually(
        Duration::from_secs(10),
        "B to see the database gone",
        || async {
            let (status, body) = authz_readyz(&b).await;
            (status == 503 && body.contains("database_unreachable")).then_some(())
        },
    )
    .await?;
    assert_eq!(authz_readyz(&a).await.0, 200);
    // A commits and publishes: acknowledged, enforced.
    let (first, first_index) = tokens[0].clone();
    let (status, ..) = revoke(&a, &first).await?;
    assert_eq!(status, 200);
    probe.revoked(first_index);
    all_refused(&urls, std::slice::from_ref(&first), WAIT).await?;
    // B refuses at once.
    let (status, _, description, took) = revoke(&b, &tokens[1].0).await?;
    assert_eq!(status, 503);
    assert!(description.contains("database"), "{description}");
    assert!(took < Duration::from_secs(1), "B's refusal took {took:?}");

    // A loses NATS: what it commits now cannot be published, so it is not acknowledged,
    // while B (out of the database's reach) keeps the gateways fresh.
    a_to_nats.cut();
    let (second, second_index) = tokens[1].clone();
    let (status, retry_after, description, _) = revoke(&a, &second).await?;
    if status == 200 {
        // What a weaker rule would do: acknowledged, and the probe holds the gateways to it
        // (checked below, before the status, so that the failure shows what it costs).
        probe.revoked(second_index);
    }
    stay_ready(&gateways, BOUND * 2).await;

    // Healed: asked again, it is answered 200 once published, and enforced.
    a_to_nats.heal();
    to_pg.heal();
    eventually(WAIT, "the committed revocation to be published", || async {
        let (status, ..) = revoke(&a, &second).await.ok()?;
        (status == 200).then_some(())
    })
    .await?;
    probe.revoked(second_index);
    all_refused(&urls, &[first, second], WAIT).await?;
    eventually(
        Duration::from_secs(10),
        "B to take writes again",
        || async { (authz_readyz(&b).await.0 == 200).then_some(()) },
    )
    .await?;
    let report = probe.finish().await;
    println!(
        "probe: {} requests, statuses {:?}",
        report.requests, report.by_status
    );
    assert!(report.requests > 0);
    assert!(
        report.violations.is_empty(),
        "{} responses served acknowledged revocations past max_staleness, the first: {:?}",
        report.violations.len(),
        &report.violations[..report.violations.len().min(3)]
    );
    assert_eq!(status, 503, "acknowledged without being published");
    assert_eq!(retry_after.as_deref(), Some("1"));
    assert!(description.contains("not yet published"), "{description}");
    Ok(())
}

/// SQLite whose file takes no writes (another process holds its write lock): the same as
/// PostgreSQL stopped. 503 at once once noticed, the gateway stays fresh, and revocations
/// flow again when the file is writable.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sqlite_file_that_takes_no_writes() -> anyhow::Result<()> {
    use sqlx::Connection;
    let nats = Nats::start()?;
    let dir = tempfile::tempdir()?;
    let authz = Authz::start_with(
        dir.path(),
        &[nats.url()],
        "heartbeat_interval_ms = 200\npublish_wait_ms = 1000",
    )
    .await?;
    let upstream = Upstream::start().await?;
    let gateways = bounded_gateways(&nats, &authz, &upstream).await?;
    let urls: Vec<String> = gateways.iter().map(|g| g.url.clone()).collect();
    let token = authz.token("demo-client", "demo-secret").await?;

    let mut holder =
        sqlx::SqliteConnection::connect(&format!("sqlite://{}", authz.database().display()))
            .await?;
    sqlx::query("BEGIN EXCLUSIVE").execute(&mut holder).await?;
    eventually(
        Duration::from_secs(10),
        "the server to see the file locked",
        || async {
            let (status, body) = authz_readyz(&authz).await;
            (status == 503 && body.contains("database_unreachable")).then_some(())
        },
    )
    .await?;
    let (status, retry_after, _, took) = revoke(&authz, &token).await?;
    assert_eq!(status, 503);
    assert_eq!(retry_after.as_deref(), Some("1"));
    assert!(took < Duration::from_secs(1), "the refusal took {took:?}");
    stay_ready(&gateways, BOUND * 2).await;

    sqlx::query("ROLLBACK").execute(&mut holder).await?;
    eventually(
        Duration::from_secs(10),
        "a revocation to be taken again",
        || async {
            let (status, ..) = revoke(&authz, &token).await.ok()?;
            (status == 200).then_some(())
        },
    )
    .await?;
    all_refused(&urls, std::slice::from_ref(&token), WAIT).await?;
    Ok(())
}

/// While the database is out of reach, a replica vouches only for the stream it last saw in
/// the database. The stream deleted then (a NATS store lost, or a stolen authz certificate)
/// comes back empty, and the rules cannot be queued again without the database: the replica
/// must not tell a gateway that an empty stream is complete. A gateway started meanwhile never
/// turns ready and never serves the revoked token; once the database is back, the rules are
/// published again and both gateways enforce them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_replaced_while_the_database_is_out_of_reach() -> anyhow::Result<()> {
    let pg = PrivatePostgres::start()?;
    let nats = Nats::start()?;
    let dir = tempfile::tempdir()?;
    let authz = Authz::start_with(
        dir.path(),
        &[nats.url()],
        &replica_config(&pg.url(), dir.path(), None),
    )
    .await?;
    let upstream = Upstream::start().await?;
    let extra = format!("max_staleness_ms = {MAX_STALENESS_MS}");
    let gw = Gateway::start_with(
        "gateway-1",
        "gateway-1",
        &[nats.url()],
        &authz,
        &upstream,
        &extra,
    )
    .await?;
    gw.wait_ready().await?;
    let token = authz.token("demo-client", "demo-secret").await?;
    let (status, ..) = revoke(&authz, &token).await?;
    assert_eq!(status, 200);
    all_refused(
        std::slice::from_ref(&gw.url),
        std::slice::from_ref(&token),
        WAIT,
    )
    .await?;

    pg.stop()?;
    eventually(
        Duration::from_secs(10),
        "the database to be seen gone",
        || async {
            let (status, body) = authz_readyz(&authz).await;
            (status == 503 && body.contains("database_unreachable")).then_some(())
        },
    )
    .await?;
    let (client, _) = system_tests::connect_nats_as(&nats.url(), "authz").await?;
    revocation::stream::context(client)
        .delete_stream(revocation::stream::STREAM_NAME)
        .await?;
    let late = Gateway::start_with(
        "gateway-2",
        "gateway-2",
        &[nats.url()],
        &authz,
        &upstream,
        &extra,
    )
    .await?;
    let http = reqwest::Client::new();
    let until = Instant::now() + BOUND * 2;
    while Instant::now() < until {
        assert_ne!(
            late.call(&http, "/echo/", &token).await,
            200,
            "a gateway started on the empty stream served a revoked token"
        );
        assert_ne!(late.readyz().await, 200, "an empty stream was vouched for");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    pg.start_again()?;
    late.wait_ready().await?;
    all_refused(&[gw.url.clone(), late.url.clone()], &[token], WAIT).await?;
    Ok(())
}
