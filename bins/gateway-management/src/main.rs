//! `gateway-management`: the control plane alone — the management REST API and the runtime
//! that deploys adapters — for deployments that run the data plane (`gateway-service
//! --management false`) as separate replicas. It takes the same configuration as
//! `gateway-service`.
//!
//! It refuses to start for now: the only runtime is the local one, whose adapters' processes
//! run beside this binary where no separate data plane can reach them, so it would start
//! servers nobody can use. Use `gateway-service` (standalone) there. This split is for the
//! Kubernetes runtime, where replicas are pods any gateway can reach; once it exists, this
//! runs `serve_until_signal` with `management = true`, `data_plane = false`.

use clap::Parser;
use gateway_service::{Args, Config};

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    // `api-key` needs no runtime.
    if gateway_service::run_command(&args)? {
        return Ok(());
    }
    // The configuration is still checked, so its errors come first.
    Config::resolve(args)?;
    anyhow::bail!(
        "gateway-management runs the control plane without a data plane, which needs a runtime \
         whose replicas a separate gateway can reach (the Kubernetes runtime, not built yet); the \
         local runtime's replicas are processes only the gateway that started them can reach: \
         run `gateway-service` (standalone: the management API and the data plane in one \
         process) instead"
    )
}
