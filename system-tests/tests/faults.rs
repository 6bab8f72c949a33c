//! The guarantee under single faults. Each test issues revocations before, during and after
//! the fault, probes the gateways with the revoked tokens the whole time, and asserts that no
//! request with a token revoked more than `max_staleness` earlier got a 2xx, and that every
//! revocation is enforced at the end.

use std::time::{Duration, Instant};

use system_tests::{all_refused, eventually, Authz, Gateway, Nats, Probe, TcpProxy, Upstream};

const MAX_STALENESS_MS: u64 = 1500;
const BOUND: Duration = Duration::from_millis(MAX_STALENESS_MS);
const AUTHZ_EXTRA: &str = "heartbeat_interval_ms = 200\npublish_wait_ms = 1000";
const WAIT: Duration = Duration::from_secs(30);

fn gateway_extra() -> String {
    format!("max_staleness_ms = {MAX_STALENESS_MS}")
}

/// A gateway as identity `id` with this file's staleness bound; not yet ready.
async fn bounded_gateway(
    id: &str,
    nats_urls: &[String],
    authz: &Authz,
    upstream: &Upstream,
) -> anyhow::Result<Gateway> {
    Gateway::start_with(id, id, nats_urls, authz, upstream, &gateway_extra()).await
}

/// Issues a token, watches it, and returns its probe index.
async fn watched(authz: &Authz, probe: &Probe) -> anyhow::Result<(String, usize)> {
    let token = authz.token("demo-client", "demo-secret").await?;
    let index = probe.watch(&token);
    Ok((token, index))
}

/// Revokes through RFC 7009 and tells the probe when the API acknowledged it.
async fn revoke(authz: &Authz, probe: &Probe, token: &str, index: usize) -> anyhow::Result<()> {
    assert_eq!(
        authz.revoke("demo-client", "demo-secret", token).await?,
        200
    );
    probe.revoked(index);
    Ok(())
}

/// Revokes while NATS is out of the authz-server's reach: committed, and refused (503)
/// because it is not published; the probe is not told.
async fn revoke_unpublished(authz: &Authz, token: &str) -> anyhow::Result<()> {
    assert_eq!(
        authz.revoke("demo-client", "demo-secret", token).await?,
        503,
        "acknowledged without being published"
    );
    Ok(())
}

/// Asks again for a revocation committed earlier until it is acknowledged (200: published);
/// tells the probe then.
async fn revoke_until_acknowledged(
    authz: &Authz,
    probe: &Probe,
    token: &str,
    index: usize,
) -> anyhow::Result<()> {
    eventually(
        WAIT,
        "the committed revocation to be acknowledged",
        || async {
            let status = authz
                .revoke("demo-client", "demo-secret", token)
                .await
                .ok()?;
            (status == 200).then_some(())
        },
    )
    .await?;
    probe.revoked(index);
    Ok(())
}

async fn wait_status(gw: &Gateway, wanted: u16, what: &str) -> anyhow::Result<Duration> {
    let started = Instant::now();
    eventually(WAIT, what, || async {
        (gw.readyz().await == wanted).then_some(())
    })
    .await?;
    Ok(started.elapsed())
}

fn check(report: &system_tests::ProbeReport, name: &str) {
    println!(
        "{name}: {} probe requests, statuses {:?}",
        report.requests, report.by_status
    );
    assert!(report.requests > 0, "{name}: the probe sent nothing");
    assert!(
        report.violations.is_empty(),
        "{name}: revoked tokens served past max_staleness: {:?}",
        report.violations
    );
}

