//! Replay benchmark (issue 6): with N active revocation rules in the stream (default one
//! million), how long does a new gateway take to load them and report ready, and how much
//! memory does it hold? The same for a gateway on an empty stream, for comparison, and for
//! gateways that replay the whole stream instead of loading the authz-server's snapshot.
//!
//! NATS, the authz-server and every gateway are real processes (release builds); the rules go
//! into the authz-server's database and straight to JetStream as its identity
//! ([`system_tests::seed`]), and the authz-server snapshots them. Among them is the `jti` of
//! one real token: every gateway must refuse that token and accept another. A benchmark, not a
//! test: it prints figures and checks only that the runs were sane.
//!
//! Usage: replay-bench [--rules N] [--runs R] [--full-runs F]   (defaults 1000000, 3 and 1)

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};
use base64::Engine;
use revocation::{RevocationEvent, RevocationSet, Rule, TokenRef};
use system_tests::{Authz, Gateway, Nats, Upstream, GATEWAY_IDS};

/// Replays one million revocation rules into new gateways (BENCHMARKS.md).
#[derive(clap::Parser)]
#[command(name = "replay-bench")]
struct Args {
    /// Revocation rules published to the stream.
    #[arg(long, default_value_t = 1_000_000)]
    rules: usize,
    /// Gateways started on each stream (empty, then full).
    #[arg(long, default_value_t = 3)]
    runs: usize,
    /// Gateways started on the full stream with snapshots turned off (the whole stream
    /// replayed), for comparison.
    #[arg(long, default_value_t = 1)]
    full_runs: usize,
}

/// What one gateway start measured.
struct Run {
    /// From spawning the process to `/readyz` answering 200.
    ready: Duration,
    /// What the feed reported for the snapshot (manifest read to rules applied).
    snapshot: Option<Duration>,
    /// What the feed reported for the replay (consumer created to caught up).
    replay: Option<Duration>,
    replayed_messages: u64,
    /// CPU seconds from spawn to ready: the gateway's, and NATS's over the same time.
    gateway_cpu: f64,
    nats_cpu: f64,
    /// VmRSS after ready, and VmHWM (peak), in bytes.
    rss: u64,
    peak: u64,
    rules: f64,
}

#[tokio::main(flavor = "multi_thread")]
async fn main() -> Result<()> {
    let Args {
        rules,
        runs,
        full_runs,
    } = clap::Parser::parse();
    ensure!(runs > 0, "--runs must be at least 1");

    in_process_set(rules);

    let nats = Nats::start()?;
    let dir = tempfile::tempdir()?;
    let port = system_tests::free_ports(1)?[0];
    let authz = Authz::spawn_process(
        dir.path(),
        port,
        &[nats.url()],
        &system_tests::seed::snapshot_once_seeded(rules),
    )
    .await?;
    let upstream = Upstream::start().await?;
    let revoked = authz.token("demo-client", "demo-secret").await?;
    let kept = authz.token("demo-client", "demo-secret").await?;

    eprintln!("gateways on an empty stream...");
    let mut empty = Vec::new();
    for i in 0..runs {
        let (run, _) = start_gateway(dir.path(), i, &nats, &authz, &upstream, "").await?;
        empty.push(run);
    }

    eprintln!("seeding {rules} rules...");
    let jti = jti_of(&revoked)?;
    let half = rules / 2;
    let prefix = format!("bench-{}", std::process::id());
    let jtis = (0..rules).map(|i| {
        if i == half {
            jti.clone()
        } else {
            format!("{prefix}-{i}")
        }
    });
    let seeded = system_tests::seed::seed_revocations_of(&nats.url(), &authz, jtis).await?;
    ensure!(seeded.count == rules, "seeded {} of {rules}", seeded.count);
    eprintln!("waiting for the authz-server's snapshot...");
    let started = Instant::now();
    system_tests::seed::wait_for_snapshot(&authz, &seeded, Duration::from_secs(120)).await?;
    let snapshot_taken = started.elapsed();
    if let system_tests::Runner::Process(process) = &authz.runner {
        for line in process.output().lines().filter(|l| l.contains("snapshot")) {
            eprintln!("  authz log: {line}");
        }
    }
    let snapshot_rules = authz.metric("authz_snapshot_rules").await;

    eprintln!("gateways on {rules} rules...");
    let mut full = Vec::new();
    let mut replayed = Vec::new();
    let http = reqwest::Client::new();
    let configs = std::iter::repeat_n("", runs)
        .chain(std::iter::repeat_n("replay_snapshot_min = 0", full_runs));
    for (i, extra) in configs.enumerate() {
        let (run, gw) =
            start_gateway(dir.path(), runs + i, &nats, &authz, &upstream, extra).await?;
        ensure!(
            run.rules >= rules as f64,
            "the gateway holds {} rules, expected at least {rules}",
            run.rules
        );
        ensure!(
            gw.call(&http, "/echo/", &revoked).await == 401,
            "the gateway accepted a token revoked among the seeded rules"
        );
        ensure!(
            gw.call(&http, "/echo/", &kept).await == 200,
            "the gateway refused a token that was not revoked"
        );
        if extra.is_empty() {
            full.push(run);
        } else {
            replayed.push(run);
        }
    }

    println!();
    println!(
        "seeding: {} events in {:.2} s ({:.0}/s), stream sequences {}..{}",
        seeded.count,
        seeded.elapsed.as_secs_f64(),
        seeded.count as f64 / seeded.elapsed.as_secs_f64(),
        seeded.first_sequence,
        seeded.last_sequence
    );
    println!(
        "snapshot: {snapshot_rules} rules, published {:.2} s after the last seeded event was acknowledged (checked every second)",
        snapshot_taken.as_secs_f64()
    );
    print_runs("empty stream", &empty);
    print_runs(&format!("{rules} rules, from the snapshot"), &full);
    if !replayed.is_empty() {
        print_runs(
            &format!("{rules} rules, the whole stream replayed (replay_snapshot_min = 0)"),
            &replayed,
        );
    }
    Ok(())
}

