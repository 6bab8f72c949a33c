//! `demo-upstream --listen ADDR`: the JSON echo service used by `make run`.

#![forbid(unsafe_code)]

use std::net::SocketAddr;

use clap::Parser;
use tokio_util::sync::CancellationToken;

/// Answers every request with a JSON echo of what it received.
#[derive(Parser)]
#[command(version)]
struct Cli {
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1:9001")]
    listen: SocketAddr,
}

#[tokio::main]
async fn main() -> std::io::Result<()> {
    let cli = Cli::parse();
    tracing_subscriber::fmt().init();
    let listener = tokio::net::TcpListener::bind(cli.listen).await?;
    tracing::info!(addr = %cli.listen, "demo upstream listening");
    let shutdown = CancellationToken::new();
    let trigger = shutdown.clone();
    tokio::spawn(async move {
        use tokio::signal::unix::{signal, SignalKind};
        if let Ok(mut term) = signal(SignalKind::terminate()) {
            tokio::select! {
                _ = term.recv() => {}
                _ = tokio::signal::ctrl_c() => {}
            }
        }
        trigger.cancel();
    });
    demo_upstream::run(listener, shutdown).await
}
