//! Domain types and ports of the MCP gateway.
//!
//! This crate holds what every other crate agrees on: validated names and session ids, the
//! session record, the replicas of an adapter, and the traits (ports) that the data plane calls
//! ([`SessionStore`], [`ReplicaResolver`], [`AdapterStore`], [`Provisioner`], [`Authorizer`]). It does no I/O and depends on no runtime, web
//! framework, Redis or Kubernetes crate.

mod adapter;
mod audit;
mod auth;
mod duration;
mod names;
mod replica;
mod session;

pub use adapter::{
    Adapter, AdapterError, AdapterSpec, AdapterStatus, AdapterStore, LogLine, LogQuery, LogStream,
    Provisioner, ReplicaState, ReplicaStatus, SecretRef, Transport, rfc3339,
};
pub use audit::{AuditEvent, AuditPrincipal, AuditSink};
pub use auth::{Action, AdapterAccess, Authorizer, Principal, RolePolicy};
pub use duration::{deserialize_duration, deserialize_optional_duration, parse_duration};
pub use names::{AdapterName, InvalidName, InvalidSessionId, MAX_SESSION_ID_LEN, SessionId};
pub use replica::{AdapterTarget, Replica, ReplicaResolver, StaticResolver};
pub use session::{
    LegacyEndpoint, OwnerSessions, SessionKey, SessionRecord, SessionStore, StoreError, unix_millis,
};
