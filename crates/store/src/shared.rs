//! The session store shared by every gateway replica: Redis behind a local cache.
//!
//! # Key layout (prefix `mcpgw` by default)
//!
//! | key | type | holds | expiry |
//! |---|---|---|---|
//! | `{p}:s:{adapter}:{session}` | string | the [`SessionRecord`] as JSON | idle TTL, refreshed |
//! | `{p}:r:{adapter}:{replica}` | sorted set | session ids of a replica, scored by expiry (ms) | members trimmed when counted |
//! | `{p}:o:{owner}` | sorted set | `{adapter}:{session}` of an owner's sessions, scored by expiry (ms) | members trimmed when counted |
//! | `{p}:replicas:{adapter}` | set | replica ids that have had sessions | none (tiny) |
//! | `{p}:invalidate` | pub/sub channel | `{adapter}\n{session}` of every removed session | |
//! | `{p}:gw:{uuid}` | string | one per running gateway: present while Redis holds its writes | 30 s, renewed every second |
//!
//! # Costs
//!
//! - A request of a session this gateway has seen: no Redis round trip. Once every
//!   `refresh_after` (default 30 s) per session, a background `PEXPIRE` + `ZADD` slides the idle
//!   TTL and checks the record still exists.
//! - A request of a session first seen here: one round trip (`GET` + `PEXPIRE`, pipelined).
//! - A new session: one round trip to count sessions per replica (a Lua script), one to write
//!   the record (`SET` + `ZADD` + `SADD`, in a transaction).
//! - `DELETE`: one round trip (`DEL` + `ZREM` + `PUBLISH`).
//!
//! # Staleness
//!
//! A session removed through another gateway is dropped from this gateway's cache when the
//! `invalidate` message arrives (milliseconds). If that message is lost (the subscription was
//! down), the next refresh finds the record gone: no request is routed on a stale record for
//! longer than `refresh_after`. Idle expiry is kept by each cache and by Redis alike.
//!
//! # Outages
//!
//! While Redis is unreachable, sessions in the cache keep working; new sessions are placed on
//! local counts, kept in the cache and queued; removals are queued too. A background task
//! renews this gateway's marker key every second; once Redis answers it writes the queue.
//! Whenever the marker is gone, Redis lost this gateway's writes (restarted empty, flushed,
//! failed over), whether or not an outage was noticed: every session this gateway knows is then
//! written back. Until then a refresh that finds a record gone keeps it cached, and a gateway
//! that looks up a session it has not cached answers 503 (retry), not 404.
//! Only a session this gateway has never seen fails (503: the store is needed to find it).
//! Errors are counted (`mcp_gateway_store_errors_total{op}`) and logged at most once per
//! 10 seconds.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::time::Duration;

use futures_util::StreamExt;
use mcp_gateway_core::{
    AdapterName, OwnerSessions, SessionId, SessionKey, SessionRecord, SessionStore, StoreError,
    unix_millis,
};
use redis::IntoConnectionInfo;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use tokio::time::Instant;

/// Settings of [`RedisStore`].
#[derive(Debug, Clone)]
pub struct RedisConfig {
    /// `redis://host:port/db` or `rediss://…` (TLS). Must not hold a password.
    pub url: String,
    /// Password (from an environment variable or a file; never the command line).
    pub password: Option<String>,
    /// Key prefix, so several gateways' deployments can share one Redis.
    pub prefix: String,
    pub idle_ttl: Duration,
    pub max_lifetime: Duration,
    /// How often a cached session's Redis TTL is slid forward (and its existence checked).
    pub refresh_after: Duration,
    /// Time allowed to connect and to answer a command before Redis counts as unreachable.
    pub timeout: Duration,
}

impl RedisConfig {
    pub fn new(url: impl Into<String>) -> Self {
        Self {
            url: url.into(),
            password: None,
            prefix: "mcpgw".into(),
            idle_ttl: Duration::from_secs(3600),
            max_lifetime: Duration::from_secs(12 * 3600),
            refresh_after: Duration::from_secs(30),
            timeout: Duration::from_millis(500),
        }
    }
}

