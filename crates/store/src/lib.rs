//! Session affinity stores of the MCP gateway.
//!
//! [`MemoryStore`] keeps records in this process: the default for a single gateway, and the
//! local cache in front of a shared store. A Redis backend, shared by every gateway replica,
//! joins it in this crate.
//!
//! Expiry: a record expires when unused for the idle TTL (sliding; every lookup counts as use)
//! or when older than the absolute lifetime, whichever comes first. Expired records are never
//! returned; a background reaper ([`MemoryStore::spawn_reaper`]) frees them and keeps the
//! `mcp_gateway_sessions_live{adapter,replica}` gauge true.
//!
//! [`RedisStore`] shares sessions between gateway replicas through Redis, with a local cache
//! in front so the hot path does not wait on Redis; its module docs give the key layout, the
//! round trips per operation, the staleness bound and the behaviour during outages.

mod memory;
mod shared;

pub use memory::{MemoryStore, StoreConfig};
pub use shared::{RedisConfig, RedisStore};
