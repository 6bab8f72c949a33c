//! `make bench-revocation`: revokes tokens one after another while three gateways (release
//! builds, separate processes) serve them, and prints the delay from the revoke API's 200 to
//! the first 401 at every gateway, the revoke API's own latency, and from the request to the
//! first 401: p50, p99 and max. Then the same for another issuer's tokens revoked by its
//! signals: back-channel logout tokens (one session each) and SETs pushed under RFC 8935 (one
//! account each). Last, the admin API's revocations under a steady load of half the
//! gateways' capacity, with each receipt's completion and each gateway's own apply-delay
//! histogram over that run. It draws every run's delays as one cumulative-distribution chart
//! (`docs/bench/revocation-cdf.svg`). A benchmark, not a test: it prints figures, and only checks
//! that its run was sane (the warm-up served, every revoke answered 200, every revoked token
//! refused within 10 s).
//!
//! Usage: revocation-bench [--tokens N]   (default 1000)

use std::time::{Duration, Instant};

use anyhow::{bail, Result};
use jsonwebtoken::{Algorithm, Header};
use serde_json::json;
use system_tests::{Authz, Gateway, Nats, TestIssuer, Upstream};

/// Revocation propagation to three gateways (BENCHMARKS.md).
#[derive(clap::Parser)]
#[command(name = "revocation-bench")]
struct Args {
    /// Tokens issued, then revoked one at a time.
    #[arg(long, default_value_t = 1000)]
    tokens: usize,
}

