//! The authz-server under test: its configuration, in-process or as a process, and the
//! calls tests make of it.

use super::*;
use authz_server::config::ServiceConfig as _;

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
pub(crate) fn without_overridden(defaults: &str, extra: &str) -> String {
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
        "listen = \"{listen}\"\nadmin_listen = \"{admin_listen}\"\nissuer = \"{url}\"\ndatabase = {db:?}\nsigning_key_file = {key:?}\ntoken_ttl_s = 300\nmax_ttl_s = 3600\nleeway_s = 30\n",
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
            if let Err(e) = authz_server::run(
                config,
                authz_server::Listeners {
                    public: listener,
                    admin: admin_listener,
                },
                token,
            )
            .await
            {
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

    /// The rules in force, from the admin API's listing (up to 1,000), oldest first.
    pub async fn revocations(&self) -> Result<Vec<serde_json::Value>> {
        let page: serde_json::Value = reqwest::Client::new()
            .get(format!("{}/admin/revocations?limit=1000", self.admin_url))
            .basic_auth("admin", Some("admin-secret"))
            .send()
            .await?
            .json()
            .await?;
        Ok(page["revocations"].as_array().cloned().unwrap_or_default())
    }

    /// The receipt of revocation `id` (`GET /admin/revocations/{id}`).
    pub async fn receipt(&self, id: &str) -> Result<serde_json::Value> {
        Ok(reqwest::Client::new()
            .get(format!("{}/admin/revocations/{id}", self.admin_url))
            .basic_auth("admin", Some("admin-secret"))
            .send()
            .await?
            .json()
            .await?)
    }

    /// The `kid` of the key that signs this server's tokens.
    pub async fn signing_kid(&self) -> Result<String> {
        let jwks: serde_json::Value = reqwest::get(format!("{}/.well-known/jwks.json", self.url))
            .await?
            .json()
            .await?;
        jwks["keys"]
            .as_array()
            .and_then(|keys| keys.iter().find(|k| k["use"] == "sig"))
            .and_then(|k| k["kid"].as_str())
            .map(str::to_string)
            .with_context(|| format!("no signing key in {jwks}"))
    }

    /// A gateway's `[hub]` and its `[[issuers]]` entry for this server's tokens (audience
    /// `demo-api`), for configurations of several issuers.
    pub fn as_hub_and_issuer(&self) -> String {
        format!(
            "[hub]\njwks_url = \"{a}/.well-known/jwks.json\"\n\n[[issuers]]\nissuer = \"{a}\"\naudiences = [\"demo-api\"]\njwks_url = \"{a}/.well-known/jwks.json\"\n",
            a = self.url
        )
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
