//! `authz-server --config FILE`: reads the configuration, starts tracing, binds the listeners
//! and runs the server until SIGINT or SIGTERM. Any subcommand (`hash-secret`, `revoke`,
//! `rotate-key`, `clients`) is handed to [`cli`] instead.

#![forbid(unsafe_code)]

use std::path::PathBuf;
use std::process::ExitCode;

use authz_server::config::ServiceConfig as _;

use clap::Parser;
use tokio_util::sync::CancellationToken;

mod cli;

/// OAuth 2.0 authorization server issuing JWT access tokens and publishing revocations
/// over mutual-TLS NATS.
#[derive(Parser)]
#[command(version)]
struct Cli {
    /// TOML configuration file; `AUTHZ_*` environment variables override its keys
    /// (nested keys with `__`, e.g. `AUTHZ_NATS__URLS`).
    #[arg(long, short, value_name = "FILE", env = "AUTHZ_CONFIG")]
    config: Option<PathBuf>,
    #[command(subcommand)]
    command: Option<cli::Command>,
}

/// Exit status for a configuration error (EX_CONFIG would be 78; 64, EX_USAGE, is what
/// operators of linkerd and friends expect for "you started me wrong").
const EXIT_BAD_CONFIG: u8 = 64;

fn main() -> ExitCode {
    let cli = Cli::parse();
    if let Some(command) = cli.command {
        return cli::run(command);
    }
    let Some(path) = cli.config else {
        eprintln!("error: --config FILE is required (see --help)");
        return ExitCode::from(EXIT_BAD_CONFIG);
    };
    let config = match authz_server::Config::load(&path) {
        Ok(config) => config,
        Err(e) => {
            eprintln!("error: invalid configuration: {e}");
            return ExitCode::from(EXIT_BAD_CONFIG);
        }
    };
    service_kit::init_logging(&config.log_format);
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    runtime.block_on(async move {
        let Some(listeners) =
            authz_server::Listeners::bind(config.listen, config.admin_listen).await
        else {
            return ExitCode::FAILURE;
        };
        let shutdown = CancellationToken::new();
        tokio::spawn(service_kit::shutdown_on_signal(shutdown.clone()));
        match authz_server::run(config, listeners, shutdown).await {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                tracing::error!(error = %e, "authz-server failed");
                ExitCode::FAILURE
            }
        }
    })
}