/// NATS killed with SIGKILL and restarted on the same store.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nats_killed_and_restarted() -> anyhow::Result<()> {
    let mut nats = Nats::start()?;
    let dir = tempfile::tempdir()?;
    let authz = Authz::start_with(dir.path(), &[nats.url()], AUTHZ_EXTRA).await?;
    let upstream = Upstream::start().await?;
    let mut gws = Vec::new();
    for id in ["gateway-1", "gateway-2"] {
        let gw = bounded_gateway(id, &[nats.url()], &authz, &upstream).await?;
        gw.wait_ready().await?;
        gws.push(gw);
    }
    let urls: Vec<String> = gws.iter().map(|g| g.url.clone()).collect();
    let probe = Probe::start(urls.clone(), "/echo/", BOUND);
    let (before, i_before) = watched(&authz, &probe).await?;
    let (during, i_during) = watched(&authz, &probe).await?;
    let (after, i_after) = watched(&authz, &probe).await?;
    revoke(&authz, &probe, &before, i_before).await?;

    nats.kill();
    revoke_unpublished(&authz, &during).await?;
    for gw in &gws {
        let took = wait_status(gw, 503, "the gateway to report itself stale").await?;
        println!("gateway stale {took:?} after NATS died");
    }
    nats.restart()?;
    for gw in &gws {
        wait_status(gw, 200, "the gateway to be fresh again").await?;
    }
    revoke_until_acknowledged(&authz, &probe, &during, i_during).await?;
    revoke(&authz, &probe, &after, i_after).await?;
    all_refused(&urls, &[before, during, after], WAIT).await?;
    check(&probe.finish().await, "nats_killed_and_restarted");
    Ok(())
}

/// One node of a three-node cluster killed: revocations keep flowing; the node comes back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster_node_killed() -> anyhow::Result<()> {
    let mut nodes = Nats::start_cluster()?;
    let urls: Vec<String> = nodes.iter().map(Nats::url).collect();
    let dir = tempfile::tempdir()?;
    let authz = Authz::start_with(
        dir.path(),
        &urls,
        // Long enough to ride out the stream leader's failover (3-4 s).
        "heartbeat_interval_ms = 200\nstream_replicas = 3\npublish_wait_ms = 10000",
    )
    .await?;
    let upstream = Upstream::start().await?;
    let mut gws = Vec::new();
    for id in ["gateway-1", "gateway-2", "gateway-3"] {
        let gw = bounded_gateway(id, &urls, &authz, &upstream).await?;
        gw.wait_ready().await?;
        gws.push(gw);
    }
    let gw_urls: Vec<String> = gws.iter().map(|g| g.url.clone()).collect();
    let probe = Probe::start(gw_urls.clone(), "/echo/", BOUND);
    let (before, i_before) = watched(&authz, &probe).await?;
    let (during, i_during) = watched(&authz, &probe).await?;
    let (after, i_after) = watched(&authz, &probe).await?;
    revoke(&authz, &probe, &before, i_before).await?;
    all_refused(&gw_urls, std::slice::from_ref(&before), WAIT).await?;

    nodes[0].kill();
    revoke(&authz, &probe, &during, i_during).await?;
    // With two of three replicas the stream keeps its quorum: the revocation goes through
    // while the node is down.
    let started = Instant::now();
    all_refused(&gw_urls, std::slice::from_ref(&during), WAIT).await?;
    println!(
        "revocation enforced {:?} after the API's 200 with a node down",
        started.elapsed()
    );
    nodes[0].restart()?;
    revoke(&authz, &probe, &after, i_after).await?;
    all_refused(&gw_urls, &[before, during, after], WAIT).await?;
    for gw in &gws {
        wait_status(gw, 200, "every gateway fresh").await?;
    }
    check(&probe.finish().await, "cluster_node_killed");
    Ok(())
}

/// A gateway process killed with SIGKILL and restarted: from its first request on it never
/// lets a revoked token through, and it does not serve before it has replayed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gateway_killed_and_restarted() -> anyhow::Result<()> {
    let nats = Nats::start()?;
    let dir = tempfile::tempdir()?;
    let authz = Authz::start_with(dir.path(), &[nats.url()], AUTHZ_EXTRA).await?;
    let upstream = Upstream::start().await?;
    let mut gw = Gateway::spawn_process(
        dir.path(),
        "gateway-1",
        &[nats.url()],
        &authz,
        &upstream,
        &gateway_extra(),
    )
    .await?;
    gw.wait_ready().await?;
    let probe = Probe::start(vec![gw.url.clone()], "/echo/", BOUND);
    let (before, i_before) = watched(&authz, &probe).await?;
    let (during, i_during) = watched(&authz, &probe).await?;
    let (after, i_after) = watched(&authz, &probe).await?;
    let control = authz.token("demo-client", "demo-secret").await?;
    revoke(&authz, &probe, &before, i_before).await?;
    all_refused(
        std::slice::from_ref(&gw.url),
        std::slice::from_ref(&before),
        WAIT,
    )
    .await?;

    gw.kill();
    revoke(&authz, &probe, &during, i_during).await?;
    let old_url = gw.url.clone();
    let gw = Gateway::spawn_process(
        dir.path(),
        "gateway-1",
        &[nats.url()],
        &authz,
        &upstream,
        &gateway_extra(),
    )
    .await?;
    // Straight from the start: the revoked tokens never get a 2xx, whatever the timing.
    let http = reqwest::Client::new();
    let mut first_ok = None;
    let started = Instant::now();
    while started.elapsed() < WAIT {
        for token in [&before, &during] {
            let status = gw.call(&http, "/echo/", token).await;
            assert!(
                !(200..300).contains(&status),
                "the restarted gateway served a revoked token"
            );
        }
        if gw.call(&http, "/echo/", &control).await == 200 {
            first_ok = Some(started.elapsed());
            break;
        }
    }
    let first_ok = first_ok.ok_or_else(|| anyhow::anyhow!("the restarted gateway never served"))?;
    println!("restarted gateway served its first valid request after {first_ok:?}");
    assert_eq!(gw.readyz().await, 200);
    probe.replace_gateway(&old_url, &gw.url);
    revoke(&authz, &probe, &after, i_after).await?;
    all_refused(
        std::slice::from_ref(&gw.url),
        &[before, during, after],
        WAIT,
    )
    .await?;
    check(&probe.finish().await, "gateway_killed_and_restarted");
    Ok(())
}

