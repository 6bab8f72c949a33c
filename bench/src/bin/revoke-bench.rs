//! Throughput of the revoke API: issues N tokens to the demo client, then revokes them through
//! RFC 7009 (`POST /oauth2/revoke`, client_secret_basic) from C concurrent HTTP clients against
//! a release-build authz-server process on its default SQLite database, and prints the
//! revocations per second, the latency of the revoke call (p50, p99, max), and whether the
//! outbox relay got every revocation into the JetStream stream. A benchmark, not a test: it
//! checks only that the run was sane (every revoke answered 200, every event in the stream)
//! and prints figures.
//!
//! Then, unless `--flood-seconds 0`, the lock-out scenario: legitimate clients get tokens and
//! revoke them while an attacker floods wrong secrets for the same client ids, from one
//! address and then from 32; it prints the legitimate calls' latency (p50, p99) and status
//! counts in each phase, and how the attacker's requests were answered.
//!
//! Usage: revoke-bench [--tokens N] [--concurrency C] [--seconds S] [--flood-seconds F]
//!   --tokens N          tokens issued, then revoked (default 20000)
//!   --concurrency C     concurrent HTTP clients, for issuing and for revoking (default 64)
//!   --seconds S         stop revoking after S seconds even if tokens remain (default 120)
//!   --flood-seconds F   length of each phase of the lock-out scenario (default 10; 0: skip)

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use system_tests::{eventually, Authz, Nats, Pki};

/// Revoke API throughput on SQLite (BENCHMARKS.md).
#[derive(clap::Parser)]
#[command(name = "revoke-bench")]
struct Options {
    /// Tokens issued, then revoked.
    #[arg(long, default_value_t = 20_000, value_parser = clap::value_parser!(u64).range(1..))]
    tokens: u64,
    /// Concurrent HTTP clients, for issuing and for revoking.
    #[arg(long, default_value_t = 64, value_parser = clap::value_parser!(u64).range(1..))]
    concurrency: u64,
    /// Stop revoking after this many seconds even if tokens remain.
    #[arg(long, default_value_t = 120, value_parser = clap::value_parser!(u64).range(1..))]
    seconds: u64,
    /// Length of each phase of the lock-out scenario (0: skip it).
    #[arg(long, default_value_t = 10)]
    flood_seconds: u64,
}

#[tokio::main(flavor = "multi_thread")]
async fn main() -> Result<()> {
    let Options {
        tokens,
        concurrency,
        seconds,
        flood_seconds,
    } = clap::Parser::parse();
    let (count, concurrency) = (tokens as usize, concurrency as usize);
    // rustls needs a process-wide provider for the stream check's NATS connection.
    authz_server::install_crypto();
    let nats = Nats::start()?;
    let dir = tempfile::tempdir()?;
    let port = system_tests::free_ports(1)?[0];
    let authz = Authz::spawn_process(dir.path(), port, &[nats.url()], "").await?;
    let http = reqwest::Client::builder()
        .pool_max_idle_per_host(concurrency)
        .timeout(Duration::from_secs(30))
        .build()?;

    eprintln!("issuing {count} tokens with {concurrency} clients...");
    let started = Instant::now();
    let tokens = Arc::new(issue(&http, &authz.url, count, concurrency).await?);
    eprintln!(
        "issued in {:.1} s ({:.0}/s)",
        started.elapsed().as_secs_f64(),
        count as f64 / started.elapsed().as_secs_f64()
    );

    eprintln!("revoking them with {concurrency} clients (at most {seconds} s)...");
    let next = Arc::new(AtomicUsize::new(0));
    let deadline = Instant::now() + Duration::from_secs(seconds);
    let started = Instant::now();
    let workers: Vec<_> = (0..concurrency)
        .map(|_| {
            let (http, tokens, next) = (http.clone(), tokens.clone(), next.clone());
            let url = format!("{}/oauth2/revoke", authz.url);
            tokio::spawn(async move {
                let mut latencies = Vec::new();
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    if i >= tokens.len() || Instant::now() > deadline {
                        return Ok::<_, anyhow::Error>(latencies);
                    }
                    let sent = Instant::now();
                    let response = http
                        .post(&url)
                        .basic_auth("demo-client", Some("demo-secret"))
                        .form(&[
                            ("token", tokens[i].as_str()),
                            ("token_type_hint", "access_token"),
                        ])
                        .send()
                        .await?;
                    let status = response.status();
                    response.bytes().await?;
                    latencies.push(sent.elapsed());
                    anyhow::ensure!(status == 200, "revoke answered {status}");
                }
            })
        })
        .collect();
    let mut latencies = Vec::with_capacity(count);
    for worker in workers {
        latencies.extend(worker.await??);
    }
    let elapsed = started.elapsed();
    let revoked = latencies.len();
    let acknowledged = Instant::now();

    // The relay's backlog as the server sees it, then the stream itself.
    let metrics_url = format!("{}/metrics", authz.admin_url);
    let backlog_at_end = metric(&http, &metrics_url, "authz_outbox_backlog").await;
    eventually(Duration::from_secs(60), "the outbox to drain", || async {
        (metric(&http, &metrics_url, "authz_outbox_backlog").await == Some(0.0)).then_some(())
    })
    .await?;
    let drained = acknowledged.elapsed();
    let stream = stream_state(&nats).await?;

    let profile = if cfg!(debug_assertions) {
        "debug"
    } else {
        "release"
    };
    println!(
        "revoke API (RFC 7009, client_secret_basic): {revoked} revocations, {concurrency} clients, \
         SQLite (WAL, synchronous=FULL), {profile} build, loopback"
    );
    println!(
        "throughput   {:>10.0} revocations/s ({revoked} in {:.2} s)",
        revoked as f64 / elapsed.as_secs_f64(),
        elapsed.as_secs_f64()
    );
    latencies.sort();
    let at = |q: f64| bench::measure::quantile(&latencies, q);
    let ms = |d: Duration| format!("{:.2} ms", d.as_secs_f64() * 1000.0);
    println!(
        "latency      p50 {}   p99 {}   max {}",
        ms(at(0.5)),
        ms(at(0.99)),
        ms(at(1.0))
    );
    println!(
        "outbox       backlog {} at the last 200, 0 after {}",
        backlog_at_end.map_or("?".into(), |b| format!("{b:.0}")),
        ms(drained)
    );
    println!(
        "stream       last sequence {}, {} messages (expected {revoked})",
        stream.last_sequence, stream.messages
    );
    anyhow::ensure!(
        stream.messages as usize == revoked,
        "the stream holds {} messages, {revoked} revocations were acknowledged",
        stream.messages
    );
    if flood_seconds > 0 {
        lockout_scenario(&authz, Duration::from_secs(flood_seconds)).await?;
    }
    Ok(())
}