/// A session known to this gateway.
#[derive(Debug, Clone)]
struct Cached {
    record: SessionRecord,
    /// When the Redis TTL was last slid forward (or the record read).
    refreshed: Instant,
}

/// Writes that could not reach Redis yet.
#[derive(Debug, Default)]
struct Queue {
    puts: HashMap<SessionKey, SessionRecord>,
    removes: HashSet<SessionKey>,
}

/// Redis-backed [`SessionStore`] with a local cache in front. See the module docs.
pub struct RedisStore {
    me: Weak<RedisStore>,
    config: RedisConfig,
    conn: ConnectionManager,
    client: redis::Client,
    cache: Mutex<HashMap<SessionKey, Cached>>,
    queue: Mutex<Queue>,
    up: AtomicBool,
    errors_since_log: AtomicU64,
    last_log_ms: AtomicU64,
    last_error: Mutex<Option<String>>,
    count_script: redis::Script,
    delete_script: redis::Script,
    refresh_script: redis::Script,
    get_script: redis::Script,
    owner_script: redis::Script,
    /// This gateway's marker key: present while Redis holds what this gateway wrote. Gone
    /// means Redis lost its data (restarted empty, flushed, failed over to a replica that
    /// lacked the writes): every session this gateway knows is then written back.
    marker: String,
    /// Whether the marker was set once: until then its absence says nothing.
    marker_set: AtomicBool,
    /// After Redis lost its data, until when (unix ms) a session not found is answered "retry"
    /// rather than "no such session": other gateways may still be writing theirs back.
    recovering_until_ms: AtomicU64,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// Deletes a session record, removes it from its replica's and its owner's counts and
/// publishes the removal.
/// KEYS[1] = record; ARGV = replica key prefix, session id, channel, message, owner key prefix,
/// owner-set member.
const DELETE_SCRIPT: &str = r#"
local v = redis.call('GET', KEYS[1])
if v then
  local ok, record = pcall(cjson.decode, v)
  if ok and record.replica then
    redis.call('ZREM', ARGV[1] .. record.replica, ARGV[2])
  end
  if ok and type(record.principal) == 'string' then
    redis.call('ZREM', ARGV[5] .. record.principal, ARGV[6])
  end
  redis.call('DEL', KEYS[1])
end
redis.call('PUBLISH', ARGV[3], ARGV[4])
return 1
"#;

/// Counts live sessions per replica of an adapter, trimming expired members on the way and
/// forgetting replicas left with none (so the set does not grow with every replica id ever).
/// KEYS[1] = replicas set; ARGV[1] = now (ms); ARGV[2] = replica key prefix.
const COUNT_SCRIPT: &str = r#"
local out = {}
for _, replica in ipairs(redis.call('SMEMBERS', KEYS[1])) do
  local key = ARGV[2] .. replica
  redis.call('ZREMRANGEBYSCORE', key, '-inf', ARGV[1])
  local n = redis.call('ZCARD', key)
  if n == 0 then
    redis.call('SREM', KEYS[1], replica)
  else
    table.insert(out, replica)
    table.insert(out, n)
  end
end
return out
"#;

/// Slides a cached session's TTL and its replica-count entry, only if the record still exists
/// (a count entry re-added for a removed record would count a phantom session).
/// KEYS[1] = record, KEYS[2] = replica count set, KEYS[3] = this gateway's marker;
/// ARGV = TTL (ms), new count score, session id, owner set ("" for none), owner-set member.
/// Returns 1 (slid), 0 (the record is gone: removed or expired), -1 (gone because Redis lost
/// its data: the marker is gone too).
const REFRESH_SCRIPT: &str = r#"
if redis.call('PEXPIRE', KEYS[1], ARGV[1]) == 1 then
  redis.call('ZADD', KEYS[2], ARGV[2], ARGV[3])
  if ARGV[4] ~= '' then
    redis.call('ZADD', ARGV[4], ARGV[2], ARGV[5])
  end
  return 1
end
if redis.call('EXISTS', KEYS[3]) == 0 then
  return -1
end
return 0
"#;

/// Reads a record for a gateway that has not cached it, sliding its TTL (capped at the
/// remaining lifetime) and its replica-count entry alike.
/// KEYS[1] = record, KEYS[2] = this gateway's marker;
/// ARGV = now (ms), idle TTL (ms), max lifetime (ms), replica key prefix, session id, owner key
/// prefix, owner-set member.
/// Returns the record, nil when there is none, or -1 when there is none because Redis lost
/// its data (the marker is gone too).
const GET_SCRIPT: &str = r#"
local v = redis.call('GET', KEYS[1])
if not v then
  if redis.call('EXISTS', KEYS[2]) == 0 then
    return -1
  end
  return false
end
local now = tonumber(ARGV[1])
local ttl = tonumber(ARGV[2])
local ok, record = pcall(cjson.decode, v)
if ok and type(record.created_ms) == 'number' then
  local left = record.created_ms + tonumber(ARGV[3]) - now
  if left < ttl then ttl = left end
end
if ttl < 1 then ttl = 1 end
redis.call('PEXPIRE', KEYS[1], ttl)
if ok and type(record.replica) == 'string' then
  redis.call('ZADD', ARGV[4] .. record.replica, now + ttl, ARGV[5])
end
if ok and type(record.principal) == 'string' then
  redis.call('ZADD', ARGV[6] .. record.principal, now + ttl, ARGV[7])
end
return v
"#;

/// Counts an owner's live sessions, trimming expired members: `{count, earliest expiry}`.
/// KEYS[1] = owner set; ARGV[1] = now (ms).
const OWNER_SCRIPT: &str = r#"
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', ARGV[1])
local first = redis.call('ZRANGE', KEYS[1], 0, 0, 'WITHSCORES')
return {redis.call('ZCARD', KEYS[1]), first[2] or false}
"#;

/// How long this gateway's marker lives without being renewed (it is renewed every second):
/// a gateway cut off from Redis for longer writes everything back when it returns.
const MARKER_TTL_MS: u64 = 30_000;

/// After this gateway wrote its sessions back, how long a session it does not know is still
/// answered "retry" (503) rather than "no such session" (404): the time other gateways get to
/// write back theirs (each detects the loss within a second).
const RECOVERY_GRACE_MS: u64 = 3_000;

impl RedisStore {
    /// Connects lazily: the gateway starts even while Redis is down (degraded until it answers).
    pub fn connect(config: RedisConfig) -> Result<Arc<Self>, StoreError> {
        let bad = |e: redis::RedisError| StoreError::Unavailable(format!("invalid Redis URL: {e}"));
        let mut info = config.url.as_str().into_connection_info().map_err(bad)?;
        if info.redis_settings().password().is_some() {
            return Err(StoreError::Unavailable(
                "the Redis URL must not contain a password: set MCP_GATEWAY_REDIS_PASSWORD or \
                 redis_password_file instead"
                    .into(),
            ));
        }
        if let Some(pw) = &config.password {
            let settings = info.redis_settings().clone().set_password(pw);
            info = info.set_redis_settings(settings);
        }
        let client = redis::Client::open(info).map_err(bad)?;
        let manager_config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(config.timeout))
            .set_response_timeout(Some(config.timeout))
            .set_number_of_retries(1)
            .set_max_delay(Duration::from_secs(2));
        let conn = ConnectionManager::new_lazy_with_config(client.clone(), manager_config)
            .map_err(|e| StoreError::Unavailable(e.to_string()))?;
        let store = Arc::new_cyclic(|me| Self {
            me: me.clone(),
            conn,
            client,
            cache: Mutex::default(),
            queue: Mutex::default(),
            up: AtomicBool::new(true),
            errors_since_log: AtomicU64::new(0),
            last_log_ms: AtomicU64::new(0),
            last_error: Mutex::default(),
            count_script: redis::Script::new(COUNT_SCRIPT),
            delete_script: redis::Script::new(DELETE_SCRIPT),
            refresh_script: redis::Script::new(REFRESH_SCRIPT),
            get_script: redis::Script::new(GET_SCRIPT),
            owner_script: redis::Script::new(OWNER_SCRIPT),
            marker: format!("{}:gw:{}", config.prefix, uuid::Uuid::new_v4()),
            marker_set: AtomicBool::new(false),
            recovering_until_ms: AtomicU64::new(0),
            config,
        });
        Ok(store)
    }

