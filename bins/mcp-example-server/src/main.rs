//! `mcp-example-server`: parse the configuration, start the transport, print where it listens,
//! stop on SIGINT/SIGTERM. Logs go to stderr (`RUST_LOG`, default `info`).

use std::io::{IsTerminal, Write};

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
        .with_ansi(std::io::stderr().is_terminal())
        .init();
    // Registered before anything is served, so an early SIGTERM is never the default (fatal) one.
    let shutdown = shutdown_signal()?;

    if config.transport == Transport::Stdio {
        tokio::select! {
            served = mcp_example_server::run_stdio(&config) => served?,
            () = shutdown => {}
        }
        return Ok(());
    }

    let server = mcp_example_server::start_http(&config).await?;
    let mut stdout = std::io::stdout().lock();
    writeln!(stdout, "listening on http://{}", server.local_addr())?;
    stdout.flush()?;
    drop(stdout);
    tracing::info!(addr = %server.local_addr(), transport = ?config.transport, "serving");

    shutdown.await;
    tracing::info!("shutting down");
    server.shutdown().await;
    Ok(())
}

/// Resolves on SIGINT or SIGTERM; the handlers are installed when this is called.
#[cfg(unix)]
fn shutdown_signal() -> std::io::Result<impl Future<Output = ()>> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut interrupt = signal(SignalKind::interrupt())?;
    let mut terminate = signal(SignalKind::terminate())?;
    Ok(async move {
        tokio::select! {
            _ = interrupt.recv() => {}
            _ = terminate.recv() => {}
        }
    })
}

#[cfg(not(unix))]
fn shutdown_signal() -> std::io::Result<impl Future<Output = ()>> {
    Ok(async {
        let _ = tokio::signal::ctrl_c().await;
    })
}