/// The attacker's addresses in each phase of the lock-out scenario.
const PHASES: [(&str, u8); 3] = [("no attack", 0), ("one address", 1), ("32 addresses", 32)];

/// Legitimate token and revoke calls while wrong secrets flood in (BENCHMARKS.md): the
/// legitimate clients call from 127.0.0.1, the attacker from 127.0.0.2 onwards.
async fn lockout_scenario(authz: &Authz, phase: Duration) -> Result<()> {
    println!(
        "\nlock-out: 4 legitimate clients (token, then RFC 7009 revoke) from 127.0.0.1 while 32 \
         attacker connections send wrong secrets for the same ids; {} s a phase",
        phase.as_secs()
    );
    println!(
        "{:<14} {:>22} {:>22} {:>10} {:>28}",
        "attacker", "token p50 / p99", "revoke p50 / p99", "legit ok", "attacker 401 / 429 / 503"
    );
    for (name, addresses) in PHASES {
        let stop = Instant::now() + phase;
        let attack = (0..32u8).map(|i| {
            let url = format!("{}/oauth2/token", authz.url);
            let octet = if addresses == 0 { 0 } else { 2 + i % addresses };
            async move {
                let mut answers = [0usize; 3];
                if octet == 0 {
                    return Ok::<_, anyhow::Error>(answers);
                }
                let http = reqwest::Client::builder()
                    .local_address(std::net::IpAddr::V4(std::net::Ipv4Addr::new(
                        127, 0, 0, octet,
                    )))
                    .build()?;
                let mut n = 0u64;
                while Instant::now() < stop {
                    n += 1;
                    let id = if n.is_multiple_of(2) {
                        "demo-client"
                    } else {
                        "admin"
                    };
                    let response = http
                        .post(&url)
                        .basic_auth(id, Some(format!("guess-{n}")))
                        .form(&[("grant_type", "client_credentials")])
                        .send()
                        .await?;
                    match response.status().as_u16() {
                        401 => answers[0] += 1,
                        429 => answers[1] += 1,
                        503 => answers[2] += 1,
                        other => anyhow::bail!("the attacker got {other}"),
                    }
                }
                Ok(answers)
            }
        });
        let legit = (0..4).map(|_| {
            let (token_url, revoke_url) = (
                format!("{}/oauth2/token", authz.url),
                format!("{}/oauth2/revoke", authz.url),
            );
            async move {
                let http = reqwest::Client::new();
                let (mut token_times, mut revoke_times, mut failed) = (Vec::new(), Vec::new(), 0);
                while Instant::now() < stop {
                    let sent = Instant::now();
                    let response = http
                        .post(&token_url)
                        .basic_auth("demo-client", Some("demo-secret"))
                        .form(&[("grant_type", "client_credentials")])
                        .send()
                        .await?;
                    if !response.status().is_success() {
                        failed += 1;
                        continue;
                    }
                    let body: serde_json::Value = response.json().await?;
                    token_times.push(sent.elapsed());
                    let token = body["access_token"]
                        .as_str()
                        .unwrap_or_default()
                        .to_string();
                    let sent = Instant::now();
                    let response = http
                        .post(&revoke_url)
                        .basic_auth("demo-client", Some("demo-secret"))
                        .form(&[("token", token.as_str())])
                        .send()
                        .await?;
                    if response.status().is_success() {
                        revoke_times.push(sent.elapsed());
                    } else {
                        failed += 1;
                    }
                }
                Ok::<_, anyhow::Error>((token_times, revoke_times, failed))
            }
        });
        let (attack, legit) = tokio::join!(
            futures::future::join_all(attack),
            futures::future::join_all(legit)
        );
        let mut answers = [0usize; 3];
        for a in attack {
            for (total, n) in answers.iter_mut().zip(a?) {
                *total += n;
            }
        }
        let (mut tokens, mut revokes, mut failed) = (Vec::new(), Vec::new(), 0);
        for l in legit {
            let (t, r, f) = l?;
            tokens.extend(t);
            revokes.extend(r);
            failed += f;
        }
        tokens.sort();
        revokes.sort();
        let ms = |d: Duration| d.as_secs_f64() * 1000.0;
        let pair = |v: &[Duration]| {
            format!(
                "{:.2} / {:.2} ms",
                ms(bench::measure::quantile(v, 0.5)),
                ms(bench::measure::quantile(v, 0.99))
            )
        };
        println!(
            "{name:<14} {:>22} {:>22} {:>10} {:>28}",
            pair(&tokens),
            pair(&revokes),
            format!(
                "{}/{}",
                tokens.len() + revokes.len(),
                tokens.len() + revokes.len() + failed
            ),
            format!("{} / {} / {}", answers[0], answers[1], answers[2])
        );
    }
    Ok(())
}

