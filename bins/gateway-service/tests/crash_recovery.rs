//! The gateway binary killed with SIGKILL (no destructor runs, as after the OOM killer or an
//! abort): its replicas must not outlive it into the next run, nor run twice beside their
//! successors.

use std::process::{Child, Command, Stdio};
use std::time::Duration;

use bytes::Bytes;
use http::{Method, StatusCode};
use mcp_gateway_testkit::Http;
use serde_json::{Value, json};

/// Processes whose environment holds `marker`.
fn processes_with(marker: &str) -> Vec<u32> {
    let mut pids = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let zombie = std::fs::read_to_string(entry.path().join("stat"))
            .map(|s| {
                s.rsplit(')')
                    .next()
                    .is_some_and(|r| r.trim_start().starts_with('Z'))
            })
            .unwrap_or(true);
        if let Ok(env) = std::fs::read(entry.path().join("environ"))
            && !zombie
            && env.split(|b| *b == 0).any(|kv| kv == marker.as_bytes())
        {
            pids.push(pid);
        }
    }
    pids.sort_unstable();
    pids
}

fn free_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap().port()
}

struct Gateway {
    child: Child,
    base: String,
}

impl Drop for Gateway {
    /// A failed assertion leaves no gateway behind (a killed one was reaped already).
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Gateway {
    async fn start(data_dir: &std::path::Path) -> Self {
        let port = free_port();
        let child = Command::new(env!("CARGO_BIN_EXE_gateway-service"))
            .args(["--listen", &format!("127.0.0.1:{port}")])
            .args(["--admin-listen", "127.0.0.1:0", "--insecure-no-auth"])
            .arg("--data-dir")
            .arg(data_dir)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("gateway-service starts");
        let gw = Self {
            child,
            base: format!("http://127.0.0.1:{port}"),
        };
        for _ in 0..200 {
            if gw.api(Method::GET, "/adapters", None).await.is_some() {
                return gw;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("the gateway did not come up");
    }

    async fn api(&self, method: Method, path: &str, body: Option<Value>) -> Option<Value> {
        let body = body.map_or_else(Bytes::new, |b| Bytes::from(b.to_string()));
        let reply = Http::default()
            .send(
                method,
                &format!("{}{path}", self.base),
                &[("content-type", "application/json")],
                body,
            )
            .await
            .ok()?;
        assert!(
            reply.status.is_success(),
            "{}: {}",
            reply.status,
            reply.text()
        );
        Some(serde_json::from_slice(&reply.body).unwrap_or(Value::Null))
    }

    async fn wait_ready(&self, name: &str, want: u64) {
        for _ in 0..200 {
            let status = self
                .api(Method::GET, &format!("/adapters/{name}/status"), None)
                .await;
            if status.is_some_and(|s| s["readyReplicas"] == want) {
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("{name} never had {want} ready replicas");
    }
}

#[tokio::test]
async fn replicas_of_a_gateway_killed_with_sigkill_are_stopped_at_its_next_start() {
    let dir = tempfile::tempdir().unwrap();
    let marker = format!("CRASH_MARKER={}", std::process::id());
    let (key, value) = marker.split_once('=').unwrap();
    let mut first = Gateway::start(dir.path()).await;
    let spec = json!({
        "name": "orphans",
        "command": mcp_gateway_testkit::example_server(),
        "args": ["--transport", "all", "--port", "{port}"],
        "replicaCount": 2,
        "environmentVariables": { key: value },
    });
    first.api(Method::POST, "/adapters", Some(spec)).await;
    first.wait_ready("orphans", 2).await;
    let before = processes_with(&marker);
    assert_eq!(before.len(), 2, "{before:?}");

    first.child.kill().unwrap(); // SIGKILL
    first.child.wait().unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        processes_with(&marker),
        before,
        "nothing told the replicas: they outlive the gateway"
    );

    let mut second = Gateway::start(dir.path()).await;
    second.wait_ready("orphans", 2).await;
    let after = processes_with(&marker);
    assert_eq!(after.len(), 2, "two replicas, not four: {after:?}");
    assert!(
        before.iter().all(|pid| !after.contains(pid)),
        "the orphans are gone: {before:?} {after:?}"
    );
    let reply = Http::default()
        .send(
            Method::GET,
            &format!("{}/adapters/orphans", second.base),
            &[],
            Bytes::new(),
        )
        .await
        .unwrap();
    assert_eq!(reply.status, StatusCode::OK);

    // A polite stop leaves nothing either.
    let pid = nix::unistd::Pid::from_raw(i32::try_from(second.child.id()).unwrap());
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM).unwrap();
    second.child.wait().unwrap();
    assert!(
        processes_with(&marker).is_empty(),
        "{:?}",
        processes_with(&marker)
    );
    assert_eq!(
        std::fs::read_dir(dir.path().join("run")).unwrap().count(),
        0,
        "no pid file left"
    );
}