    /// Starts the background tasks (invalidation subscriber, outage recovery, cache reaper).
    /// They stop when the store is dropped.
    pub fn spawn_tasks(self: &Arc<Self>) -> Vec<tokio::task::JoinHandle<()>> {
        vec![
            tokio::spawn(subscribe(Arc::downgrade(self))),
            tokio::spawn(recover(Arc::downgrade(self))),
            tokio::spawn(reap(Arc::downgrade(self))),
        ]
    }

    /// Writes queued during an outage that have not reached Redis yet.
    pub fn queued(&self) -> usize {
        let q = lock(&self.queue);
        q.puts.len() + q.removes.len()
    }

    // === keys ===

    fn session_key(&self, key: &SessionKey) -> String {
        format!("{}:s:{}:{}", self.config.prefix, key.adapter, key.id)
    }

    fn replica_prefix(&self, adapter: &AdapterName) -> String {
        format!("{}:r:{}:", self.config.prefix, adapter)
    }

    fn replicas_key(&self, adapter: &AdapterName) -> String {
        format!("{}:replicas:{}", self.config.prefix, adapter)
    }

    fn owner_prefix(&self) -> String {
        format!("{}:o:", self.config.prefix)
    }

    /// The owner set's member of a session: adapter names hold no `:`, so this is unambiguous.
    fn owner_member(key: &SessionKey) -> String {
        format!("{}:{}", key.adapter, key.id)
    }