/// The authz-server killed (SIGKILL) after committing a revocation it could not publish;
/// restarted, it publishes it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn authz_killed_between_commit_and_publish() -> anyhow::Result<()> {
    let nats = Nats::start()?;
    let to_nats = TcpProxy::start(nats.port).await?;
    let dir = tempfile::tempdir()?;
    let port = system_tests::free_ports(1)?[0];
    let mut authz = Authz::spawn_process(dir.path(), port, &[to_nats.url()], AUTHZ_EXTRA).await?;
    let upstream = Upstream::start().await?;
    let gw = bounded_gateway("gateway-1", &[nats.url()], &authz, &upstream).await?;
    gw.wait_ready().await?;
    let urls = vec![gw.url.clone()];
    let probe = Probe::start(urls.clone(), "/echo/", BOUND);
    let (before, i_before) = watched(&authz, &probe).await?;
    let (during, i_during) = watched(&authz, &probe).await?;
    let (after, i_after) = watched(&authz, &probe).await?;
    revoke(&authz, &probe, &before, i_before).await?;
    all_refused(&urls, std::slice::from_ref(&before), WAIT).await?;
    // The gateway can refuse `before` while its ack is still on the way back to the
    // authz-server; cut before it lands and `before` stays in the outbox too.
    authz.wait_outbox_drained(WAIT).await?;

    // Commit without publish: the authz-server's NATS connection is cut.
    to_nats.cut();
    revoke_unpublished(&authz, &during).await?;
    let backlog = authz.metrics().await;
    assert!(
        backlog.contains("authz_outbox_backlog 1"),
        "the revocation should wait in the outbox"
    );
    wait_status(&gw, 503, "the gateway to go stale without heartbeats").await?;
    authz.kill_and_restart().await?;
    to_nats.heal();
    all_refused(&urls, std::slice::from_ref(&during), WAIT).await?;
    revoke_until_acknowledged(&authz, &probe, &during, i_during).await?;
    wait_status(&gw, 200, "the gateway fresh again").await?;
    revoke(&authz, &probe, &after, i_after).await?;
    all_refused(&urls, &[before, during, after], WAIT).await?;
    check(
        &probe.finish().await,
        "authz_killed_between_commit_and_publish",
    );
    Ok(())
}

