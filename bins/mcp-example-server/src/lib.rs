//! A small, fast MCP server for the gateway's quick start, tests and benchmarks.
//!
//! It speaks both MCP eras — the session era (revisions 2024-11-05 … 2025-11-25) and the
//! stateless revision 2026-07-28 — over streamable HTTP (`/mcp`), the legacy HTTP+SSE
//! transport (`GET /sse`, `POST /messages?sessionId=…`) and stdio. Its tools make routing
//! visible: which replica served a call, whether the session's state survived, streamed
//! progress, large results. It is not a general MCP framework: no resources, prompts,
//! server-to-client requests, stream resumption or authorization (the gateway does that).

pub mod error;
pub mod http;
pub mod legacy;
pub mod protocol;
pub mod session;
pub mod sse;
pub mod stdio;
pub mod streamable;
pub mod tools;

use std::net::SocketAddr;
use std::sync::Arc;

use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

pub use protocol::Server;

/// Command line and environment configuration.
#[derive(Debug, Clone, clap::Parser)]
#[command(version, about)]
pub struct Config {
    /// Transport to serve. `all` serves streamable HTTP on /mcp and HTTP+SSE on /sse and
    /// /messages from one listener.
    #[arg(long, env = "MCP_TRANSPORT", value_enum, default_value_t = Transport::All)]
    pub transport: Transport,
    /// Address to listen on.
    #[arg(long, env = "HOST", default_value = "127.0.0.1")]
    pub host: String,
    /// Port to listen on; 0 picks a free one (the bound address is printed on stdout).
    #[arg(long, env = "PORT", default_value_t = 8000)]
    pub port: u16,
    /// Replica id reported by `whoami` and `counter_increment` [default: p<port> over HTTP,
    /// pid<pid> over stdio].
    #[arg(long, env = "REPLICA_ID")]
    pub replica: Option<String>,
}

/// Which transport(s) to serve.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Transport {
    StreamableHttp,
    Sse,
    Stdio,
    All,
}

impl Transport {
    pub fn serves_streamable_http(self) -> bool {
        matches!(self, Self::StreamableHttp | Self::All)
    }

    pub fn serves_sse(self) -> bool {
        matches!(self, Self::Sse | Self::All)
    }
}

/// A running HTTP server.
#[derive(Debug)]
pub struct Handle {
    local_addr: SocketAddr,
    shutdown: oneshot::Sender<()>,
    task: JoinHandle<()>,
}

impl Handle {
    /// The bound address (the real port when configured with 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// Stops accepting, ends session streams, and waits (boundedly) for in-flight requests.
    pub async fn shutdown(self) {
        let _ = self.shutdown.send(());
        if let Err(err) = self.task.await {
            tracing::error!(%err, "server task failed");
        }
    }
}

/// Binds and starts serving HTTP in the background.
pub async fn start_http(config: &Config) -> std::io::Result<Handle> {
    let listener = TcpListener::bind((config.host.as_str(), config.port)).await?;
    let local_addr = listener.local_addr()?;
    let replica = config
        .replica
        .clone()
        .unwrap_or_else(|| format!("p{}", local_addr.port()));
    let server = Arc::new(Server::new(replica));
    let (shutdown, stopped) = oneshot::channel::<()>();
    let transport = config.transport;
    let task = tokio::spawn(async move {
        http::serve(listener, server, transport, async {
            let _ = stopped.await;
        })
        .await;
    });
    Ok(Handle {
        local_addr,
        shutdown,
        task,
    })
}

/// Serves stdio until stdin ends.
pub async fn run_stdio(config: &Config) -> std::io::Result<()> {
    let replica = config
        .replica
        .clone()
        .unwrap_or_else(|| format!("pid{}", std::process::id()));
    stdio::serve(
        Arc::new(Server::new(replica)),
        tokio::io::stdin(),
        tokio::io::stdout(),
    )
    .await
}
