//! `mcp-example-server`: parse the configuration, start the transport, print where it listens,
//! stop on SIGINT/SIGTERM. Logs go to stderr (`RUST_LOG`, default `info`).

use std::io::Write;

use clap::Parser;
use mcp_example_server::{Config, Transport};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let config = Config::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .with_writer(std::io::stderr)
        .init();

    if config.transport == Transport::Stdio {
        tokio::select! {
            served = mcp_example_server::run_stdio(&config) => served?,
            () = shutdown_signal() => {}
        }
        return Ok(());
    }

    let server = mcp_example_server::start_http(&config).await?;
    let mut stdout = std::io::stdout().lock();
    writeln!(stdout, "listening on http://{}", server.local_addr())?;
    stdout.flush()?;
    drop(stdout);
    tracing::info!(addr = %server.local_addr(), transport = ?config.transport, "serving");

    shutdown_signal().await;
    tracing::info!("shutting down");
    server.shutdown().await;
    Ok(())
}

/// Resolves on SIGINT or SIGTERM.
async fn shutdown_signal() {
    let interrupt = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        match signal(SignalKind::terminate()) {
            Ok(mut terminate) => {
                tokio::select! {
                    _ = interrupt => {}
                    _ = terminate.recv() => {}
                }
            }
            Err(_) => {
                let _ = interrupt.await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = interrupt.await;
    }
}
