//! The test control plane against itself: the real API server and controllers, the test
//! kubelet running pods as processes, checked with kube-rs and with kubectl. Each test runs in a
//! network namespace of its own (pods get 10.244.0.N) with its own cluster.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::process::Stdio;
use std::time::Duration;

use anyhow::Context;
use futures_util::{AsyncBufReadExt, StreamExt, TryStreamExt};
use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::core::v1::{Namespace, Pod, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::api::{Api, DeleteParams, ListParams, LogParams, Patch, PatchParams, PostParams};
use kube::runtime::watcher::{self, Event};
use mcp_gateway_testkit::McpSession;
use mcp_gateway_testkit::cluster::TestCluster;
use mcp_gateway_testkit::kubelet::{Image, Images, KubeletOptions, TestKubelet};
use mcp_gateway_testkit::{netns, wait_for};
use serde_json::{Value, json};

/// The cluster and its node, with the example server and two shell images.
async fn cluster() -> anyhow::Result<(TestCluster, TestKubelet)> {
    let cluster = TestCluster::start().await?;
    eprintln!("test cluster started in {:?}", cluster.started_in());
    let images = Images::new()
        .with_example_server()
        // Prints a numbered line every 100 ms.
        .add(
            "ticker:test",
            Image::new("/bin/sh")
                .arg("-c")
                .arg("i=0; while true; do echo tick $i; i=$((i+1)); sleep 0.1; done"),
        )
        // Says hello, prints its TOKEN, exits 3.
        .add(
            "crasher:test",
            Image::new("/bin/sh")
                .arg("-c")
                .arg("echo starting with token=$TOKEN; sleep 0.2; exit 3"),
        );
    let opts = KubeletOptions {
        api_server: cluster.url().trim_start_matches("https://").parse().ok(),
        ..KubeletOptions::default()
    };
    let kubelet = TestKubelet::start_with(cluster.client(), images, opts).await?;
    Ok((cluster, kubelet))
}

async fn namespace(client: &kube::Client, name: &str) -> anyhow::Result<()> {
    let api: Api<Namespace> = Api::all(client.clone());
    api.create(
        &PostParams::default(),
        &serde_json::from_value(json!({ "metadata": { "name": name } }))?,
    )
    .await?;
    Ok(())
}

fn statefulset(name: &str, replicas: i32) -> anyhow::Result<StatefulSet> {
    Ok(serde_json::from_value(json!({
        "apiVersion": "apps/v1", "kind": "StatefulSet",
        "metadata": { "name": name },
        "spec": {
            "replicas": replicas,
            "serviceName": name,
            "selector": { "matchLabels": { "app": name } },
            "template": {
                "metadata": { "labels": { "app": name } },
                "spec": {
                    "terminationGracePeriodSeconds": 5,
                    "containers": [{
                        "name": "server",
                        "image": "mcp-example-server:test",
                        "ports": [{ "name": "mcp", "containerPort": 8000 }],
                        "readinessProbe": { "httpGet": { "path": "/healthz", "port": "mcp" }, "periodSeconds": 1 },
                    }],
                },
            },
        },
    }))?)
}

fn headless_service(name: &str) -> anyhow::Result<Service> {
    Ok(serde_json::from_value(json!({
        "apiVersion": "v1", "kind": "Service",
        "metadata": { "name": name },
        "spec": {
            "clusterIP": "None",
            "selector": { "app": name },
            "ports": [{ "name": "mcp", "port": 8000, "targetPort": "mcp" }],
        },
    }))?)
}

/// Ready addresses of a Service's EndpointSlices.
async fn ready_addresses(
    client: &kube::Client,
    ns: &str,
    svc: &str,
) -> anyhow::Result<Vec<String>> {
    let api: Api<EndpointSlice> = Api::namespaced(client.clone(), ns);
    let slices = api
        .list(&ListParams::default().labels(&format!("kubernetes.io/service-name={svc}")))
        .await?;
    let mut addrs: Vec<String> = slices
        .items
        .iter()
        .flat_map(|s| s.endpoints.iter().flatten())
        .filter(|e| e.conditions.as_ref().and_then(|c| c.ready) == Some(true))
        .flat_map(|e| e.addresses.iter().cloned())
        .collect();
    addrs.sort();
    Ok(addrs)
}

fn alive(pid: u32) -> bool {
    std::path::Path::new(&format!("/proc/{pid}")).exists()
        && !std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .is_ok_and(|s| s.split_whitespace().nth(2) == Some("Z"))
}

fn pod_pids(kubelet: &TestKubelet, ns: &str, pod: &str) -> Vec<u32> {
    kubelet
        .processes()
        .into_iter()
        .filter(|p| p.namespace == ns && p.pod == pod)
        .map(|p| p.pid)
        .collect()
}

#[test]
fn statefulset_pods_start_in_order_serve_mcp_and_scale_down_from_the_highest_ordinal() {
    netns::run(|| async {
        let (cluster, kubelet) = cluster().await?;
        let client = cluster.client();
        let ns = "echo";
        namespace(&client, ns).await?;

        // Record pod creations and deletions as the controller makes them.
        let pods: Api<Pod> = Api::namespaced(client.clone(), ns);
        let (tx, mut order) = tokio::sync::mpsc::unbounded_channel::<(String, String)>();
        let watch = tokio::spawn({
            let pods = pods.clone();
            async move {
                let mut seen = std::collections::HashSet::new();
                let mut events = watcher::watcher(pods, watcher::Config::default()).boxed();
                while let Some(Ok(e)) = events.next().await {
                    match e {
                        Event::Apply(p) | Event::InitApply(p) => {
                            let name = p.metadata.name.clone().unwrap_or_default();
                            if seen.insert(p.metadata.uid.clone().unwrap_or_default()) {
                                let _ = tx.send(("created".into(), name));
                            }
                        }
                        Event::Delete(p) => {
                            let _ =
                                tx.send(("deleted".into(), p.metadata.name.unwrap_or_default()));
                        }
                        _ => {}
                    }
                }
            }
        });

        Api::<Service>::namespaced(client.clone(), ns)
            .create(&PostParams::default(), &headless_service("echo")?)
            .await?;
        let sets: Api<StatefulSet> = Api::namespaced(client.clone(), ns);
        sets.create(&PostParams::default(), &statefulset("echo", 3)?)
            .await?;

        // OrderedReady: 0, then 1 once 0 is Ready, then 2.
        let mut created = Vec::new();
        while created.len() < 3 {
            let (what, name) = tokio::time::timeout(Duration::from_secs(60), order.recv())
                .await
                .context("pods of the StatefulSet not created")?
                .context("watch ended")?;
            if what == "created" {
                created.push(name);
            }
        }
        assert_eq!(created, ["echo-0", "echo-1", "echo-2"]);

        let addrs = wait_for("3 ready endpoints", Duration::from_secs(60), async || {
            let a = ready_addresses(&client, ns, "echo").await?;
            Ok((a.len() == 3).then_some(a))
        })
        .await?;
        // Each pod has its own address, where its own server answers MCP.
        let mut served_by = BTreeMap::new();
        for addr in &addrs {
            assert!(addr.starts_with("10.244.0."), "{addr}");
            let mut session = McpSession::open(&format!("http://{addr}:8000/mcp")).await?;
            served_by.insert(session.call_text("whoami", json!({})).await?, addr.clone());
        }
        assert_eq!(
            served_by.keys().collect::<Vec<_>>(),
            ["echo-0", "echo-1", "echo-2"]
        );
        let sts = sets.get_status("echo").await?;
        assert_eq!(sts.status.as_ref().and_then(|s| s.ready_replicas), Some(3));

        // kubectl sees the same.
        let out = cluster.kubectl_ok(&["get", "pods", "-n", ns, "-o", "wide"])?;
        for pod in ["echo-0", "echo-1", "echo-2"] {
            assert!(out.contains(pod) && out.contains("Running"), "{out}");
        }
        let version = cluster.kubectl_ok(&["version", "-o", "json"])?;
        let version: Value = serde_json::from_str(&version)?;
        assert_eq!(
            version["serverVersion"]["gitVersion"], "v1.37.2",
            "{version}"
        );

        // Scale to 1: the controller removes echo-2, then echo-1, with their processes.
        let pids: Vec<u32> = ["echo-1", "echo-2"]
            .iter()
            .flat_map(|p| pod_pids(&kubelet, ns, p))
            .collect();
        assert_eq!(pids.len(), 2);
        sets.patch(
            "echo",
            &PatchParams::default(),
            &Patch::Merge(json!({ "spec": { "replicas": 1 } })),
        )
        .await?;
        let mut deleted = Vec::new();
        while deleted.len() < 2 {
            let (what, name) = tokio::time::timeout(Duration::from_secs(60), order.recv())
                .await
                .context("scale-down did not delete pods")?
                .context("watch ended")?;
            if what == "deleted" {
                deleted.push(name);
            }
        }
        assert_eq!(deleted, ["echo-2", "echo-1"]);
        for pid in pids {
            assert!(!alive(pid), "process {pid} of a removed pod still runs");
        }
        wait_for("1 ready endpoint", Duration::from_secs(30), async || {
            Ok((ready_addresses(&client, ns, "echo").await?.len() == 1).then_some(()))
        })
        .await?;

        // Deleting the StatefulSet leaves no pod and no process (garbage collector + kubelet).
        let last = pod_pids(&kubelet, ns, "echo-0");
        sets.delete("echo", &DeleteParams::foreground()).await?;
        wait_for("no pods", Duration::from_secs(60), async || {
            Ok(pods
                .list(&ListParams::default())
                .await?
                .items
                .is_empty()
                .then_some(()))
        })
        .await?;
        wait_for("no processes", Duration::from_secs(10), async || {
            Ok(kubelet.processes().is_empty().then_some(()))
        })
        .await?;
        for pid in last {
            assert!(!alive(pid), "process {pid} survived its StatefulSet");
        }
        watch.abort();
        Ok(())
    });
}

fn plain_pod(name: &str, image: &str, extra: Value) -> anyhow::Result<Pod> {
    let mut pod = json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": { "name": name },
        "spec": { "terminationGracePeriodSeconds": 2, "containers": [{ "name": "main", "image": image }] },
    });
    if let Value::Object(extra) = extra {
        for (k, v) in extra {
            pod["spec"]["containers"][0][k] = v;
        }
    }
    Ok(serde_json::from_value(pod)?)
}

