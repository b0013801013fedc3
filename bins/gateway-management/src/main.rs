//! `gateway-management`: the control plane alone — the management REST API and the
//! Kubernetes runtime's controller — for deployments that run the data plane
//! (`gateway-service --runtime kubernetes --management false`) as separate replicas. It takes
//! the same configuration as `gateway-service`; data-plane routes answer 404 here.
//!
//! It refuses the local runtime: its adapters' processes would run beside this binary, where
//! no separate data plane can reach them. Use `gateway-service` (standalone) there.

use clap::Parser;
use gateway_service::config::Runtime;
use gateway_service::{Args, Config};

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    // `api-key` needs no runtime.
    if gateway_service::run_command(&args)? {
        return Ok(());
    }
    // The configuration is checked first, so its errors come first.
    let mut config = Config::resolve(args)?;
    if config.runtime == Runtime::Local {
        anyhow::bail!(
            "gateway-management runs the control plane without a data plane, which needs a \
             runtime whose replicas a separate gateway can reach: set --runtime kubernetes \
             (MCP_GATEWAY_RUNTIME=kubernetes). The local runtime's replicas are processes only \
             the gateway that started them can reach: run `gateway-service` (standalone: the \
             management API and the data plane in one process) instead"
        );
    }
    config.management = true;
    config.data_plane = false;
    config.tracing.service_name = "gateway-management".into();
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?
        .block_on(gateway_service::serve_until_signal(config))
}
