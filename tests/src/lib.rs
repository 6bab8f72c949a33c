//! The test harness: real processes and real certificates, dynamic ports, everything killed
//! and removed on drop.
//!
//! - [`Pki`]: the development PKI made by `certs/make-dev-certs.sh`, once per test process.
//! - [`Nats`]: a `nats-server` with the config `deploy/nats/render-config.sh` renders.
//! - [`Authz`], [`Gateway`], [`Upstream`]: the services, in-process through their `run`;
//!   [`TlsUpstream`]: the demo upstream behind mutual TLS.
//! - [`eventually`]: a bounded wait on a condition.
//! - [`Nginx`]: a real nginx upstream that reports the path it resolved.

use std::future::Future;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

pub mod nginx;
pub mod postgres;
pub use nginx::Nginx;
pub use postgres::PrivatePostgres;
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
    /// Made once per test process. Also installs the process's TLS crypto provider (the
    /// services do so at start; a test's own NATS client may come first).
    pub fn get() -> &'static Pki {
        let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
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

/// The product's nats-server: `NATS_SERVER` if set, else the pinned one that
/// `deploy/ensure-nats-server.sh` installs (`make test` runs it), never whatever is on `PATH`.
pub fn nats_server_binary() -> PathBuf {
    if let Some(path) = std::env::var_os("NATS_SERVER") {
        return PathBuf::from(path);
    }
    repo_root().join("target/nats-venv/bin/nats-server")
}

/// A real nats-server with mutual TLS and JetStream, killed and deleted on drop.
pub struct Nats {
    dir: tempfile::TempDir,
    child: Option<Child>,
    pub port: u16,
    /// Extra arguments of render-config.sh (cluster settings).
    render_args: Vec<String>,
}

impl Nats {
    /// Starts a server on a random port.
    pub fn start() -> Result<Nats> {
        let dir = tempfile::tempdir()?;
        let mut nats = Nats {
            dir,
            child: None,
            port: 0,
            render_args: Vec::new(),
        };
        nats.spawn("-1")?;
        Ok(nats)
    }

    /// Starts a three-node cluster with mutual TLS on client connections and routes. The
    /// nodes are returned once JetStream has elected a metadata leader.
    pub fn start_cluster() -> Result<Vec<Nats>> {
        // Ports are picked free, then released and bound by the servers: on a busy machine
        // another process can take one in between. Start again on fresh ports if so.
        let mut last_error = None;
        for _ in 0..3 {
            match Self::try_start_cluster() {
                Ok(nodes) => return Ok(nodes),
                Err(e) => last_error = Some(e),
            }
        }
        Err(last_error.unwrap_or_else(|| anyhow::anyhow!("no cluster attempt was made")))
    }

