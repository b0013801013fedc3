//! `gateway-management`: the control plane alone — the management REST API and the runtime
//! that deploys adapters — for deployments that run the data plane (`gateway-service
//! --management false`) as separate replicas. It takes the same configuration as
//! `gateway-service`; data-plane routes answer 404 here.
//!
//! With the local runtime the adapters' processes run beside this binary, so the data plane
//! must run in the same process to reach them: use `gateway-service` (standalone) there. This
//! split is for the Kubernetes runtime, where replicas are pods any gateway can reach.

use clap::Parser;
use gateway_service::{Args, Config};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    if gateway_service::run_command(&args)? {
        return Ok(());
    }
    let mut config = Config::resolve(args)?;
    config.management = true;
    config.data_plane = false;
    config.tracing.service_name = "gateway-management".into();
    gateway_service::serve_until_signal(config).await
}
