//! The test kubelet's pod sandboxes (`KubeletOptions::sandboxes`): a network namespace per pod,
//! a mount namespace per container with the pod's volumes, the service-account token and an
//! /etc/hosts of the namespace's Services.

use std::time::Duration;

use k8s_openapi::api::core::v1::{Pod, Service};
use kube::api::{Api, PostParams};
use mcp_gateway_testkit::McpSession;
use mcp_gateway_testkit::cluster::TestCluster;
use mcp_gateway_testkit::kubelet::{Image, Images, KubeletOptions, TestKubelet, ready_pod_ips};
use mcp_gateway_testkit::{netns, wait_for};
use serde_json::json;

#[test]
fn sandboxed_pods_listen_on_the_same_port_and_see_their_volumes_token_and_service_names() {
    netns::run(|| async {
        let cluster = TestCluster::start().await?;
        let images = Images::new()
            .with_example_server()
            .add("shell:test", Image::new("/bin/sh"));
        let opts = KubeletOptions {
            api_server: cluster.url().trim_start_matches("https://").parse().ok(),
            sandboxes: true,
            ..KubeletOptions::default()
        };
        let kubelet = TestKubelet::start_with(cluster.client(), images, opts).await?;
        let client = cluster.client();
        cluster.kubectl_ok(&[
            "create",
            "configmap",
            "greeting",
            "--from-literal=hello=bonjour",
        ])?;
        cluster.kubectl_ok(&[
            "create",
            "secret",
            "generic",
            "creds",
            "--from-literal=token=s3cret",
        ])?;

        // Two servers on 0.0.0.0:8000 each: one network namespace per pod.
        let pods: Api<Pod> = Api::default_namespaced(client.clone());
        for name in ["web-0", "web-1"] {
            let pod: Pod = serde_json::from_value(json!({
                "metadata": { "name": name, "labels": { "app": "web" } },
                "spec": {
                    "automountServiceAccountToken": false,
                    "terminationGracePeriodSeconds": 1,
                    "containers": [{
                        "name": "server", "image": "mcp-example-server:test",
                        "env": [{ "name": "HOST", "value": "0.0.0.0" }],
                        "ports": [{ "name": "mcp", "containerPort": 8000 }],
                        "readinessProbe": { "tcpSocket": { "port": "mcp" }, "periodSeconds": 1 },
                    }],
                },
            }))?;
            pods.create(&PostParams::default(), &pod).await?;
        }
        let svc: Service = serde_json::from_value(json!({
            "metadata": { "name": "web" },
            "spec": { "clusterIP": "None", "selector": { "app": "web" },
                      "ports": [{ "name": "mcp", "port": 8000, "targetPort": "mcp" }] },
        }))?;
        Api::<Service>::default_namespaced(client.clone())
            .create(&PostParams::default(), &svc)
            .await?;
        let ips = ready_pod_ips(&pods, "app=web", 2, Duration::from_secs(30)).await?;
        assert_eq!(ips.len(), 2, "{ips:?}");
        for ip in &ips {
            assert!(ip.starts_with("10.244.1."), "sandbox address {ip}");
            let mut s = McpSession::open(&format!("http://{ip}:8000/mcp")).await?;
            let who = s.call_text("whoami", json!({})).await?;
            assert!(who.contains("web-"), "{who}");
        }

        // A pod that prints what it sees: a ConfigMap at a path this machine does not have, a
        // Secret item read-only, an emptyDir at the top level, its token, a Service's name, and
        // fields of its own from downwardAPI volumes, at the top level and projected (with their
        // modes: the volume's default, an item's own).
        let reader: Pod = serde_json::from_value(json!({
            "metadata": { "name": "reader", "labels": { "kind": "reader" } },
            "spec": {
                "terminationGracePeriodSeconds": 1,
                "containers": [{
                    "name": "shell", "image": "shell:test",
                    "args": ["-c", "cat /etc/mcp-gateway-test/hello; echo; \
                        cat /run/creds/api-token; echo; \
                        echo x > /scratch/f && cat /scratch/f; \
                        (echo y > /run/creds/other) 2>/dev/null || echo read-only; \
                        cat /var/run/secrets/kubernetes.io/serviceaccount/namespace; echo; \
                        test -s /var/run/secrets/kubernetes.io/serviceaccount/token && echo token; \
                        grep -q 'BEGIN CERTIFICATE' /var/run/secrets/kubernetes.io/serviceaccount/ca.crt && echo ca; \
                        grep -w web.default.svc.cluster.local /etc/hosts | cut -f1; \
                        echo $(cat /etc/podinfo/name) $(stat -c %a /etc/podinfo/name); \
                        echo $(cat /etc/podinfo/labels) $(stat -c %a /etc/podinfo/labels); \
                        echo $(cat /etc/projected/ns) $(stat -c %a /etc/projected/ns); \
                        echo $(cat /etc/projected/uid) $(stat -c %a /etc/projected/uid); \
                        echo done; sleep 600"],
                    "volumeMounts": [
                        { "name": "config", "mountPath": "/etc/mcp-gateway-test", "readOnly": true },
                        { "name": "creds", "mountPath": "/run/creds", "readOnly": true },
                        { "name": "scratch", "mountPath": "/scratch" },
                        { "name": "podinfo", "mountPath": "/etc/podinfo", "readOnly": true },
                        { "name": "projected", "mountPath": "/etc/projected", "readOnly": true },
                    ],
                }],
                "volumes": [
                    { "name": "config", "configMap": { "name": "greeting" } },
                    { "name": "creds", "secret": { "secretName": "creds",
                        "items": [{ "key": "token", "path": "api-token" }] } },
                    { "name": "scratch", "emptyDir": {} },
                    { "name": "podinfo", "downwardAPI": { "defaultMode": 0o440,
                        "items": [
                            { "path": "name", "fieldRef": { "fieldPath": "metadata.name" } },
                            { "path": "labels", "mode": 0o600,
                              "fieldRef": { "fieldPath": "metadata.labels" } },
                        ] } },
                    { "name": "projected", "projected": { "defaultMode": 0o400, "sources": [
                        { "downwardAPI": { "items": [
                            { "path": "ns", "fieldRef": { "fieldPath": "metadata.namespace" } },
                            { "path": "uid", "mode": 0o604,
                              "fieldRef": { "fieldPath": "metadata.uid" } },
                        ] } },
                    ] } },
                ],
            },
        }))?;
        // The namespace's default service account (made by its controller) is needed for the token.
        wait_for(
            "the default service account",
            Duration::from_secs(20),
            async || {
                Ok(
                    Api::<k8s_openapi::api::core::v1::ServiceAccount>::default_namespaced(
                        client.clone(),
                    )
                    .get_opt("default")
                    .await?,
                )
            },
        )
        .await?;
        pods.create(&PostParams::default(), &reader).await?;
        let logs = wait_for("the reader's output", Duration::from_secs(30), async || {
            let logs = cluster.kubectl_ok(&["logs", "reader"]).unwrap_or_default();
            Ok(logs.contains("done").then_some(logs))
        })
        .await
        .map_err(|e| {
            let status = cluster
                .kubectl_ok(&["get", "pod", "reader", "-o", "jsonpath={.status}"])
                .unwrap_or_default();
            let logs = cluster.kubectl_ok(&["logs", "reader"]).unwrap_or_default();
            anyhow::anyhow!("{e:#}\nstatus: {status}\nlogs: {logs}")
        })?;
        let lines: Vec<&str> = logs.lines().collect();
        assert_eq!(lines[0], "bonjour", "{logs}");
        assert_eq!(lines[1], "s3cret", "{logs}");
        assert_eq!(lines[2], "x", "{logs}");
        assert_eq!(lines[3], "read-only", "{logs}");
        assert_eq!(lines[4], "default", "{logs}");
        assert_eq!(lines[5], "token", "{logs}");
        assert_eq!(lines[6], "ca", "{logs}");
        assert!(ips.contains(&lines[7].to_owned()), "{logs}");
        let uid = pods.get("reader").await?.metadata.uid.unwrap_or_default();
        assert!(!uid.is_empty());
        assert_eq!(lines[8], "reader 440", "{logs}");
        assert_eq!(lines[9], "kind=\"reader\" 600", "{logs}");
        assert_eq!(lines[10], "default 400", "{logs}");
        assert_eq!(lines[11], format!("{uid} 604"), "{logs}");
        // Nothing of it on this machine.
        for path in [
            "/etc/mcp-gateway-test",
            "/scratch",
            "/run/creds",
            "/etc/podinfo",
            "/etc/projected",
        ] {
            assert!(
                !std::path::Path::new(path).exists(),
                "{path} made on the machine"
            );
        }
        drop(kubelet);
        Ok(())
    });
}
