//! A real `nats-server` (or a cluster of three) with mutual TLS and JetStream, configured by
//! `deploy/nats/render-config.sh`, and a client connecting as any identity of the PKI.

use super::*;

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
