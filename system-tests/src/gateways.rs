//! The gateway under test: its configuration, in-process or as a process, and the calls
//! tests make of it.

use super::*;
use gateway::config::ServiceConfig as _;

/// A gateway, in-process.
pub struct Gateway {
    pub url: String,
    pub admin_url: String,
    pub runner: Runner,
}

/// The gateway configuration the tests use; keys in `extra` replace the defaults.
fn gateway_config(
    id: &str,
    cert: &str,
    nats_urls: &[String],
    issuer: &str,
    upstream: &str,
    extra: &str,
) -> String {
    let defaults = format!(
        "audiences = [\"demo-api\"]\nlisten = \"127.0.0.1:0\"\nadmin_listen = \"127.0.0.1:0\"\nissuer = \"{issuer}\"\njwks_url = \"{issuer}/.well-known/jwks.json\"\nleeway_s = 30\nmax_ttl_s = 3600\nshutdown_grace_s = 2\n"
    );
    let mut defaults = without_overridden(&defaults, extra);
    if extra.contains("[[issuers]]") {
        // The several-issuer form replaces the one-issuer keys.
        defaults = without_overridden(&defaults, "issuer=\naudiences=\njwks_url=\n");
    }
    // `extra` may bring its own `[[routes]]` (and other tables, after its top-level keys).
    let routes = if extra.contains("[[routes]]") {
        String::new()
    } else {
        format!(
            r#"
[[routes]]
prefix = "/echo/"
upstream = "{upstream}"
scopes = ["echo:read"]

[[routes]]
prefix = "/write/"
upstream = "{upstream}"
scopes = ["echo:write", "echo:admin"]

[[routes]]
prefix = "/public/"
upstream = "{upstream}"
public = true
"#
        )
    };
    format!(
        "{defaults}{extra}\n{routes}\n{nats}",
        nats = Pki::get().nats_section(nats_urls, id, cert),
    )
}

impl Gateway {
    /// Starts a gateway as NATS identity `id`, with `/echo/` (scope `echo:read`) and
    /// `/public/` routes to `upstream`. Does not wait for readiness.
    pub async fn start(
        id: &str,
        nats_urls: &[String],
        authz: &Authz,
        upstream: &Upstream,
    ) -> Result<Gateway> {
        Self::start_with(id, id, nats_urls, authz, upstream, "").await
    }

    /// Like [`Gateway::start`], with the certificate files `<cert>.pem` (for bad-cert tests).
    pub async fn start_as(
        id: &str,
        cert: &str,
        nats_urls: &[String],
        authz: &Authz,
        upstream: &Upstream,
    ) -> Result<Gateway> {
        Self::start_with(id, cert, nats_urls, authz, upstream, "").await
    }

    /// The general form: certificate `<cert>.pem`, and `extra` top-level TOML keys that
    /// replace the defaults (e.g. `algorithms = ["ES256"]` or `upstream_timeout_s = 1`).
    pub async fn start_with(
        id: &str,
        cert: &str,
        nats_urls: &[String],
        authz: &Authz,
        upstream: &Upstream,
        extra: &str,
    ) -> Result<Gateway> {
        init_tracing();
        let listener = bind().await?;
        let admin = bind().await?;
        let url = format!("http://127.0.0.1:{}", listener.local_addr()?.port());
        let admin_url = format!("http://127.0.0.1:{}", admin.local_addr()?.port());
        let text = gateway_config(id, cert, nats_urls, &authz.url, &upstream.url, extra);
        let config = gateway::Config::from_toml(&text).map_err(anyhow::Error::msg)?;
        let shutdown = CancellationToken::new();
        let token = shutdown.clone();
        let task = tokio::spawn(async move {
            if let Err(e) = gateway::run(
                config,
                gateway::Listeners {
                    public: listener,
                    admin,
                },
                token,
            )
            .await
            {
                eprintln!("gateway failed: {e}");
            }
        });
        Ok(Gateway {
            url,
            admin_url,
            runner: Runner::Task(Service {
                shutdown,
                task: Some(task),
            }),
        })
    }

    /// Starts one gateway per identity in `ids` (each with its own certificate) with the
    /// same `extra` configuration, one after the other, each ready before the next starts.
    pub async fn start_ready(
        ids: &[&str],
        nats_urls: &[String],
        authz: &Authz,
        upstream: &Upstream,
        extra: &str,
    ) -> Result<Vec<Gateway>> {
        let mut gateways = Vec::new();
        for id in ids {
            let gw = Gateway::start_with(id, id, nats_urls, authz, upstream, extra).await?;
            gw.wait_ready().await?;
            gateways.push(gw);
        }
        Ok(gateways)
    }

