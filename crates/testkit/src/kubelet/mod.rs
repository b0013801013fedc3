//! A test kubelet: the node of a [`TestCluster`](crate::cluster::TestCluster), written with
//! kube-rs. It stands where the real kubelet and scheduler would:
//!
//! - registers a Ready `Node` whose InternalIP is [`NODE_IP`](crate::netns::NODE_IP);
//! - binds pending pods of the default scheduler to itself (`pods/binding`);
//! - runs each container of a pod as a local process, from an image → program table the test
//!   supplies ([`Images`]), with the container's `command`/`args` (`$(VAR)` expanded), its
//!   environment (`value`, `secretKeyRef`, `configMapKeyRef`, `fieldRef`, `envFrom`), the
//!   image's environment and `KUBERNETES_SERVICE_HOST`/`_PORT`, listening on the pod's own
//!   address (`10.244.0.N`);
//! - reports status as the real kubelet does: Pending → Running, `Ready` from the readiness
//!   probe (httpGet, tcpSocket or exec, really probed), restarts with a growing back-off and
//!   `CrashLoopBackOff`, `ErrImagePull`/`ImagePullBackOff` for an image not in the table,
//!   `CreateContainerConfigError` for a missing Secret, exit codes in `lastState`; restarts a
//!   container whose liveness probe fails;
//! - serves `/containerLogs/...` over HTTPS (tail, since, follow, previous, timestamps), so
//!   `kubectl logs` and kube-rs's log API work through the API server;
//! - on deletion runs `preStop` (httpGet, sleep, exec), sends SIGTERM, waits the pod's grace
//!   period, sends SIGKILL, and removes the pod (grace 0, UID precondition).
//!
//! With [`KubeletOptions::sandboxes`], each pod also gets what a container runtime and a CNI
//! plugin give it on a real node (see `sandbox.rs`): a network namespace of its own (a veth to
//! the node, address `10.244.1.N`), and per container a mount namespace with the pod's
//! volumes (`emptyDir`, `configMap`, `secret`, `downwardAPI`, `projected` with
//! service-account tokens from the TokenRequest API), the automounted service-account token
//! at `/var/run/secrets/kubernetes.io/serviceaccount` and an `/etc/hosts` naming the
//! namespace's Services; so pods of unmodified manifests, in-cluster clients included, run.
//!
//! What it does not do: init containers, startup probes, resource limits, images pulled from
//! anywhere (the table is the registry), kube-proxy (ClusterIPs are not served), and without
//! sandboxes, volumes and service-account token mounts. Probe
//! periods are capped by [`KubeletOptions::max_probe_period`] and restart back-offs use
//! [`KubeletOptions::backoff`] (shorter than the real 10 s ... 5 min) so tests run quickly.

pub mod logs;
mod pod;
mod sandbox;

use std::collections::{HashMap, HashSet};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Context;
use futures_util::StreamExt;
use k8s_openapi::api::core::v1::{Binding, Node, ObjectReference, Pod};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::api::{Api, ListParams, Patch, PatchParams, PostParams};
use kube::runtime::WatchStreamExt;
use kube::runtime::watcher::{self, Event};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use crate::netns::NODE_IP;

/// What an image runs here: a local program, its default arguments (the image's `CMD`), its
/// environment (the image's `ENV`), and where the image's own paths are on this machine (for
/// containers that set `command`).
///
/// Values of `env` and `args` may hold `{pod_ip}`, `{port}` (the container's first port),
/// `{pod_name}` and `{namespace}`.
#[derive(Debug, Clone)]
pub struct Image {
    pub program: PathBuf,
    pub args: Vec<String>,
    pub env: Vec<(String, String)>,
    pub paths: HashMap<String, PathBuf>,
}

impl Image {
    pub fn new(program: impl Into<PathBuf>) -> Self {
        Self {
            program: program.into(),
            args: Vec::new(),
            env: Vec::new(),
            paths: HashMap::new(),
        }
    }

    pub fn arg(mut self, arg: impl Into<String>) -> Self {
        self.args.push(arg.into());
        self
    }

    pub fn env(mut self, name: impl Into<String>, value: impl Into<String>) -> Self {
        self.env.push((name.into(), value.into()));
        self
    }

    /// A program of the image at `in_image` (what a container's `command` names) is `local`.
    pub fn path(mut self, in_image: impl Into<String>, local: impl Into<PathBuf>) -> Self {
        self.paths.insert(in_image.into(), local.into());
        self
    }
}

/// The node's "registry": image references (`name:tag`) and what they run.
#[derive(Debug, Clone, Default)]
pub struct Images {
    map: HashMap<String, Image>,
}

impl Images {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn add(mut self, reference: impl Into<String>, image: Image) -> Self {
        self.map.insert(reference.into(), image);
        self
    }