    fn try_start_cluster() -> Result<Vec<Nats>> {
        let client_ports = free_ports(3)?;
        let route_ports = free_ports(3)?;
        let mut nodes = Vec::new();
        for i in 0..3 {
            let routes: Vec<String> = (0..3)
                .filter(|j| *j != i)
                .map(|j| format!("127.0.0.1:{}", route_ports[j]))
                .collect();
            let mut node = Nats {
                dir: tempfile::tempdir()?,
                child: None,
                port: client_ports[i],
                render_args: vec![
                    "--server-name".into(),
                    format!("node-{}", i + 1),
                    "--cluster-port".into(),
                    route_ports[i].to_string(),
                    "--routes".into(),
                    routes.join(","),
                ],
            };
            node.spawn(&client_ports[i].to_string())?;
            nodes.push(node);
        }
        let deadline = Instant::now() + Duration::from_secs(20);
        while !nodes.iter().all(|n| n.log().contains("metadata leader")) {
            let exited = nodes.iter_mut().any(|n| {
                n.child
                    .as_mut()
                    .is_some_and(|c| matches!(c.try_wait(), Ok(Some(_))))
            });
            if exited || Instant::now() > deadline {
                let logs: Vec<String> = nodes.iter().map(Nats::log).collect();
                bail!(
                    "the NATS cluster did not elect a metadata leader:\n{}",
                    logs.join("\n---\n")
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Ok(nodes)
    }

    /// This run's log.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("nats.log")).unwrap_or_default()
    }

    /// Deletes the JetStream store (the server must be stopped): the stream's history is lost.
    pub fn wipe_store(&mut self) -> Result<()> {
        self.kill();
        let store = self.dir.path().join("store");
        if store.exists() {
            std::fs::remove_dir_all(store)?;
        }
        Ok(())
    }

    /// Stops the server (SIGKILL) and copies its JetStream store to `to`, a backup; the
    /// server is then started again on its port.
    pub fn back_up_store(&mut self, to: &Path) -> Result<()> {
        self.kill();
        let status = Command::new("cp")
            .arg("-a")
            .arg(self.dir.path().join("store"))
            .arg(to)
            .status()?;
        anyhow::ensure!(status.success(), "copying the store failed");
        self.restart()
    }

    /// Kills the server and replaces its JetStream store with the backup at `from` (see
    /// [`Nats::back_up_store`]): the stream loses what came after the backup, and keeps its
    /// identity. Does not start the server again.
    pub fn restore_store(&mut self, from: &Path) -> Result<()> {
        self.wipe_store()?;
        let status = Command::new("cp")
            .arg("-a")
            .arg(from)
            .arg(self.dir.path().join("store"))
            .status()?;
        anyhow::ensure!(status.success(), "restoring the store failed");
        Ok(())
    }

    /// Freezes the server (SIGSTOP): connections stay open and nothing answers.
    pub fn pause(&self) -> Result<()> {
        self.signal("-STOP")
    }

    /// Resumes a frozen server (SIGCONT).
    pub fn resume(&self) -> Result<()> {
        self.signal("-CONT")
    }

    fn signal(&self, sig: &str) -> Result<()> {
        let pid = self.child.as_ref().context("nats-server not running")?.id();
        let status = Command::new("kill")
            .args([sig, &pid.to_string()])
            .status()?;
        anyhow::ensure!(status.success(), "kill {sig} failed");
        Ok(())
    }

    /// `tls://127.0.0.1:<port>`.
    pub fn url(&self) -> String {
        format!("tls://127.0.0.1:{}", self.port)
    }

    /// The server's process id, while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
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
            .args(&self.render_args)
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
            .context(
                "cannot start nats-server (run deploy/ensure-nats-server.sh; make test does)",
            )?;
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
        // A paused server would survive SIGKILL's delivery only until continued; continue it.
        let _ = self.resume();
        self.kill();
    }
}

/// `n` distinct free loopback ports (bound, read, released: good enough on a test machine).
pub fn free_ports(n: usize) -> Result<Vec<u16>> {
    let listeners = (0..n)
        .map(|_| std::net::TcpListener::bind("127.0.0.1:0"))
        .collect::<std::io::Result<Vec<_>>>()?;
    Ok(listeners
        .iter()
        .filter_map(|l| l.local_addr().ok().map(|a| a.port()))
        .collect())
}

/// A TCP proxy on loopback that the test can cut without closing anything: while cut, bytes
/// in both directions are swallowed and new connections are held open unanswered, the way a
/// network partition looks to both ends. Healing closes the connections that saw the cut and
/// forwards new ones again.
pub struct TcpProxy {
    pub port: u16,
    cut: Arc<std::sync::atomic::AtomicBool>,
    generation: Arc<std::sync::atomic::AtomicU64>,
    task: JoinHandle<()>,
}

impl TcpProxy {
    pub async fn start(target: u16) -> Result<TcpProxy> {
        use std::sync::atomic::Ordering;
        let listener = bind().await?;
        let port = listener.local_addr()?.port();
        let cut = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let generation = Arc::new(std::sync::atomic::AtomicU64::new(0));
        let (cut2, gen2) = (cut.clone(), generation.clone());
        let task = tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let (cut, generation) = (cut2.clone(), gen2.clone());
                tokio::spawn(async move {
                    let born = generation.load(Ordering::SeqCst);
                    // Held unanswered while cut.
                    while cut.load(Ordering::SeqCst) {
                        tokio::time::sleep(Duration::from_millis(10)).await;
                    }
                    if generation.load(Ordering::SeqCst) != born {
                        return;
                    }
                    let Ok(server) = tokio::net::TcpStream::connect(("127.0.0.1", target)).await
                    else {
                        return;
                    };
                    let (cr, cw) = client.into_split();
                    let (sr, sw) = server.into_split();
                    let born = generation.load(Ordering::SeqCst);
                    let a = pump(cr, sw, cut.clone(), generation.clone(), born);
                    let b = pump(sr, cw, cut, generation, born);
                    tokio::select! { _ = a => {}, _ = b => {} }
                });
            }
        });
        Ok(TcpProxy {
            port,
            cut,
            generation,
            task,
        })
    }

    /// `tls://127.0.0.1:<port>`.
    pub fn url(&self) -> String {
        format!("tls://127.0.0.1:{}", self.port)
    }

    /// Starts swallowing everything.
    pub fn cut(&self) {
        self.cut.store(true, std::sync::atomic::Ordering::SeqCst);
    }

    /// Closes the connections that saw the cut and forwards again.
    pub fn heal(&self) {
        self.generation
            .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        self.cut.store(false, std::sync::atomic::Ordering::SeqCst);
    }
}

