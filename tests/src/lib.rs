//! The test harness: real processes and real certificates, dynamic ports, everything killed
//! and removed on drop.
//!
//! - [`Pki`]: the development PKI made by `certs/make-dev-certs.sh`, once per test process.
//! - [`Nats`]: a `nats-server` with the config `deploy/nats/render-config.sh` renders.
//! - [`Authz`], [`Gateway`], [`Upstream`]: the services, in-process through their `run`.
//! - [`eventually`]: a bounded wait on a condition.

use std::future::Future;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// Gateway identities the PKI and the NATS config know.
pub const GATEWAY_IDS: [&str; 3] = ["gateway-1", "gateway-2", "gateway-3"];

/// The repository root.
pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_default()
}

/// Shows the services' logs when a test runs with `RUST_LOG` set.
pub fn init_tracing() {
    static ONCE: OnceLock<()> = OnceLock::new();
    ONCE.get_or_init(|| {
        if std::env::var_os("RUST_LOG").is_some() {
            let _ = tracing_subscriber::fmt()
                .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
                .with_test_writer()
                .try_init();
        }
    });
}

/// The development PKI, plus a second CA for the negative tests.
pub struct Pki {
    _dir: tempfile::TempDir,
    pub certs: PathBuf,
    pub other_ca: PathBuf,
}

impl Pki {
    /// Made once per test process.
    pub fn get() -> &'static Pki {
        static PKI: OnceLock<Pki> = OnceLock::new();
        PKI.get_or_init(|| Pki::make().expect("the dev PKI script failed"))
    }

    fn make() -> Result<Pki> {
        let dir = tempfile::tempdir()?;
        let script = repo_root().join("certs/make-dev-certs.sh");
        let certs = dir.path().join("certs");
        let other_ca = dir.path().join("other-ca");
        let status = Command::new(&script)
            .arg(&certs)
            .args(GATEWAY_IDS)
            .env("MAKE_BAD_CERTS", "1")
            .stderr(Stdio::null())
            .status()?;
        if !status.success() {
            bail!("{} failed", script.display());
        }
        let status = Command::new(&script)
            .arg(&other_ca)
            .stderr(Stdio::null())
            .status()?;
        if !status.success() {
            bail!("{} failed for the second CA", script.display());
        }
        Ok(Pki {
            _dir: dir,
            certs,
            other_ca,
        })
    }

    /// `[nats]` config section for identity `name` (certificate files `<name>.pem`).
    pub fn nats_section(&self, urls: &[String], name: &str, cert: &str) -> String {
        format!(
            "[nats]\nurls = {urls:?}\nca_file = {ca:?}\ncert_file = {cert:?}\nkey_file = {key:?}\ninbox_name = {name:?}\n",
            ca = self.certs.join("ca.pem"),
            cert = self.certs.join(format!("{cert}.pem")),
            key = self.certs.join(format!("{cert}-key.pem")),
        )
    }
}

fn nats_server_binary() -> PathBuf {
    if let Some(path) = std::env::var_os("NATS_SERVER") {
        return PathBuf::from(path);
    }
    for candidate in [
        "/usr/sbin/nats-server",
        "/usr/bin/nats-server",
        "/usr/local/bin/nats-server",
    ] {
        if Path::new(candidate).exists() {
            return PathBuf::from(candidate);
        }
    }
    PathBuf::from("nats-server")
}

/// A real nats-server with mutual TLS and JetStream, killed and deleted on drop.
pub struct Nats {
    dir: tempfile::TempDir,
    child: Option<Child>,
    pub port: u16,
}

impl Nats {
    /// Starts a server on a random port.
    pub fn start() -> Result<Nats> {
        let dir = tempfile::tempdir()?;
        let mut nats = Nats {
            dir,
            child: None,
            port: 0,
        };
        nats.spawn("-1")?;
        Ok(nats)
    }

    /// `tls://127.0.0.1:<port>`.
    pub fn url(&self) -> String {
        format!("tls://127.0.0.1:{}", self.port)
    }

    /// Kills the server (SIGKILL), leaving its store.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts the server again on the same port with the same store.
    pub fn restart(&mut self) -> Result<()> {
        self.kill();
        let port = self.port.to_string();
        self.spawn(&port)
    }

