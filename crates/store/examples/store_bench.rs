//! Measures the Redis-backed session store against a real `redis-server`:
//! lookups per second and latency for sessions in the local cache and sessions first seen by
//! this gateway, and the Redis commands each operation costs.
//!
//!     cargo run --release -p mcp-gateway-store --example store_bench [SESSIONS]

#![allow(clippy::print_stdout)] // a report, printed for a person

use std::time::{Duration, Instant};

use mcp_gateway_core::{AdapterName, SessionId, SessionKey, SessionRecord, SessionStore};
use mcp_gateway_store::{RedisConfig, RedisStore};
use mcp_gateway_testkit::RedisServer;

fn key(i: usize) -> SessionKey {
    SessionKey {
        adapter: AdapterName::new("bench").unwrap(),
        id: SessionId::new(&format!("session-{i:08}")).unwrap(),
    }
}

async fn commands(conn: &mut redis::aio::MultiplexedConnection) -> u64 {
    let info: String = redis::cmd("INFO")
        .arg("stats")
        .query_async(conn)
        .await
        .unwrap();
    info.lines()
        .find_map(|l| l.strip_prefix("total_commands_processed:"))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0)
}

fn report(name: &str, mut lat: Vec<Duration>, total: Duration) {
    lat.sort();
    let pct = |p: f64| lat[((lat.len() as f64 * p) as usize).min(lat.len() - 1)];
    println!(
        "{name:<34} {:>10.0} ops/s   p50 {:>8.1?}   p99 {:>8.1?}",
        lat.len() as f64 / total.as_secs_f64(),
        pct(0.50),
        pct(0.99)
    );
}

#[tokio::main]
async fn main() {
    let n: usize = std::env::args()
        .nth(1)
        .and_then(|a| a.parse().ok())
        .unwrap_or(10_000);
    let redis = RedisServer::start().expect("redis-server");
    let client = redis::Client::open(redis.url()).unwrap();
    let mut probe = client.get_multiplexed_async_connection().await.unwrap();
    let store = |_| {
        let s = RedisStore::connect(RedisConfig::new(redis.url())).unwrap();
        s.spawn_tasks();
        s
    };
    let (a, b) = (store(()), store(()));
    tokio::time::sleep(Duration::from_millis(200)).await;

    // New sessions: count per replica (placement), then write.
    let adapter = AdapterName::new("bench").unwrap();
    let before = commands(&mut probe).await;
    let started = Instant::now();
    let mut lat = Vec::with_capacity(n);
    for i in 0..n {
        let t = Instant::now();
        a.live_sessions(&adapter).await.unwrap();
        a.put(SessionRecord::new(
            key(i),
            (if i % 2 == 0 { "0" } else { "1" }).into(),
            None,
        ))
        .await
        .unwrap();
        lat.push(t.elapsed());
    }
    let total = started.elapsed();
    let new_cmds = commands(&mut probe).await - before - 1;
    report("new session (count + write)", lat, total);

    // Cached: sessions this gateway opened.
    let before = commands(&mut probe).await;
    let started = Instant::now();
    let mut lat = Vec::with_capacity(n * 10);
    for round in 0..10 {
        for i in 0..n {
            let t = Instant::now();
            let r = a.get(&key((i + round) % n)).await.unwrap();
            lat.push(t.elapsed());
            assert!(r.is_some());
        }
    }
    let total = started.elapsed();
    let cached_cmds = commands(&mut probe).await - before - 1;
    report("lookup, cached", lat, total);

    // Uncached: another gateway sees each session for the first time.
    let before = commands(&mut probe).await;
    let started = Instant::now();
    let mut lat = Vec::with_capacity(n);
    for i in 0..n {
        let t = Instant::now();
        let r = b.get(&key(i)).await.unwrap();
        lat.push(t.elapsed());
        assert!(r.is_some());
    }
    let total = started.elapsed();
    let uncached_cmds = commands(&mut probe).await - before - 1;
    report("lookup, first seen (uncached)", lat, total);

    // Delete.
    let before = commands(&mut probe).await;
    for i in 0..n {
        b.remove(&key(i)).await.unwrap();
    }
    let delete_cmds = commands(&mut probe).await - before - 1;

    println!();
    println!(
        "Redis commands per operation (INFO total_commands_processed; round trips in brackets):"
    );
    println!(
        "  new session      {:.2}  [2: count script, write transaction]",
        new_cmds as f64 / n as f64
    );
    println!(
        "  cached lookup    {:.4}  [0; a TTL refresh per session every refresh_after]",
        cached_cmds as f64 / (n * 10) as f64
    );
    println!(
        "  uncached lookup  {:.2}  [1: GET + PEXPIRE pipelined]",
        uncached_cmds as f64 / n as f64
    );
    println!(
        "  delete           {:.2}  [1: delete script incl. PUBLISH]",
        delete_cmds as f64 / n as f64
    );
}