#[tokio::main(flavor = "multi_thread")]
async fn main() -> Result<()> {
    let Args { tokens: count } = clap::Parser::parse();
    let nats = Nats::start()?;
    let dir = tempfile::tempdir()?;
    // A second issuer, whose logout tokens and SETs the hub receives.
    let idp = TestIssuer::start("idp-1").await?;
    let port = system_tests::free_ports(1)?[0];
    let hub_config = format!(
        "[[issuers]]\nissuer = \"{}\"\njwks_url = \"{}/jwks\"\nalgorithms = [\"RS256\"]\nbackchannel_logout_client_ids = [\"{CLIENT}\"]\nssf_audience = \"{SSF_AUDIENCE}\"\n",
        idp.url, idp.url
    );
    let authz = Authz::spawn_process(dir.path(), port, &[nats.url()], &hub_config).await?;
    let upstream = Upstream::start().await?;
    let gateway_config = format!(
        "[hub]\njwks_url = \"{a}/.well-known/jwks.json\"\n\n[[issuers]]\nissuer = \"{a}\"\naudiences = [\"demo-api\"]\njwks_url = \"{a}/.well-known/jwks.json\"\n\n[[issuers]]\nissuer = \"{i}\"\naudiences = [\"demo-api\"]\njwks_url = \"{i}/jwks\"\n",
        a = authz.url,
        i = idp.url
    );
    let mut gateways = Vec::new();
    for id in ["gateway-1", "gateway-2", "gateway-3"] {
        let gw = Gateway::spawn_process(
            dir.path(),
            id,
            &[nats.url()],
            &authz,
            &upstream,
            &gateway_config,
        )
        .await?;
        gw.wait_ready().await?;
        gateways.push(gw);
    }
    let http = reqwest::Client::builder()
        .pool_max_idle_per_host(8)
        .build()?;
    let profile = if cfg!(debug_assertions) {
        "debug"
    } else {
        "release"
    };

    eprintln!("issuing {count} tokens...");
    let mut tokens = Vec::with_capacity(count);
    for _ in 0..count {
        tokens.push(authz.token("demo-client", "demo-secret").await?);
    }
    eprintln!("revoking them one by one...");
    let run = propagation(&http, &gateways, &tokens, |i| {
        let (authz, token) = (&authz, &tokens[i]);
        async move {
            anyhow::ensure!(
                authz.revoke("demo-client", "demo-secret", token).await? == 200,
                "revoke failed"
            );
            Ok(())
        }
    })
    .await?;
    println!("revocation propagation: {count} tokens, 3 gateways, {profile} build, loopback");
    let mut cdf = vec![("RFC 7009, no load", run.all())];
    run.print("revoke API");
    println!("(gateway rows: from the revoke API's 200 to the first 401 at that gateway; the");
    println!(" revoke API row: the revoke request itself, Argon2 client authentication, the");
    println!(" durable commit and, since the 200 waits for it, the publication included; end to");
    println!(" end: from sending the revoke request to the first 401, every gateway)");

    // Back-channel logout: one session per token, each ended by a logout token.
    let tokens: Vec<String> = (0..count)
        .map(|i| idp_token(&idp, &format!("user-{i}"), &format!("sid-{i}")))
        .collect();
    eprintln!("ending {count} sessions by back-channel logout...");
    let logout_url = format!("{}/oidc/backchannel-logout", authz.url);
    let run = propagation(&http, &gateways, &tokens, |i| {
        let logout = idp.sign(
            typed("logout+jwt"),
            &json!({"iss": idp.url, "aud": CLIENT, "iat": revocation::unix_now(),
                "jti": format!("logout-{i}"), "sid": format!("sid-{i}"),
                "events": {"http://schemas.openid.net/event/backchannel-logout": {}}}),
        );
        let (http, url) = (&http, &logout_url);
        async move {
            let status = http
                .post(url)
                .form(&[("logout_token", logout)])
                .send()
                .await?
                .status();
            anyhow::ensure!(status == 200, "back-channel logout answered {status}");
            Ok(())
        }
    })
    .await?;
    println!();
    println!("back-channel logout: {count} sessions, 3 gateways, {profile} build, loopback");
    cdf.push(("back-channel logout, no load", run.all()));
    run.print("logout");

    // Shared Signals push: one subject per token, each disabled by a SET.
    let tokens: Vec<String> = (0..count)
        .map(|i| idp_token(&idp, &format!("account-{i}"), &format!("set-sid-{i}")))
        .collect();
    eprintln!("disabling {count} accounts by SET push...");
    let ssf_url = format!("{}/ssf/events", authz.url);
    let run = propagation(&http, &gateways, &tokens, |i| {
        let set = idp.sign(
            typed("secevent+jwt"),
            &json!({"iss": idp.url, "aud": SSF_AUDIENCE, "iat": revocation::unix_now(),
                "jti": format!("set-{i}"),
                "sub_id": {"format": "iss_sub", "iss": idp.url, "sub": format!("account-{i}")},
                "events": {"https://schemas.openid.net/secevent/risc/event-type/account-disabled": {}}}),
        );
        let (http, url) = (&http, &ssf_url);
        async move {
            let status = http
                .post(url)
                .header("content-type", "application/secevent+jwt")
                .body(set)
                .send()
                .await?
                .status();
            anyhow::ensure!(status == 202, "SET push answered {status}");
            Ok(())
        }
    })
    .await?;
    println!();
    println!("SET push (RFC 8935): {count} subjects, 3 gateways, {profile} build, loopback");
    cdf.push(("SET push, no load", run.all()));
    run.print("SET push");
    println!("(gateway rows: from the receiver's 200 or 202 to the first 401 at that gateway;");
    println!(" the logout and SET push rows: the signal's request, its verification, the durable");
    println!(" commit and the publication included)");

    // Under a steady load of about half the gateways' capacity: the admin API's revocations,
    // the first 401 at each gateway, and each revocation's receipt.
    let load_token = authz.token("demo-client", "demo-secret").await?;
    eprintln!("measuring the gateways' capacity...");
    let capacity = capacity(&http, &gateways, &load_token).await?;
    let rate = capacity / 2.0;
    eprintln!("capacity {capacity:.0} requests/s in all; loading them at {rate:.0}/s");
    let applied_before = apply_delays(&http, &gateways).await?;
    let load = Load::start(&http, &gateways, &load_token, rate);
    let mut tokens = Vec::with_capacity(count);
    for _ in 0..count {
        tokens.push(authz.token("demo-client", "demo-secret").await?);
    }
    let receipts = std::sync::Mutex::new(Vec::with_capacity(count));
    let run = propagation(&http, &gateways, &tokens, |i| {
        let (authz, http, token, receipts) = (&authz, &http, &tokens[i], &receipts);
        async move {
            let response = http
                .post(format!("{}/admin/revocations", authz.admin_url))
                .basic_auth("admin", Some("admin-secret"))
                .json(&json!({ "token": token }))
                .send()
                .await?;
            anyhow::ensure!(
                response.status() == 200,
                "admin revoke answered {}",
                response.status()
            );
            let acknowledged = Instant::now();
            let event: serde_json::Value = response.json().await?;
            let id = event["id"].as_str().unwrap_or_default().to_string();
            // The receipt, looked at until it says enforced, in the background of the polls.
            let (authz_url, http) = (authz.admin_url.clone(), http.clone());
            let watch = tokio::spawn(async move {
                let deadline = acknowledged + Duration::from_secs(10);
                while Instant::now() < deadline {
                    let receipt: serde_json::Value = http
                        .get(format!("{authz_url}/admin/revocations/{id}"))
                        .basic_auth("admin", Some("admin-secret"))
                        .send()
                        .await?
                        .json()
                        .await?;
                    if receipt["enforced"] == true {
                        return Ok(acknowledged.elapsed());
                    }
                }
                bail!("a receipt was not complete after 10 s")
            });
            receipts
                .lock()
                .map_err(|_| anyhow::anyhow!("poisoned"))?
                .push(watch);
            Ok(())
        }
    })
    .await?;
    let sent = load.stop().await;
    let applied_after = apply_delays(&http, &gateways).await?;
    let mut completed = Vec::with_capacity(count);
    for watch in receipts
        .into_inner()
        .map_err(|_| anyhow::anyhow!("poisoned"))?
    {
        completed.push(watch.await??);
    }
    println!();
    println!(
        "admin API revocations under load ({rate:.0} requests/s in all, half the measured {capacity:.0}; {sent} sent): {count} tokens, 3 gateways, {profile} build, loopback"
    );
    cdf.push(("admin API, under load", run.all()));
    cdf.push(("receipt enforced, under load", completed.clone()));
    run.print("admin API");
    print_row("receipt", &mut completed);
    print_applied(&applied_before, &applied_after);
    println!("(gateway rows: from the admin API's 200 to the first 401 at that gateway, while the");
    println!(
        " load runs; receipt: from the 200 until GET /admin/revocations/{{id}} says enforced)"
    );
    let dir = bench::charts::dir();
    std::fs::create_dir_all(&dir)?;
    let chart = dir.join("revocation-cdf.svg");
    bench::charts::cdf(
        &chart,
        "From the revocation's acknowledgement to the first 401, every gateway",
        &cdf,
    )?;
    println!("chart: {}", chart.display());
    Ok(())
}

