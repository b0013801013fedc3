//! The local runtime against real processes: our example MCP server, run as replicas.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, SystemTime};

use futures_util::StreamExt;
use mcp_gateway_core::{
    Adapter, AdapterError, AdapterName, AdapterSpec, AdapterStore, LogQuery, Provisioner,
    ReplicaResolver, ReplicaState, StaticResolver,
};
use mcp_gateway_local::{
    FileAdapterStore, LocalOptions, LocalProvisioner, StdioBridge, StdioLauncher,
};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use mcp_gateway_testkit::example_server;

fn options() -> LocalOptions {
    LocalOptions {
        kill_grace: Duration::from_secs(2),
        drain_period: Duration::from_millis(800),
        probe_interval: Duration::from_millis(50),
        restart_backoff: Duration::from_millis(500),
        restart_backoff_max: Duration::from_secs(2),
        ..LocalOptions::default()
    }
}

fn name(s: &str) -> AdapterName {
    AdapterName::new(s).unwrap()
}

fn adapter(json: serde_json::Value) -> Adapter {
    let spec: AdapterSpec = serde_json::from_value(json).unwrap();
    Adapter {
        spec,
        created_by: "test".into(),
        created_by_issuer: None,
        created_at: "2026-01-01T00:00:00Z".into(),
        last_updated_at: "2026-01-01T00:00:00Z".into(),
        revision: None,
    }
}

/// The example server behind `sh`, which prints its pid (kept by `exec`) first.
fn example_adapter(adapter_name: &str, replicas: u32, env: serde_json::Value) -> Adapter {
    adapter(serde_json::json!({
        "name": adapter_name,
        "command": "/bin/sh",
        "args": ["-c", "echo pid=$$; exec \"$0\" --transport all --port {port} --replica r{replica}",
                 example_server()],
        "replicaCount": replicas,
        "environmentVariables": env,
    }))
}

fn setup() -> (Arc<StaticResolver>, LocalProvisioner) {
    let resolver = Arc::new(StaticResolver::default());
    let provisioner = LocalProvisioner::new(resolver.clone(), options());
    (resolver, provisioner)
}

