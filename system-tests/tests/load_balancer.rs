//! Two gateways behind a real HAProxy (the configuration `deploy/haproxy/render-config.sh`
//! renders), health-checked on `/readyz`: revocations are enforced through the load
//! balancer on both gateways, and a rolling restart under continuous load fails no request.

use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use system_tests::{eventually, free_ports, Authz, Gateway, Nats, Upstream};

struct HaProxy(Child);

impl Drop for HaProxy {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn haproxy_binary() -> &'static str {
    if std::path::Path::new("/usr/sbin/haproxy").exists() {
        "/usr/sbin/haproxy"
    } else {
        "haproxy"
    }
}

async fn gateway_on(
    dir: &std::path::Path,
    id: &str,
    ports: (u16, u16),
    nats: &Nats,
    authz: &Authz,
    upstream: &Upstream,
) -> anyhow::Result<Gateway> {
    let extra = format!(
        "listen = \"127.0.0.1:{}\"\nadmin_listen = \"127.0.0.1:{}\"\ndrain_delay_ms = 1000\nshutdown_grace_s = 5",
        ports.0, ports.1
    );
    Gateway::spawn_process(dir, id, &[nats.url()], authz, upstream, &extra).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn behind_haproxy() -> anyhow::Result<()> {
    let nats = Nats::start()?;
    let dir = tempfile::tempdir()?;
    let authz = Authz::start_with(dir.path(), &[nats.url()], "heartbeat_interval_ms = 200").await?;
    let upstream = Upstream::start().await?;
    let ports = free_ports(6)?;
    let (gw_ports, lb_port, stats_port) = (
        [(ports[0], ports[1]), (ports[2], ports[3])],
        ports[4],
        ports[5],
    );
    let ids = ["gateway-1", "gateway-2"];
    let mut gateways = Vec::new();
    for (id, p) in ids.iter().zip(gw_ports) {
        let gw = gateway_on(dir.path(), id, p, &nats, &authz, &upstream).await?;
        gw.wait_ready().await?;
        gateways.push(gw);
    }

    let rendered = Command::new(system_tests::repo_root().join("deploy/haproxy/render-config.sh"))
        .arg("--listen")
        .arg(format!("127.0.0.1:{lb_port}"))
        .arg("--stats")
        .arg(format!("127.0.0.1:{stats_port}"))
        .args(
            gw_ports
                .iter()
                .map(|(p, a)| format!("127.0.0.1:{p},127.0.0.1:{a}")),
        )
        .output()?;
    anyhow::ensure!(rendered.status.success(), "render-config.sh failed");
    let config = dir.path().join("haproxy.cfg");
    std::fs::write(&config, rendered.stdout)?;
    let _lb = HaProxy(
        Command::new(haproxy_binary())
            .arg("-db")
            .arg("-f")
            .arg(&config)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()?,
    );
    let lb = format!("http://127.0.0.1:{lb_port}");
    let http = reqwest::Client::new();
    let token = authz.token("demo-client", "demo-secret").await?;
    // Both servers up: consecutive requests succeed (round-robin over both).
    eventually(
        Duration::from_secs(10),
        "HAProxy to route to the gateways",
        || async {
            for _ in 0..4 {
                let r = http
                    .get(format!("{lb}/echo/"))
                    .bearer_auth(&token)
                    .send()
                    .await
                    .ok()?;
                (r.status() == 200).then_some(())?;
            }
            Some(())
        },
    )
    .await?;

    // A revocation through the load balancer: refused whichever gateway answers.
    let revoked = authz.token("demo-client", "demo-secret").await?;
    assert_eq!(
        authz.revoke("demo-client", "demo-secret", &revoked).await?,
        200
    );
    for gw in &gateways {
        gw.wait_refused(&revoked).await?;
    }
    for _ in 0..10 {
        let r = http
            .get(format!("{lb}/echo/"))
            .bearer_auth(&revoked)
            .send()
            .await?;
        assert_eq!(r.status(), 401);
    }

    // Rolling restart under continuous load.
    let (ok, failed) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let stop = tokio_util::sync::CancellationToken::new();
    let load = {
        let (ok, failed, stop, lb, token) = (
            ok.clone(),
            failed.clone(),
            stop.clone(),
            lb.clone(),
            token.clone(),
        );
        tokio::spawn(async move {
            let http = reqwest::Client::new();
            let mut failures = Vec::new();
            while !stop.is_cancelled() {
                match http
                    .get(format!("{lb}/echo/load"))
                    .bearer_auth(&token)
                    .send()
                    .await
                {
                    Ok(r) if r.status() == 200 => {
                        ok.fetch_add(1, Ordering::Relaxed);
                    }
                    other => {
                        failed.fetch_add(1, Ordering::Relaxed);
                        failures.push(format!("{:?}", other.map(|r| r.status())));
                    }
                }
            }
            failures
        })
    };
    for (i, (id, p)) in ids.iter().zip(gw_ports).enumerate() {
        let before = ok.load(Ordering::Relaxed);
        let old = &mut gateways[i];
        old.process()?.signal("-TERM")?;
        let status = old.process()?.wait_exit(Duration::from_secs(15)).await?;
        assert!(status.success(), "{id} exit status {status}");
        let new = gateway_on(dir.path(), id, p, &nats, &authz, &upstream).await?;
        new.wait_ready().await?;
        gateways[i] = new;
        // HAProxy must see it healthy again (rise 2) before the next one goes.
        let server = format!("gateways,gateway-{},", i + 1);
        eventually(
            Duration::from_secs(10),
            "HAProxy to mark the gateway UP",
            || async {
                let csv =
                    system_tests::get_text(&format!("http://127.0.0.1:{stats_port}/stats;csv"))
                        .await?;
                csv.lines()
                    .any(|l| l.starts_with(&server) && l.contains(",UP,"))
                    .then_some(())
            },
        )
        .await?;
        println!(
            "{id} restarted; {} requests served meanwhile",
            ok.load(Ordering::Relaxed) - before
        );
    }
    stop.cancel();
    let failures = load.await?;
    let (ok, failed) = (ok.load(Ordering::Relaxed), failed.load(Ordering::Relaxed));
    println!("rolling restart: {ok} requests succeeded, {failed} failed");
    assert!(ok > 100, "the load was too light to prove anything: {ok}");
    assert_eq!(
        failed, 0,
        "failed requests during the rolling restart: {failures:?}"
    );
    Ok(())
}