async fn container_status(pods: &Api<Pod>, name: &str) -> anyhow::Result<Option<Value>> {
    let pod = pods.get_status(name).await?;
    let v = serde_json::to_value(pod.status)?;
    Ok(v["containerStatuses"].get(0).cloned())
}

#[test]
fn a_crashing_container_restarts_with_a_growing_count_and_crash_loop_back_off() {
    netns::run(|| async {
        let (cluster, _kubelet) = cluster().await?;
        let client = cluster.client();
        namespace(&client, "crash").await?;
        let secrets: Api<k8s_openapi::api::core::v1::Secret> =
            Api::namespaced(client.clone(), "crash");
        secrets
            .create(
                &PostParams::default(),
                &serde_json::from_value(
                    json!({ "metadata": { "name": "creds" }, "stringData": { "token": "s3cret" } }),
                )?,
            )
            .await?;
        let pods: Api<Pod> = Api::namespaced(client.clone(), "crash");
        let env = json!({ "env": [{ "name": "TOKEN", "valueFrom": { "secretKeyRef": { "name": "creds", "key": "token" } } }] });
        pods.create(
            &PostParams::default(),
            &plain_pod("crasher", "crasher:test", env)?,
        )
        .await?;

        let mut saw_back_off = false;
        let status = wait_for("3 restarts", Duration::from_secs(60), async || {
            let Some(s) = container_status(&pods, "crasher").await? else {
                return Ok(None);
            };
            saw_back_off |= s["state"]["waiting"]["reason"] == "CrashLoopBackOff";
            Ok((s["restartCount"].as_i64() >= Some(3)).then_some(s))
        })
        .await?;
        assert!(saw_back_off, "never in CrashLoopBackOff: {status}");
        assert_eq!(status["lastState"]["terminated"]["exitCode"], 3, "{status}");
        assert_eq!(
            status["lastState"]["terminated"]["reason"], "Error",
            "{status}"
        );
        let first = status["restartCount"].as_i64().unwrap_or_default();
        let later = wait_for("a 4th restart", Duration::from_secs(30), async || {
            let s = container_status(&pods, "crasher")
                .await?
                .unwrap_or_default();
            Ok((s["restartCount"].as_i64() > Some(first)).then_some(s))
        })
        .await?;
        assert!(later["restartCount"].as_i64() > Some(first));

        // The previous instance's log, through the API server, with the Secret's value.
        let previous = wait_for("previous log", Duration::from_secs(10), async || {
            let out = cluster.kubectl_ok(&["logs", "-n", "crash", "crasher", "--previous"])?;
            Ok((!out.is_empty()).then_some(out))
        })
        .await?;
        assert_eq!(previous.trim(), "starting with token=s3cret");
        Ok(())
    });
}

