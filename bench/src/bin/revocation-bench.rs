//! `make bench-revocation`: revokes tokens one after another while three gateways (release
//! builds, separate processes) serve them, and prints the delay from the revoke API's 200 to
//! the first 401 at every gateway, the revoke API's own latency, and from the request to the
//! first 401: p50, p99 and max. A benchmark, not a test: it prints figures, and only checks
//! that its run was sane (the warm-up served, every revoke answered 200, every revoked token
//! refused within 10 s).
//!
//! Usage: revocation-bench [--tokens N]   (default 1000)

use std::time::{Duration, Instant};

use anyhow::{bail, Result};
use system_tests::{Authz, Gateway, Nats, Upstream};

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
    let port = system_tests::free_ports(1)?[0];
    let authz = Authz::spawn_process(dir.path(), port, &[nats.url()], "").await?;
    let upstream = Upstream::start().await?;
    let mut gateways = Vec::new();
    for id in ["gateway-1", "gateway-2", "gateway-3"] {
        let gw =
            Gateway::spawn_process(dir.path(), id, &[nats.url()], &authz, &upstream, "").await?;
        gw.wait_ready().await?;
        gateways.push(gw);
    }
    eprintln!("issuing {count} tokens...");
    let mut tokens = Vec::with_capacity(count);
    for _ in 0..count {
        tokens.push(authz.token("demo-client", "demo-secret").await?);
    }
    let http = reqwest::Client::builder()
        .pool_max_idle_per_host(8)
        .build()?;
    for gw in &gateways {
        anyhow::ensure!(
            gw.call(&http, "/echo/", &tokens[0]).await == 200,
            "warm-up request refused"
        );
    }
    eprintln!("revoking them one by one...");
    let mut delays: Vec<Vec<Duration>> = vec![Vec::with_capacity(count); gateways.len()];
    let mut api = Vec::with_capacity(count);
    let mut end_to_end = Vec::with_capacity(count * 3);
    for token in &tokens {
        let sent = Instant::now();
        anyhow::ensure!(
            authz.revoke("demo-client", "demo-secret", token).await? == 200,
            "revoke failed"
        );
        let acknowledged = Instant::now();
        api.push(acknowledged - sent);
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
        for (i, delay) in futures::future::join_all(polls)
            .await
            .into_iter()
            .enumerate()
        {
            let (after_ack, after_request) = delay?;
            delays[i].push(after_ack);
            end_to_end.push(after_request);
        }
    }
    let profile = if cfg!(debug_assertions) {
        "debug"
    } else {
        "release"
    };
    println!("revocation propagation: {count} tokens, 3 gateways, {profile} build, loopback");
    println!("{:<12} {:>10} {:>10} {:>10}", "", "p50", "p99", "max");
    let mut all = Vec::new();
    for (i, d) in delays.iter_mut().enumerate() {
        print_row(&format!("gateway-{}", i + 1), d);
        all.extend_from_slice(d);
    }
    print_row("all", &mut all);
    print_row("revoke API", &mut api);
    print_row("end to end", &mut end_to_end);
    println!("(gateway rows: from the revoke API's 200 to the first 401 at that gateway; the");
    println!(" revoke API row: the revoke request itself, Argon2 client authentication, the");
    println!(" durable commit and, since the 200 waits for it, the publication included; end to");
    println!(" end: from sending the revoke request to the first 401, every gateway)");
    Ok(())
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
