//! PostgreSQL for the tests. [`PgDatabase`]: a database of its own for one test, on the
//! server `deploy/ensure-postgres.sh` makes sure of. [`PrivatePostgres`]: a server of a
//! test's own, initialised in a temporary directory, listening on a dynamic loopback port,
//! with trust authentication; a test can stop it (as a crash would) and start it again
//! without touching anyone else's database. It is stopped on drop.
//!
//! PostgreSQL refuses to run as root: as root, its files belong to the `postgres` user
//! (Debian's package makes it) and its commands run through `runuser`.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context, Result};

pub struct PrivatePostgres {
    pub port: u16,
    dir: tempfile::TempDir,
    bin: PathBuf,
    /// The user to run PostgreSQL's commands as, when this process is root.
    user: Option<String>,
}

impl PrivatePostgres {
    /// Initialises a cluster and starts it.
    pub fn start() -> Result<PrivatePostgres> {
        let bin = server_bin()?;
        let dir = tempfile::tempdir()?;
        let root = Command::new("id")
            .arg("-u")
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
            .unwrap_or(false);
        let user = root.then(|| "postgres".to_string());
        if let Some(user) = &user {
            let status = Command::new("chown")
                .args(["-R", user])
                .arg(dir.path())
                .status()?;
            if !status.success() {
                bail!("cannot give {} to {user}", dir.path().display());
            }
        }
        let server = PrivatePostgres {
            port: crate::free_ports(1)?[0],
            dir,
            bin,
            user,
        };
        server.run(
            "initdb",
            &[
                "-D",
                &server.data(),
                "-A",
                "trust",
                "-U",
                "postgres",
                "--no-sync",
            ],
        )?;
        server.start_again()?;
        Ok(server)
    }

    /// `postgres://postgres@127.0.0.1:<port>/postgres`.
    pub fn url(&self) -> String {
        format!("postgres://postgres@127.0.0.1:{}/postgres", self.port)
    }

    /// Stops the server at once, as a crash would (`pg_ctl stop -m immediate`).
    pub fn stop(&self) -> Result<()> {
        self.run(
            "pg_ctl",
            &["-D", &self.data(), "-m", "immediate", "-w", "stop"],
        )
    }

    /// Starts the (stopped) server again on the same port and files; returns once it accepts
    /// connections.
    pub fn start_again(&self) -> Result<()> {
        let options = format!(
            "-p {} -c listen_addresses=127.0.0.1 -k {} -c fsync=off",
            self.port,
            self.dir.path().display()
        );
        let log = self.dir.path().join("postgres.log");
        self.run(
            "pg_ctl",
            &[
                "-D",
                &self.data(),
                "-l",
                &log.display().to_string(),
                "-o",
                &options,
                "-w",
                "start",
            ],
        )
    }

    fn data(&self) -> String {
        self.dir.path().join("data").display().to_string()
    }

    fn run(&self, tool: &str, args: &[&str]) -> Result<()> {
        let program = self.bin.join(tool);
        let mut command = match &self.user {
            Some(user) => {
                let mut c = Command::new("runuser");
                c.args(["-u", user, "--"]).arg(&program);
                c
            }
            None => Command::new(&program),
        };
        let out = command
            .args(args)
            .current_dir(self.dir.path())
            .output()
            .with_context(|| format!("cannot run {}", program.display()))?;
        if !out.status.success() {
            bail!(
                "{tool} failed: {}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        Ok(())
    }
}

impl Drop for PrivatePostgres {
    fn drop(&mut self) {
        let _ = self.stop();
    }
}

/// The newest installed PostgreSQL's `bin` directory (Debian keeps one per major version).
fn server_bin() -> Result<PathBuf> {
    let root = Path::new("/usr/lib/postgresql");
    let mut versions: Vec<(u32, PathBuf)> = std::fs::read_dir(root)
        .with_context(|| {
            format!(
                "no PostgreSQL under {} (run deploy/ensure-postgres.sh)",
                root.display()
            )
        })?
        .filter_map(|entry| {
            let entry = entry.ok()?;
            let version = entry.file_name().to_str()?.parse().ok()?;
            Some((version, entry.path().join("bin")))
        })
        .filter(|(_, bin)| bin.join("initdb").exists())
        .collect();
    versions.sort();
    versions
        .pop()
        .map(|(_, bin)| bin)
        .context("no PostgreSQL server binaries (initdb) installed")
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

/// A database name no other test takes: the process, a counter within it, and a random part
/// (CI once got the same name twice from process id and clock alone).
fn uuid_like() -> String {
    use std::hash::{BuildHasher, Hasher};
    static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    // Each `RandomState` is seeded with fresh random keys.
    let random = std::collections::hash_map::RandomState::new()
        .build_hasher()
        .finish();
    format!("{}_{n}_{random:016x}", std::process::id())
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