/// A gateway cut off from NATS without a clean close becomes stale within max_staleness
/// plus detection time and rejects (or, under on_stale = "serve", keeps serving and says
/// so); both recover when the cut heals.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gateway_partitioned_from_nats() -> anyhow::Result<()> {
    let nats = Nats::start()?;
    let to_nats = TcpProxy::start(nats.port).await?;
    let dir = tempfile::tempdir()?;
    let authz = Authz::start_with(dir.path(), &[nats.url()], AUTHZ_EXTRA).await?;
    let upstream = Upstream::start().await?;
    let cut_off = bounded_gateway("gateway-1", &[to_nats.url()], &authz, &upstream).await?;
    let serving = Gateway::start_with(
        "gateway-2",
        "gateway-2",
        &[to_nats.url()],
        &authz,
        &upstream,
        &format!("{}\non_stale = \"serve\"", gateway_extra()),
    )
    .await?;
    let healthy = bounded_gateway("gateway-3", &[nats.url()], &authz, &upstream).await?;
    for gw in [&cut_off, &serving, &healthy] {
        gw.wait_ready().await?;
    }
    // The fail-closed gateways are probed; the fail-open one is checked on its own below.
    let urls = vec![cut_off.url.clone(), healthy.url.clone()];
    let probe = Probe::start(urls.clone(), "/echo/", BOUND);
    let (before, i_before) = watched(&authz, &probe).await?;
    let (during, i_during) = watched(&authz, &probe).await?;
    let (after, i_after) = watched(&authz, &probe).await?;
    let control = authz.token("demo-client", "demo-secret").await?;
    revoke(&authz, &probe, &before, i_before).await?;
    all_refused(&urls, std::slice::from_ref(&before), WAIT).await?;

    to_nats.cut();
    let cut_at = Instant::now();
    revoke(&authz, &probe, &during, i_during).await?;
    wait_status(&cut_off, 503, "the cut-off gateway to report itself stale").await?;
    let detected = cut_at.elapsed();
    println!("cut-off gateway stale {detected:?} after the cut (max_staleness {BOUND:?})");
    assert!(
        detected < BOUND + Duration::from_secs(2),
        "staleness detected too late: {detected:?}"
    );
    let http = reqwest::Client::new();
    let r = http
        .get(format!("{}/echo/", cut_off.url))
        .bearer_auth(&control)
        .send()
        .await?;
    assert_eq!(r.status(), 503, "reject policy");
    assert_eq!(r.headers()["retry-after"], "1");
    assert_eq!(
        cut_off.call(&http, "/public/", "").await,
        200,
        "public routes keep working"
    );
    wait_status(
        &serving,
        503,
        "the fail-open gateway to report itself stale",
    )
    .await?;
    assert_eq!(
        serving.call(&http, "/echo/", &control).await,
        200,
        "serve policy keeps serving"
    );
    assert_eq!(serving.metric("gateway_stale").await, 1.0);
    assert!(serving.metric("gateway_stale_served_total").await >= 1.0);

    to_nats.heal();
    for gw in [&cut_off, &serving] {
        wait_status(gw, 200, "the gateway fresh after the cut healed").await?;
    }
    revoke(&authz, &probe, &after, i_after).await?;
    let all = vec![
        cut_off.url.clone(),
        serving.url.clone(),
        healthy.url.clone(),
    ];
    all_refused(&all, &[before, during, after], WAIT).await?;
    assert_eq!(cut_off.call(&http, "/echo/", &control).await, 200);
    check(&probe.finish().await, "gateway_partitioned_from_nats");
    Ok(())
}