    pub fn get(&self, reference: &str) -> Option<&Image> {
        self.map.get(reference)
    }

    /// `mcp-example-server:test`: the repository's example MCP server on the pod's address and
    /// the container's port (`HOST`, `PORT`), its replica id the pod's name.
    pub fn with_example_server(self) -> Self {
        let server = crate::example_server();
        self.add(
            "mcp-example-server:test",
            Image::new(&server)
                .env("HOST", "{pod_ip}")
                .env("PORT", "{port}")
                .env("REPLICA_ID", "{pod_name}")
                .path("/usr/local/bin/mcp-example-server", &server),
        )
    }
}

/// Knobs of the test kubelet.
#[derive(Debug, Clone)]
pub struct KubeletOptions {
    pub node_name: String,
    pub node_ip: Ipv4Addr,
    /// Probes run at their `periodSeconds`, but at least this often.
    pub max_probe_period: Duration,
    /// Restart back-off: the first restart is at once, then `base`, doubling up to `max`.
    pub backoff: (Duration, Duration),
    /// The API server's address, given to containers as `KUBERNETES_SERVICE_HOST`/`_PORT`.
    pub api_server: Option<SocketAddr>,
    /// Pod sandboxes: each pod in a network namespace of its own (`10.244.1.N`, a veth to the
    /// node), each container in a mount namespace with the pod's volumes, its service-account
    /// token and an `/etc/hosts` of the namespace's Services. Needs `ip`, `nsenter`, `unshare`,
    /// `mount` and `chroot`, and root (the tests' user namespace gives it). Off: pods share the
    /// node's network namespace (`10.244.0.N`) and its files.
    pub sandboxes: bool,
}

impl Default for KubeletOptions {
    fn default() -> Self {
        Self {
            node_name: "test-node".into(),
            node_ip: NODE_IP,
            max_probe_period: Duration::from_millis(500),
            backoff: (Duration::from_millis(500), Duration::from_secs(5)),
            api_server: None,
            sandboxes: false,
        }
    }
}

/// A process the kubelet runs for a container.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Process {
    pub namespace: String,
    pub pod: String,
    pub container: String,
    pub pid: u32,
}

pub(crate) struct Shared {
    pub client: kube::Client,
    pub images: Images,
    pub opts: KubeletOptions,
    pub logs: logs::LogStore,
    pub processes: Mutex<HashMap<u32, Process>>,
    ips: Mutex<HashSet<Ipv4Addr>>,
    /// The pods' sandbox directories (volumes, roots, hosts files), when sandboxes are on.
    pub sandbox_dir: Option<tempfile::TempDir>,
}

impl Shared {
    /// The lowest free pod address (10.244.0.10 ... .250; with sandboxes 10.244.1.10 ...).
    pub fn allocate_ip(&self) -> anyhow::Result<Ipv4Addr> {
        let mut used = self.ips.lock().unwrap_or_else(|e| e.into_inner());
        let [a, b, c] = if self.opts.sandboxes {
            sandbox::SANDBOX_PREFIX
        } else {
            [10, 244, 0]
        };
        let ip = (10..=250)
            .map(|n| Ipv4Addr::new(a, b, c, n))
            .find(|ip| !used.contains(ip))
            .context("no free pod address left in 10.244.x.10-250")?;
        used.insert(ip);
        Ok(ip)
    }

    pub fn release_ip(&self, ip: Ipv4Addr) {
        self.ips
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&ip);
    }
}

