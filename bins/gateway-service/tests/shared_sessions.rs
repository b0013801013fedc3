//! Several gateways on one Redis: any gateway routes any session, across restarts and outages.

use std::time::Duration;

use bytes::Bytes;
use gateway_service::{AdapterConfig, Config, Handle, SessionStoreConfig};
use http::{Method, StatusCode};
use mcp_gateway_core::AdapterName;
use mcp_gateway_testkit::{Http, McpSession, RedisServer, Replicas};
use serde_json::json;

async fn gateway(redis: &RedisServer, replicas: &Replicas) -> Handle {
    let mut config = Config::for_tests();
    config.adapters = vec![AdapterConfig {
        name: AdapterName::new("demo").unwrap(),
        upstreams: replicas.urls(),
        mcp_path: "/mcp".into(),
        sse_path: "/sse".into(),
        required_roles: Vec::new(),
        upstream_headers: Default::default(),
    }];
    config.session_store = SessionStoreConfig::Redis {
        url: redis.url(),
        password: None,
        refresh_after: Duration::from_secs(30),
    };
    gateway_service::run(config).await.expect("gateway starts")
}

fn url(gw: &Handle) -> String {
    format!("http://{}/adapters/demo/mcp", gw.data_addr)
}

/// The same session, continued through another gateway.
fn through(session: &McpSession, gw: &Handle) -> McpSession {
    McpSession::resume(&url(gw), &session.id)
}

#[tokio::test]
async fn a_session_continues_through_any_gateway_and_survives_restarts() {
    let redis = RedisServer::start().unwrap();
    let replicas = Replicas::start(2).await.unwrap();
    let (a, b) = (
        gateway(&redis, &replicas).await,
        gateway(&redis, &replicas).await,
    );

    let mut sessions = Vec::new();
    for _ in 0..6 {
        sessions.push(McpSession::open(&url(&a)).await.unwrap());
    }
    // Alternate gateways call by call: the counter keeps counting on one replica.
    for s in &mut sessions {
        let mut via_b = through(s, &b);
        assert!(
            s.call_text("counter_increment", json!({}))
                .await
                .unwrap()
                .ends_with(":1")
        );
        assert!(
            via_b
                .call_text("counter_increment", json!({}))
                .await
                .unwrap()
                .ends_with(":2")
        );
        assert!(
            s.call_text("counter_increment", json!({}))
                .await
                .unwrap()
                .ends_with(":3")
        );
    }

    a.shutdown().await;
    for s in &sessions {
        let mut via_b = through(s, &b);
        assert!(
            via_b
                .call_text("counter_increment", json!({}))
                .await
                .unwrap()
                .ends_with(":4")
        );
    }

    b.shutdown().await;
    let (a2, b2) = (
        gateway(&redis, &replicas).await,
        gateway(&redis, &replicas).await,
    );
    for s in &sessions {
        let mut via_a2 = through(s, &a2);
        let mut via_b2 = through(s, &b2);
        assert!(
            via_a2
                .call_text("counter_increment", json!({}))
                .await
                .unwrap()
                .ends_with(":5")
        );
        assert!(
            via_b2
                .call_text("counter_increment", json!({}))
                .await
                .unwrap()
                .ends_with(":6")
        );
    }
}

#[tokio::test]
async fn gateways_share_placement_counts() {
    let redis = RedisServer::start().unwrap();
    let replicas = Replicas::start(2).await.unwrap();
    let (a, b) = (
        gateway(&redis, &replicas).await,
        gateway(&redis, &replicas).await,
    );
    let mut order = Vec::new();
    let mut keep = Vec::new();
    for gw in [&a, &b, &a, &b] {
        let mut s = McpSession::open(&url(gw)).await.unwrap();
        order.push(s.call_text("whoami", json!({})).await.unwrap());
        keep.push(s);
    }
    assert_eq!(
        order,
        ["r0", "r1", "r0", "r1"],
        "B sees A's sessions when placing"
    );
}

