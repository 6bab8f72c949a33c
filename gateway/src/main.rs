//! `gateway --config FILE`: reads the configuration, starts tracing, binds both listeners and
//! runs the gateway until SIGINT or SIGTERM.

use std::path::PathBuf;
use std::process::ExitCode;

use gateway::config::ServiceConfig as _;

use clap::Parser;
use tokio_util::sync::CancellationToken;

/// API gateway that checks JWT access tokens locally and enforces revocations received over
/// mutual-TLS NATS.
#[derive(Parser)]
#[command(version)]
struct Cli {
    /// TOML configuration file; `GATEWAY_*` environment variables override its keys
    /// (nested keys with `__`, e.g. `GATEWAY_NATS__URLS`).
    #[arg(long, short, value_name = "FILE", env = "GATEWAY_CONFIG")]
    config: PathBuf,
}

/// mimalloc: the request path allocates a few dozen small blocks (header maps, bodies,
/// futures), and glibc's allocator cost several percent of the gateway's CPU in the profile
/// (see BENCHMARKS.md).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Exit status for a configuration error, before any port is bound.
const EXIT_BAD_CONFIG: u8 = 64;

fn main() -> ExitCode {
    let cli = Cli::parse();
    let config = match gateway::Config::load(&cli.config) {
        Ok(config) => config,
        Err(e) => {
            eprintln!("error: invalid configuration: {e}");
            return ExitCode::from(EXIT_BAD_CONFIG);
        }
    };
    service_kit::init_logging(&config.log_format);
    // One thread: a current-thread runtime, which skips the work-stealing machinery.
    let mut runtime = if config.worker_threads == 1 {
        tokio::runtime::Builder::new_current_thread()
    } else {
        tokio::runtime::Builder::new_multi_thread()
    };
    if config.worker_threads > 1 {
        runtime.worker_threads(config.worker_threads);
    }
    let runtime = match runtime.enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    runtime.block_on(async move {
        let Some(listeners) = gateway::Listeners::bind(config.listen, config.admin_listen).await
        else {
            return ExitCode::FAILURE;
        };
        let shutdown = CancellationToken::new();
        tokio::spawn(service_kit::shutdown_on_signal(shutdown.clone()));
        tokio::spawn(return_freed_memory());
        let (reload_tx, reloads) = tokio::sync::mpsc::channel(1);
        tokio::spawn(signal_reload(cli.config.clone(), reload_tx));
        match gateway::run_with_reload(config, listeners, shutdown, reloads).await {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                tracing::error!(error = %e, "gateway failed");
                ExitCode::FAILURE
            }
        }
    })
}

/// How often memory freed for at least mimalloc's purge delay (1 s) goes back to the system.
const PURGE_EVERY: std::time::Duration = std::time::Duration::from_secs(1);

/// Gives memory freed after a burst back to the system, even when the gateway has gone quiet.
///
/// mimalloc returns freed pages to the system only once they have been free for its purge
/// delay, and it checks that delay only when the program allocates or frees again. After a
/// spike of connections, a gateway that then goes quiet would keep the spike's memory (300 MiB
/// after 4,000 connections, BENCHMARKS.md). `mi_collect(false)` runs that check on a timer:
/// it frees the empty pages of the heap of the thread it runs on, and returns to the system
/// (for the whole process) what has been free for the delay, as mimalloc does on its own at
/// its next allocation; under load it returns no more than mimalloc would have. Purging at
/// once instead (`MIMALLOC_PURGE_DELAY=0`) costs 20% of the CPU a request.
async fn return_freed_memory() {
    let mut tick = tokio::time::interval(PURGE_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        // SAFETY: `mi_collect` takes no pointer and has no precondition; it works on the
        // calling thread's own heap (nothing if that is not set up) and on the arenas under
        // mimalloc's own lock, as mimalloc's allocating threads do. This is the workspace's
        // only `unsafe`: every other crate root forbids it.
        #[allow(unsafe_code)]
        unsafe {
            libmimalloc_sys::mi_collect(false);
        }
    }
}

/// On every SIGHUP, reads the configuration file again and hands a valid one to the gateway
/// (routes and policies are replaced; listeners and connections stay). An invalid file is
/// logged and the running configuration kept.
async fn signal_reload(path: PathBuf, reloads: tokio::sync::mpsc::Sender<gateway::Config>) {
    use tokio::signal::unix::{signal, SignalKind};
    let Ok(mut hup) = signal(SignalKind::hangup()) else {
        tracing::error!("cannot install the SIGHUP handler");
        return;
    };
    while hup.recv().await.is_some() {
        match gateway::Config::load(&path) {
            Ok(config) => {
                if reloads.send(config).await.is_err() {
                    return;
                }
            }
            Err(e) => {
                tracing::error!(error = %e, "SIGHUP: new configuration rejected; keeping the old one")
            }
        }
    }
}
