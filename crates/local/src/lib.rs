//! The local-process runtime of the MCP gateway: the embedded default.
//!
//! - [`FileAdapterStore`] keeps adapter records as JSON files of a data directory
//!   (`<data_dir>/adapters/<name>.json`), so a restarted gateway finds its adapters again.
//! - [`LocalProvisioner`] runs each replica of an adapter as a child process of the gateway on a
//!   free loopback port, probes it until its MCP endpoint answers, restarts it with backoff
//!   when it exits, keeps its output for the logs endpoint, rolls changes out replica by
//!   replica, and keeps the data plane's [`StaticResolver`](mcp_gateway_core::StaticResolver)
//!   current. Adapters with `upstreams` are fronted, not run.
//!
//! It is not a container runtime (`imageName` needs the Kubernetes runtime), not a sandbox
//! (a `command` runs with the gateway's user and rights: only trusted principals may set it),
//! and not the stdio bridge (`stdio` adapters run through a [`StdioLauncher`] plugged in by
//! the bridge crate). Replicas are children of one gateway process: they are stopped with it
//! and are not shared between gateway replicas. A gateway that dies without stopping them
//! (SIGKILL) leaves them running; with [`LocalOptions::run_dir`] set, [`reap_orphans`] stops
//! them at the next start.

mod error;
mod logs;
mod pidfile;
mod process;
mod provisioner;
mod runtime;
mod secrets;
mod store;
mod validate;

pub use error::LocalError;
pub use pidfile::reap_orphans;
pub use provisioner::{LocalOptions, LocalProvisioner, LogSink, StdioBridge, StdioLauncher};
pub use secrets::upstream_headers;
pub use store::FileAdapterStore;
pub use validate::MAX_REPLICAS;