/// Each gateway's `gateway_revocation_apply_delay_seconds` histogram: cumulative counts by
/// upper bound (seconds), `+Inf` last.
async fn apply_delays(
    http: &reqwest::Client,
    gateways: &[Gateway],
) -> Result<Vec<Vec<(f64, u64)>>> {
    let mut all = Vec::new();
    for gw in gateways {
        let text = http
            .get(format!("{}/metrics", gw.admin_url))
            .send()
            .await?
            .text()
            .await?;
        let buckets = text
            .lines()
            .filter_map(|l| l.strip_prefix("gateway_revocation_apply_delay_seconds_bucket{le=\""))
            .filter_map(|l| {
                let (le, count) = l.split_once("\"} ")?;
                let le = if le == "+Inf" {
                    f64::INFINITY
                } else {
                    le.parse().ok()?
                };
                Some((le, count.trim().parse().ok()?))
            })
            .collect();
        all.push(buckets);
    }
    Ok(all)
}

/// The gateways' own word on the run under load: the share of revocations each applied
/// within 1, 2 and 5 ms of JetStream storing it (its apply-delay histogram, before and
/// after the run). No probe queues for this: it is the time to enforcement itself.
fn print_applied(before: &[Vec<(f64, u64)>], after: &[Vec<(f64, u64)>]) {
    let within = |gw: usize, bound: f64| -> (u64, u64) {
        let count = |h: &[(f64, u64)], b: f64| {
            h.iter()
                .find(|(le, _)| (*le - b).abs() < 1e-9 || (b.is_infinite() && le.is_infinite()))
                .map_or(0, |(_, c)| *c)
        };
        let (h0, h1) = (&before[gw], &after[gw]);
        (
            count(h1, bound).saturating_sub(count(h0, bound)),
            count(h1, f64::INFINITY).saturating_sub(count(h0, f64::INFINITY)),
        )
    };
    println!(
        "applied by each gateway within, of JetStream storing the revocation (its own histogram):"
    );
    println!(
        "{:<12} {:>10} {:>10} {:>10} {:>8}",
        "", "1 ms", "2 ms", "5 ms", "events"
    );
    for gw in 0..after.len().min(before.len()) {
        let share = |bound| {
            let (n, total) = within(gw, bound);
            format!("{:.1}%", 100.0 * n as f64 / total.max(1) as f64)
        };
        println!(
            "{:<12} {:>10} {:>10} {:>10} {:>8}",
            format!("gateway-{}", gw + 1),
            share(0.001),
            share(0.002),
            share(0.005),
            within(gw, f64::INFINITY).1
        );
    }
}