/// `count` tokens for the demo client, fetched by `concurrency` clients.
async fn issue(
    http: &reqwest::Client,
    base: &str,
    count: usize,
    concurrency: usize,
) -> Result<Vec<String>> {
    // One authentication first: until a secret has been verified once, concurrent attempts
    // from one address are each taken from its failure budget (issue 13's lock-out rule),
    // so a cold burst of 64 is mostly answered 429. Verified once, the secret is cached.
    let warm = http
        .post(format!("{base}/oauth2/token"))
        .basic_auth("demo-client", Some("demo-secret"))
        .form(&[("grant_type", "client_credentials")])
        .send()
        .await?;
    anyhow::ensure!(
        warm.status().is_success(),
        "token endpoint answered {}",
        warm.status()
    );
    let next = Arc::new(AtomicUsize::new(0));
    let workers: Vec<_> = (0..concurrency)
        .map(|_| {
            let (http, next) = (http.clone(), next.clone());
            let url = format!("{base}/oauth2/token");
            tokio::spawn(async move {
                let mut tokens = Vec::new();
                while next.fetch_add(1, Ordering::Relaxed) < count {
                    let response = http
                        .post(&url)
                        .basic_auth("demo-client", Some("demo-secret"))
                        .form(&[("grant_type", "client_credentials")])
                        .send()
                        .await?;
                    anyhow::ensure!(
                        response.status().is_success(),
                        "token endpoint answered {}",
                        response.status()
                    );
                    let body: serde_json::Value = response.json().await?;
                    tokens.push(
                        body["access_token"]
                            .as_str()
                            .context("no access_token")?
                            .to_string(),
                    );
                }
                Ok::<_, anyhow::Error>(tokens)
            })
        })
        .collect();
    let mut tokens = Vec::with_capacity(count);
    for worker in workers {
        tokens.extend(worker.await??);
    }
    Ok(tokens)
}

/// One value of the server's `/metrics`, if present.
async fn metric(http: &reqwest::Client, url: &str, name: &str) -> Option<f64> {
    let text = http.get(url).send().await.ok()?.text().await.ok()?;
    text.lines().find_map(|line| {
        let (series, value) = line.split_once(' ')?;
        (series == name).then(|| value.trim().parse().ok())?
    })
}

/// The revocation stream's state, read as the authz identity.
async fn stream_state(nats: &Nats) -> Result<async_nats::jetstream::stream::State> {
    let pki = Pki::get();
    let client = async_nats::ConnectOptions::new()
        .require_tls(true)
        .add_root_certificates(pki.certs.join("ca.pem"))
        .add_client_certificate(pki.certs.join("authz.pem"), pki.certs.join("authz-key.pem"))
        .custom_inbox_prefix("_INBOX_authz")
        .connect(nats.url())
        .await?;
    let js = revocation::stream::context(client);
    let mut stream = js.get_stream(revocation::stream::STREAM_NAME).await?;
    Ok(stream.info().await?.state.clone())
}