impl Drop for TcpProxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn pump(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    cut: Arc<std::sync::atomic::AtomicBool>,
    generation: Arc<std::sync::atomic::AtomicU64>,
    born: u64,
) {
    use std::sync::atomic::Ordering;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        let read = tokio::time::timeout(Duration::from_millis(50), from.read(&mut buf)).await;
        if generation.load(Ordering::SeqCst) != born {
            return;
        }
        match read {
            Err(_) => continue,
            Ok(Ok(0)) | Ok(Err(_)) => return,
            Ok(Ok(n)) => {
                if cut.load(Ordering::SeqCst) {
                    continue;
                }
                if to.write_all(&buf[..n]).await.is_err() {
                    return;
                }
            }
        }
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

/// A service binary running as its own process, killed on drop. Its output goes to a log
/// file in the test's directory.
pub struct Process {
    child: Option<Child>,
    pub log: PathBuf,
}

/// Builds the service binaries once per test process (a no-op when they are fresh) and
/// returns the path of `name`.
pub fn binary(name: &str) -> Result<PathBuf> {
    static BUILT: OnceLock<std::result::Result<PathBuf, String>> = OnceLock::new();
    let dir = BUILT
        .get_or_init(|| {
            // Tests run from target/<profile>/deps/, binaries such as the benchmark from
            // target/<profile>/; the services are built with the same profile.
            let exe = std::env::current_exe().map_err(|e| e.to_string())?;
            let mut dir = exe
                .parent()
                .map(Path::to_path_buf)
                .ok_or("no target directory")?;
            if dir.ends_with("deps") {
                dir.pop();
            }
            let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
            let mut build = Command::new(cargo);
            // Under `cargo test` the binaries are built exactly as `cargo test --workspace`
            // builds them (dev-dependencies change the feature unification, and any other
            // build would relink them every time): a no-op in `make test`. The benchmark, a
            // release binary, builds the release binaries.
            build.current_dir(repo_root());
            // Cargo's variables for this test process (CARGO_PKG_*, CARGO_MANIFEST_DIR, ...)
            // would make build scripts that watch the environment run again.
            for (key, _) in std::env::vars_os() {
                let key = key.to_string_lossy();
                if key.starts_with("CARGO_") && key != "CARGO_HOME" && key != "CARGO_TARGET_DIR" {
                    build.env_remove(key.as_ref());
                }
            }
            if dir.ends_with("release") {
                build.args(["build", "--quiet", "--release", "--workspace", "--bins"]);
            } else {
                build.args(["test", "--no-run", "--quiet", "--workspace"]);
            }
            let status = build.status().map_err(|e| e.to_string())?;
            if !status.success() {
                return Err("cargo build of the service binaries failed".into());
            }
            Ok(dir)
        })
        .clone()
        .map_err(anyhow::Error::msg)?;
    Ok(dir.join(name))
}

impl Process {
    /// Runs `binary --config <config>` with its output in `log`.
    pub fn spawn(binary_name: &str, config: &Path, log: PathBuf) -> Result<Process> {
        Self::spawn_env(binary_name, config, log, &[])
    }

    /// Like [`Process::spawn`], with more environment variables.
    pub fn spawn_env(
        binary_name: &str,
        config: &Path,
        log: PathBuf,
        env: &[(&str, String)],
    ) -> Result<Process> {
        let out = std::fs::File::create(&log)?;
        let err = out.try_clone()?;
        let child = Command::new(binary(binary_name)?)
            .arg("--config")
            .arg(config)
            .env("RUST_LOG", "info")
            .env("NO_COLOR", "1")
            .envs(env.iter().map(|(k, v)| (k, v)))
            .stdout(out)
            .stderr(err)
            .spawn()?;
        Ok(Process {
            child: Some(child),
            log,
        })
    }

    /// The process id, while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Sends a signal (`-HUP`, `-TERM`, ...).
    pub fn signal(&self, sig: &str) -> Result<()> {
        let pid = self.child.as_ref().context("process not running")?.id();
        let status = Command::new("kill")
            .args([sig, &pid.to_string()])
            .status()?;
        anyhow::ensure!(status.success(), "kill {sig} failed");
        Ok(())
    }

    /// Waits (bounded) for the process to exit; its exit status.
    pub async fn wait_exit(&mut self, limit: Duration) -> Result<std::process::ExitStatus> {
        let child = self.child.as_mut().context("process not running")?;
        let deadline = Instant::now() + limit;
        loop {
            if let Some(status) = child.try_wait()? {
                self.child = None;
                return Ok(status);
            }
            if Instant::now() > deadline {
                bail!("the process did not exit within {limit:?}");
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// SIGKILL, no goodbye.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// SIGTERM, then waits (bounded) for the exit; returns whether it exited cleanly.
    pub fn terminate(&mut self) -> bool {
        let Some(mut child) = self.child.take() else {
            return false;
        };
        let _ = Command::new("kill")
            .args(["-TERM", &child.id().to_string()])
            .status();
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            if let Ok(Some(status)) = child.try_wait() {
                return status.success();
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                return false;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// The process's output so far.
    pub fn output(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Waits (bounded) for a line containing `needle`; returns the text after it.
    pub async fn wait_for_line(&self, needle: &str) -> Result<String> {
        eventually(Duration::from_secs(20), needle, || async {
            self.output()
                .lines()
                .find_map(|l| l.split_once(needle).map(|(_, rest)| rest.to_string()))
        })
        .await
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        self.kill();
    }
}

/// How a service runs: as a task in this process, or as its own process.
pub enum Runner {
    Task(Service),
    Process(Process),
}

impl Runner {
    /// Stops gracefully (cancel, or SIGTERM).
    pub async fn stop(&mut self) {
        match self {
            Runner::Task(service) => service.stop().await,
            Runner::Process(process) => {
                process.terminate();
            }
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

/// Drops the lines of `defaults` whose key `extra` sets at its top level (before its first
/// table), so that `extra` replaces them.
fn without_overridden(defaults: &str, extra: &str) -> String {
    let key = |line: &str| line.split('=').next().unwrap_or("").trim().to_string();
    let overridden: Vec<String> = extra
        .lines()
        .take_while(|line| !line.trim_start().starts_with('['))
        .map(key)
        .filter(|k| !k.is_empty())
        .collect();
    defaults
        .lines()
        .filter(|line| !overridden.contains(&key(line)))
        .map(|line| format!("{line}\n"))
        .collect()
}

/// The authz-server configuration the tests use; keys in `extra` replace the defaults.
fn authz_config(
    url: &str,
    listen: &str,
    admin_listen: &str,
    dir: &Path,
    nats_urls: &[String],
    extra: &str,
) -> String {
    let [(demo, demo_hash), (other, other_hash), (admin, admin_hash)] = hashes();
    let defaults = format!(
        "listen = \"{listen}\"\nadmin_listen = \"{admin_listen}\"\nissuer = \"{url}\"\ndatabase = {db:?}\nsigning_key_file = {key:?}\ntoken_ttl = 300\nmax_ttl = 3600\nleeway = 30\n",
        db = dir.join("authz.db").display().to_string(),
        key = dir.join("signing-key.pem"),
    );
    let defaults = without_overridden(&defaults, extra);
    format!(
        r#"
{defaults}{extra}

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
        nats = Pki::get().nats_section(nats_urls, "authz", "authz"),
    )
}

/// The authz-server, with its database and key in its own directory.
pub struct Authz {
    /// The public listener: the issuer URL.
    pub url: String,
    /// The admin listener (`/admin/*`, `/metrics`).
    pub admin_url: String,
    pub dir: PathBuf,
    pub nats_urls: Vec<String>,
    pub extra: String,
    /// How far a process-run server's clock is shifted (ms; the `test-clock` feature).
    pub clock_offset_ms: i64,
    pub runner: Runner,
}

impl Authz {
    /// Waits until every committed revocation has been acknowledged by JetStream (the
    /// outbox backlog is 0).
    pub async fn wait_outbox_drained(&self, limit: Duration) -> Result<()> {
        eventually(limit, "the outbox to drain", || async {
            self.metrics()
                .await
                .contains("authz_outbox_backlog 0")
                .then_some(())
        })
        .await
    }

    /// Its SQLite database.
    pub fn database(&self) -> PathBuf {
        self.dir.join("authz.db")
    }

    /// The authz-server's `/metrics` text (empty if it does not answer).
    pub async fn metrics(&self) -> String {
        get_text(&format!("{}/metrics", self.admin_url))
            .await
            .unwrap_or_default()
    }

    /// Value of one metric line (`name{labels}` exactly as printed), or 0.
    pub async fn metric(&self, series: &str) -> f64 {
        metric_value(&self.metrics().await, series)
    }

    /// Starts an authz-server in-process whose files live in `dir` (reuse `dir` to restart it).
    pub async fn start(dir: &Path, nats_urls: &[String]) -> Result<Authz> {
        Self::start_on(bind().await?, bind().await?, dir, nats_urls, "").await
    }

    /// Like [`Authz::start`], with `extra` top-level TOML keys (e.g. `signing_alg = "ES256"`).
    pub async fn start_with(dir: &Path, nats_urls: &[String], extra: &str) -> Result<Authz> {
        Self::start_on(bind().await?, bind().await?, dir, nats_urls, extra).await
    }

    async fn start_on(
        listener: TcpListener,
        admin_listener: TcpListener,
        dir: &Path,
        nats_urls: &[String],
        extra: &str,
    ) -> Result<Authz> {
        init_tracing();
        let url = format!("http://127.0.0.1:{}", listener.local_addr()?.port());
        let admin_url = format!("http://127.0.0.1:{}", admin_listener.local_addr()?.port());
        let text = authz_config(&url, "127.0.0.1:0", "127.0.0.1:0", dir, nats_urls, extra);
        let config = authz_server::Config::from_toml(&text).map_err(anyhow::Error::msg)?;
        let shutdown = CancellationToken::new();
        let token = shutdown.clone();
        let task = tokio::spawn(async move {
            if let Err(e) = authz_server::run(config, listener, admin_listener, token).await {
                eprintln!("authz-server failed: {e}");
            }
        });
        let authz = Authz {
            url,
            admin_url,
            dir: dir.to_path_buf(),
            nats_urls: nats_urls.to_vec(),
            extra: extra.to_string(),
            clock_offset_ms: 0,
            runner: Runner::Task(Service {
                shutdown,
                task: Some(task),
            }),
        };
        authz.wait_answering().await?;
        Ok(authz)
    }

    /// Starts the authz-server binary as its own process on `port`, its admin listener on
    /// a free port (the same again when it restarts).
    pub async fn spawn_process(
        dir: &Path,
        port: u16,
        nats_urls: &[String],
        extra: &str,
    ) -> Result<Authz> {
        let admin_port = free_ports(1)?[0];
        Self::spawn_process_on(dir, port, admin_port, nats_urls, extra, 0).await
    }

    /// Like [`Authz::spawn_process`], the server's clock shifted by `offset_ms`: a replica
    /// whose clock is wrong.
    pub async fn spawn_process_with_clock(
        dir: &Path,
        nats_urls: &[String],
        extra: &str,
        offset_ms: i64,
    ) -> Result<Authz> {
        let ports = free_ports(2)?;
        Self::spawn_process_on(dir, ports[0], ports[1], nats_urls, extra, offset_ms).await
    }

    async fn spawn_process_on(
        dir: &Path,
        port: u16,
        admin_port: u16,
        nats_urls: &[String],
        extra: &str,
        clock_offset_ms: i64,
    ) -> Result<Authz> {
        let url = format!("http://127.0.0.1:{port}");
        let admin_url = format!("http://127.0.0.1:{admin_port}");
        let config = dir.join("authz.toml");
        std::fs::write(
            &config,
            authz_config(
                &url,
                &format!("127.0.0.1:{port}"),
                &format!("127.0.0.1:{admin_port}"),
                dir,
                nats_urls,
                extra,
            ),
        )?;
        let process = Process::spawn_env(
            "authz-server",
            &config,
            dir.join("authz.log"),
            &[("REVGATE_TEST_CLOCK_OFFSET_MS", clock_offset_ms.to_string())],
        )?;
        let authz = Authz {
            url,
            admin_url,
            dir: dir.to_path_buf(),
            nats_urls: nats_urls.to_vec(),
            extra: extra.to_string(),
            clock_offset_ms,
            runner: Runner::Process(process),
        };
        authz.wait_answering().await?;
        Ok(authz)
    }

    /// The process id of a process-run server.
    pub fn pid(&self) -> Option<u32> {
        match &self.runner {
            Runner::Process(process) => process.pid(),
            Runner::Task(_) => None,
        }
    }

    async fn wait_answering(&self) -> Result<()> {
        let http = reqwest::Client::new();
        let jwks = format!("{}/.well-known/jwks.json", self.url);
        eventually(Duration::from_secs(20), "authz-server to answer", || {
            let request = http.get(&jwks).send();
            async move { request.await.ok().filter(|r| r.status().is_success()) }
        })
        .await?;
        Ok(())
    }

    /// Stops the server gracefully and starts it again on the same port (its issuer URL) and
    /// the same files, the same way it ran before.
    pub async fn restart(&mut self) -> Result<()> {
        self.runner.stop().await;
        self.start_again().await
    }

    /// SIGKILLs the server process (between any two instructions) and starts it again.
    pub async fn kill_and_restart(&mut self) -> Result<()> {
        match &mut self.runner {
            Runner::Process(process) => process.kill(),
            Runner::Task(_) => bail!("kill needs a process-run authz-server"),
        }
        self.start_again().await
    }

    async fn start_again(&mut self) -> Result<()> {
        let addr = self.url.trim_start_matches("http://").to_string();
        let admin_addr = self.admin_url.trim_start_matches("http://").to_string();
        let (dir, urls, extra) = (self.dir.clone(), self.nats_urls.clone(), self.extra.clone());
        let offset = self.clock_offset_ms;
        *self = match self.runner {
            Runner::Task(_) => {
                let (listener, admin) = (
                    TcpListener::bind(&addr).await?,
                    TcpListener::bind(&admin_addr).await?,
                );
                Authz::start_on(listener, admin, &dir, &urls, &extra).await?
            }
            Runner::Process(_) => {
                let port = |a: &str| -> Result<u16> {
                    a.rsplit(':')
                        .next()
                        .and_then(|p| p.parse().ok())
                        .context("port")
                };
                let (port, admin_port) = (port(&addr)?, port(&admin_addr)?);
                Authz::spawn_process_on(&dir, port, admin_port, &urls, &extra, offset).await?
            }
        };
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
            .post(format!("{}/admin/revocations", self.admin_url))
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
    /// Requests it has received.
    pub requests: Arc<std::sync::atomic::AtomicU64>,
    pub service: Service,
}

impl Upstream {
    pub async fn start() -> Result<Upstream> {
        let listener = bind().await?;
        let url = format!("http://127.0.0.1:{}", listener.local_addr()?.port());
        let shutdown = CancellationToken::new();
        let token = shutdown.clone();
        let requests = Arc::new(std::sync::atomic::AtomicU64::new(0));
        let counter = requests.clone();
        let task = tokio::spawn(async move {
            let _ = demo_upstream::run_counting(listener, token, counter).await;
        });
        Ok(Upstream {
            url,
            requests,
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
            requests: Arc::default(),
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
        // Counts connections accepted (it never reads a request through).
        let requests: Arc<std::sync::atomic::AtomicU64> = Arc::default();
        let counter = requests.clone();
        let task = tokio::spawn(async move {
            let mut held = Vec::new();
            loop {
                tokio::select! {
                    _ = token.cancelled() => return,
                    accepted = listener.accept() => match accepted {
                        Ok((stream, _)) => {
                            counter.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                            held.push(stream);
                        }
                        Err(_) => return,
                    },
                }
            }
        });
        Ok(Upstream {
            url,
            requests,
            service: Service {
                shutdown,
                task: Some(task),
            },
        })
    }

    /// Requests received so far.
    pub fn request_count(&self) -> u64 {
        self.requests.load(std::sync::atomic::Ordering::SeqCst)
    }
}

/// The demo upstream behind TLS that requires a client certificate from the development CA
/// (mutual TLS), with the PKI's `upstream` certificate (SAN 127.0.0.1, localhost).
pub struct TlsUpstream {
    pub url: String,
    /// Requests it has served.
    pub requests: Arc<std::sync::atomic::AtomicU64>,
    /// TLS handshakes it refused.
    pub refused: Arc<std::sync::atomic::AtomicU64>,
    pub service: Service,
}

impl TlsUpstream {
    pub async fn start() -> Result<TlsUpstream> {
        use rustls::pki_types::pem::PemObject;
        use rustls::pki_types::{CertificateDer, PrivateKeyDer};
        let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
        let certs = &Pki::get().certs;
        let mut roots = rustls::RootCertStore::empty();
        for ca in CertificateDer::pem_file_iter(certs.join("ca.pem"))? {
            roots.add(ca?)?;
        }
        let verifier = rustls::server::WebPkiClientVerifier::builder(Arc::new(roots)).build()?;
        let chain = CertificateDer::pem_file_iter(certs.join("upstream.pem"))?
            .collect::<std::result::Result<Vec<_>, _>>()?;
        let key = PrivateKeyDer::from_pem_file(certs.join("upstream-key.pem"))?;
        let mut config = rustls::ServerConfig::builder()
            .with_client_cert_verifier(verifier)
            .with_single_cert(chain, key)?;
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
        let listener = bind().await?;
        let url = format!("https://127.0.0.1:{}", listener.local_addr()?.port());
        let requests = Arc::new(std::sync::atomic::AtomicU64::new(0));
        let refused = Arc::new(std::sync::atomic::AtomicU64::new(0));
        let app = demo_upstream::app(requests.clone());
        let shutdown = CancellationToken::new();
        let (token, refused_count) = (shutdown.clone(), refused.clone());
        let task = tokio::spawn(async move {
            loop {
                let stream = tokio::select! {
                    _ = token.cancelled() => return,
                    accepted = listener.accept() => match accepted {
                        Ok((stream, _)) => stream,
                        Err(_) => return,
                    },
                };
                let (acceptor, app, refused) =
                    (acceptor.clone(), app.clone(), refused_count.clone());
                tokio::spawn(async move {
                    let Ok(tls) = acceptor.accept(stream).await else {
                        refused.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                        return;
                    };
                    let service = hyper_util::service::TowerToHyperService::new(app);
                    let _ = hyper_util::server::conn::auto::Builder::new(
                        hyper_util::rt::TokioExecutor::new(),
                    )
                    .serve_connection(hyper_util::rt::TokioIo::new(tls), service)
                    .await;
                });
            }
        });
        Ok(TlsUpstream {
            url,
            requests,
            refused,
            service: Service {
                shutdown,
                task: Some(task),
            },
        })
    }

    /// Requests served so far.
    pub fn request_count(&self) -> u64 {
        self.requests.load(std::sync::atomic::Ordering::SeqCst)
    }
}

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
        "audiences = [\"demo-api\"]\nlisten = \"127.0.0.1:0\"\nadmin_listen = \"127.0.0.1:0\"\nissuer = \"{issuer}\"\njwks_url = \"{issuer}/.well-known/jwks.json\"\nleeway = 30\nmax_ttl = 3600\nshutdown_grace = 2\n"
    );
    let defaults = without_overridden(&defaults, extra);
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
        let text = gateway_config(id, cert, nats_urls, &authz.url, &upstream.url, extra);
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
            runner: Runner::Task(Service {
                shutdown,
                task: Some(task),
            }),
        })
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
fn metric_value(text: &str, series: &str) -> f64 {
    let series = series.trim_end();
    text.lines()
        .find_map(|l| {
            l.strip_prefix(series)
                .filter(|v| v.starts_with(' '))
                .and_then(|v| v.trim().parse().ok())
        })
        .unwrap_or(0.0)
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

impl Stack {
    /// Starts a gateway as identity `id` on this stack's NATS, authz-server and demo
    /// upstream, with `extra` configuration (see [`Gateway::start_with`]), and waits until
    /// it is ready.
    pub async fn ready_gateway(&self, id: &str, extra: &str) -> Result<Gateway> {
        let gw = Gateway::start_with(
            id,
            id,
            &[self.nats.url()],
            &self.authz,
            &self.upstream,
            extra,
        )
        .await?;
        gw.wait_ready().await?;
        Ok(gw)
    }
}

/// Tokens a [`Probe`] sends, each with when its revocation was acknowledged.
type WatchedTokens = Arc<std::sync::Mutex<Vec<(String, Option<Instant>)>>>;

/// Sends a steady stream of requests with every watched token to every gateway, and records
/// each 2xx answered to a token revoked more than `bound` before the request was sent.
pub struct Probe {
    tokens: WatchedTokens,
    pub gateways: Arc<std::sync::Mutex<Vec<String>>>,
    stop: CancellationToken,
    task: Option<JoinHandle<ProbeReport>>,
}

/// What a [`Probe`] saw.
#[derive(Debug, Default)]
pub struct ProbeReport {
    pub requests: u64,
    pub by_status: std::collections::BTreeMap<u16, u64>,
    /// (gateway, token index, how long after its revocation) of every 2xx past the bound.
    pub violations: Vec<(String, usize, Duration)>,
}

impl Probe {
    /// Starts probing `gateways` (base URLs) on `path`; revoked tokens must be refused once
    /// they were revoked more than `bound` earlier.
    pub fn start(gateways: Vec<String>, path: &str, bound: Duration) -> Probe {
        let tokens: WatchedTokens = Arc::default();
        let gateways = Arc::new(std::sync::Mutex::new(gateways));
        let stop = CancellationToken::new();
        let (t, g, s, path) = (
            tokens.clone(),
            gateways.clone(),
            stop.clone(),
            path.to_string(),
        );
        let task = tokio::spawn(async move {
            let http = reqwest::Client::builder()
                .timeout(Duration::from_secs(5))
                .build()
                .unwrap_or_default();
            let mut report = ProbeReport::default();
            while !s.is_cancelled() {
                let targets = g.lock().map(|g| g.clone()).unwrap_or_default();
                let count = t.lock().map(|t| t.len()).unwrap_or(0);
                for gw in &targets {
                    for i in 0..count {
                        let token = t.lock().ok().and_then(|t| t.get(i).map(|e| e.0.clone()));
                        let Some(token) = token else { continue };
                        let sent = Instant::now();
                        let status = match http
                            .get(format!("{gw}{path}"))
                            .bearer_auth(&token)
                            .send()
                            .await
                        {
                            Ok(r) => r.status().as_u16(),
                            Err(_) => 0,
                        };
                        report.requests += 1;
                        *report.by_status.entry(status).or_default() += 1;
                        if (200..300).contains(&status) {
                            let revoked = t.lock().ok().and_then(|t| t.get(i).and_then(|e| e.1));
                            if let Some(at) = revoked {
                                if sent > at + bound {
                                    report.violations.push((gw.clone(), i, sent - at));
                                }
                            }
                        }
                    }
                }
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            report
        });
        Probe {
            tokens,
            gateways,
            stop,
            task: Some(task),
        }
    }

    /// Starts watching `token`; returns its index.
    pub fn watch(&self, token: &str) -> usize {
        let mut t = self.tokens.lock().unwrap_or_else(|p| p.into_inner());
        t.push((token.to_string(), None));
        t.len() - 1
    }

    /// Records that the API acknowledged the revocation of token `index` now.
    pub fn revoked(&self, index: usize) {
        let mut t = self.tokens.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(entry) = t.get_mut(index) {
            entry.1 = Some(Instant::now());
        }
    }

    /// Replaces a gateway's URL (after a restart on new ports).
    pub fn replace_gateway(&self, old: &str, new: &str) {
        let mut g = self.gateways.lock().unwrap_or_else(|p| p.into_inner());
        for url in g.iter_mut().filter(|u| *u == old) {
            *url = new.to_string();
        }
    }

    /// Stops probing and returns the report.
    pub async fn finish(mut self) -> ProbeReport {
        self.stop.cancel();
        match self.task.take() {
            Some(task) => task.await.unwrap_or_default(),
            None => ProbeReport::default(),
        }
    }
}

impl Drop for Probe {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

/// Waits until every gateway refuses every token with 401.
pub async fn all_refused(gateways: &[String], tokens: &[String], limit: Duration) -> Result<()> {
    let http = reqwest::Client::new();
    for gw in gateways {
        for token in tokens {
            eventually(limit, "the revocation to be enforced", || async {
                let r = http
                    .get(format!("{gw}/echo/"))
                    .bearer_auth(token)
                    .send()
                    .await
                    .ok()?;
                (r.status() == 401).then_some(())
            })
            .await?;
        }
    }
    Ok(())
}

/// A PostgreSQL database of its own for one test, dropped afterwards. The server is the one
/// `deploy/ensure-postgres.sh` makes sure of (or `REVGATE_TEST_POSTGRES`).
pub struct PgDatabase {
    pub url: String,
    admin_url: String,
    name: String,
}

impl PgDatabase {
    pub async fn create() -> Result<PgDatabase> {
        use sqlx::Connection;
        let admin_url = std::env::var("REVGATE_TEST_POSTGRES")
            .unwrap_or_else(|_| "postgres://postgres:postgres@127.0.0.1:5432/postgres".into());
        let mut conn = sqlx::PgConnection::connect(&admin_url)
            .await
            .with_context(|| {
                format!("cannot reach PostgreSQL at {admin_url} (run deploy/ensure-postgres.sh)")
            })?;
        let name = format!("revgate_test_{}", uuid_like());
        sqlx::query(&format!("CREATE DATABASE {name}"))
            .execute(&mut conn)
            .await?;
        let base = admin_url
            .rsplit_once('/')
            .map(|(b, _)| b)
            .unwrap_or(&admin_url);
        Ok(PgDatabase {
            url: format!("{base}/{name}"),
            admin_url,
            name,
        })
    }
}

fn uuid_like() -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    format!("{}_{}", std::process::id(), nanos % 1_000_000_000_000)
}

impl Drop for PgDatabase {
    fn drop(&mut self) {
        let (url, name) = (self.admin_url.clone(), self.name.clone());
        // Drop runs outside async: use a runtime of its own on a plain thread.
        let _ = std::thread::spawn(move || {
            let Ok(rt) = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            else {
                return;
            };
            rt.block_on(async move {
                use sqlx::Connection;
                if let Ok(mut conn) = sqlx::PgConnection::connect(&url).await {
                    let _ = sqlx::query(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
                        .execute(&mut conn)
                        .await;
                }
            });
        })
        .join();
    }
}
pub mod seed;

/// The body of a GET as text; `None` on any failure (for polling with [`eventually`]).
pub async fn get_text(url: &str) -> Option<String> {
    reqwest::get(url).await.ok()?.text().await.ok()
}

/// The `q` quantile (0 to 1, nearest rank) of durations sorted in ascending order.
pub fn quantile(sorted: &[Duration], q: f64) -> Duration {
    sorted[((sorted.len() as f64 - 1.0) * q).round() as usize]
}

/// CPU seconds a process (all its threads, user and system) has used, from
/// `/proc/<pid>/stat`; 0 if it cannot be read.
pub fn cpu_seconds(pid: u32) -> f64 {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return 0.0;
    };
    let Some(rest) = stat.rsplit_once(')').map(|(_, r)| r) else {
        return 0.0;
    };
    // Fields after the command: state is field 3, utime 14 and stime 15.
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| {
        fields
            .get(i - 3)
            .and_then(|f| f.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    (ticks(14) + ticks(15)) / clock_ticks()
}

/// Clock ticks per second (`getconf CLK_TCK`, 100 if that fails).
fn clock_ticks() -> f64 {
    static TICKS: std::sync::OnceLock<f64> = std::sync::OnceLock::new();
    *TICKS.get_or_init(|| {
        std::process::Command::new("getconf")
            .arg("CLK_TCK")
            .output()
            .ok()
            .and_then(|o| String::from_utf8(o.stdout).ok())
            .and_then(|s| s.trim().parse().ok())
            .unwrap_or(100.0)
    })
}

/// VmRSS and VmHWM (peak) of a process, in bytes, from `/proc/<pid>/status`.
pub fn resident_memory(pid: u32) -> Result<(u64, u64)> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let field = |name: &str| -> Result<u64> {
        let kb: u64 = status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse().ok())
            .with_context(|| format!("no {name} in /proc/{pid}/status"))?;
        Ok(kb * 1024)
    };
    Ok((field("VmRSS:")?, field("VmHWM:")?))
}

/// Connects to NATS as `identity`, counting the permission violations the server reports.
pub async fn connect_nats_as(
    url: &str,
    identity: &str,
) -> anyhow::Result<(
    async_nats::Client,
    std::sync::Arc<std::sync::atomic::AtomicUsize>,
)> {
    let pki = Pki::get();
    let violations = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let seen = violations.clone();
    let client = async_nats::ConnectOptions::new()
        .require_tls(true)
        .add_root_certificates(pki.certs.join("ca.pem"))
        .add_client_certificate(
            pki.certs.join(format!("{identity}.pem")),
            pki.certs.join(format!("{identity}-key.pem")),
        )
        .custom_inbox_prefix(format!("_INBOX_{identity}"))
        .event_callback(move |event| {
            let seen = seen.clone();
            async move {
                if let async_nats::Event::ServerError(e) = event {
                    if e.to_string()
                        .to_lowercase()
                        .contains("permissions violation")
                    {
                        seen.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                    }
                }
            }
        })
        .connect(url)
        .await?;
    Ok((client, violations))
}