async fn eventually<F, Fut>(what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while !check().await {
        assert!(tokio::time::Instant::now() < deadline, "timed out: {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn ready_count(p: &LocalProvisioner, adapter: &str) -> u32 {
    p.status(&name(adapter)).await.unwrap().ready_replicas
}

/// Pids the replica printed, oldest first.
async fn pids(p: &LocalProvisioner, adapter: &str, replica: u32) -> Vec<i32> {
    let query = LogQuery {
        replica: Some(replica),
        ..LogQuery::default()
    };
    p.logs(&name(adapter), query)
        .await
        .unwrap()
        .filter_map(|l| async move {
            l.line
                .strip_prefix("pid=")
                .map(|p| p.parse::<i32>().unwrap())
        })
        .collect()
        .await
}

/// A replica id without its deployment's incarnation: `ordinal.generation`.
fn short(id: &str) -> String {
    let mut parts = id.splitn(3, '.');
    let (ordinal, generation) = (parts.next().unwrap(), parts.next().unwrap());
    assert!(
        parts.next().is_some_and(|i| !i.is_empty()),
        "{id} has an incarnation"
    );
    format!("{ordinal}.{generation}")
}

fn alive(pid: i32) -> bool {
    kill(Pid::from_raw(pid), None).is_ok()
}

/// Calls the `whoami` tool through a new session: the replica id it reports.
async fn whoami(base_url: &str) -> String {
    let addr = base_url.strip_prefix("http://").unwrap();
    let body = r#"{"jsonrpc":"2.0","id":1,"method":"initialize","params":{"protocolVersion":"2025-06-18","capabilities":{},"clientInfo":{"name":"t","version":"1"}}}"#;
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let request = format!(
        "POST /mcp HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/json\r\n\
         Accept: application/json, text/event-stream\r\nContent-Length: {}\r\n\
         Connection: close\r\n\r\n{body}",
        body.len()
    );
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).await.unwrap();
    assert!(response.starts_with("HTTP/1.1 200"), "{response}");
    let session = response
        .lines()
        .find_map(|l| l.strip_prefix("mcp-session-id: "))
        .expect("a session id")
        .trim()
        .to_owned();
    let body = r#"{"jsonrpc":"2.0","id":2,"method":"tools/call","params":{"name":"whoami","arguments":{}}}"#;
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let request = format!(
        "POST /mcp HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/json\r\n\
         Accept: application/json, text/event-stream\r\nMcp-Session-Id: {session}\r\n\
         MCP-Protocol-Version: 2025-06-18\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).await.unwrap();
    response
}

#[tokio::test]
async fn two_replicas_become_ready_serve_mcp_and_leave_no_process_when_removed() {
    let (resolver, p) = setup();
    let a = example_adapter("two", 2, serde_json::json!({}));
    p.validate(&a.spec).unwrap();
    p.apply(&a).await.unwrap();
    eventually("both replicas ready", || async {
        ready_count(&p, "two").await == 2
    })
    .await;

    let status = p.status(&name("two")).await.unwrap();
    assert_eq!(status.replica_count, 2);
    // microsoft/mcp-gateway's status fields, beside ours.
    assert_eq!((status.updated_replicas, status.available_replicas), (2, 2));
    assert_eq!(status.replica_status, "Healthy");
    assert_eq!(status.image, "/bin/sh");
    let states: Vec<_> = status.replicas.iter().map(|r| (r.index, r.state)).collect();
    assert_eq!(states, [(0, ReplicaState::Ready), (1, ReplicaState::Ready)]);
    assert!(
        status
            .replicas
            .iter()
            .all(|r| r.restarts == 0 && r.exit_code.is_none())
    );

    let target = resolver.resolve("two").expect("published");
    assert_eq!(target.mcp_path, "/mcp");
    let ids: Vec<_> = target.replicas.iter().map(|r| short(&r.id)).collect();
    assert_eq!(ids, ["0.0", "1.0"]);
    assert!(target.replicas.iter().all(|r| r.placeable()));
    assert_ne!(target.replicas[0].base_url, target.replicas[1].base_url);
    assert_eq!(
        Some(&*target.replicas[0].base_url),
        status.replicas[0].url.as_deref()
    );
    // `{replica}` reached the server: each replica says which it is.
    assert!(whoami(&target.replicas[1].base_url).await.contains("r1"));

    let pids = [pids(&p, "two", 0).await[0], pids(&p, "two", 1).await[0]];
    assert!(pids.iter().all(|&pid| alive(pid)));
    p.remove(&name("two")).await.unwrap();
    assert!(pids.iter().all(|&pid| !alive(pid)), "no process left");
    assert!(resolver.resolve("two").is_none());
    assert!(matches!(
        p.status(&name("two")).await,
        Err(AdapterError::NotFound(_))
    ));
    // Removing again is a no-op.
    p.remove(&name("two")).await.unwrap();
}

#[tokio::test]
async fn a_killed_replica_is_reported_crashed_then_restarted() {
    let (resolver, p) = setup();
    p.apply(&example_adapter("crash", 1, serde_json::json!({})))
        .await
        .unwrap();
    eventually("ready", || async { ready_count(&p, "crash").await == 1 }).await;
    let first = pids(&p, "crash", 0).await[0];
    kill(Pid::from_raw(first), Signal::SIGKILL).unwrap();

    eventually("crashed with SIGKILL's exit code", || async {
        let status = p.status(&name("crash")).await.unwrap();
        let r = &status.replicas[0];
        r.state == ReplicaState::Crashed
            && r.exit_code == Some(137)
            && status.replica_status == "Degraded: 0/1 ready"
    })
    .await;
    // A crashed replica takes no requests: its sessions are gone.
    assert!(resolver.resolve("crash").unwrap().replicas.is_empty());

    eventually("restarted and ready", || async {
        let r = &p.status(&name("crash")).await.unwrap().replicas[0];
        r.state == ReplicaState::Ready && r.restarts == 1
    })
    .await;
    let all = pids(&p, "crash", 0).await;
    assert_eq!(all.len(), 2);
    assert!(alive(all[1]) && !alive(first));
    assert!(resolver.resolve("crash").unwrap().replicas[0].placeable());
    let logs: Vec<_> = p
        .logs(&name("crash"), LogQuery::default())
        .await
        .unwrap()
        .map(|l| l.line)
        .collect()
        .await;
    assert!(
        logs.iter()
            .any(|l| l.contains("[gateway] exited with code 137")),
        "{logs:?}"
    );
    p.shutdown().await;
    assert!(!alive(all[1]));
}

#[tokio::test]
async fn logs_select_by_replica_tail_and_since_and_follow_new_lines() {
    let (_, p) = setup();
    let ticker = adapter(serde_json::json!({
        "name": "ticker",
        "command": "sh",
        "args": ["-c", "i=0; while true; do echo \"r{replica} tick $i\"; echo err >&2; i=$((i+1)); sleep 0.05; done"],
        "replicaCount": 2,
    }));
    p.apply(&ticker).await.unwrap();
    let n = name("ticker");
    let query = |replica, tail, since| LogQuery {
        replica,
        tail,
        since,
        follow: false,
        previous: false,
    };
    eventually("some lines", || async {
        p.logs(&n, query(Some(1), None, None))
            .await
            .unwrap()
            .count()
            .await
            >= 6
    })
    .await;
    // Not an HTTP server: never ready, but its output is kept.
    assert_eq!(ready_count(&p, "ticker").await, 0);

    let tail: Vec<_> = p
        .logs(&n, query(Some(1), Some(4), None))
        .await
        .unwrap()
        .collect()
        .await;
    assert_eq!(tail.len(), 4);
    assert!(tail.iter().all(|l| l.replica == 1));
    assert!(tail.iter().any(|l| l.stream == "stderr" && l.line == "err"));
    assert!(
        tail.iter()
            .any(|l| l.stream == "stdout" && l.line.starts_with("r1 tick"))
    );

    let both: Vec<_> = p
        .logs(&n, query(None, None, None))
        .await
        .unwrap()
        .collect()
        .await;
    assert!(both.iter().any(|l| l.replica == 0) && both.iter().any(|l| l.replica == 1));

    let future = SystemTime::now() + Duration::from_secs(3600);
    assert_eq!(
        p.logs(&n, query(None, None, Some(future)))
            .await
            .unwrap()
            .count()
            .await,
        0
    );

    let mut follow = p
        .logs(
            &n,
            LogQuery {
                replica: Some(0),
                tail: Some(0),
                since: None,
                follow: true,
                previous: false,
            },
        )
        .await
        .unwrap();
    let next = tokio::time::timeout(Duration::from_secs(5), async {
        loop {
            let line = follow.next().await.expect("stream open");
            if line.stream == "stdout" {
                return line;
            }
        }
    })
    .await
    .expect("a new line arrives");
    assert!(next.line.starts_with("r0 tick"), "{next:?}");
    assert!(matches!(
        p.logs(&n, query(Some(7), None, None)).await,
        Err(AdapterError::Invalid(_))
    ));
    p.remove(&n).await.unwrap();
    // The follower ends with the adapter.
    let rest = tokio::time::timeout(Duration::from_secs(5), follow.count()).await;
    assert!(rest.is_ok(), "follow ended after remove");
}

#[tokio::test]
async fn scaling_adds_and_removes_the_highest_ordinals() {
    let (resolver, p) = setup();
    p.apply(&example_adapter("scale", 2, serde_json::json!({})))
        .await
        .unwrap();
    eventually("2 ready", || async { ready_count(&p, "scale").await == 2 }).await;
    let before = [pids(&p, "scale", 0).await, pids(&p, "scale", 1).await];

    p.apply(&example_adapter("scale", 3, serde_json::json!({})))
        .await
        .unwrap();
    eventually("3 ready", || async { ready_count(&p, "scale").await == 3 }).await;
    assert_eq!(resolver.resolve("scale").unwrap().replicas.len(), 3);
    // Scaling up restarts nothing.
    assert_eq!(pids(&p, "scale", 0).await, before[0]);
    assert_eq!(pids(&p, "scale", 1).await, before[1]);
    let third = pids(&p, "scale", 2).await[0];

    p.apply(&example_adapter("scale", 1, serde_json::json!({})))
        .await
        .unwrap();
    let status = p.status(&name("scale")).await.unwrap();
    assert_eq!((status.replica_count, status.ready_replicas), (1, 1));
    let draining: Vec<_> = resolver
        .resolve("scale")
        .unwrap()
        .replicas
        .iter()
        .filter(|r| r.draining)
        .map(|r| short(&r.id))
        .collect();
    assert_eq!(draining, ["1.0", "2.0"], "scaled-away replicas drain first");
    eventually("drained replicas stopped", || async {
        p.status(&name("scale")).await.unwrap().replicas.len() == 1
    })
    .await;
    eventually("their processes gone", || async {
        !alive(before[1][0]) && !alive(third)
    })
    .await;
    assert!(alive(before[0][0]));
    let target = resolver.resolve("scale").unwrap();
    assert_eq!(target.replicas.len(), 1);
    assert_eq!(short(&target.replicas[0].id), "0.0");
    p.shutdown().await;
    assert!(!alive(before[0][0]));
}

#[tokio::test]
async fn a_changed_environment_rolls_out_replica_by_replica_with_draining() {
    let (resolver, p) = setup();
    p.apply(&example_adapter("roll", 2, serde_json::json!({"V": "1"})))
        .await
        .unwrap();
    eventually("2 ready", || async { ready_count(&p, "roll").await == 2 }).await;
    let old = [pids(&p, "roll", 0).await[0], pids(&p, "roll", 1).await[0]];

    // `apply` returns once the roll-out is done; watched meanwhile.
    let v2 = example_adapter("roll", 2, serde_json::json!({"V": "2"}));
    let mut saw_draining = Vec::new();
    let mut never_short = true;
    let watch = eventually("both replaced", || {
        let target = resolver.resolve("roll").unwrap();
        let placeable = target.replicas.iter().filter(|r| r.placeable()).count();
        never_short &= placeable >= 2;
        for r in target.replicas.iter().filter(|r| r.draining) {
            if !saw_draining.contains(&short(&r.id)) {
                saw_draining.push(short(&r.id));
            }
        }
        let ids: Vec<_> = target.replicas.iter().map(|r| short(&r.id)).collect();
        async move { ids == ["0.1", "1.1"] }
    });
    let (applied, ()) = tokio::join!(p.apply(&v2), watch);
    applied.unwrap();
    assert_eq!(
        saw_draining,
        ["0.0", "1.0"],
        "the old replicas drained in turn"
    );
    assert!(never_short, "two replicas took new sessions all along");
    let status = p.status(&name("roll")).await.unwrap();
    assert_eq!(status.ready_replicas, 2);
    assert_eq!(status.updated_replicas, 2);
    eventually("old processes gone", || async {
        old.iter().all(|&pid| !alive(pid))
    })
    .await;
    let new = [pids(&p, "roll", 0).await, pids(&p, "roll", 1).await];
    assert!(new.iter().all(|p| p.len() == 2 && alive(p[1])));

    // Re-applying the same spec changes nothing.
    p.apply(&example_adapter("roll", 2, serde_json::json!({"V": "2"})))
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(pids(&p, "roll", 0).await.len(), 2);
    p.shutdown().await;
    assert!(new.iter().all(|p| !alive(p[1])));
}

#[tokio::test]
async fn a_rollout_whose_new_replica_never_becomes_ready_fails_and_the_old_one_keeps_serving() {
    let (resolver, p) = setup();
    p.apply(&example_adapter("stuck", 1, serde_json::json!({})))
        .await
        .unwrap();
    eventually("ready", || async { ready_count(&p, "stuck").await == 1 }).await;
    let old = pids(&p, "stuck", 0).await[0];
    let broken = adapter(serde_json::json!({
        "name": "stuck",
        "command": "/bin/sh",
        "args": ["-c", "echo bad config >&2; exit 3"],
    }));
    let started = std::time::Instant::now();
    let err = p.apply(&broken).await.unwrap_err();
    assert!(
        matches!(&err, AdapterError::Invalid(m) if m.contains("exited with code 3 3 times")),
        "{err}"
    );
    assert!(started.elapsed() < Duration::from_secs(20), "failed fast");
    // Meanwhile the old replica kept serving: a rollout replaces a ready replica only once its
    // successor is ready.
    assert!(alive(old));
    assert!(resolver.resolve("stuck").unwrap().replicas[0].placeable());
    // What the API does next: the previous spec again, done at once.
    p.apply(&example_adapter("stuck", 1, serde_json::json!({})))
        .await
        .unwrap();
    assert_eq!(
        pids(&p, "stuck", 0).await,
        [old],
        "the old replica is still the one"
    );

    // A new replica that starts but never answers: the roll-out times out.
    let slow = LocalProvisioner::new(
        resolver.clone(),
        LocalOptions {
            rollout_timeout: Duration::from_secs(1),
            ..options()
        },
    );
    slow.apply(&example_adapter("mute", 1, serde_json::json!({})))
        .await
        .unwrap();
    eventually("ready", || async { ready_count(&slow, "mute").await == 1 }).await;
    let mute = adapter(serde_json::json!({
        "name": "mute", "command": "/bin/sh", "args": ["-c", "exec sleep 30"],
    }));
    let err = slow.apply(&mute).await.unwrap_err();
    assert!(
        matches!(&err, AdapterError::Unavailable(m) if m.contains("not all ready within 1s")),
        "{err}"
    );
    p.shutdown().await;
    slow.shutdown().await;
}

#[tokio::test]
async fn a_re_created_adapter_shares_no_replica_id_with_the_one_it_replaces() {
    let (resolver, p) = setup();
    let ids = |resolver: &StaticResolver| -> Vec<String> {
        resolver
            .resolve("again")
            .unwrap()
            .replicas
            .iter()
            .map(|r| r.id.to_string())
            .collect()
    };
    p.apply(&example_adapter("again", 2, serde_json::json!({})))
        .await
        .unwrap();
    let first = ids(&resolver);
    p.remove(&name("again")).await.unwrap();
    p.apply(&example_adapter("again", 2, serde_json::json!({})))
        .await
        .unwrap();
    let second = ids(&resolver);
    assert_eq!(second.len(), 2);
    // Sessions recorded on the first adapter's replicas match none of the new ones.
    assert!(
        second.iter().all(|id| !first.contains(id)),
        "{first:?} {second:?}"
    );
    // The ordinal still leads the id (status counts live sessions per ordinal by it).
    assert!(second[0].starts_with("0.") && second[1].starts_with("1."));
    p.shutdown().await;
}

#[tokio::test]
async fn commands_that_do_not_exist_are_refused_before_anything_runs() {
    let (resolver, p) = setup();
    let bad = adapter(serde_json::json!({"name": "bad", "command": "no-such-mcp-server-xyz"}));
    let err = p.validate(&bad.spec).unwrap_err();
    assert!(err.to_string().contains("no-such-mcp-server-xyz"), "{err}");
    assert!(matches!(p.apply(&bad).await, Err(AdapterError::Invalid(_))));
    assert!(resolver.resolve("bad").is_none());
    assert!(matches!(
        p.status(&name("bad")).await,
        Err(AdapterError::NotFound(_))
    ));
}

#[tokio::test]
async fn upstreams_are_fronted_as_external_replicas() {
    let (resolver, p) = setup();
    let a = adapter(serde_json::json!({"name": "ext", "transport": "sse",
        "upstreams": ["http://127.0.0.1:9001/", "http://127.0.0.1:9002"]}));
    p.apply(&a).await.unwrap();
    eventually("published", || async { resolver.resolve("ext").is_some() }).await;
    let target = resolver.resolve("ext").unwrap();
    let urls: Vec<_> = target.replicas.iter().map(|r| &*r.base_url).collect();
    assert_eq!(urls, ["http://127.0.0.1:9001", "http://127.0.0.1:9002"]);
    assert_eq!(target.sse_path, "/sse");
    let status = p.status(&name("ext")).await.unwrap();
    assert_eq!((status.replica_count, status.ready_replicas), (2, 2));
    assert!(
        status
            .replicas
            .iter()
            .all(|r| r.state == ReplicaState::External)
    );
    p.remove(&name("ext")).await.unwrap();
    assert!(resolver.resolve("ext").is_none());
}

struct FakeBridge(Arc<AtomicBool>);

#[async_trait::async_trait]
impl StdioLauncher for FakeBridge {
    async fn launch(
        &self,
        _adapter: &Adapter,
        _logs: mcp_gateway_local::LogSink,
    ) -> Result<StdioBridge, AdapterError> {
        let stopped = self.0.clone();
        Ok(StdioBridge {
            base_urls: vec!["http://127.0.0.1:7777".into()],
            mcp_path: "/mcp".into(),
            sse_path: "/sse".into(),
            upstream_headers: vec![(
                http::HeaderName::from_static("x-mcp-bridge-token"),
                http::HeaderValue::from_static("t0ken"),
            )],
            stop: Box::pin(async move { stopped.store(true, Ordering::SeqCst) }),
        })
    }
}

#[tokio::test]
async fn stdio_adapters_need_a_bridge_and_run_through_it() {
    let (resolver, p) = setup();
    let stdio = adapter(serde_json::json!({"name": "io", "transport": "stdio", "command": "sh"}));
    p.validate(&stdio.spec).unwrap();
    let err = p.apply(&stdio).await.unwrap_err();
    assert_eq!(
        err.to_string(),
        "invalid adapter: stdio adapters are not supported by this runtime yet"
    );
    assert!(resolver.resolve("io").is_none());

    let stopped = Arc::new(AtomicBool::new(false));
    let p = p.with_stdio_launcher(Arc::new(FakeBridge(stopped.clone())));
    p.apply(&stdio).await.unwrap();
    let target = resolver.resolve("io").unwrap();
    assert_eq!(&*target.replicas[0].base_url, "http://127.0.0.1:7777");
    // The data plane adds the bridge's token to every request it forwards.
    assert_eq!(target.upstream_headers[0].1, "t0ken");
    assert_eq!(p.status(&name("io")).await.unwrap().ready_replicas, 1);
    p.remove(&name("io")).await.unwrap();
    assert!(stopped.load(Ordering::SeqCst));
    assert!(resolver.resolve("io").is_none());
}

#[tokio::test]
async fn stored_adapters_come_back_after_a_gateway_restart() {
    let dir = tempfile::tempdir().unwrap();
    let a = example_adapter("again", 1, serde_json::json!({}));
    let first_pid = {
        let store = FileAdapterStore::open(dir.path()).await.unwrap();
        let (_, p) = setup();
        p.validate(&a.spec).unwrap();
        store.create(&a).await.unwrap();
        p.apply(&a).await.unwrap();
        eventually("ready", || async { ready_count(&p, "again").await == 1 }).await;
        let pid = pids(&p, "again", 0).await[0];
        p.shutdown().await;
        assert!(!alive(pid), "shutdown stops every process");
        pid
    };

    // A new gateway: the store is reopened and every record applied.
    let store = FileAdapterStore::open(dir.path()).await.unwrap();
    let (resolver, p) = setup();
    for adapter in store.list().await.unwrap() {
        p.apply(&adapter).await.unwrap();
    }
    eventually("ready again", || async {
        ready_count(&p, "again").await == 1
    })
    .await;
    assert!(resolver.resolve("again").unwrap().replicas[0].placeable());
    let pid = pids(&p, "again", 0).await[0];
    assert_ne!(pid, first_pid);
    p.shutdown().await;
    assert!(!alive(pid));
}
