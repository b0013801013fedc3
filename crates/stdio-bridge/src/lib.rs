//! `mcp-gateway-stdio`: serves a stdio MCP server (newline-delimited JSON-RPC on stdin/stdout)
//! over HTTP, as any HTTP replica of an adapter would, with **one child process per MCP
//! session** so sessions never share a process.
//!
//! The local runtime starts one bridge per stdio adapter replica and puts it behind the data
//! plane like any other replica:
//!
//! ```no_run
//! # async fn demo() -> Result<(), mcp_gateway_stdio::BridgeError> {
//! use std::time::Duration;
//! use mcp_gateway_stdio::{BridgeConfig, StdioBridge};
//!
//! let mut config = BridgeConfig::new("npx", ["-y", "@modelcontextprotocol/server-everything", "stdio"])
//!     .on_log(|line| eprintln!("[{}] {:?} {}", line.session, line.source, line.line));
//! config.max_processes = 8;
//! config.idle_timeout = Duration::from_secs(600);
//! let bridge = StdioBridge::start(config).await?;
//! println!("upstream: http://{}", bridge.local_addr()); // /mcp and /sse live under it
//! // ...
//! bridge.shutdown().await; // every process stopped, none left behind
//! # Ok(()) }
//! ```
//!
//! # What it serves
//! - **Streamable HTTP, `/mcp`** (session era). `POST initialize` without a session starts a
//!   process (own process group, killed if the bridge is dropped), writes the message to its
//!   stdin and answers with a new `Mcp-Session-Id` and the process's response. Later requests
//!   of the session go to its process; the response (matched by JSON-RPC `id`) comes back as
//!   `application/json`, or as an SSE stream when the client accepts `text/event-stream` and
//!   the process writes notifications or requests before the response (progress reaches the
//!   client as it happens). Client notifications and responses get `202`. `GET /mcp` opens the
//!   stream of messages tied to no waiting request (kept in a bounded backlog until it opens);
//!   `DELETE /mcp` stops the process and answers once it is gone. The process tags nothing it
//!   writes, so the bridge routes: a response to the request with its `id`; a progress
//!   notification to the request naming its `progressToken`; anything else to the oldest
//!   request waiting on an SSE answer, else to the `GET` stream, else to the backlog.
//! - **HTTP+SSE (2024-11-05), `/sse` + `/messages`.** `GET /sse` starts a process and sends
//!   `event: endpoint` with `/messages?sessionId=<id>`; each `POST /messages?sessionId=…`
//!   gets `202` and everything the process writes goes out as `event: message`. Closing the
//!   stream ends the session and its process.
//! - **Stateless revision 2026-07-28: refused.** A POST without a session whose
//!   `MCP-Protocol-Version` is 2026-07-28 or later gets `400` with JSON-RPC error `-32022`
//!   (`UnsupportedProtocolVersion`, `data.supported` listing the session-era revisions), as a
//!   stateful server of the official SDKs answers, so dual-mode clients fall back to
//!   `initialize`. A process per request was rejected: stdio servers are written for one
//!   long-lived client, most need the `initialize` handshake before anything else, and a
//!   process start (seconds for `npx`) per request would be a trap rather than a feature.
//!
//! # Limits and ends
//! - At most [`BridgeConfig::max_processes`] processes: a new session beyond gets `503`
//!   ("process limit reached").
//! - A session with no waiting request and no open stream for [`BridgeConfig::idle_timeout`]
//!   is ended and its process stopped; its id then gets `404`, as do ids of sessions whose
//!   process exited (waiting requests get a JSON-RPC error: `502`, or an error event on SSE).
//! - A request unanswered after [`BridgeConfig::request_timeout`] gets `504` (or an error
//!   event) and the process is sent `notifications/cancelled`.
//! - Stopping a process: stdin closed, SIGTERM to its process group, SIGKILL after
//!   [`BridgeConfig::stop_grace`], then SIGKILL to whatever is left in the group (`npx`
//!   starts `node` as a grandchild). [`BridgeHandle::shutdown`] does this for all; dropping
//!   the handle SIGKILLs every group at once.
//! - Stdout lines that are not JSON-RPC, and every stderr line, are logged (not forwarded):
//!   [`BridgeConfig::on_log`] and [`BridgeHandle::logs`] give them to the runtime.
//!
//! # What it is not
//! - Not a proxy: there is no replica choice, user authentication, `Origin` check or session
//!   store here; it binds loopback and trusts its caller, the gateway's data plane, to do
//!   those. It only makes sure the caller is that data plane: with
//!   [`BridgeConfig::access_token`] set, a request without the token is 403, and on a
//!   loopback address a `Host` other than that address (or `localhost`) with the bridge's
//!   port is 403 too, so a web page cannot reach it through DNS rebinding.
//! - No resumability: SSE events carry no `id`, so `Last-Event-ID` resumes nothing.
//! - No JSON-RPC batches (removed in MCP 2025-06-18): `400`.
//! - Legacy HTTP+SSE requests have no request timeout (their answers go to the stream).
//! - If the gateway process itself is killed with SIGKILL, its children see their stdin
//!   close (well-behaved stdio servers exit then) but are not signalled.

mod body;
mod bridge;
mod config;
mod error;
mod jsonrpc;
mod legacy;
mod log;
mod process;
mod server;
mod session;
mod streamable;

pub use bridge::SessionInfo;
pub use config::{ACCESS_TOKEN_HEADER, BridgeConfig, LogHook, random_token};
pub use error::{BridgeError, SESSION_NOT_FOUND, SESSION_REVISIONS, UNSUPPORTED_PROTOCOL_VERSION};
pub use log::{LogLine, LogSource};
pub use server::{BridgeHandle, StdioBridge};
pub use session::Transport;