    fn channel(&self) -> String {
        format!("{}:invalidate", self.config.prefix)
    }

    // === health ===

    fn failed(&self, op: &'static str, e: &redis::RedisError) -> StoreError {
        metrics::counter!("mcp_gateway_store_errors_total", "op" => op).increment(1);
        let was_up = self.up.swap(false, Ordering::Relaxed);
        *lock(&self.last_error) = Some(format!("Redis unreachable: {e}"));
        let n = self.errors_since_log.fetch_add(1, Ordering::Relaxed) + 1;
        let now = unix_millis();
        let last = self.last_log_ms.load(Ordering::Relaxed);
        if was_up || now.saturating_sub(last) >= 10_000 {
            self.last_log_ms.store(now, Ordering::Relaxed);
            self.errors_since_log.store(0, Ordering::Relaxed);
            tracing::warn!(error = %e, errors = n, op, "session store degraded: Redis unreachable; serving from the local cache");
        }
        metrics::gauge!("mcp_gateway_store_up").set(0.0);
        StoreError::Unavailable(e.to_string())
    }

    fn recovered(&self) {
        if !self.up.swap(true, Ordering::Relaxed) {
            tracing::info!("session store recovered: Redis reachable again");
        }
        metrics::gauge!("mcp_gateway_store_up").set(1.0);
    }

    // === records ===

    fn ttl_ms(&self, record: &SessionRecord, now: u64) -> u64 {
        let idle = self.config.idle_ttl.as_millis() as u64;
        let life_left =
            (record.created_ms + self.config.max_lifetime.as_millis() as u64).saturating_sub(now);
        idle.min(life_left)
    }

    fn expired(&self, record: &SessionRecord, now: u64) -> bool {
        now.saturating_sub(record.last_seen_ms) >= self.config.idle_ttl.as_millis() as u64
            || now.saturating_sub(record.created_ms) >= self.config.max_lifetime.as_millis() as u64
    }

    async fn write(&self, record: &SessionRecord) -> Result<(), redis::RedisError> {
        let now = unix_millis();
        let ttl = self.ttl_ms(record, now).max(1);
        let json = serde_json::to_string(record).map_err(|e| {
            redis::RedisError::from((redis::ErrorKind::Client, "serialize", e.to_string()))
        })?;
        let adapter = &record.key.adapter;
        let mut conn = self.conn.clone();
        let mut pipe = redis::pipe();
        if let Some(owner) = &record.principal {
            pipe.zadd(
                format!("{}{owner}", self.owner_prefix()),
                Self::owner_member(&record.key),
                now + ttl,
            )
            .ignore();
        }
        pipe.atomic()
            .set_options(
                self.session_key(&record.key),
                json,
                redis::SetOptions::default().with_expiration(redis::SetExpiry::PX(ttl)),
            )
            .ignore()
            .zadd(
                format!("{}{}", self.replica_prefix(adapter), record.replica),
                record.key.id.as_str(),
                now + ttl,
            )
            .ignore()
            .sadd(self.replicas_key(adapter), &*record.replica)
            .ignore()
            .query_async::<()>(&mut conn)
            .await
    }