/// Starts gateway number `n` (as one of the identities the NATS config knows), waits for it
/// to be ready and measures it. Returns it running, so the caller can send it requests.
async fn start_gateway(
    dir: &Path,
    n: usize,
    nats: &Nats,
    authz: &Authz,
    upstream: &Upstream,
    extra: &str,
) -> Result<(Run, Gateway)> {
    let id = GATEWAY_IDS[n % GATEWAY_IDS.len()];
    let run_dir = dir.join(format!("run-{n}"));
    std::fs::create_dir_all(&run_dir)?;
    let nats_cpu_before = nats.pid().map_or(0.0, bench::measure::cpu_seconds);
    let started = Instant::now();
    let mut gw =
        Gateway::spawn_process(&run_dir, id, &[nats.url()], authz, upstream, extra).await?;
    let deadline = started + Duration::from_secs(120);
    while gw.readyz().await != 200 {
        if Instant::now() > deadline {
            bail!("gateway {id} not ready after 120 s");
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let ready = started.elapsed();
    let pid = gw.process()?.pid().context("the gateway exited")?;
    let gateway_cpu = bench::measure::cpu_seconds(pid);
    let nats_cpu = nats.pid().map_or(0.0, bench::measure::cpu_seconds) - nats_cpu_before;
    let (rss, peak) = bench::measure::resident_memory(pid)?;
    let log = gw.process()?.output();
    // The feed's log lines: how long the snapshot and the replay took, and how many messages.
    let elapsed = |what| log_field(&log, what, "elapsed_ms").map(Duration::from_millis);
    let snapshot = elapsed("revocation snapshot loaded");
    let replay = elapsed("revocation stream replayed");
    let replayed_messages = log_field(&log, "revocation stream replayed", "messages").unwrap_or(0);
    if snapshot.is_none() && extra.is_empty() {
        for line in log.lines().filter(|l| l.contains("snapshot")) {
            eprintln!("  {id} log: {line}");
        }
    }
    let rules = gw.metric("gateway_revocation_rules ").await;
    let run = Run {
        ready,
        snapshot,
        replay,
        replayed_messages,
        gateway_cpu,
        nats_cpu,
        rss,
        peak,
        rules,
    };
    eprintln!(
        "  {id}: ready {:.3} s, snapshot {}, replay {}, cpu gateway {:.2} s nats {:.2} s, rss {:.1} MB, peak {:.1} MB, rules {}",
        run.ready.as_secs_f64(),
        run.snapshot
            .map(|d| format!("{:.3} s", d.as_secs_f64()))
            .unwrap_or_else(|| "-".into()),
        run.replay
            .map(|d| format!(
                "{:.3} s ({} messages)",
                d.as_secs_f64(),
                run.replayed_messages
            ))
            .unwrap_or_else(|| "-".into()),
        run.gateway_cpu,
        run.nats_cpu,
        mb(run.rss),
        mb(run.peak),
        run.rules
    );
    Ok((run, gw))
}

fn print_runs(what: &str, runs: &[Run]) {
    let median = |mut v: Vec<f64>| {
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    let max = |v: Vec<f64>| v.into_iter().fold(f64::MIN, f64::max);
    let ready: Vec<f64> = runs.iter().map(|r| r.ready.as_secs_f64()).collect();
    let replay: Vec<f64> = runs
        .iter()
        .filter_map(|r| r.replay.map(|d| d.as_secs_f64()))
        .collect();
    let rss: Vec<f64> = runs.iter().map(|r| mb(r.rss)).collect();
    let peak: Vec<f64> = runs.iter().map(|r| mb(r.peak)).collect();
    println!("{what} ({} runs, median / max):", runs.len());
    println!(
        "  ready   {:.3} s / {:.3} s",
        median(ready.clone()),
        max(ready)
    );
    let snapshot: Vec<f64> = runs
        .iter()
        .filter_map(|r| r.snapshot.map(|d| d.as_secs_f64()))
        .collect();
    if !snapshot.is_empty() {
        println!(
            "  snapshot {:.3} s / {:.3} s",
            median(snapshot.clone()),
            max(snapshot)
        );
    }
    if !replay.is_empty() {
        println!(
            "  replay  {:.3} s / {:.3} s",
            median(replay.clone()),
            max(replay)
        );
    }
    let gateway_cpu: Vec<f64> = runs.iter().map(|r| r.gateway_cpu).collect();
    let nats_cpu: Vec<f64> = runs.iter().map(|r| r.nats_cpu).collect();
    println!(
        "  cpu     gateway {:.2} s / {:.2} s, nats {:.2} s / {:.2} s (spawn to ready)",
        median(gateway_cpu.clone()),
        max(gateway_cpu),
        median(nats_cpu.clone()),
        max(nats_cpu)
    );
    println!(
        "  rss     {:.1} MB / {:.1} MB",
        median(rss.clone()),
        max(rss)
    );
    println!(
        "  peak    {:.1} MB / {:.1} MB",
        median(peak.clone()),
        max(peak)
    );
}

fn mb(bytes: u64) -> f64 {
    bytes as f64 / (1024.0 * 1024.0)
}

/// Field `name` (a number) of the first log line containing `what`.
fn log_field(log: &str, what: &str, name: &str) -> Option<u64> {
    let line = log.lines().find(|l| l.contains(what))?;
    line.split(&format!("{name}="))
        .nth(1)
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
}

/// The `jti` claim of a JWT (not verified: the token comes from our own authz-server).
fn jti_of(token: &str) -> Result<String> {
    let payload = token.split('.').nth(1).context("not a JWT")?;
    let claims: serde_json::Value =
        serde_json::from_slice(&base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(payload)?)?;
    claims["jti"]
        .as_str()
        .map(str::to_string)
        .context("no jti claim")
}

/// The set alone, in this process: memory per rule, insert rate and lookup cost with `rules`
/// rules against an empty set — the part of a request's cost that depends on the set's size.
fn in_process_set(rules: usize) {
    let iss = "http://127.0.0.1:12345";
    let now = revocation::unix_now();
    let jti = |i: usize| format!("0191d2f4-7c3a-7b5e-9a61-{i:012x}");
    let lookups = |set: &RevocationSet, hit: bool| {
        let count = 1_000_000usize;
        let names: Vec<String> = (0..1024)
            .map(|i| jti(if hit { i * 7 % rules.max(1) } else { rules + i }))
            .collect();
        let started = Instant::now();
        let mut revoked = 0usize;
        for i in 0..count {
            let token = TokenRef {
                iss,
                jti: &names[i % names.len()],
                sub: "alice",
                client_id: "demo-client",
                sid: "",
                iat: now,
            };
            revoked += usize::from(set.is_revoked(std::hint::black_box(&token)));
        }
        (started.elapsed().as_nanos() as f64 / count as f64, revoked)
    };
    let empty = RevocationSet::new(30);
    let (empty_ns, _) = lookups(&empty, false);
    let rss_before = bench::measure::resident_memory(std::process::id())
        .map(|m| m.0)
        .unwrap_or(0);
    let set = RevocationSet::new(30);
    let started = Instant::now();
    let mut event = RevocationEvent {
        v: 1,
        id: String::new(),
        rule: Rule::Token { jti: String::new() },
        iss: iss.into(),
        expires_at: now + 3600,
        revoked_at: now,
        reason: None,
    };
    for i in 0..rules {
        event.rule = Rule::Token { jti: jti(i) };
        set.insert(&event, now);
    }
    let insert = started.elapsed();
    let rss_after = bench::measure::resident_memory(std::process::id())
        .map(|m| m.0)
        .unwrap_or(0);
    let (hit_ns, hits) = lookups(&set, true);
    let (miss_ns, misses) = lookups(&set, false);
    println!(
        "in-process set: {rules} rules inserted in {:.3} s, +{:.1} MB RSS ({:.0} B/rule); \
         is_revoked: empty {empty_ns:.0} ns, full hit {hit_ns:.0} ns ({hits} revoked), \
         full miss {miss_ns:.0} ns ({misses} revoked)",
        insert.as_secs_f64(),
        mb(rss_after.saturating_sub(rss_before)),
        rss_after.saturating_sub(rss_before) as f64 / rules.max(1) as f64,
    );
}
