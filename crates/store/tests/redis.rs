//! The Redis-backed store against a real `redis-server` (started by the tests on a free port).

use std::sync::Arc;
use std::time::Duration;

use mcp_gateway_core::{AdapterName, SessionId, SessionKey, SessionRecord, SessionStore};
use mcp_gateway_store::{RedisConfig, RedisStore};
use mcp_gateway_testkit::RedisServer;

fn key(id: &str) -> SessionKey {
    SessionKey {
        adapter: AdapterName::new("demo").unwrap(),
        id: SessionId::new(id).unwrap(),
    }
}

fn record(id: &str, replica: &str) -> SessionRecord {
    SessionRecord::new(key(id), replica.into(), Some("alice".into()))
}

fn store(redis: &RedisServer, tweak: impl FnOnce(&mut RedisConfig)) -> Arc<RedisStore> {
    let mut config = RedisConfig::new(redis.url());
    config.timeout = Duration::from_millis(200);
    tweak(&mut config);
    let store = RedisStore::connect(config).unwrap();
    store.spawn_tasks();
    store
}

async fn eventually(what: &str, mut check: impl AsyncFnMut() -> bool) {
    for _ in 0..100 {
        if check().await {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("timed out waiting for: {what}");
}

#[tokio::test]
async fn a_session_written_by_one_gateway_is_read_by_another() {
    let redis = RedisServer::start().unwrap();
    let (a, b) = (store(&redis, |_| {}), store(&redis, |_| {}));
    a.put(record("s1", "0")).await.unwrap();
    let got = b.get(&key("s1")).await.unwrap().expect("shared");
    assert_eq!(&*got.replica, "0");
    assert_eq!(got.principal.as_deref(), Some("alice"));
    assert!(b.get(&key("unknown")).await.unwrap().is_none());
}

#[tokio::test]
async fn placement_counts_are_shared_between_gateways() {
    let redis = RedisServer::start().unwrap();
    let (a, b) = (store(&redis, |_| {}), store(&redis, |_| {}));
    a.put(record("s1", "0")).await.unwrap();
    b.put(record("s2", "0")).await.unwrap();
    b.put(record("s3", "1")).await.unwrap();
    let demo = AdapterName::new("demo").unwrap();
    for s in [&a, &b] {
        let counts = s.live_sessions(&demo).await.unwrap();
        assert_eq!(counts.get("0"), Some(&2));
        assert_eq!(counts.get("1"), Some(&1));
    }
    a.remove(&key("s2")).await.unwrap();
    let counts = b.live_sessions(&demo).await.unwrap();
    assert_eq!(
        counts.get("0"),
        Some(&1),
        "removal seen by the other gateway's counts"
    );
}

#[tokio::test]
async fn delete_through_one_gateway_is_seen_by_the_other_at_once() {
    let redis = RedisServer::start().unwrap();
    let (a, b) = (store(&redis, |_| {}), store(&redis, |_| {}));
    a.put(record("s1", "0")).await.unwrap();
    assert!(
        b.get(&key("s1")).await.unwrap().is_some(),
        "now cached by b"
    );
    tokio::time::sleep(Duration::from_millis(200)).await; // b's subscription is up
    a.remove(&key("s1")).await.unwrap();
    eventually("b drops the session from its cache", async || {
        b.get(&key("s1")).await.unwrap().is_none()
    })
    .await;
}

#[tokio::test]
async fn expiry_is_seen_across_gateways() {
    let redis = RedisServer::start().unwrap();
    let short = |c: &mut RedisConfig| {
        c.idle_ttl = Duration::from_millis(600);
        c.refresh_after = Duration::from_millis(100);
    };
    let (a, b) = (store(&redis, short), store(&redis, short));
    a.put(record("busy", "0")).await.unwrap();
    a.put(record("idle", "0")).await.unwrap();
    // `busy` is used through b only: its TTL must slide in Redis for a too.
    for _ in 0..8 {
        tokio::time::sleep(Duration::from_millis(150)).await;
        assert!(b.get(&key("busy")).await.unwrap().is_some());
    }
    assert!(a.get(&key("idle")).await.unwrap().is_none(), "idle expired");
    assert!(
        b.get(&key("idle")).await.unwrap().is_none(),
        "idle expired for b too"
    );
    assert!(
        a.get(&key("busy")).await.unwrap().is_some(),
        "busy kept alive through b"
    );
}

#[tokio::test]
async fn max_lifetime_ends_even_busy_sessions() {
    let redis = RedisServer::start().unwrap();
    let s = store(&redis, |c| c.max_lifetime = Duration::from_millis(400));
    s.put(record("s", "0")).await.unwrap();
    assert!(s.get(&key("s")).await.unwrap().is_some());
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(s.get(&key("s")).await.unwrap().is_none());
    let other = store(&redis, |_| {});
    assert!(
        other.get(&key("s")).await.unwrap().is_none(),
        "Redis TTL capped at the lifetime"
    );
}

#[tokio::test]
async fn an_outage_keeps_known_sessions_and_queues_new_ones() {
    let mut redis = RedisServer::start().unwrap();
    let a = store(&redis, |_| {});
    a.put(record("before", "0")).await.unwrap();
    assert!(a.degraded().is_none());

    redis.stop();
    assert!(
        a.get(&key("before")).await.unwrap().is_some(),
        "known session served from cache"
    );
    a.put(record("during", "1"))
        .await
        .expect("a new session works during the outage");
    assert!(a.get(&key("during")).await.unwrap().is_some());
    assert!(a.degraded().is_some(), "degraded reported");
    let counts = a
        .live_sessions(&AdapterName::new("demo").unwrap())
        .await
        .unwrap();
    assert_eq!(
        counts.get("1"),
        Some(&1),
        "placement falls back to local counts"
    );
    assert!(
        a.get(&key("never-seen")).await.is_err(),
        "an unknown session needs the store"
    );

    redis.restart().unwrap();
    eventually("the queue reaches Redis", async || {
        a.queued() == 0 && a.degraded().is_none()
    })
    .await;
    let b = store(&redis, |_| {});
    let during = b
        .get(&key("during"))
        .await
        .unwrap()
        .expect("written after the outage");
    assert_eq!(&*during.replica, "1");
    // Redis restarted empty; the gateway wrote back what it knew, so nothing known is lost.
    let before = b
        .get(&key("before"))
        .await
        .unwrap()
        .expect("written back after the outage");
    assert_eq!(&*before.replica, "0");
    assert!(a.get(&key("before")).await.unwrap().is_some());
}

#[tokio::test]
async fn a_password_in_the_url_is_refused() {
    let err = RedisStore::connect(RedisConfig::new("redis://:secret@127.0.0.1:6379/0"))
        .err()
        .expect("refused");
    assert!(
        err.to_string().contains("MCP_GATEWAY_REDIS_PASSWORD"),
        "{err}"
    );
}

/// A store whose background tasks do not run: it misses every invalidation message, as a
/// gateway whose subscription is down does.
fn deaf_store(redis: &RedisServer, tweak: impl FnOnce(&mut RedisConfig)) -> Arc<RedisStore> {
    let mut config = RedisConfig::new(redis.url());
    config.timeout = Duration::from_millis(200);
    tweak(&mut config);
    RedisStore::connect(config).unwrap()
}

#[tokio::test]
async fn a_redis_restart_loses_no_session_a_gateway_knows_even_with_traffic_meanwhile() {
    let mut redis = RedisServer::start().unwrap();
    let (a, b) = (store(&redis, |_| {}), store(&redis, |_| {}));
    for i in 0..5 {
        a.put(record(&format!("a{i}"), "0")).await.unwrap();
    }
    b.put(record("b0", "1")).await.unwrap();

    redis.stop();
    assert!(a.get(&key("b0")).await.is_err(), "A notices the outage");
    redis.restart().unwrap();
    // The race of the review: a cache-miss read succeeds before A's recovery tick runs.
    let _ = a.get(&key("b0")).await;

    eventually("every session is written back", async || {
        let c = store(&redis, |_| {});
        let mut all = true;
        for id in ["a0", "a1", "a2", "a3", "a4", "b0"] {
            all &= c.get(&key(id)).await.unwrap().is_some();
        }
        all
    })
    .await;
    let counts = b
        .live_sessions(&AdapterName::new("demo").unwrap())
        .await
        .unwrap();
    assert_eq!(counts.get("0"), Some(&5), "counts rebuilt too");
    assert_eq!(counts.get("1"), Some(&1));
}

#[tokio::test]
async fn a_quick_redis_restart_no_gateway_noticed_loses_no_session() {
    let mut redis = RedisServer::start().unwrap();
    let a = store(&redis, |_| {});
    a.put(record("s1", "0")).await.unwrap();
    // Redis restarts empty between two commands of this gateway: no command ever failed.
    redis.restart().unwrap();
    eventually("the session is written back", async || {
        store(&redis, |_| {})
            .get(&key("s1"))
            .await
            .unwrap()
            .is_some()
    })
    .await;
}

#[tokio::test]
async fn a_cached_session_is_not_dropped_when_redis_lost_its_data() {
    let mut redis = RedisServer::start().unwrap();
    let a = store(&redis, |c| c.refresh_after = Duration::from_millis(50));
    a.put(record("s1", "0")).await.unwrap();
    redis.restart().unwrap();
    // A refresh finds the record gone; it must not take Redis' loss for a removal.
    for _ in 0..10 {
        assert!(a.get(&key("s1")).await.unwrap().is_some());
        tokio::time::sleep(Duration::from_millis(60)).await;
    }
    eventually("written back", async || {
        store(&redis, |_| {})
            .get(&key("s1"))
            .await
            .unwrap()
            .is_some()
    })
    .await;
}

#[tokio::test]
async fn a_refresh_after_a_missed_removal_does_not_count_a_phantom_session() {
    let redis = RedisServer::start().unwrap();
    let a = deaf_store(&redis, |c| c.refresh_after = Duration::from_millis(50));
    let b = store(&redis, |_| {});
    let demo = AdapterName::new("demo").unwrap();
    a.put(record("s1", "0")).await.unwrap();
    b.remove(&key("s1")).await.unwrap();
    assert_eq!(
        b.live_sessions(&demo)
            .await
            .unwrap()
            .get("0")
            .copied()
            .unwrap_or(0),
        0
    );
    // A missed the invalidation: its next use of the session refreshes it in the background.
    tokio::time::sleep(Duration::from_millis(60)).await;
    let _ = a.get(&key("s1")).await.unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(
        b.live_sessions(&demo)
            .await
            .unwrap()
            .get("0")
            .copied()
            .unwrap_or(0),
        0,
        "no phantom member re-added for a record that is gone"
    );
}

#[tokio::test]
async fn a_session_read_through_another_gateway_keeps_counting() {
    let redis = RedisServer::start().unwrap();
    let ttl = Duration::from_millis(1500);
    let a = store(&redis, |c| c.idle_ttl = ttl);
    let b = store(&redis, |c| c.idle_ttl = ttl);
    let demo = AdapterName::new("demo").unwrap();
    a.put(record("s1", "0")).await.unwrap();
    tokio::time::sleep(Duration::from_millis(1000)).await;
    // First use through B (a cache miss): slides the record's TTL, and must slide its count too.
    assert!(b.get(&key("s1")).await.unwrap().is_some());
    tokio::time::sleep(Duration::from_millis(1000)).await;
    let c = store(&redis, |c| c.idle_ttl = ttl);
    assert!(c.get(&key("s1")).await.unwrap().is_some(), "still alive");
    assert_eq!(
        c.live_sessions(&demo).await.unwrap().get("0").copied(),
        Some(1),
        "a live session is counted"
    );
}

#[tokio::test]
async fn an_owner_s_sessions_are_counted_across_gateways() {
    let redis = RedisServer::start().unwrap();
    let (a, b) = (store(&redis, |_| {}), store(&redis, |_| {}));
    a.put(record("s1", "0")).await.unwrap();
    b.put(record("s2", "1")).await.unwrap();
    let mut other = record("s3", "0");
    other.principal = Some("bob".into());
    b.put(other).await.unwrap();
    let alice = a.owner_sessions("alice").await.unwrap().unwrap();
    assert_eq!(alice.live, 2);
    let next = alice.next_expiry_ms.expect("earliest expiry");
    let idle = 3600 * 1000;
    let now = mcp_gateway_core::unix_millis();
    assert!(next > now + idle - 5000 && next <= now + idle, "{next}");
    assert_eq!(b.owner_sessions("bob").await.unwrap().unwrap().live, 1);
    b.remove(&key("s1")).await.unwrap();
    assert_eq!(a.owner_sessions("alice").await.unwrap().unwrap().live, 1);
    assert_eq!(a.owner_sessions("nobody").await.unwrap().unwrap().live, 0);
}