#[test]
fn an_unknown_image_is_image_pull_back_off_and_a_missing_secret_a_config_error() {
    netns::run(|| async {
        let (cluster, kubelet) = cluster().await?;
        let client = cluster.client();
        namespace(&client, "pull").await?;
        let pods: Api<Pod> = Api::namespaced(client.clone(), "pull");
        pods.create(
            &PostParams::default(),
            &plain_pod("nope", "registry.example/nope:1", json!({}))?,
        )
        .await?;
        let env = json!({ "env": [{ "name": "T", "valueFrom": { "secretKeyRef": { "name": "absent", "key": "k" } } }] });
        pods.create(
            &PostParams::default(),
            &plain_pod("nosecret", "ticker:test", env)?,
        )
        .await?;
        let s = wait_for("ImagePullBackOff", Duration::from_secs(30), async || {
            let s = container_status(&pods, "nope").await?.unwrap_or_default();
            Ok((s["state"]["waiting"]["reason"] == "ImagePullBackOff").then_some(s))
        })
        .await?;
        assert!(
            s["state"]["waiting"]["message"]
                .as_str()
                .is_some_and(|m| m.contains("registry.example/nope:1")),
            "{s}"
        );
        let s = wait_for(
            "CreateContainerConfigError",
            Duration::from_secs(30),
            async || {
                let s = container_status(&pods, "nosecret")
                    .await?
                    .unwrap_or_default();
                Ok((s["state"]["waiting"]["reason"] == "CreateContainerConfigError").then_some(s))
            },
        )
        .await?;
        assert_eq!(
            s["state"]["waiting"]["message"],
            "secret \"absent\" not found"
        );
        let pod = pods.get("nope").await?;
        assert_eq!(pod.status.and_then(|s| s.phase).as_deref(), Some("Pending"));
        assert!(kubelet.processes().is_empty());
        // Logs of a container that never started: the kubelet's message, through kubectl.
        let out = cluster
            .kubectl()
            .args(["logs", "-n", "pull", "nope"])
            .output()?;
        assert!(!out.status.success());
        assert!(
            String::from_utf8_lossy(&out.stderr).contains("is waiting to start: ImagePullBackOff"),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        Ok(())
    });
}

#[test]
fn logs_tail_since_and_follow_through_the_api_server_with_kube_rs_and_kubectl() {
    netns::run(|| async {
        let (cluster, _kubelet) = cluster().await?;
        let client = cluster.client();
        namespace(&client, "logs").await?;
        let pods: Api<Pod> = Api::namespaced(client.clone(), "logs");
        pods.create(
            &PostParams::default(),
            &plain_pod("ticker", "ticker:test", json!({}))?,
        )
        .await?;
        wait_for("10 lines", Duration::from_secs(30), async || {
            let text = pods.logs("ticker", &LogParams::default()).await?;
            Ok((text.lines().count() >= 10).then_some(()))
        })
        .await?;

        // tail
        let tail = pods
            .logs(
                "ticker",
                &LogParams {
                    tail_lines: Some(2),
                    ..LogParams::default()
                },
            )
            .await?;
        let lines: Vec<&str> = tail.lines().collect();
        assert_eq!(lines.len(), 2, "{tail}");
        let n: u64 = lines[1].trim_start_matches("tick ").parse()?;
        assert_eq!(lines[0], format!("tick {}", n - 1));
        // since: only recent lines (at 10 lines a second, 1 s is far fewer than all)
        tokio::time::sleep(Duration::from_millis(1500)).await;
        let all = pods
            .logs("ticker", &LogParams::default())
            .await?
            .lines()
            .count();
        let recent = pods
            .logs(
                "ticker",
                &LogParams {
                    since_seconds: Some(1),
                    ..LogParams::default()
                },
            )
            .await?
            .lines()
            .count();
        assert!(recent > 0 && recent < all, "since 1s: {recent} of {all}");

        // follow with kube-rs: lines written after the request arrive.
        let stream = pods
            .log_stream(
                "ticker",
                &LogParams {
                    follow: true,
                    tail_lines: Some(1),
                    ..LogParams::default()
                },
            )
            .await?;
        let mut lines = stream.lines();
        let first: u64 = lines
            .try_next()
            .await?
            .context("no line")?
            .trim_start_matches("tick ")
            .parse()?;
        let mut next = first;
        for _ in 0..5 {
            let line = tokio::time::timeout(Duration::from_secs(5), lines.try_next())
                .await??
                .context("follow ended")?;
            let n: u64 = line.trim_start_matches("tick ").parse()?;
            assert_eq!(n, next + 1, "lines in order, none lost");
            next = n;
        }

        // kubectl: --tail and -f
        let out = cluster.kubectl_ok(&["logs", "-n", "logs", "ticker", "--tail=3"])?;
        assert_eq!(out.lines().count(), 3, "{out}");
        let mut follow = cluster
            .kubectl()
            .args(["logs", "-n", "logs", "ticker", "-f", "--tail=1"])
            .stdout(Stdio::piped())
            .spawn()?;
        let stdout = follow.stdout.take().context("stdout")?;
        let got = tokio::task::spawn_blocking(move || {
            BufReader::new(stdout)
                .lines()
                .take(4)
                .collect::<Result<Vec<_>, _>>()
        });
        let got = tokio::time::timeout(Duration::from_secs(10), got).await???;
        follow.kill()?;
        let _ = follow.wait();
        let nums: Vec<u64> = got
            .iter()
            .map(|l| l.trim_start_matches("tick ").parse())
            .collect::<Result<_, _>>()?;
        assert!(nums.windows(2).all(|w| w[1] == w[0] + 1), "{got:?}");
        Ok(())
    });
}

#[test]
fn a_custom_resource_definition_is_applied_and_served() {
    netns::run(|| async {
        let (cluster, _kubelet) = cluster().await?;
        let crd = json!({
            "apiVersion": "apiextensions.k8s.io/v1", "kind": "CustomResourceDefinition",
            "metadata": { "name": "widgets.example.test" },
            "spec": {
                "group": "example.test",
                "names": { "kind": "Widget", "plural": "widgets", "singular": "widget" },
                "scope": "Namespaced",
                "versions": [{
                    "name": "v1", "served": true, "storage": true,
                    "subresources": { "status": {} },
                    "schema": { "openAPIV3Schema": { "type": "object", "properties": {
                        "spec": { "type": "object", "required": ["size"], "properties": {
                            "size": { "type": "integer", "minimum": 1 } } },
                        "status": { "type": "object", "x-kubernetes-preserve-unknown-fields": true },
                    }}},
                }],
            },
        });
        let dir = tempfile::tempdir()?;
        let crd_file = dir.path().join("crd.json");
        std::fs::write(&crd_file, crd.to_string())?;
        cluster.kubectl_ok(&[
            "apply",
            "--server-side",
            "-f",
            &crd_file.display().to_string(),
        ])?;
        cluster.kubectl_ok(&[
            "wait",
            "--for=condition=Established",
            "--timeout=30s",
            "crd/widgets.example.test",
        ])?;
        let good = dir.path().join("good.json");
        std::fs::write(
            &good,
            json!({ "apiVersion": "example.test/v1", "kind": "Widget",
                    "metadata": { "name": "w1", "namespace": "default" }, "spec": { "size": 3 } })
            .to_string(),
        )?;
        // Discovery of a new group can lag its Established condition by a moment.
        wait_for(
            "the Widget kind in discovery",
            Duration::from_secs(20),
            async || {
                Ok(cluster
                    .kubectl_ok(&["apply", "--server-side", "-f", &good.display().to_string()])
                    .ok())
            },
        )
        .await?;
        let out = cluster.kubectl_ok(&["get", "widgets", "-o", "json"])?;
        let list: Value = serde_json::from_str(&out)?;
        assert_eq!(list["items"][0]["metadata"]["name"], "w1");
        assert_eq!(list["items"][0]["spec"]["size"], 3);
        // The schema is enforced by the real API server.
        let bad = dir.path().join("bad.json");
        std::fs::write(
            &bad,
            json!({ "apiVersion": "example.test/v1", "kind": "Widget",
                    "metadata": { "name": "w2", "namespace": "default" }, "spec": { "size": 0 } })
            .to_string(),
        )?;
        let out = cluster
            .kubectl()
            .args(["apply", "--server-side", "-f", &bad.display().to_string()])
            .output()?;
        assert!(!out.status.success());
        assert!(
            String::from_utf8_lossy(&out.stderr).contains("spec.size"),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        // And kube-rs reads it as a dynamic object.
        let gvk = kube::api::GroupVersionKind::gvk("example.test", "v1", "Widget");
        let (ar, _) = kube::discovery::pinned_kind(&cluster.client(), &gvk).await?;
        let api: Api<kube::api::DynamicObject> =
            Api::namespaced_with(cluster.client(), "default", &ar);
        let w = api.get("w1").await?;
        assert_eq!(w.data["spec"]["size"], 3);
        Ok(())
    });
}