    /// Deletes a record and its replica-count entry, and tells the other gateways.
    async fn delete(&self, key: &SessionKey) -> Result<(), redis::RedisError> {
        let mut conn = self.conn.clone();
        self.delete_script
            .key(self.session_key(key))
            .arg(self.replica_prefix(&key.adapter))
            .arg(key.id.as_str())
            .arg(self.channel())
            .arg(format!("{}\n{}", key.adapter, key.id))
            .arg(self.owner_prefix())
            .arg(Self::owner_member(key))
            .invoke_async::<()>(&mut conn)
            .await
    }

    /// Slides a session's TTL in Redis; drops it from the cache if Redis no longer has it
    /// (unless Redis lost its data, in which case the session is written back).
    async fn refresh(self: Arc<Self>, record: SessionRecord) {
        let now = unix_millis();
        let ttl = self.ttl_ms(&record, now).max(1);
        let mut conn = self.conn.clone();
        let marker_set = self.marker_set.load(Ordering::Relaxed);
        let result: Result<i64, _> = self
            .refresh_script
            .key(self.session_key(&record.key))
            .key(format!(
                "{}{}",
                self.replica_prefix(&record.key.adapter),
                record.replica
            ))
            .key(&self.marker)
            .arg(ttl)
            .arg(now + ttl)
            .arg(record.key.id.as_str())
            .arg(
                record
                    .principal
                    .as_ref()
                    .map_or_else(String::new, |o| format!("{}{o}", self.owner_prefix())),
            )
            .arg(Self::owner_member(&record.key))
            .invoke_async(&mut conn)
            .await;
        match result {
            Ok(1) => self.recovered(),
            Ok(-1) if marker_set => {
                // Redis lost its data; the recovery task writes back every cached session
                // (this one included) within a second.
                self.recovered();
                tracing::debug!(session = %record.key.id, "cached session gone with Redis' data; kept");
            }
            Ok(_) => {
                // Removed or expired elsewhere (and the invalidation was missed), unless this
                // gateway still has to write it after an outage.
                self.recovered();
                if !lock(&self.queue).puts.contains_key(&record.key) {
                    lock(&self.cache).remove(&record.key);
                    tracing::debug!(session = %record.key.id, "cached session gone from Redis");
                }
            }
            Err(e) => {
                self.failed("refresh", &e);
            }
        }
    }

    /// Renews this gateway's marker; `false` when it was gone (Redis lost its data).
    async fn renew_marker(&self) -> Result<bool, redis::RedisError> {
        let mut conn = self.conn.clone();
        redis::cmd("PEXPIRE")
            .arg(&self.marker)
            .arg(MARKER_TTL_MS)
            .query_async::<bool>(&mut conn)
            .await
    }

    async fn set_marker(&self) -> Result<(), redis::RedisError> {
        let mut conn = self.conn.clone();
        redis::cmd("SET")
            .arg(&self.marker)
            .arg(1)
            .arg("PX")
            .arg(MARKER_TTL_MS)
            .query_async::<()>(&mut conn)
            .await
    }

    /// Queues every cached session for writing.
    fn requeue_cache(&self) {
        let records: Vec<SessionRecord> = lock(&self.cache)
            .values()
            .map(|c| c.record.clone())
            .collect();
        let mut q = lock(&self.queue);
        for r in records {
            if !q.removes.contains(&r.key) {
                q.puts.insert(r.key.clone(), r);
            }
        }
    }

