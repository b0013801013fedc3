//! The MCP-aware reverse proxy of the MCP gateway: the data plane, as an embeddable
//! [`tower::Service`] over [`http`] types.
//!
//! [`Gateway`] serves, per adapter, `POST|GET|DELETE /adapters/{name}/mcp` (streamable HTTP)
//! and `GET /adapters/{name}/sse` + `POST /adapters/{name}/messages` (legacy HTTP+SSE), for
//! both MCP eras: every request of a session reaches the replica that owns it; requests of the
//! stateless revision 2026-07-28 go to the least busy ready replica. Bodies stream both ways.
//!
//! It is not a server and knows nothing of Redis, Kubernetes or web frameworks: where replicas
//! are comes from a [`ReplicaResolver`], where sessions live from a [`SessionStore`] (both
//! ports of `mcp-gateway-core`), so another Rust proxy can embed it with its own.
//!
//! # Embedding
//!
//! ```no_run
//! use std::{collections::HashMap, sync::Arc, time::Duration};
//! use hyper_util::{rt::{TokioExecutor, TokioIo}, server::conn::auto, service::TowerToHyperService};
//! use mcp_gateway_core::*;
//! use mcp_gateway_routing::{ClientAddr, Gateway, RoutingConfig};
//! use tower::ServiceExt;
//!
//! /// Replicas found however the host proxy finds them (here: fixed).
//! struct MyResolver(Arc<AdapterTarget>);
//! impl ReplicaResolver for MyResolver {
//!     fn resolve(&self, adapter: &str) -> Option<Arc<AdapterTarget>> {
//!         (adapter == self.0.name.as_str()).then(|| self.0.clone())
//!     }
//! }
//!
//! /// Session records kept wherever the host proxy keeps state.
//! #[derive(Default)]
//! struct MyStore(std::sync::Mutex<HashMap<SessionKey, SessionRecord>>);
//! #[async_trait::async_trait]
//! impl SessionStore for MyStore {
//!     async fn get(&self, k: &SessionKey) -> Result<Option<SessionRecord>, StoreError> {
//!         Ok(self.0.lock().unwrap().get(k).cloned())
//!     }
//!     async fn put(&self, r: SessionRecord) -> Result<(), StoreError> {
//!         self.0.lock().unwrap().insert(r.key.clone(), r);
//!         Ok(())
//!     }
//!     async fn remove(&self, k: &SessionKey) -> Result<Option<SessionRecord>, StoreError> {
//!         Ok(self.0.lock().unwrap().remove(k))
//!     }
//!     async fn live_sessions(&self, a: &AdapterName) -> Result<HashMap<Arc<str>, u64>, StoreError> {
//!         let mut counts = HashMap::new();
//!         for r in self.0.lock().unwrap().values().filter(|r| &r.key.adapter == a) {
//!             *counts.entry(r.replica.clone()).or_default() += 1;
//!         }
//!         Ok(counts)
//!     }
//!     async fn total_sessions(&self) -> Result<u64, StoreError> {
//!         Ok(self.0.lock().unwrap().len() as u64)
//!     }
//!     fn idle_ttl(&self) -> Duration { Duration::from_secs(3600) }
//! }
//!
//! # async fn run() -> std::io::Result<()> {
//! let target = AdapterTarget {
//!     name: AdapterName::new("everything").unwrap(),
//!     replicas: vec![Replica {
//!         id: "0".into(), ordinal: 0, base_url: "http://127.0.0.1:9001".into(),
//!         ready: true, draining: false,
//!     }],
//!     mcp_path: "/mcp".into(),
//!     sse_path: "/sse".into(),
//!     access: Default::default(),
//!     upstream_headers: Vec::new(),
//! };
//! let gateway = Gateway::new(
//!     RoutingConfig::default(),
//!     Arc::new(MyResolver(Arc::new(target))),
//!     Arc::new(MyStore::default()),
//! );
//! let listener = tokio::net::TcpListener::bind("127.0.0.1:8080").await?;
//! loop {
//!     let (stream, peer) = listener.accept().await?;
//!     // The host proxy's own routing goes here; data-plane paths go to the gateway.
//!     let svc = gateway.clone().map_request(move |mut req: http::Request<hyper::body::Incoming>| {
//!         req.extensions_mut().insert(ClientAddr(peer));
//!         req
//!     });
//!     tokio::spawn(async move {
//!         let _ = auto::Builder::new(TokioExecutor::new())
//!             .serve_connection(TokioIo::new(stream), TowerToHyperService::new(svc))
//!             .await;
//!     });
//! }
//! # }
//! ```
//!
//! # Errors
//!
//! Every refusal or upstream failure is answered by the gateway with an HTTP status and a
//! JSON-RPC error body ([`ProxyError`]): 404 with code -32001 for an unknown, expired or
//! orphaned session (the client then re-initializes, as the MCP spec prescribes), 400 for a bad
//! session id or an `Mcp-Method`/`Mcp-Name` header that disagrees with the body (-32020), 403
//! for a `Host`/`Origin` that fails DNS-rebinding protection, 413/431 beyond the size limits,
//! 502 when a replica is unreachable, 504 when it is too slow, 503 beyond the session limit.

mod body;
mod config;
mod error;
mod gateway;
mod h1;
mod headers;
pub mod jsonrpc;
mod jsonwalk;
mod legacy;
pub mod observe;
mod placement;
pub mod sse;
mod stats;
pub mod timer;
mod upstream;
pub mod wire;

pub use body::{BoxError, ProxyBody};
pub use config::{IdentityHeaders, RoutingConfig};
pub use error::{
    HEADER_MISMATCH, INVALID_REQUEST, ProxyError, SESSION_NOT_FOUND, json_response, json_rpc_error,
};
pub use gateway::{ClientAddr, Gateway};
pub use headers::{STATELESS_REVISION, check_host_and_origin, is_stateless, strip_hop_by_hop};
pub use mcp_gateway_core::Principal;
pub use observe::TracePropagator;