/// Waits up to `within` until at least `want` pods that match the label `selector` are Ready;
/// returns the addresses of the ready ones.
pub async fn ready_pod_ips(
    pods: &Api<Pod>,
    selector: &str,
    want: usize,
    within: Duration,
) -> anyhow::Result<Vec<String>> {
    crate::wait_for(
        &format!("{want} ready pods {selector}"),
        within,
        async || {
            let list = pods.list(&ListParams::default().labels(selector)).await?;
            let ips: Vec<String> = list
                .items
                .iter()
                .filter(|p| {
                    p.status
                        .as_ref()
                        .and_then(|s| s.conditions.as_ref())
                        .is_some_and(|c| c.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
                })
                .filter_map(|p| p.status.as_ref()?.pod_ip.clone())
                .collect();
            Ok((ips.len() >= want).then_some(ips))
        },
    )
    .await
}

/// The running test kubelet. Dropping it stops its pods' processes (SIGKILL) without touching
/// the API server.
pub struct TestKubelet {
    shared: Arc<Shared>,
    tasks: Vec<JoinHandle<()>>,
}

impl TestKubelet {
    /// Registers the node and starts serving pods.
    pub async fn start(client: kube::Client, images: Images) -> anyhow::Result<Self> {
        Self::start_with(client, images, KubeletOptions::default()).await
    }

    pub async fn start_with(
        client: kube::Client,
        images: Images,
        opts: KubeletOptions,
    ) -> anyhow::Result<Self> {
        let _ = rustls::crypto::ring::default_provider().install_default();
        // The log server first: the node's status names its port.
        let listener = tokio::net::TcpListener::bind((opts.node_ip, 0))
            .await
            .with_context(|| format!("bind the kubelet server on {}", opts.node_ip))?;
        let port = listener.local_addr()?.port();
        let pem =
            crate::cluster::pki::self_signed(&[&opts.node_name], &[IpAddr::V4(opts.node_ip)])?;
        let tls = server_tls(&pem)?;

        register_node(&client, &opts, port).await?;

        let sandbox_dir = if opts.sandboxes {
            Some(
                tempfile::Builder::new()
                    .prefix("mcp-gateway-kubelet-")
                    .tempdir()
                    .context("the kubelet's sandbox directory")?,
            )
        } else {
            None
        };
        let shared = Arc::new(Shared {
            client,
            images,
            opts,
            logs: logs::LogStore::default(),
            processes: Mutex::new(HashMap::new()),
            ips: Mutex::new(HashSet::new()),
            sandbox_dir,
        });
        let server = tokio::spawn(logs::run_server(listener, tls, shared.logs.clone()));
        let pods = tokio::spawn(dispatch(shared.clone()));
        Ok(Self {
            shared,
            tasks: vec![server, pods],
        })
    }

    /// The node's name.
    pub fn node_name(&self) -> &str {
        &self.shared.opts.node_name
    }

    /// The processes running now, sorted by namespace, pod and container.
    pub fn processes(&self) -> Vec<Process> {
        let map = self
            .shared
            .processes
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        let mut list: Vec<Process> = map.values().cloned().collect();
        list.sort_by(|a, b| {
            (&a.namespace, &a.pod, &a.container).cmp(&(&b.namespace, &b.pod, &b.container))
        });
        list
    }
}

impl Drop for TestKubelet {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
        let map = self
            .shared
            .processes
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        for pid in map.keys() {
            pod::kill_group(*pid, nix::sys::signal::Signal::SIGKILL);
        }
    }
}

fn server_tls(pem: &crate::cluster::pki::Pem) -> anyhow::Result<Arc<rustls::ServerConfig>> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let certs =
        CertificateDer::pem_slice_iter(pem.cert.as_bytes()).collect::<Result<Vec<_>, _>>()?;
    let key = PrivateKeyDer::from_pem_slice(pem.key.as_bytes())?;
    let mut config = rustls::ServerConfig::builder()
        .with_no_client_auth()
        .with_single_cert(certs, key)?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

async fn register_node(
    client: &kube::Client,
    opts: &KubeletOptions,
    port: u16,
) -> anyhow::Result<()> {
    let nodes: Api<Node> = Api::all(client.clone());
    let name = &opts.node_name;
    let pp = PatchParams::apply("test-kubelet").force();
    let node = serde_json::json!({
        "apiVersion": "v1", "kind": "Node",
        "metadata": { "name": name, "labels": {
            "kubernetes.io/hostname": name, "kubernetes.io/os": "linux", "kubernetes.io/arch": "amd64",
        }},
        "spec": { "taints": [] },
    });
    nodes
        .patch(name, &pp, &Patch::Apply(&node))
        .await
        .context("register the test node")?;
    let now = k8s_openapi::jiff::Timestamp::now().to_string();
    let condition = |t: &str, s: &str, reason: &str| {
        serde_json::json!({ "type": t, "status": s, "reason": reason, "message": reason,
            "lastHeartbeatTime": now, "lastTransitionTime": now })
    };
    let status = serde_json::json!({ "status": {
        "addresses": [
            { "type": "InternalIP", "address": opts.node_ip.to_string() },
            { "type": "Hostname", "address": name },
        ],
        "daemonEndpoints": { "kubeletEndpoint": { "Port": port } },
        "conditions": [
            condition("Ready", "True", "KubeletReady"),
            condition("MemoryPressure", "False", "KubeletHasSufficientMemory"),
            condition("DiskPressure", "False", "KubeletHasNoDiskPressure"),
            condition("PIDPressure", "False", "KubeletHasSufficientPID"),
        ],
        "capacity": { "cpu": "64", "memory": "256Gi", "pods": "110" },
        "allocatable": { "cpu": "64", "memory": "256Gi", "pods": "110" },
        "nodeInfo": {
            "kubeletVersion": "v1.37.2-test", "kubeProxyVersion": "", "operatingSystem": "linux",
            "architecture": "amd64", "containerRuntimeVersion": "local-process://1",
            "osImage": "test", "kernelVersion": "", "machineID": "", "systemUUID": "", "bootID": "",
        },
    }});
    nodes
        .patch_status(name, &PatchParams::default(), &Patch::Merge(&status))
        .await
        .context("report the test node Ready")?;
    // The node-taint admission plugin adds `not-ready:NoSchedule` at creation; a Ready node
    // drops it (the node lifecycle controller would, which tests do not run).
    nodes
        .patch(
            name,
            &PatchParams::default(),
            &Patch::Merge(&serde_json::json!({ "spec": { "taints": null } })),
        )
        .await
        .context("untaint the test node")?;
    Ok(())
}