    /// Writes what was queued during an outage. Returns whether the queue is empty.
    async fn flush(&self) -> bool {
        let (puts, removes) = {
            let q = lock(&self.queue);
            (
                q.puts.values().cloned().collect::<Vec<_>>(),
                q.removes.iter().cloned().collect::<Vec<_>>(),
            )
        };
        for key in removes {
            if self.delete(&key).await.is_err() {
                return false;
            }
            lock(&self.queue).removes.remove(&key);
        }
        let now = unix_millis();
        for mut record in puts {
            // A session used locally during the outage is as fresh as its cache entry; one
            // no longer cached was removed meanwhile and must not be written back.
            let cached = lock(&self.cache)
                .get(&record.key)
                .map(|c| c.record.last_seen_ms);
            let Some(last_seen_ms) = cached else {
                lock(&self.queue).puts.remove(&record.key);
                continue;
            };
            record.last_seen_ms = last_seen_ms;
            if !self.expired(&record, now) && self.write(&record).await.is_err() {
                return false;
            }
            lock(&self.queue).puts.remove(&record.key);
        }
        true
    }
}

// === impl SessionStore ===

#[async_trait::async_trait]
impl SessionStore for RedisStore {
    async fn get(&self, key: &SessionKey) -> Result<Option<SessionRecord>, StoreError> {
        let now = unix_millis();
        let cached = {
            let mut cache = lock(&self.cache);
            match cache.get_mut(key) {
                Some(c) if self.expired(&c.record, now) => {
                    cache.remove(key);
                    None
                }
                Some(c) => {
                    c.record.last_seen_ms = now;
                    let stale = c.refreshed.elapsed() >= self.config.refresh_after;
                    if stale {
                        c.refreshed = Instant::now();
                    }
                    Some((c.record.clone(), stale))
                }
                None => None,
            }
        };
        if let Some((record, stale)) = cached {
            if stale
                && self.up.load(Ordering::Relaxed)
                && let Some(me) = self.me.upgrade()
            {
                tokio::spawn(me.refresh(record.clone()));
            }
            return Ok(Some(record));
        }

        // First seen here: one round trip.
        let mut conn = self.conn.clone();
        // Read before the query: a marker set while it runs says nothing of what it found.
        let marker_set = self.marker_set.load(Ordering::Relaxed);
        let found: redis::Value = self
            .get_script
            .key(self.session_key(key))
            .key(&self.marker)
            .arg(now)
            .arg(self.config.idle_ttl.as_millis() as u64)
            .arg(self.config.max_lifetime.as_millis() as u64)
            .arg(self.replica_prefix(&key.adapter))
            .arg(key.id.as_str())
            .arg(self.owner_prefix())
            .arg(Self::owner_member(key))
            .invoke_async(&mut conn)
            .await
            .map_err(|e| self.failed("get", &e))?;
        self.recovered();
        let json: String = match found {
            redis::Value::Nil
                if unix_millis() < self.recovering_until_ms.load(Ordering::Relaxed) =>
            {
                return Err(StoreError::Unavailable(
                    "Redis lost its data moments ago; gateways are writing their sessions back, \
                     retry"
                        .into(),
                ));
            }
            redis::Value::Nil => return Ok(None),
            // Not "no such session" (404, and the client would drop it) but "ask again": the
            // gateways that know the session write it back within a second.
            redis::Value::Int(_) if !marker_set => return Ok(None),
            redis::Value::Int(_) => {
                return Err(StoreError::Unavailable(
                    "Redis lost its data (restarted empty?); sessions are being written back, \
                     retry"
                        .into(),
                ));
            }
            v => redis::from_redis_value(v)
                .map_err(|e| StoreError::Unavailable(format!("unexpected Redis reply: {e}")))?,
        };
        let mut record: SessionRecord = serde_json::from_str(&json)
            .map_err(|e| StoreError::Unavailable(format!("corrupt session record: {e}")))?;
        if now.saturating_sub(record.created_ms) >= self.config.max_lifetime.as_millis() as u64 {
            return Ok(None);
        }
        record.last_seen_ms = now;
        lock(&self.cache).insert(
            key.clone(),
            Cached {
                record: record.clone(),
                refreshed: Instant::now(),
            },
        );
        Ok(Some(record))
    }

