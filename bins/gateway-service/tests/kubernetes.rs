//! The Kubernetes runtime on the real control plane (testkit's TestCluster: kube-apiserver,
//! kube-controller-manager and etcd built from source, the test kubelet running pods as
//! processes): adapters created through the REST API and with kubectl, sessions through the
//! gateway spread over their pods, a pod replaced by hand, a session-aware scale-down, logs,
//! image errors, deletion.

use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use gateway_service::config::{KubernetesConfig, Runtime};
use gateway_service::{Config, Handle};
use http::StatusCode;
use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::core::v1::{Pod, Secret, Service};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::CustomResourceExt;
use kube::api::{Api, ListParams, Patch, PatchParams};
use mcp_gateway_k8s::McpAdapter;
use mcp_gateway_testkit::cluster::TestCluster;
use mcp_gateway_testkit::kubelet::{Images, KubeletOptions, TestKubelet};
use mcp_gateway_testkit::{Http, McpSession, netns};
use serde_json::{Value, json};

async fn wait_for<T>(
    what: &str,
    within: Duration,
    mut check: impl AsyncFnMut() -> anyhow::Result<Option<T>>,
) -> anyhow::Result<T> {
    let deadline = Instant::now() + within;
    let mut last = None;
    loop {
        match check().await {
            Ok(Some(v)) => return Ok(v),
            Ok(None) => {}
            Err(e) => last = Some(e),
        }
        if Instant::now() > deadline {
            bail!("timed out after {within:?} waiting for {what} (last error: {last:?})");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// A cluster with the McpAdapter CRD, its node, and one gateway-service running the data plane,
/// the management API and the controller on it.
async fn setup(drain: Duration) -> anyhow::Result<(TestCluster, TestKubelet, Handle)> {
    let cluster = TestCluster::start().await?;
    let opts = KubeletOptions {
        api_server: cluster.url().trim_start_matches("https://").parse().ok(),
        ..KubeletOptions::default()
    };
    let kubelet =
        TestKubelet::start_with(cluster.client(), Images::new().with_example_server(), opts)
            .await?;
    let crds: Api<CustomResourceDefinition> = Api::all(cluster.client());
    crds.patch(
        "mcpadapters.mcp-gateway.io",
        &PatchParams::apply("test").force(),
        &Patch::Apply(McpAdapter::crd()),
    )
    .await?;
    let out = cluster.kubectl_ok(&[
        "wait",
        "--for=condition=Established",
        "--timeout=30s",
        "crd/mcpadapters.mcp-gateway.io",
    ])?;
    assert!(out.contains("condition met"), "{out}");
    let mut config = Config::for_tests();
    config.management = true;
    config.runtime = Runtime::Kubernetes(KubernetesConfig {
        namespace: "default".into(),
        kubeconfig: Some(cluster.kubeconfig().to_path_buf()),
        image_registry: None,
        image_pull_secrets: Vec::new(),
        workload_identity_service_account: None,
        drain_timeout: drain,
    });
    let gateway = gateway_service::run(config).await?;
    Ok((cluster, kubelet, gateway))
}

async fn api(
    h: &Http,
    method: http::Method,
    url: &str,
    body: Option<Value>,
) -> anyhow::Result<(StatusCode, Value)> {
    let body = body.map(|b| b.to_string()).unwrap_or_default();
    let reply = h
        .send(method, url, &[("content-type", "application/json")], body)
        .await?;
    let v = serde_json::from_slice(&reply.body).unwrap_or(Value::Null);
    Ok((reply.status, v))
}

async fn status(h: &Http, base: &str, name: &str) -> anyhow::Result<Value> {
    let (code, v) = api(
        h,
        http::Method::GET,
        &format!("{base}/adapters/{name}/status"),
        None,
    )
    .await?;
    if code != StatusCode::OK {
        bail!("status {code}: {v}");
    }
    Ok(v)
}

#[test]
fn an_adapter_created_through_the_api_runs_as_a_statefulset_and_sessions_spread_over_its_pods() {
    netns::run(|| async {
        let (cluster, kubelet, gateway) = setup(Duration::from_secs(60)).await?;
        let base = format!("http://{}", gateway.data_addr);
        let h = Http::default();
        let (code, created) = api(
            &h,
            http::Method::POST,
            &format!("{base}/adapters"),
            Some(json!({
                "name": "echo", "imageName": "mcp-example-server", "imageVersion": "test",
                "replicaCount": 2, "port": 8000, "environmentVariables": { "API_TOKEN": "s3cret" },
            })),
        )
        .await?;
        assert_eq!(code, StatusCode::CREATED, "{created}");

        // The objects, with the expected fields.
        let client = cluster.client();
        let cr = Api::<McpAdapter>::default_namespaced(client.clone())
            .get("echo")
            .await?;
        assert_eq!(cr.spec.replica_count, 2);
        let cr_json = serde_json::to_string(&cr)?;
        assert!(
            !cr_json.contains("s3cret"),
            "a secret value in the resource: {cr_json}"
        );
        let secret = Api::<Secret>::default_namespaced(client.clone())
            .get("echo-env")
            .await?;
        let data = secret.data.clone().unwrap_or_default();
        assert_eq!(
            data.get("API_TOKEN").map(|v| v.0.as_slice()),
            Some(&b"s3cret"[..])
        );
        assert_eq!(
            secret
                .metadata
                .owner_references
                .as_ref()
                .map(|o| o[0].kind.as_str()),
            Some("McpAdapter")
        );
        let svc = wait_for(
            "the headless Service",
            Duration::from_secs(20),
            async || {
                Ok(Api::<Service>::default_namespaced(client.clone())
                    .get_opt("echo")
                    .await?)
            },
        )
        .await?;
        assert_eq!(
            svc.spec.as_ref().and_then(|s| s.cluster_ip.as_deref()),
            Some("None")
        );
        let sts = wait_for("the StatefulSet", Duration::from_secs(20), async || {
            Ok(Api::<StatefulSet>::default_namespaced(client.clone())
                .get_opt("echo")
                .await?)
        })
        .await?;
        let pod_spec = serde_json::to_value(&sts.spec.template.spec)?;
        assert_eq!(
            pod_spec["containers"][0]["image"],
            "mcp-example-server:test"
        );
        assert_eq!(
            pod_spec["containers"][0]["env"][0]["valueFrom"]["secretKeyRef"]["name"],
            "echo-env"
        );
        assert_eq!(
            pod_spec["containers"][0]["securityContext"]["readOnlyRootFilesystem"],
            true
        );

        // Ready: 2/2 in the API's status, in the anchor's shape too.
        let st = wait_for("2 ready replicas", Duration::from_secs(60), async || {
            let s = status(&h, &base, "echo").await?;
            Ok((s["readyReplicas"] == 2).then_some(s))
        })
        .await?;
        assert_eq!(st["replicaStatus"], "Healthy", "{st}");
        assert_eq!(st["image"], "mcp-example-server:test");

        // Sessions through the gateway reach both pods.
        let url = format!("{base}/adapters/echo/mcp");
        let mut sessions = Vec::new();
        for _ in 0..4 {
            let mut s = McpSession::open(&url).await?;
            let who = s.call_text("whoami", json!({})).await?;
            sessions.push((who, s));
        }
        let mut pods: Vec<&str> = sessions.iter().map(|(w, _)| w.as_str()).collect();
        pods.sort();
        pods.dedup();
        assert_eq!(pods, ["echo-0", "echo-1"], "sessions spread over both pods");
        let live = wait_for(
            "live sessions in the status",
            Duration::from_secs(20),
            async || {
                let s = status(&h, &base, "echo").await?;
                let n: u64 = s["replicas"].as_array().map_or(0, |r| {
                    r.iter()
                        .map(|r| r["liveSessions"].as_u64().unwrap_or(0))
                        .sum()
                });
                Ok((n == 4).then_some(s))
            },
        )
        .await?;
        assert!(
            live["replicas"][0]["id"]
                .as_str()
                .is_some_and(|id| id.starts_with("echo-0@"))
        );

        // A pod deleted by hand: its sessions get 404 once its replacement (a new UID) is up.
        let pods_api = Api::<Pod>::default_namespaced(client.clone());
        let old_uid = pods_api.get("echo-0").await?.metadata.uid;
        pods_api.delete("echo-0", &Default::default()).await?;
        wait_for(
            "echo-0 replaced and ready",
            Duration::from_secs(60),
            async || {
                let p = pods_api.get_opt("echo-0").await?;
                Ok(
                    p.filter(|p| p.metadata.uid != old_uid && mcp_gateway_k8s::pod_ready(p))
                        .map(|_| ()),
                )
            },
        )
        .await?;
        let (_, on_zero) = sessions
            .iter_mut()
            .find(|(w, _)| w == "echo-0")
            .context("a session on echo-0")?;
        let gone = wait_for(
            "404 for a session of the replaced pod",
            Duration::from_secs(10),
            async || {
                let r = on_zero.call("whoami", json!({})).await?;
                Ok((r.status == StatusCode::NOT_FOUND).then_some(()))
            },
        )
        .await;
        gone?;
        let mut fresh = McpSession::open(&url).await?;
        assert!(
            fresh
                .call_text("whoami", json!({}))
                .await?
                .starts_with("echo-")
        );

        // Logs through the pod log API, and the adapter deleted: nothing left, no process.
        let logs = h
            .send(
                http::Method::GET,
                &format!("{base}/adapters/echo/logs?replica=1&tail=5"),
                &[],
                Vec::<u8>::new(),
            )
            .await?;
        assert_eq!(logs.status, StatusCode::OK, "{}", logs.text());
        let (code, _) = api(
            &h,
            http::Method::DELETE,
            &format!("{base}/adapters/echo"),
            None,
        )
        .await?;
        assert_eq!(code, StatusCode::NO_CONTENT);
        wait_for("nothing left", Duration::from_secs(60), async || {
            let left = pods_api.list(&ListParams::default()).await?.items.len()
                + Api::<StatefulSet>::default_namespaced(client.clone())
                    .list(&ListParams::default())
                    .await?
                    .items
                    .len();
            Ok((left == 0 && kubelet.processes().is_empty()).then_some(()))
        })
        .await?;
        assert!(
            Api::<McpAdapter>::default_namespaced(client.clone())
                .get_opt("echo")
                .await?
                .is_none()
        );
        gateway.shutdown().await;
        Ok(())
    });
}

#[test]
fn a_scale_down_waits_for_the_live_sessions_of_the_pod_it_removes() {
    netns::run(|| async {
        let (cluster, _kubelet, gateway) = setup(Duration::from_secs(60)).await?;
        let base = format!("http://{}", gateway.data_addr);
        let h = Http::default();
        // The same adapter as a user would write it for kubectl.
        let dir = tempfile::tempdir()?;
        let file = dir.path().join("echo.yaml");
        std::fs::write(
            &file,
            "apiVersion: mcp-gateway.io/v1alpha1\nkind: McpAdapter\nmetadata:\n  name: echo\n  namespace: default\n\
             spec:\n  imageName: mcp-example-server\n  imageVersion: test\n  replicaCount: 2\n  port: 8000\n",
        )?;
        cluster.kubectl_ok(&["apply", "-f", &file.display().to_string()])?;
        let ready = wait_for("2 ready replicas", Duration::from_secs(60), async || {
            let s = status(&h, &base, "echo").await?;
            Ok((s["readyReplicas"] == 2).then_some(()))
        })
        .await;
        if ready.is_err() {
            eprintln!(
                "{}",
                cluster
                    .kubectl_ok(&["get", "mcpadapter,sts,pods", "-o", "wide"])
                    .unwrap_or_default()
            );
            eprintln!(
                "{}",
                cluster
                    .kubectl_ok(&["get", "mcpadapter", "echo", "-o", "yaml"])
                    .unwrap_or_default()
            );
            eprintln!(
                "{}",
                status(&h, &base, "echo")
                    .await
                    .map(|v| v.to_string())
                    .unwrap_or_else(|e| e.to_string())
            );
        }
        ready?;
        let url = format!("{base}/adapters/echo/mcp");
        // Sessions until one is on echo-1 (placement prefers the emptier, lowest ordinal).
        let mut on_one = None;
        let mut others = Vec::new();
        for _ in 0..4 {
            let mut s = McpSession::open(&url).await?;
            if s.call_text("whoami", json!({})).await? == "echo-1" && on_one.is_none() {
                on_one = Some(s);
            } else {
                others.push(s);
            }
        }
        let mut on_one = on_one.context("no session on echo-1")?;
        for s in &others {
            s.delete().await?;
        }

        // Scale to 1: echo-1 drains, keeps its session, takes no new one.
        cluster.kubectl_ok(&[
            "patch",
            "mcpadapter",
            "echo",
            "--type=merge",
            "-p",
            r#"{"spec":{"replicaCount":1}}"#,
        ])?;
        let pods_api = Api::<Pod>::default_namespaced(cluster.client());
        wait_for(
            "echo-1 marked draining",
            Duration::from_secs(20),
            async || {
                let p = pods_api.get("echo-1").await?;
                Ok(p.metadata
                    .annotations
                    .unwrap_or_default()
                    .contains_key("mcp-gateway.io/draining")
                    .then_some(()))
            },
        )
        .await?;
        tokio::time::sleep(Duration::from_millis(500)).await;
        for _ in 0..3 {
            let mut s = McpSession::open(&url).await?;
            assert_eq!(
                s.call_text("whoami", json!({})).await?,
                "echo-0",
                "a new session on a draining pod"
            );
            s.delete().await?;
        }
        tokio::time::sleep(Duration::from_secs(4)).await;
        assert!(
            pods_api.get_opt("echo-1").await?.is_some(),
            "echo-1 removed under a live session"
        );
        assert_eq!(
            on_one.call_text("whoami", json!({})).await?,
            "echo-1",
            "the live session still works"
        );
        let st = status(&h, &base, "echo").await?;
        assert!(
            st["replicas"]
                .as_array()
                .is_some_and(|r| r.iter().any(|r| r["state"] == "draining")),
            "{st}"
        );

        // The session ends: the pod goes.
        let t0 = Instant::now();
        on_one.delete().await?;
        wait_for("echo-1 removed", Duration::from_secs(30), async || {
            Ok(pods_api.get_opt("echo-1").await?.is_none().then_some(()))
        })
        .await?;
        eprintln!(
            "echo-1 removed {:?} after its last session ended",
            t0.elapsed()
        );
        gateway.shutdown().await;
        Ok(())
    });
}