/// A pod's worker gets the pod's new versions, then `None` when it is gone.
type WorkerTx = mpsc::UnboundedSender<Option<Arc<Pod>>>;

/// Watches every pod: binds the unscheduled ones, hands ours to their workers.
async fn dispatch(shared: Arc<Shared>) {
    let api: Api<Pod> = Api::all(shared.client.clone());
    let mut events = watcher(api).default_backoff().boxed();
    let mut workers: HashMap<String, WorkerTx> = HashMap::new();
    let mut binding: HashSet<String> = HashSet::new();
    let mut listed: Option<HashSet<String>> = None;
    while let Some(event) = events.next().await {
        match event {
            Ok(Event::Init) => listed = Some(HashSet::new()),
            Ok(Event::InitApply(pod)) => {
                if let (Some(seen), Some(uid)) = (listed.as_mut(), pod.metadata.uid.clone()) {
                    seen.insert(uid);
                }
                handle(&shared, &mut workers, &mut binding, pod);
            }
            Ok(Event::InitDone) => {
                // Pods deleted while the watch was down get no Delete event.
                if let Some(seen) = listed.take() {
                    workers.retain(|uid, tx| {
                        let keep = seen.contains(uid);
                        if !keep {
                            let _ = tx.send(None);
                        }
                        keep
                    });
                }
            }
            Ok(Event::Apply(pod)) => handle(&shared, &mut workers, &mut binding, pod),
            Ok(Event::Delete(pod)) => {
                if let Some(uid) = pod.metadata.uid.as_deref() {
                    binding.remove(uid);
                    if let Some(tx) = workers.remove(uid) {
                        let _ = tx.send(None);
                    }
                }
            }
            Err(e) => tracing::warn!(error = %e, "test kubelet: pod watch"),
        }
    }
}

fn watcher(api: Api<Pod>) -> impl futures_util::Stream<Item = Result<Event<Pod>, watcher::Error>> {
    watcher::watcher(api, watcher::Config::default())
}

fn handle(
    shared: &Arc<Shared>,
    workers: &mut HashMap<String, WorkerTx>,
    binding: &mut HashSet<String>,
    pod: Pod,
) {
    let Some(uid) = pod.metadata.uid.clone() else {
        return;
    };
    let spec = pod.spec.as_ref();
    match spec.and_then(|s| s.node_name.as_deref()) {
        None => {
            let scheduler = spec.and_then(|s| s.scheduler_name.as_deref());
            if matches!(scheduler, None | Some("default-scheduler")) && binding.insert(uid) {
                tokio::spawn(bind(shared.clone(), pod));
            }
        }
        Some(node) if node == shared.opts.node_name => {
            let pod = Arc::new(pod);
            if let Some(tx) = workers.get(&uid)
                && tx.send(Some(pod.clone())).is_ok()
            {
                return;
            }
            let (tx, rx) = mpsc::unbounded_channel();
            let _ = tx.send(Some(pod));
            workers.insert(uid, tx);
            tokio::spawn(pod::run(shared.clone(), rx));
        }
        Some(_) => {}
    }
}

/// `POST pods/{name}/binding` to this node, as the scheduler would.
async fn bind(shared: Arc<Shared>, pod: Pod) {
    let ns = pod.metadata.namespace.clone().unwrap_or_default();
    let name = pod.metadata.name.clone().unwrap_or_default();
    let api: Api<Pod> = Api::namespaced(shared.client.clone(), &ns);
    let binding = Binding {
        metadata: ObjectMeta {
            name: Some(name.clone()),
            uid: pod.metadata.uid.clone(),
            ..ObjectMeta::default()
        },
        target: ObjectReference {
            api_version: Some("v1".into()),
            kind: Some("Node".into()),
            name: Some(shared.opts.node_name.clone()),
            ..ObjectReference::default()
        },
    };
    if let Err(e) = api
        .create_subresource::<_, serde_json::Value>(
            "binding",
            &name,
            &PostParams::default(),
            &binding,
        )
        .await
    {
        tracing::warn!(pod = %name, error = %e, "test kubelet: binding");
    }
}