/// The stream loses its tail and keeps its identity (a NATS store restored from a backup
/// taken a few revocations earlier, as a crash before fsync would): the authz-server notices
/// that the stream no longer holds what was acknowledged and publishes every rule in force
/// again; the running gateway notices that the sequences it applied now hold other events
/// and replays the stream, keeping what it holds; revocations made before the backup (2),
/// after it (3, lost by the stream) and while the restored server was down (4, at the reused
/// sequences and past them) are all enforced by the running gateway and by one started
/// afterwards.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stream_tail_lost() -> anyhow::Result<()> {
    let mut nats = Nats::start()?;
    let dir = tempfile::tempdir()?;
    let authz = Authz::start_with(dir.path(), &[nats.url()], AUTHZ_EXTRA).await?;
    let upstream = Upstream::start().await?;
    let gw = bounded_gateway("gateway-1", &[nats.url()], &authz, &upstream).await?;
    gw.wait_ready().await?;
    let probe = Probe::start(vec![gw.url.clone()], "/echo/", BOUND);
    let mut tokens = Vec::new();
    for _ in 0..9 {
        tokens.push(watched(&authz, &probe).await?);
    }
    let (before, rest) = tokens.split_at(2);
    let (lost, after) = rest.split_at(3);
    for (token, i) in before {
        revoke(&authz, &probe, token, *i).await?;
    }
    let before: Vec<String> = before.iter().map(|(t, _)| t.clone()).collect();
    all_refused(std::slice::from_ref(&gw.url), &before, WAIT).await?;
    let backup = tempfile::tempdir()?;
    let backup = backup.path().join("store");
    nats.back_up_store(&backup)?;
    wait_status(&gw, 200, "the gateway fresh after the backup").await?;
    for (token, i) in lost {
        revoke(&authz, &probe, token, *i).await?;
    }
    let lost: Vec<String> = lost.iter().map(|(t, _)| t.clone()).collect();
    all_refused(std::slice::from_ref(&gw.url), &lost, WAIT).await?;

    // Revocations made while the restored server is down are committed and queued; there
    // are more of them than the stream lost, so once it is back they land at the lost
    // sequences and past them, and a relay that only compared its last message would find
    // it there.
    nats.restore_store(&backup)?;
    for (token, _) in after {
        revoke_unpublished(&authz, token).await?;
    }
    nats.restart()?;
    for (token, i) in after {
        revoke_until_acknowledged(&authz, &probe, token, *i).await?;
    }
    let after: Vec<String> = after.iter().map(|(t, _)| t.clone()).collect();
    let every: Vec<String> = [before, lost, after].concat();
    if let Err(e) = all_refused(std::slice::from_ref(&gw.url), &every, WAIT).await {
        let http = reqwest::Client::new();
        for (i, token) in every.iter().enumerate() {
            eprintln!("token {i}: {}", gw.call(&http, "/echo/", token).await);
        }
        let body = reqwest::get(format!("{}/readyz", gw.admin_url))
            .await?
            .text()
            .await?;
        eprintln!("readyz: {body}");
        eprintln!(
            "metrics: {}",
            gw.metrics()
                .await
                .lines()
                .filter(|l| l.contains("rollback")
                    || l.contains("last_sequence")
                    || l.contains("rules"))
                .collect::<Vec<_>>()
                .join("\n")
        );
        return Err(e);
    }
    wait_status(&gw, 200, "the running gateway fresh again").await?;
    let late = bounded_gateway("gateway-2", &[nats.url()], &authz, &upstream).await?;
    late.wait_ready().await?;
    let http = reqwest::Client::new();
    for token in &every {
        assert_eq!(
            late.call(&http, "/echo/", token).await,
            401,
            "a revocation missing after the rollback"
        );
    }
    assert!(gw.metric("gateway_revocation_stream_rollbacks_total").await >= 1.0);
    check(&probe.finish().await, "stream_tail_lost");
    Ok(())
}

/// The stream's history lost (NATS store wiped) while the authz-server still holds the
/// revocations: it republishes what can still matter, running gateways follow the new
/// stream, and a gateway started afterwards enforces everything.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stream_history_lost() -> anyhow::Result<()> {
    let mut nats = Nats::start()?;
    let dir = tempfile::tempdir()?;
    let authz = Authz::start_with(dir.path(), &[nats.url()], AUTHZ_EXTRA).await?;
    let upstream = Upstream::start().await?;
    let gw = bounded_gateway("gateway-1", &[nats.url()], &authz, &upstream).await?;
    gw.wait_ready().await?;
    let probe = Probe::start(vec![gw.url.clone()], "/echo/", BOUND);
    let (a, i_a) = watched(&authz, &probe).await?;
    let (b, i_b) = watched(&authz, &probe).await?;
    let (c, i_c) = watched(&authz, &probe).await?;
    revoke(&authz, &probe, &a, i_a).await?;
    revoke(&authz, &probe, &b, i_b).await?;
    all_refused(std::slice::from_ref(&gw.url), &[a.clone(), b.clone()], WAIT).await?;

    nats.wipe_store()?;
    nats.restart()?;
    wait_status(&gw, 200, "the running gateway fresh on the new stream").await?;
    // A revocation after the loss reaches the running gateway: it follows the new stream.
    revoke(&authz, &probe, &c, i_c).await?;
    all_refused(
        std::slice::from_ref(&gw.url),
        std::slice::from_ref(&c),
        WAIT,
    )
    .await?;
    // A gateway that never saw the old stream learns the old revocations too.
    let late = bounded_gateway("gateway-2", &[nats.url()], &authz, &upstream).await?;
    late.wait_ready().await?;
    let http = reqwest::Client::new();
    for token in [&a, &b, &c] {
        assert_eq!(
            late.call(&http, "/echo/", token).await,
            401,
            "republished revocation missing"
        );
    }
    assert_eq!(late.metric("gateway_revocation_rules").await, 3.0);
    check(&probe.finish().await, "stream_history_lost");
    Ok(())
}
