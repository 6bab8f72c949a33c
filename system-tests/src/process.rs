//! How a service runs: as a task in this process ([`Service`]) or as its own process
//! ([`Process`], built once per test process by [`binary`]).

use super::*;

/// A service task running in this process; stopped on [`Service::stop`] or on drop.
pub struct Service {
    pub(crate) shutdown: CancellationToken,
    pub(crate) task: Option<JoinHandle<()>>,
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

    /// Runs any program (not one of the service binaries), its output in `log`, killed on
    /// drop like the others.
    pub fn spawn_command(mut command: Command, log: PathBuf) -> Result<Process> {
        let out = std::fs::File::create(&log)?;
        let err = out.try_clone()?;
        let child = command
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .spawn()
            .with_context(|| format!("starting {:?}", command.get_program()))?;
        Ok(Process {
            child: Some(child),
            log,
        })
    }

    /// Whether the process has exited (and how), without waiting.
    pub fn exited(&mut self) -> Option<std::process::ExitStatus> {
        self.child.as_mut()?.try_wait().ok().flatten()
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
