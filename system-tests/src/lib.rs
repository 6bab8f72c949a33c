//! The test harness: real processes and real certificates, dynamic ports, everything killed
//! and removed on drop. One module per thing a test starts:
//!
//! - [`pki`]: the development PKI made by `certs/make-dev-certs.sh`, once per test process.
//! - [`nats`]: a `nats-server` (or a cluster) with the config `deploy/nats/render-config.sh`
//!   renders, and a NATS client as any identity.
//! - [`authz`], [`gateways`], [`upstream`]: the services, in-process through their `run` or as
//!   processes ([`process`]); the demo upstream also behind mutual TLS.
//! - [`issuer`]: a second token issuer (its own key, discovery metadata and JWK Set).
//! - [`oidc`]: a real, external OpenID provider (node's `oidc-provider`, which
//!   `deploy/ensure-oidc-provider.sh` installs): RFC 9068 access tokens by client credentials
//!   and by a login through its pages, and back-channel logout when a session ends.
//! - [`otlp`]: an OTLP traces receiver that decodes with Python's `opentelemetry-proto`.
//! - [`stack`]: all of them together; [`probe`]: the fault tests' watch on revoked tokens.
//! - [`net`]: free ports and a TCP proxy that cuts like a partition.
//! - [`postgres`]: a PostgreSQL database of a test's own, or a server of its own.
//! - [`nginx`]: a real nginx upstream that reports the path it resolved.
//! - [`seed`]: many revocation rules at once, straight into the stream (the benchmarks, and
//!   tests of long replays).
//! - Here: [`eventually`], a bounded wait on a condition, and [`get_text`] to poll with it.
//!
//! Everything but [`seed`] is re-exported at the crate root (`system_tests::Authz`). The
//! benchmarks of `make bench` (the `bench` crate) start their stacks with this harness too.

use std::future::Future;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

pub mod authz;
pub mod gateways;
pub mod issuer;
pub mod nats;
pub mod net;
pub mod nginx;
pub mod oidc;
pub mod otlp;
pub mod pki;
pub mod postgres;
pub mod probe;
pub mod process;
pub mod seed;
pub mod stack;
pub mod upstream;

pub use authz::*;
pub use gateways::*;
pub use issuer::{rsa_key, rsa_key_pem, TestIssuer};
pub use nats::*;
pub use net::*;
pub use nginx::Nginx;
pub use oidc::{
    jwt_claims, OidcClient, OidcProvider, OidcProviderOptions, OidcResource, ProviderSession,
};
pub use otlp::OtlpReceiver;
pub use pki::*;
pub use postgres::{PgDatabase, PrivatePostgres};
pub use probe::*;
pub use process::*;
pub use stack::*;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
pub use upstream::*;

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

/// The body of a GET as text; `None` on any failure (for polling with [`eventually`]).
pub async fn get_text(url: &str) -> Option<String> {
    reqwest::get(url).await.ok()?.text().await.ok()
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