#[tokio::test]
async fn delete_through_one_gateway_ends_the_session_everywhere() {
    let redis = RedisServer::start().unwrap();
    let replicas = Replicas::start(2).await.unwrap();
    let (a, b) = (
        gateway(&redis, &replicas).await,
        gateway(&redis, &replicas).await,
    );
    let s = McpSession::open(&url(&a)).await.unwrap();
    let mut via_b = through(&s, &b);
    via_b.call_text("whoami", json!({})).await.unwrap(); // b caches it
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(s.delete().await.unwrap().status.is_success());
    let mut status = StatusCode::OK;
    for _ in 0..40 {
        status = via_b.call("whoami", json!({})).await.unwrap().status;
        if status == StatusCode::NOT_FOUND {
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    assert_eq!(status, StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn a_redis_outage_neither_loses_known_sessions_nor_causes_5xx() {
    let mut redis = RedisServer::start().unwrap();
    let replicas = Replicas::start(2).await.unwrap();
    let (a, b) = (
        gateway(&redis, &replicas).await,
        gateway(&redis, &replicas).await,
    );
    let mut known = McpSession::open(&url(&a)).await.unwrap();
    known
        .call_text("counter_increment", json!({}))
        .await
        .unwrap();

    redis.stop();
    for i in 2..=4 {
        let reply = known.call("counter_increment", json!({})).await.unwrap();
        assert_eq!(reply.status, StatusCode::OK, "{}", reply.text());
        let text = mcp_gateway_testkit::result_text(&reply.message().unwrap()).unwrap();
        assert!(text.ends_with(&format!(":{i}")), "{text}");
    }
    // A new session during the outage works on the gateway that opened it.
    let mut during = McpSession::open(&url(&a)).await.unwrap();
    assert!(
        during
            .call_text("counter_increment", json!({}))
            .await
            .unwrap()
            .ends_with(":1")
    );
    let ready = Http::default()
        .send(
            Method::GET,
            &format!("http://{}/readyz", a.admin_addr),
            &[],
            Bytes::new(),
        )
        .await
        .unwrap();
    assert_eq!(ready.status, StatusCode::OK);
    assert!(ready.text().contains("degraded"), "{}", ready.text());

    redis.restart().unwrap();
    // Once Redis answers again, what A learnt during the outage reaches it: B routes both.
    let mut via_b = through(&during, &b);
    let mut ok = false;
    for _ in 0..60 {
        if via_b
            .call("counter_increment", json!({}))
            .await
            .unwrap()
            .status
            == StatusCode::OK
        {
            ok = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(ok, "the session created during the outage reached Redis");
    let mut known_via_b = through(&known, &b);
    assert!(
        known_via_b
            .call_text("counter_increment", json!({}))
            .await
            .unwrap()
            .ends_with(":5")
    );
}

#[tokio::test]
async fn a_redis_restart_loses_no_session_across_gateways() {
    let mut redis = RedisServer::start().unwrap();
    let replicas = Replicas::start(2).await.unwrap();
    let (a, b) = (
        gateway(&redis, &replicas).await,
        gateway(&redis, &replicas).await,
    );
    let mut sessions = Vec::new();
    for _ in 0..6 {
        let mut s = McpSession::open(&url(&a)).await.unwrap();
        s.call_text("counter_increment", json!({})).await.unwrap();
        sessions.push(s);
    }
    // One more, opened through B and known to A too.
    let mut on_b = McpSession::open(&url(&b)).await.unwrap();
    on_b.call_text("counter_increment", json!({}))
        .await
        .unwrap();
    through(&on_b, &a)
        .call_text("counter_increment", json!({}))
        .await
        .unwrap();

    // Redis restarts empty, with traffic on both gateways meanwhile.
    redis.restart().unwrap();
    for s in &mut sessions {
        s.call_text("counter_increment", json!({})).await.unwrap();
    }
    // Through B, which never saw these sessions: 503 (retry) while they are being written
    // back, never 404, and then their state continues.
    for s in &sessions {
        let mut via_b = through(s, &b);
        let mut tries = 0;
        let reply = loop {
            let reply = via_b.call("counter_increment", json!({})).await.unwrap();
            tries += 1;
            if reply.status != StatusCode::SERVICE_UNAVAILABLE || tries == 30 {
                break reply;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        };
        assert_eq!(reply.status, StatusCode::OK, "{}", reply.text());
        let text = mcp_gateway_testkit::result_text(&reply.message().unwrap()).unwrap();
        assert!(text.ends_with(":3"), "session state kept: {text}");
    }
    // B knew `on_b` only as a cached session: written back as well, so A keeps routing it even
    // after its own cache entry is dropped.
    a.shutdown().await;
    let c = gateway(&redis, &replicas).await;
    let text = through(&on_b, &c)
        .call_text("counter_increment", json!({}))
        .await
        .unwrap();
    assert!(text.ends_with(":3"), "{text}");
    // Placement counts were rebuilt too: r0 holds 4 sessions, r1 3, so r1 gets the next one
    // (with counts lost, the tie would go to r0).
    let mut s = McpSession::open(&url(&c)).await.unwrap();
    assert_eq!(s.call_text("whoami", json!({})).await.unwrap(), "r1");
}
