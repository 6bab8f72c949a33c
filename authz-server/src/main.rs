//! `authz-server --config FILE`: reads the configuration, starts tracing, binds the listener
//! and runs the server until SIGINT or SIGTERM.

use std::io::Read;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use tokio_util::sync::CancellationToken;

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
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Reads a client secret on standard input and prints its Argon2id hash for the config.
    HashSecret,
}

/// Exit status for a configuration error (EX_CONFIG would be 78; 64, EX_USAGE, is what
/// operators of linkerd and friends expect for "you started me wrong").
const EXIT_BAD_CONFIG: u8 = 64;

fn main() -> ExitCode {
    let cli = Cli::parse();
    if let Some(Command::HashSecret) = cli.command {
        let mut secret = String::new();
        if std::io::stdin().read_to_string(&mut secret).is_err() {
            eprintln!("error: could not read the secret from standard input");
            return ExitCode::FAILURE;
        }
        return match authz_server::clients::hash_secret(secret.trim_end_matches(['\r', '\n'])) {
            Ok(hash) => {
                println!("{hash}");
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("error: {e}");
                ExitCode::FAILURE
            }
        };
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
    tracing_subscriber::fmt()
        // Colour codes only for a terminal, never in log files.
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stdout()))
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .init();
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    runtime.block_on(async move {
        let listener = match tokio::net::TcpListener::bind(config.listen).await {
            Ok(l) => l,
            Err(e) => {
                tracing::error!(addr = %config.listen, error = %e, "cannot bind");
                return ExitCode::FAILURE;
            }
        };
        let shutdown = CancellationToken::new();
        tokio::spawn(signal_shutdown(shutdown.clone()));
        match authz_server::run(config, listener, shutdown).await {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                tracing::error!(error = %e, "authz-server failed");
                ExitCode::FAILURE
            }
        }
    })
}

/// Cancels `shutdown` on the first SIGINT or SIGTERM.
async fn signal_shutdown(shutdown: CancellationToken) {
    use tokio::signal::unix::{signal, SignalKind};
    let (Ok(mut term), Ok(mut int)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
        tracing::error!("cannot install signal handlers");
        return;
    };
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
    }
    tracing::info!("shutting down");
    shutdown.cancel();
}