/// Requests per second the three gateways serve together, with 16 connections each, for 2 s.
async fn capacity(http: &reqwest::Client, gateways: &[Gateway], token: &str) -> Result<f64> {
    let started = Instant::now();
    let until = started + Duration::from_secs(2);
    let mut workers = Vec::new();
    for gw in gateways {
        for _ in 0..16 {
            let (http, url, token) = (http.clone(), format!("{}/echo/", gw.url), token.to_string());
            workers.push(tokio::spawn(async move {
                let mut served = 0u64;
                while Instant::now() < until {
                    if let Ok(r) = http.get(&url).bearer_auth(&token).send().await {
                        served += u64::from(r.status() == 200);
                    }
                }
                served
            }));
        }
    }
    let mut served = 0;
    for worker in workers {
        served += worker.await?;
    }
    Ok(served as f64 / started.elapsed().as_secs_f64())
}

/// A steady, open-loop load: `rate` requests/s in all, spread over the gateways, each sent on
/// its schedule whether the previous ones have answered or not (at most 512 in flight).
struct Load {
    stop: tokio::sync::watch::Sender<bool>,
    task: tokio::task::JoinHandle<u64>,
}

impl Load {
    fn start(http: &reqwest::Client, gateways: &[Gateway], token: &str, rate: f64) -> Load {
        let (stop, mut halt) = tokio::sync::watch::channel(false);
        let urls: Vec<String> = gateways
            .iter()
            .map(|g| format!("{}/echo/", g.url))
            .collect();
        let (http, token) = (http.clone(), token.to_string());
        let task = tokio::spawn(async move {
            let in_flight = std::sync::Arc::new(tokio::sync::Semaphore::new(512));
            let mut tick = tokio::time::interval(Duration::from_millis(1));
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
            let started = Instant::now();
            let mut sent = 0u64;
            loop {
                tokio::select! {
                    _ = halt.changed() => return sent,
                    _ = tick.tick() => {}
                }
                let due = (started.elapsed().as_secs_f64() * rate) as u64;
                while sent < due {
                    let Ok(permit) = in_flight.clone().try_acquire_owned() else {
                        break;
                    };
                    let url = urls[(sent as usize) % urls.len()].clone();
                    let (http, token) = (http.clone(), token.clone());
                    tokio::spawn(async move {
                        let _ = http.get(url).bearer_auth(token).send().await;
                        drop(permit);
                    });
                    sent += 1;
                }
            }
        });
        Load { stop, task }
    }

    /// Stops the load; how many requests it sent.
    async fn stop(self) -> u64 {
        let _ = self.stop.send(true);
        self.task.await.unwrap_or(0)
    }
}

/// The second issuer's audience for this hub.
const CLIENT: &str = "bench-web";
const SSF_AUDIENCE: &str = "https://hub.bench/ssf";

