//! A real nginx as an upstream, for tests that need a server resolving paths the way
//! deployed servers do: each `server` answers with its name and nginx's own resolved path
//! (`$uri`: decoded, dot segments removed, slashes merged), and logs every request it serves.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

/// An nginx process with one `server` per name, killed and its files removed on drop.
pub struct Nginx {
    dir: tempfile::TempDir,
    child: Child,
    /// Each server's name and port.
    pub servers: Vec<(String, u16)>,
}

fn nginx_binary() -> Result<PathBuf> {
    for candidate in ["/usr/sbin/nginx", "/usr/bin/nginx"] {
        if Path::new(candidate).exists() {
            return Ok(PathBuf::from(candidate));
        }
    }
    bail!("nginx is not installed (make test installs it with deploy/ensure-deps.sh)")
}

impl Nginx {
    /// Starts one nginx with a server per name, each answering every request with
    /// `server=<name> uri=<$uri>`.
    pub fn start(names: &[&str]) -> Result<Nginx> {
        let dir = tempfile::tempdir()?;
        let ports = crate::free_ports(names.len())?;
        let d = dir.path().display();
        let servers: String = names
            .iter()
            .zip(&ports)
            .map(|(name, port)| {
                format!(
                    "  server {{\n    listen 127.0.0.1:{port};\n    location / {{ default_type text/plain; return 200 \"server={name} uri=$uri\\n\"; }}\n  }}\n"
                )
            })
            .collect();
        let temp: String = ["client_body", "proxy", "fastcgi", "uwsgi", "scgi"]
            .iter()
            .map(|t| format!("  {t}_temp_path {d}/{t};\n"))
            .collect();
        let conf = format!(
            "daemon off;\nmaster_process off;\nworker_processes 1;\nerror_log {d}/error.log warn;\npid {d}/nginx.pid;\nevents {{ worker_connections 256; }}\nhttp {{\n  log_format served '$server_port $uri';\n  access_log {d}/access.log served;\n{temp}{servers}}}\n"
        );
        let conf_path = dir.path().join("nginx.conf");
        std::fs::write(&conf_path, conf)?;
        let child = Command::new(nginx_binary()?)
            .arg("-p")
            .arg(dir.path())
            .arg("-c")
            .arg(&conf_path)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("starting nginx")?;
        let mut nginx = Nginx {
            dir,
            child,
            servers: names.iter().map(|n| n.to_string()).zip(ports).collect(),
        };
        let deadline = Instant::now() + Duration::from_secs(10);
        for (_, port) in &nginx.servers {
            while std::net::TcpStream::connect(("127.0.0.1", *port)).is_err() {
                if let Ok(Some(status)) = nginx.child.try_wait() {
                    bail!("nginx exited ({status}): {}", nginx.error_log());
                }
                if Instant::now() > deadline {
                    bail!("nginx did not listen on {port}: {}", nginx.error_log());
                }
                std::thread::sleep(Duration::from_millis(10));
            }
        }
        Ok(nginx)
    }

    /// `http://127.0.0.1:<port>` of the server called `name`.
    pub fn url(&self, name: &str) -> String {
        let port = self
            .servers
            .iter()
            .find(|(n, _)| n == name)
            .map_or(0, |(_, p)| *p);
        format!("http://127.0.0.1:{port}")
    }

    /// Requests served so far, as logged.
    pub fn served(&self) -> usize {
        std::fs::read_to_string(self.dir.path().join("access.log"))
            .map_or(0, |log| log.lines().count())
    }

    fn error_log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("error.log")).unwrap_or_default()
    }
}

impl Drop for Nginx {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