    async fn put(&self, record: SessionRecord) -> Result<(), StoreError> {
        lock(&self.cache).insert(
            record.key.clone(),
            Cached {
                record: record.clone(),
                refreshed: Instant::now(),
            },
        );
        let queued = !self.up.load(Ordering::Relaxed);
        if !queued {
            match self.write(&record).await {
                Ok(()) => {
                    self.recovered();
                    return Ok(());
                }
                Err(e) => {
                    self.failed("put", &e);
                }
            }
        }
        let mut q = lock(&self.queue);
        q.removes.remove(&record.key);
        q.puts.insert(record.key.clone(), record);
        Ok(())
    }

    async fn remove(&self, key: &SessionKey) -> Result<Option<SessionRecord>, StoreError> {
        let local = lock(&self.cache).remove(key).map(|c| c.record);
        lock(&self.queue).puts.remove(key);
        if self.up.load(Ordering::Relaxed) {
            match self.delete(key).await {
                Ok(()) => return Ok(local),
                Err(e) => {
                    self.failed("remove", &e);
                }
            }
        }
        lock(&self.queue).removes.insert(key.clone());
        Ok(local)
    }

    async fn live_sessions(
        &self,
        adapter: &AdapterName,
    ) -> Result<HashMap<Arc<str>, u64>, StoreError> {
        if self.up.load(Ordering::Relaxed) {
            let mut conn = self.conn.clone();
            let result: Result<Vec<redis::Value>, _> = self
                .count_script
                .key(self.replicas_key(adapter))
                .arg(unix_millis())
                .arg(self.replica_prefix(adapter))
                .invoke_async(&mut conn)
                .await;
            match result {
                Ok(values) => {
                    self.recovered();
                    let mut counts = HashMap::new();
                    for pair in values.chunks(2) {
                        if let [name, count] = pair {
                            let name: String =
                                redis::from_redis_value_ref(name).unwrap_or_default();
                            let count: u64 = redis::from_redis_value_ref(count).unwrap_or(0);
                            counts.insert(Arc::from(name), count);
                        }
                    }
                    return Ok(counts);
                }
                Err(e) => {
                    self.failed("count", &e);
                }
            }
        }
        // Degraded: place on what this gateway knows.
        let mut counts: HashMap<Arc<str>, u64> = HashMap::new();
        for c in lock(&self.cache)
            .values()
            .filter(|c| &c.record.key.adapter == adapter)
        {
            *counts.entry(c.record.replica.clone()).or_default() += 1;
        }
        Ok(counts)
    }

    async fn total_sessions(&self) -> Result<u64, StoreError> {
        Ok(lock(&self.cache).len() as u64)
    }

    /// Counted in Redis across every gateway; while degraded, what this gateway knows.
    async fn owner_sessions(&self, owner: &str) -> Result<Option<OwnerSessions>, StoreError> {
        if self.up.load(Ordering::Relaxed) {
            let mut conn = self.conn.clone();
            let result: Result<(u64, Option<f64>), _> = self
                .owner_script
                .key(format!("{}{owner}", self.owner_prefix()))
                .arg(unix_millis())
                .invoke_async(&mut conn)
                .await;
            match result {
                Ok((live, first)) => {
                    self.recovered();
                    return Ok(Some(OwnerSessions {
                        live,
                        next_expiry_ms: first.map(|ms| ms as u64),
                    }));
                }
                Err(e) => {
                    self.failed("owner_count", &e);
                }
            }
        }
        let now = unix_millis();
        let mut out = OwnerSessions::default();
        for c in lock(&self.cache).values() {
            if c.record.principal.as_deref() == Some(owner) && !self.expired(&c.record, now) {
                out.live += 1;
                let expiry = c.record.last_seen_ms + self.config.idle_ttl.as_millis() as u64;
                out.next_expiry_ms = Some(out.next_expiry_ms.map_or(expiry, |e| e.min(expiry)));
            }
        }
        Ok(Some(out))
    }

    fn idle_ttl(&self) -> Duration {
        self.config.idle_ttl
    }

    fn degraded(&self) -> Option<String> {
        if self.up.load(Ordering::Relaxed) {
            None
        } else {
            Some(
                lock(&self.last_error)
                    .clone()
                    .unwrap_or_else(|| "Redis unreachable".into()),
            )
        }
    }
}

