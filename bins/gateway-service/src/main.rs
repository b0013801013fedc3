//! `gateway-service`: parse the configuration, start the gateway, stop on SIGTERM/SIGINT.

use clap::Parser;
use gateway_service::{Args, Config};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let config = Config::resolve(Args::parse())?;
    mcp_gateway_telemetry::init_logging(&config.log, config.log_format)?;
    let handle = gateway_service::run(config).await?;
    shutdown_signal().await;
    tracing::info!("shutting down");
    handle.shutdown().await;
    Ok(())
}

async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(s) => s,
                Err(_) => return std::future::pending().await,
            };
        tokio::select! {
            _ = ctrl_c => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    let _ = ctrl_c.await;
}