    /// Starts the gateway binary as its own process (config and log in `dir`); returns once
    /// it has bound its listeners, not once it is ready.
    pub async fn spawn_process(
        dir: &Path,
        id: &str,
        nats_urls: &[String],
        authz: &Authz,
        upstream: &Upstream,
        extra: &str,
    ) -> Result<Gateway> {
        let config = dir.join(format!("{id}.toml"));
        std::fs::write(
            &config,
            gateway_config(id, id, nats_urls, &authz.url, &upstream.url, extra),
        )?;
        let process = Process::spawn("gateway", &config, dir.join(format!("{id}.log")))?;
        // Text logs say `addr=127.0.0.1:1234`, JSON logs `"addr":"127.0.0.1:1234"`.
        let addr = |rest: String| {
            let value = rest
                .split("addr=")
                .nth(1)
                .and_then(|a| a.split_whitespace().next())
                .or_else(|| {
                    rest.split("\"addr\":\"")
                        .nth(1)
                        .and_then(|a| a.split('"').next())
                });
            value
                .map(|a| format!("http://{a}"))
                .context("no address in the log line")
        };
        let url = addr(process.wait_for_line("gateway proxy listening").await?)?;
        let admin_url = addr(process.wait_for_line("gateway admin listening").await?)?;
        Ok(Gateway {
            url,
            admin_url,
            runner: Runner::Process(process),
        })
    }

    /// The process of a process-run gateway.
    pub fn process(&mut self) -> Result<&mut Process> {
        match &mut self.runner {
            Runner::Process(process) => Ok(process),
            Runner::Task(_) => bail!("this gateway runs in-process"),
        }
    }

    /// SIGKILLs a process-run gateway.
    pub fn kill(&mut self) {
        if let Runner::Process(process) = &mut self.runner {
            process.kill();
        }
    }

    /// Stops the gateway gracefully.
    pub async fn service_stop(mut self) {
        self.runner.stop().await;
    }

    /// Sends raw bytes to the proxy listener on a fresh connection and returns everything
    /// the gateway answers until it closes the connection (at most 5 s).
    pub async fn raw(&self, bytes: &[u8]) -> Result<String> {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let addr = self.url.trim_start_matches("http://");
        let mut stream = tokio::net::TcpStream::connect(addr).await?;
        stream.write_all(bytes).await?;
        let mut out = Vec::new();
        tokio::time::timeout(Duration::from_secs(5), stream.read_to_end(&mut out))
            .await
            .map_err(|_| anyhow::anyhow!("the gateway did not close the connection"))??;
        Ok(String::from_utf8_lossy(&out).into_owned())
    }

    /// Status of `GET /readyz`.
    pub async fn readyz(&self) -> u16 {
        match reqwest::get(format!("{}/readyz", self.admin_url)).await {
            Ok(r) => r.status().as_u16(),
            Err(_) => 0,
        }
    }

    /// Waits (bounded) until `/readyz` answers 200.
    pub async fn wait_ready(&self) -> Result<()> {
        eventually(Duration::from_secs(15), "gateway /readyz 200", || async {
            (self.readyz().await == 200).then_some(())
        })
        .await
    }

    /// `GET <path>` with the token; returns the status.
    pub async fn call(&self, http: &reqwest::Client, path: &str, token: &str) -> u16 {
        match http
            .get(format!("{}{path}", self.url))
            .bearer_auth(token)
            .send()
            .await
        {
            Ok(r) => r.status().as_u16(),
            Err(_) => 0,
        }
    }

    /// Waits (bounded) until the gateway refuses `token` on `/echo/` with 401.
    pub async fn wait_refused(&self, token: &str) -> Result<()> {
        let http = reqwest::Client::new();
        eventually(
            Duration::from_secs(30),
            "the gateway to refuse the token",
            || async { (self.call(&http, "/echo/", token).await == 401).then_some(()) },
        )
        .await
    }

    /// The gateway's `/metrics` text.
    pub async fn metrics(&self) -> String {
        get_text(&format!("{}/metrics", self.admin_url))
            .await
            .unwrap_or_default()
    }

    /// Value of one metric line (`name{labels}` exactly as printed), or 0.
    pub async fn metric(&self, series: &str) -> f64 {
        metric_value(&self.metrics().await, series)
    }
}

/// Value of one series (`name{labels}` exactly as printed) in a Prometheus text, or 0.
pub(crate) fn metric_value(text: &str, series: &str) -> f64 {
    let series = series.trim_end();
    text.lines()
        .find_map(|l| {
            l.strip_prefix(series)
                .filter(|v| v.starts_with(' '))
                .and_then(|v| v.trim().parse().ok())
        })
        .unwrap_or(0.0)
}