    fn spawn(&mut self, port: &str) -> Result<()> {
        let pki = Pki::get();
        let config = self.dir.path().join("nats.conf");
        let rendered = Command::new(repo_root().join("deploy/nats/render-config.sh"))
            .arg("--certs")
            .arg(&pki.certs)
            .arg("--store")
            .arg(self.dir.path().join("store"))
            .args(["--port", port, "--http-port", "-1"])
            .args(GATEWAY_IDS)
            .output()?;
        if !rendered.status.success() {
            bail!(
                "render-config.sh: {}",
                String::from_utf8_lossy(&rendered.stderr)
            );
        }
        std::fs::write(&config, rendered.stdout)?;
        let log = self.dir.path().join("nats.log");
        // Truncate so that the port is read from this run's log only.
        std::fs::write(&log, b"")?;
        let child = Command::new(nats_server_binary())
            .arg("-c")
            .arg(&config)
            .arg("-l")
            .arg(&log)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("cannot start nats-server (is it installed?)")?;
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let text = std::fs::read_to_string(&log).unwrap_or_default();
            if text.contains("Server is ready") {
                let port = text
                    .lines()
                    .find_map(|l| {
                        l.split("Listening for client connections on 127.0.0.1:")
                            .nth(1)
                    })
                    .and_then(|p| p.trim().parse().ok())
                    .context("no client port in the nats-server log")?;
                self.port = port;
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!("nats-server did not start: {text}");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Nats {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Binds a loopback listener on a dynamic port.
pub async fn bind() -> Result<TcpListener> {
    Ok(TcpListener::bind("127.0.0.1:0").await?)
}

/// Waits until `check` returns `Some`, polling every 5 ms, for at most `limit`.
pub async fn eventually<T, F, Fut>(limit: Duration, what: &str, mut check: F) -> Result<T>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = Instant::now() + limit;
    loop {
        if let Some(value) = check().await {
            return Ok(value);
        }
        if Instant::now() > deadline {
            bail!("timed out after {limit:?} waiting for {what}");
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// A service task running in this process; stopped on [`Service::stop`] or on drop.
pub struct Service {
    shutdown: CancellationToken,
    task: Option<JoinHandle<()>>,
}

impl Service {
    /// Stops the service gracefully and waits for it.
    pub async fn stop(&mut self) {
        self.shutdown.cancel();
        if let Some(task) = self.task.take() {
            let _ = tokio::time::timeout(Duration::from_secs(15), task).await;
        }
    }
}

impl Drop for Service {
    fn drop(&mut self) {
        self.shutdown.cancel();
        if let Some(task) = self.task.take() {
            task.abort();
        }
    }
}

/// Client secrets used by the tests, hashed once.
fn hashes() -> &'static [(String, String); 3] {
    static HASHES: OnceLock<[(String, String); 3]> = OnceLock::new();
    HASHES.get_or_init(|| {
        let h = |s: &str| authz_server::clients::hash_secret(s).expect("hash");
        [
            ("demo-client".into(), h("demo-secret")),
            ("other-client".into(), h("other-secret")),
            ("admin".into(), h("admin-secret")),
        ]
    })
}

/// The authz-server, in-process, with its database and key in its own directory.
pub struct Authz {
    pub url: String,
    pub dir: PathBuf,
    pub nats_urls: Vec<String>,
    pub service: Service,
}

impl Authz {
    /// Starts an authz-server whose files live in `dir` (reuse `dir` to restart it).
    pub async fn start(dir: &Path, nats_urls: &[String]) -> Result<Authz> {
        Self::start_on(bind().await?, dir, nats_urls, "").await
    }

    /// Like [`Authz::start`], with `extra` top-level TOML keys (e.g. `signing_alg = "ES256"`).
    pub async fn start_with(dir: &Path, nats_urls: &[String], extra: &str) -> Result<Authz> {
        Self::start_on(bind().await?, dir, nats_urls, extra).await
    }

    async fn start_on(
        listener: TcpListener,
        dir: &Path,
        nats_urls: &[String],
        extra: &str,
    ) -> Result<Authz> {
        init_tracing();
        let url = format!("http://127.0.0.1:{}", listener.local_addr()?.port());
        let [(demo, demo_hash), (other, other_hash), (admin, admin_hash)] = hashes();
        let text = format!(
            r#"
listen = "127.0.0.1:0"
issuer = "{url}"
database = {db:?}
signing_key_file = {key:?}
token_ttl = 300
max_ttl = 3600
leeway = 30
{extra}

[[clients]]
id = "{demo}"
secret_hash = "{demo_hash}"
scopes = ["echo:read", "echo:write"]
audience = "demo-api"

[[clients]]
id = "{other}"
secret_hash = "{other_hash}"
scopes = ["echo:read"]
audience = "demo-api"

[[clients]]
id = "{admin}"
secret_hash = "{admin_hash}"
scopes = []
audience = "admin-api"
admin = true

{nats}"#,
            db = dir.join("authz.db"),
            key = dir.join("signing-key.pem"),
            nats = Pki::get().nats_section(nats_urls, "authz", "authz"),
        );
        let config = authz_server::Config::from_toml(&text).map_err(anyhow::Error::msg)?;
        let shutdown = CancellationToken::new();
        let token = shutdown.clone();
        let task = tokio::spawn(async move {
            if let Err(e) = authz_server::run(config, listener, token).await {
                eprintln!("authz-server failed: {e}");
            }
        });
        let authz = Authz {
            url,
            dir: dir.to_path_buf(),
            nats_urls: nats_urls.to_vec(),
            service: Service {
                shutdown,
                task: Some(task),
            },
        };
        let http = reqwest::Client::new();
        let jwks = format!("{}/.well-known/jwks.json", authz.url);
        eventually(Duration::from_secs(10), "authz-server to answer", || {
            let request = http.get(&jwks).send();
            async move { request.await.ok().filter(|r| r.status().is_success()) }
        })
        .await?;
        Ok(authz)
    }

    /// Stops the server gracefully and starts it again on the same port (its issuer URL) and
    /// the same files.
    pub async fn restart(&mut self) -> Result<()> {
        self.service.stop().await;
        let addr = self.url.trim_start_matches("http://").to_string();
        let listener = TcpListener::bind(&addr).await?;
        *self = Authz::start_on(listener, &self.dir.clone(), &self.nats_urls.clone(), "").await?;
        Ok(())
    }

    /// A token from the token endpoint (client_secret_basic).
    pub async fn token(&self, client: &str, secret: &str) -> Result<String> {
        let response = reqwest::Client::new()
            .post(format!("{}/oauth2/token", self.url))
            .basic_auth(client, Some(secret))
            .form(&[("grant_type", "client_credentials")])
            .send()
            .await?;
        if !response.status().is_success() {
            bail!("token endpoint answered {}", response.status());
        }
        let body: serde_json::Value = response.json().await?;
        body["access_token"]
            .as_str()
            .map(str::to_string)
            .context("no access_token")
    }

    /// Revokes `token` through RFC 7009 as `client`; returns the status.
    pub async fn revoke(&self, client: &str, secret: &str, token: &str) -> Result<u16> {
        let response = reqwest::Client::new()
            .post(format!("{}/oauth2/revoke", self.url))
            .basic_auth(client, Some(secret))
            .form(&[("token", token), ("token_type_hint", "access_token")])
            .send()
            .await?;
        Ok(response.status().as_u16())
    }

    /// Revokes through the admin API with a JSON body; returns the status and body.
    pub async fn admin_revoke(&self, body: serde_json::Value) -> Result<(u16, serde_json::Value)> {
        let response = reqwest::Client::new()
            .post(format!("{}/admin/revocations", self.url))
            .basic_auth("admin", Some("admin-secret"))
            .json(&body)
            .send()
            .await?;
        let status = response.status().as_u16();
        let body = response.json().await.unwrap_or(serde_json::Value::Null);
        Ok((status, body))
    }
}

/// The demo upstream, in-process.
pub struct Upstream {
    pub url: String,
    pub service: Service,
}

impl Upstream {
    pub async fn start() -> Result<Upstream> {
        let listener = bind().await?;
        let url = format!("http://127.0.0.1:{}", listener.local_addr()?.port());
        let shutdown = CancellationToken::new();
        let token = shutdown.clone();
        let task = tokio::spawn(async move {
            let _ = demo_upstream::run(listener, token).await;
        });
        Ok(Upstream {
            url,
            service: Service {
                shutdown,
                task: Some(task),
            },
        })
    }
}

impl Upstream {
    /// An address where nothing listens (connections are refused).
    pub async fn unreachable() -> Result<Upstream> {
        let listener = bind().await?;
        let url = format!("http://127.0.0.1:{}", listener.local_addr()?.port());
        drop(listener);
        Ok(Upstream {
            url,
            service: Service {
                shutdown: CancellationToken::new(),
                task: None,
            },
        })
    }

    /// An upstream that accepts connections and reads requests but never answers.
    pub async fn silent() -> Result<Upstream> {
        let listener = bind().await?;
        let url = format!("http://127.0.0.1:{}", listener.local_addr()?.port());
        let shutdown = CancellationToken::new();
        let token = shutdown.clone();
        let task = tokio::spawn(async move {
            let mut held = Vec::new();
            loop {
                tokio::select! {
                    _ = token.cancelled() => return,
                    accepted = listener.accept() => match accepted {
                        Ok((stream, _)) => held.push(stream),
                        Err(_) => return,
                    },
                }
            }
        });
        Ok(Upstream {
            url,
            service: Service {
                shutdown,
                task: Some(task),
            },
        })
    }
}

/// A gateway, in-process.
pub struct Gateway {
    pub url: String,
    pub admin_url: String,
    pub service: Service,
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
    /// replace the defaults (e.g. `algorithms = ["ES256"]` or `upstream_timeout = 1`).
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
        let defaults = format!(
            "issuer = \"{issuer}\"\njwks_url = \"{issuer}/.well-known/jwks.json\"\nleeway = 30\nmax_ttl = 3600\nshutdown_grace = 2\n",
            issuer = authz.url
        );
        // A key given in `extra` replaces its default line.
        let defaults: String = defaults
            .lines()
            .filter(|line| {
                let key = line.split('=').next().unwrap_or("").trim();
                !extra
                    .lines()
                    .any(|e| e.split('=').next().unwrap_or("").trim() == key)
            })
            .map(|line| format!("{line}\n"))
            .collect();
        let text = format!(
            r#"
listen = "127.0.0.1:0"
admin_listen = "127.0.0.1:0"
audiences = ["demo-api"]
{defaults}{extra}

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

{nats}"#,
            upstream = upstream.url,
            nats = Pki::get().nats_section(nats_urls, id, cert),
        );
        let config = gateway::Config::from_toml(&text).map_err(anyhow::Error::msg)?;
        let shutdown = CancellationToken::new();
        let token = shutdown.clone();
        let task = tokio::spawn(async move {
            if let Err(e) = gateway::run(config, listener, admin, token).await {
                eprintln!("gateway failed: {e}");
            }
        });
        Ok(Gateway {
            url,
            admin_url,
            service: Service {
                shutdown,
                task: Some(task),
            },
        })
    }

    /// Stops the gateway gracefully.
    pub async fn service_stop(mut self) {
        self.service.stop().await;
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

    /// The gateway's `/metrics` text.
    pub async fn metrics(&self) -> String {
        match reqwest::get(format!("{}/metrics", self.admin_url)).await {
            Ok(r) => r.text().await.unwrap_or_default(),
            Err(_) => String::new(),
        }
    }

    /// Value of one metric line (`name{labels}` exactly as printed), or 0.
    pub async fn metric(&self, series: &str) -> f64 {
        self.metrics()
            .await
            .lines()
            .find_map(|l| l.strip_prefix(series).and_then(|v| v.trim().parse().ok()))
            .unwrap_or(0.0)
    }
}

/// NATS, the authz-server, the demo upstream and `gateways` ready gateways.
pub struct Stack {
    pub gateways: Vec<Gateway>,
    pub upstream: Upstream,
    pub authz: Authz,
    pub nats: Nats,
    pub dir: tempfile::TempDir,
}

impl Stack {
    pub async fn start(gateways: usize) -> Result<Stack> {
        let nats = Nats::start()?;
        let dir = tempfile::tempdir()?;
        let authz = Authz::start(dir.path(), &[nats.url()]).await?;
        let upstream = Upstream::start().await?;
        let mut started = Vec::new();
        for id in GATEWAY_IDS.iter().take(gateways) {
            let gw = Gateway::start(id, &[nats.url()], &authz, &upstream).await?;
            gw.wait_ready().await?;
            started.push(gw);
        }
        Ok(Stack {
            gateways: started,
            upstream,
            authz,
            nats,
            dir,
        })
    }
}