// === background tasks ===

/// Drops sessions removed through other gateways from the cache.
async fn subscribe(store: Weak<RedisStore>) {
    let mut backoff = Duration::from_millis(100);
    loop {
        let Some(s) = store.upgrade() else { return };
        let (client, channel) = (s.client.clone(), s.channel());
        drop(s);
        let pubsub = match client.get_async_pubsub().await {
            Ok(mut p) => match p.subscribe(&channel).await {
                Ok(()) => Some(p),
                Err(_) => None,
            },
            Err(_) => None,
        };
        let Some(pubsub) = pubsub else {
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(Duration::from_secs(2));
            continue;
        };
        backoff = Duration::from_millis(100);
        // Messages may have been missed while unsubscribed: have every cached session
        // re-checked on its next use.
        if let Some(s) = store.upgrade() {
            let stale = Instant::now() - s.config.refresh_after;
            for c in lock(&s.cache).values_mut() {
                c.refreshed = stale;
            }
        }
        let mut messages = pubsub.into_on_message();
        while let Some(msg) = messages.next().await {
            let Some(s) = store.upgrade() else { return };
            let Ok(payload) = msg.get_payload::<String>() else {
                continue;
            };
            let Some((adapter, id)) = payload.split_once('\n') else {
                continue;
            };
            if let (Ok(adapter), Ok(id)) = (AdapterName::new(adapter), SessionId::new(id)) {
                lock(&s.cache).remove(&SessionKey { adapter, id });
            }
        }
    }
}

/// Every second: renews this gateway's marker. If it is gone, Redis lost its data (a restart
/// without persistence, a flush, a failover to a replica that lacked the writes), whether or
/// not any command of this gateway failed meanwhile: every session this gateway knows is
/// written back, then the marker set again. While degraded, the same tick writes the queue
/// once Redis answers.
async fn recover(store: Weak<RedisStore>) {
    let mut first = true;
    // After a failure, retry sooner a few times: the first command on a connection Redis
    // dropped fails, and the reconnection is quick.
    let mut failures = 0u32;
    let mut wait = Duration::ZERO;
    loop {
        tokio::time::sleep(wait).await;
        failures += 1;
        wait = if failures <= 5 {
            Duration::from_millis(100)
        } else {
            Duration::from_secs(1)
        };
        let Some(s) = store.upgrade() else { return };
        match s.renew_marker().await {
            Ok(true) => {
                if s.queued() == 0 || s.flush().await {
                    s.recovered();
                    (failures, wait) = (0, Duration::from_secs(1));
                }
            }
            Ok(false) => {
                let known = lock(&s.cache).len();
                if !first {
                    tracing::warn!(
                        sessions = known,
                        "Redis lost this gateway's sessions (restarted empty, flushed or failed \
                         over?): writing back every session this gateway knows"
                    );
                }
                metrics::counter!("mcp_gateway_store_resyncs_total").increment(1);
                let grace = |s: &RedisStore| {
                    if s.marker_set.load(Ordering::Relaxed) {
                        s.recovering_until_ms
                            .store(unix_millis() + RECOVERY_GRACE_MS, Ordering::Relaxed);
                    }
                };
                grace(&s);
                s.requeue_cache();
                if s.flush().await {
                    match s.set_marker().await {
                        Ok(()) => {
                            first = false;
                            grace(&s);
                            s.marker_set.store(true, Ordering::Relaxed);
                            s.recovered();
                            (failures, wait) = (0, Duration::from_secs(1));
                        }
                        Err(e) => {
                            s.failed("marker", &e);
                        }
                    }
                }
            }
            Err(e) => {
                s.failed("ping", &e);
            }
        }
    }
}

/// Frees expired cache entries.
async fn reap(store: Weak<RedisStore>) {
    let mut tick = tokio::time::interval(Duration::from_secs(30));
    loop {
        tick.tick().await;
        let Some(s) = store.upgrade() else { return };
        let now = unix_millis();
        lock(&s.cache).retain(|_, c| !s.expired(&c.record, now));
    }
}