/// A JOSE header of RS256 and `typ`.
fn typed(typ: &str) -> Header {
    let mut header = Header::new(Algorithm::RS256);
    header.typ = Some(typ.into());
    header
}

/// The second issuer's access token for `sub` in session `sid`.
fn idp_token(idp: &TestIssuer, sub: &str, sid: &str) -> String {
    let now = revocation::unix_now();
    idp.sign(
        typed("at+jwt"),
        &json!({"iss": idp.url, "sub": sub, "aud": "demo-api", "exp": now + 1800, "iat": now - 1,
            "jti": format!("{sub}-{sid}"), "client_id": CLIENT, "sid": sid, "scope": "echo:read"}),
    )
}

/// The delays of one run.
struct Run {
    /// Per gateway: from the acknowledgement to its first 401.
    delays: Vec<Vec<Duration>>,
    /// The revoking request itself.
    api: Vec<Duration>,
    /// From sending the revoking request to the first 401, every gateway.
    end_to_end: Vec<Duration>,
}

impl Run {
    /// Every gateway's delays together.
    fn all(&self) -> Vec<Duration> {
        self.delays.iter().flatten().copied().collect()
    }

    fn print(mut self, api_row: &str) {
        println!("{:<12} {:>10} {:>10} {:>10}", "", "p50", "p99", "max");
        let mut all = Vec::new();
        for (i, d) in self.delays.iter_mut().enumerate() {
            print_row(&format!("gateway-{}", i + 1), d);
            all.extend_from_slice(d);
        }
        print_row("all", &mut all);
        print_row(api_row, &mut self.api);
        print_row("end to end", &mut self.end_to_end);
    }
}

/// Revokes `tokens[i]` with `revoke(i)`, one after another, and times each until every
/// gateway refuses it (each token first checked to pass everywhere).
async fn propagation<F, Fut>(
    http: &reqwest::Client,
    gateways: &[Gateway],
    tokens: &[String],
    mut revoke: F,
) -> Result<Run>
where
    F: FnMut(usize) -> Fut,
    Fut: std::future::Future<Output = Result<()>>,
{
    for gw in gateways {
        for token in tokens {
            anyhow::ensure!(
                gw.call(http, "/echo/", token).await == 200,
                "a token was refused before its revocation"
            );
        }
    }
    let count = tokens.len();
    let mut run = Run {
        delays: vec![Vec::with_capacity(count); gateways.len()],
        api: Vec::with_capacity(count),
        end_to_end: Vec::with_capacity(count * gateways.len()),
    };
    for (i, token) in tokens.iter().enumerate() {
        let sent = Instant::now();
        revoke(i).await?;
        let acknowledged = Instant::now();
        run.api.push(acknowledged - sent);
        let polls = gateways.iter().map(|gw| {
            let http = http.clone();
            let url = format!("{}/echo/", gw.url);
            async move {
                let deadline = acknowledged + Duration::from_secs(10);
                loop {
                    let status = http
                        .get(&url)
                        .bearer_auth(token)
                        .send()
                        .await
                        .map(|r| r.status().as_u16());
                    if status.ok() == Some(401) {
                        return Ok((acknowledged.elapsed(), sent.elapsed()));
                    }
                    if Instant::now() > deadline {
                        bail!("a gateway still accepted a revoked token after 10 s");
                    }
                }
            }
        });
        for (g, delay) in futures::future::join_all(polls)
            .await
            .into_iter()
            .enumerate()
        {
            let (after_ack, after_request) = delay?;
            run.delays[g].push(after_ack);
            run.end_to_end.push(after_request);
        }
    }
    Ok(run)
}

fn print_row(name: &str, samples: &mut [Duration]) {
    samples.sort();
    let at = |q: f64| bench::measure::quantile(samples, q);
    let ms = |d: Duration| format!("{:.2} ms", d.as_secs_f64() * 1000.0);
    println!(
        "{name:<12} {:>10} {:>10} {:>10}",
        ms(at(0.5)),
        ms(at(0.99)),
        ms(at(1.0))
    );
}
