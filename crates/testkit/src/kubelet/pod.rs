//! One pod on the test kubelet: its containers as processes, their probes and restarts, the
//! status written back, and its termination.

use std::collections::HashMap;
use std::net::Ipv4Addr;
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use anyhow::{Context, bail};
use k8s_openapi::api::core::v1::{
    ConfigMap, Container, ContainerPort, EnvVar, LifecycleHandler, Pod, Probe, Secret,
};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, DeleteParams, Patch, PatchParams, Preconditions};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::sync::{Notify, mpsc, watch};

use super::{Process, Shared};

/// Sends `signal` to the process group led by `pid` (each container runs in its own group).
pub(crate) fn kill_group(pid: u32, signal: Signal) {
    let _ = kill(Pid::from_raw(-(pid as i32)), signal);
}

fn ts(t: SystemTime) -> String {
    Timestamp::try_from(t)
        .unwrap_or(Timestamp::UNIX_EPOCH)
        .to_string()
}

// === Container state, as containerStatuses shows it ===

#[derive(Debug, Clone)]
enum State {
    Waiting { reason: String, message: String },
    Running { started: SystemTime },
    Terminated(Terminated),
}

#[derive(Debug, Clone)]
struct Terminated {
    code: i32,
    signal: Option<i32>,
    reason: String,
    started: SystemTime,
    finished: SystemTime,
}

#[derive(Debug, Clone)]
struct ContainerState {
    name: String,
    image: String,
    state: State,
    last: Option<Terminated>,
    restarts: i32,
    ready: bool,
    started: bool,
    pid: Option<u32>,
}

impl ContainerState {
    fn to_json(&self) -> Value {
        let term = |t: &Terminated| {
            let mut v = json!({ "exitCode": t.code, "reason": t.reason,
                "startedAt": ts(t.started), "finishedAt": ts(t.finished) });
            if let Some(s) = t.signal {
                v["signal"] = json!(s);
            }
            v
        };
        let state = match &self.state {
            State::Waiting { reason, message } => {
                json!({ "waiting": { "reason": reason, "message": message } })
            }
            State::Running { started } => json!({ "running": { "startedAt": ts(*started) } }),
            State::Terminated(t) => json!({ "terminated": term(t) }),
        };
        let mut v = json!({
            "name": self.name, "image": self.image, "imageID": format!("local://{}", self.image),
            "ready": self.ready, "started": self.started, "restartCount": self.restarts,
            "state": state, "lastState": self.last.as_ref().map_or(json!({}), |t| json!({ "terminated": term(t) })),
        });
        if let Some(pid) = self.pid {
            v["containerID"] = json!(format!("local-process://{pid}"));
        }
        v
    }
}

/// What the pod's workers share: the containers' states, and a bell for the status writer.
struct PodState {
    containers: Mutex<Vec<ContainerState>>,
    changed: Notify,
}

impl PodState {
    fn update(&self, i: usize, f: impl FnOnce(&mut ContainerState)) {
        {
            let mut c = self.containers.lock().unwrap_or_else(|e| e.into_inner());
            f(&mut c[i]);
        }
        self.changed.notify_one();
    }

    fn snapshot(&self) -> Vec<ContainerState> {
        self.containers
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }
}

/// Where a pod is: its identity, its address, the API handles.
struct PodCtx {
    shared: Arc<Shared>,
    ns: String,
    name: String,
    uid: String,
    ip: Ipv4Addr,
    pod: Pod,
    api: Api<Pod>,
    /// The pod's network namespace and files (`KubeletOptions::sandboxes`).
    sandbox: Option<super::sandbox::Sandbox>,
}

impl PodCtx {
    fn template(&self, s: &str, port: Option<u16>) -> String {
        s.replace("{pod_ip}", &self.ip.to_string())
            .replace("{pod_name}", &self.name)
            .replace("{namespace}", &self.ns)
            .replace("{port}", &port.map_or_else(String::new, |p| p.to_string()))
    }
}

/// Runs a pod until it is deleted: `rx` brings its new versions, `None` once it is gone.
pub(crate) async fn run(shared: Arc<Shared>, mut rx: mpsc::UnboundedReceiver<Option<Arc<Pod>>>) {
    let Some(Some(first)) = rx.recv().await else {
        return;
    };
    let ip = match shared.allocate_ip() {
        Ok(ip) => ip,
        Err(e) => {
            tracing::error!(error = %e, "test kubelet");
            return;
        }
    };
    let ns = first.metadata.namespace.clone().unwrap_or_default();
    let name = first.metadata.name.clone().unwrap_or_default();
    let uid = first.metadata.uid.clone().unwrap_or_default();
    let sandbox = if shared.sandbox_dir.is_some() {
        let hostname = first
            .spec
            .as_ref()
            .and_then(|s| s.hostname.clone())
            .unwrap_or_else(|| name.clone());
        match super::sandbox::Sandbox::create(&shared, &uid, &ns, &hostname, ip).await {
            Ok(s) => Some(s),
            Err(e) => {
                tracing::error!(pod = %name, error = %format!("{e:#}"), "test kubelet: pod sandbox");
                shared.release_ip(ip);
                return;
            }
        }
    } else {
        None
    };
    let ctx = Arc::new(PodCtx {
        api: Api::namespaced(shared.client.clone(), &ns),
        uid,
        ns,
        name,
        ip,
        pod: (*first).clone(),
        shared: shared.clone(),
        sandbox,
    });
    let containers: Vec<Container> = first
        .spec
        .as_ref()
        .map(|s| s.containers.clone())
        .unwrap_or_default();
    let state = Arc::new(PodState {
        containers: Mutex::new(
            containers
                .iter()
                .map(|c| ContainerState {
                    name: c.name.clone(),
                    image: c.image.clone().unwrap_or_default(),
                    state: State::Waiting {
                        reason: "ContainerCreating".into(),
                        message: String::new(),
                    },
                    last: None,
                    restarts: 0,
                    ready: false,
                    started: false,
                    pid: None,
                })
                .collect(),
        ),
        changed: Notify::new(),
    });

    // Stop signal for the containers: Some(grace) to terminate.
    let (stop_tx, stop_rx) = watch::channel::<Option<Duration>>(None);
    let writer = tokio::spawn(write_status(ctx.clone(), state.clone()));
    let mut runners = Vec::new();
    for (i, c) in containers.into_iter().enumerate() {
        runners.push(tokio::spawn(run_container(
            ctx.clone(),
            state.clone(),
            i,
            c,
            stop_rx.clone(),
        )));
    }
    state.changed.notify_one();

    // Wait for deletion (a deletionTimestamp) or disappearance.
    let mut gone = false;
    let mut pod = first;
    loop {
        if pod.metadata.deletion_timestamp.is_some() {
            break;
        }
        match rx.recv().await {
            Some(Some(p)) => pod = p,
            Some(None) | None => {
                gone = true;
                break;
            }
        }
    }
    let grace = if gone {
        Duration::ZERO
    } else {
        Duration::from_secs(
            pod.metadata
                .deletion_grace_period_seconds
                .or_else(|| {
                    pod.spec
                        .as_ref()
                        .and_then(|s| s.termination_grace_period_seconds)
                })
                .unwrap_or(30)
                .max(0) as u64,
        )
    };
    let _ = stop_tx.send(Some(grace));
    for r in runners {
        let _ = r.await;
    }
    writer.abort();
    if !gone {
        // The last status (terminated containers), then the pod itself.
        let _ = patch_status(&ctx, &state.snapshot(), true).await;
        let dp = DeleteParams {
            grace_period_seconds: Some(0),
            preconditions: Some(Preconditions {
                uid: Some(ctx.uid.clone()),
                resource_version: None,
            }),
            ..DeleteParams::default()
        };
        if let Err(e) = ctx.api.delete(&ctx.name, &dp).await {
            tracing::debug!(pod = %ctx.name, error = %e, "test kubelet: delete");
        }
    }
    shared.logs.remove_pod(&ctx.ns, &ctx.name, &ctx.uid);
    shared.release_ip(ip);
}

/// Writes the pod's status whenever a container's state changes.
async fn write_status(ctx: Arc<PodCtx>, state: Arc<PodState>) {
    let mut conditions: HashMap<&'static str, (bool, SystemTime)> = HashMap::new();
    let start = SystemTime::now();
    loop {
        state.changed.notified().await;
        let snapshot = state.snapshot();
        if let Err(e) = patch_status_with(&ctx, &snapshot, false, &mut conditions, start).await {
            tracing::debug!(pod = %ctx.name, error = %e, "test kubelet: status");
            tokio::time::sleep(Duration::from_millis(200)).await;
            state.changed.notify_one();
        }
    }
}

async fn patch_status(
    ctx: &PodCtx,
    snapshot: &[ContainerState],
    terminating: bool,
) -> anyhow::Result<()> {
    let mut conditions = HashMap::new();
    patch_status_with(
        ctx,
        snapshot,
        terminating,
        &mut conditions,
        SystemTime::now(),
    )
    .await
}

async fn patch_status_with(
    ctx: &PodCtx,
    snapshot: &[ContainerState],
    terminating: bool,
    conditions: &mut HashMap<&'static str, (bool, SystemTime)>,
    start: SystemTime,
) -> anyhow::Result<()> {
    let all_ready = !terminating && !snapshot.is_empty() && snapshot.iter().all(|c| c.ready);
    let any_started = snapshot.iter().any(|c| c.started);
    let restart_policy = ctx
        .pod
        .spec
        .as_ref()
        .and_then(|s| s.restart_policy.as_deref())
        .unwrap_or("Always");
    let all_terminated = snapshot
        .iter()
        .all(|c| matches!(c.state, State::Terminated(_)));
    let phase = if all_terminated && restart_policy != "Always" && !snapshot.is_empty() {
        let ok = snapshot
            .iter()
            .all(|c| matches!(&c.state, State::Terminated(t) if t.code == 0));
        if ok { "Succeeded" } else { "Failed" }
    } else if any_started {
        "Running"
    } else {
        "Pending"
    };
    let now = SystemTime::now();
    let mut condition = |name: &'static str, value: bool| {
        let entry = conditions.entry(name).or_insert((value, now));
        if entry.0 != value {
            *entry = (value, now);
        }
        let mut c = json!({ "type": name, "status": if value { "True" } else { "False" },
            "lastTransitionTime": ts(entry.1) });
        if !value && (name == "Ready" || name == "ContainersReady") {
            let not_ready: Vec<&str> = snapshot
                .iter()
                .filter(|c| !c.ready)
                .map(|c| c.name.as_str())
                .collect();
            c["reason"] = json!("ContainersNotReady");
            c["message"] = json!(format!(
                "containers with unready status: [{}]",
                not_ready.join(" ")
            ));
        }
        c
    };
    let conds = vec![
        condition("PodReadyToStartContainers", true),
        condition("Initialized", true),
        condition("Ready", all_ready),
        condition("ContainersReady", all_ready),
        condition("PodScheduled", true),
    ];
    let ip = ctx.ip.to_string();
    let host = ctx.shared.opts.node_ip.to_string();
    let body = json!({ "status": {
        "phase": phase,
        "conditions": conds,
        "hostIP": host, "hostIPs": [{ "ip": host }],
        "podIP": ip, "podIPs": [{ "ip": ip }],
        "startTime": ts(start),
        "containerStatuses": snapshot.iter().map(ContainerState::to_json).collect::<Vec<_>>(),
    }});
    ctx.api
        .patch_status(&ctx.name, &PatchParams::default(), &Patch::Merge(&body))
        .await?;
    Ok(())
}

// === One container: pull, start, probe, restart, stop ===

enum Exit {
    /// The process ended by itself (or its liveness probe failed and it was killed).
    Ended(Terminated),
    /// The pod is being deleted: stop for good.
    Stop,
}

async fn run_container(
    ctx: Arc<PodCtx>,
    state: Arc<PodState>,
    i: usize,
    c: Container,
    mut stop: watch::Receiver<Option<Duration>>,
) {
    let image_ref = c.image.clone().unwrap_or_default();
    let policy = ctx
        .pod
        .spec
        .as_ref()
        .and_then(|s| s.restart_policy.clone())
        .unwrap_or_else(|| "Always".into());
    let (base, max) = ctx.shared.opts.backoff;
    let mut failures: u32 = 0;
    loop {
        if stop.borrow().is_some() {
            return;
        }
        // Pull: the image table is the registry.
        let Some(image) = ctx.shared.images.get(&image_ref).cloned() else {
            let msg = format!(
                "failed to pull image \"{image_ref}\": not found in the test kubelet's image table"
            );
            waiting(&ctx, &state, i, &c.name, "ErrImagePull", &msg);
            if sleep_or_stop(&mut stop, base).await {
                return;
            }
            let msg = format!("Back-off pulling image \"{image_ref}\": {msg}");
            waiting(&ctx, &state, i, &c.name, "ImagePullBackOff", &msg);
            if sleep_or_stop(&mut stop, backoff(base, max, failures)).await {
                return;
            }
            failures += 1;
            continue;
        };
        let spawned = match prepare(&ctx, &c, &image).await {
            Ok(cmd) => start(&ctx, &state, i, &c, cmd),
            Err(Prepare::Config(msg)) => Err(("CreateContainerConfigError", msg)),
            Err(Prepare::Create(msg)) => Err(("CreateContainerError", msg)),
        };
        let (child, writer) = match spawned {
            Ok(x) => x,
            Err((reason, msg)) => {
                waiting(&ctx, &state, i, &c.name, reason, &msg);
                if sleep_or_stop(&mut stop, backoff(base, max, failures)).await {
                    return;
                }
                failures += 1;
                continue;
            }
        };
        let started = SystemTime::now();
        let exit = supervise(&ctx, &state, i, &c, child, started, &mut stop).await;
        drop(writer);
        let t = match exit {
            Exit::Stop => return,
            Exit::Ended(t) => t,
        };
        let restart = match policy.as_str() {
            "Never" => false,
            "OnFailure" => t.code != 0,
            _ => true,
        };
        state.update(i, |s| {
            s.ready = false;
            s.pid = None;
            s.last = Some(t.clone());
            s.state = State::Terminated(t.clone());
        });
        if !restart {
            return;
        }
        // A container that ran 10 s without trouble starts over with a short back-off.
        if t.finished.duration_since(t.started).unwrap_or_default() > Duration::from_secs(10) {
            failures = 0;
        }
        if failures > 0 {
            let delay = backoff(base, max, failures - 1);
            let msg = format!(
                "back-off {delay:?} restarting failed container={} pod={}_{}({})",
                c.name, ctx.name, ctx.ns, ctx.uid
            );
            waiting(&ctx, &state, i, &c.name, "CrashLoopBackOff", &msg);
            if sleep_or_stop(&mut stop, delay).await {
                return;
            }
        }
        failures += 1;
        state.update(i, |s| s.restarts += 1);
    }
}

fn backoff(base: Duration, max: Duration, n: u32) -> Duration {
    base.saturating_mul(1u32 << n.min(16)).min(max)
}

fn waiting(ctx: &PodCtx, state: &PodState, i: usize, name: &str, reason: &str, message: &str) {
    ctx.shared
        .logs
        .set_waiting(&ctx.ns, &ctx.name, &ctx.uid, name, reason);
    state.update(i, |s| {
        s.ready = false;
        s.state = State::Waiting {
            reason: reason.into(),
            message: message.into(),
        };
    });
}

/// Sleeps `d`; true if the pod is being stopped meanwhile.
async fn sleep_or_stop(stop: &mut watch::Receiver<Option<Duration>>, d: Duration) -> bool {
    tokio::select! {
        () = tokio::time::sleep(d) => {}
        _ = stop.wait_for(Option::is_some) => return true,
    }
    stop.borrow().is_some()
}

enum Prepare {
    /// A referenced Secret, ConfigMap or field is missing.
    Config(String),
    /// The image has no such program.
    Create(String),
}

/// The command line and environment of a container.
async fn prepare(
    ctx: &PodCtx,
    c: &Container,
    image: &super::Image,
) -> Result<tokio::process::Command, Prepare> {
    let port = c
        .ports
        .as_ref()
        .and_then(|p| p.first())
        .map(|p| p.container_port as u16);
    // Environment: the image's, KUBERNETES_SERVICE_*, then the container's.
    let mut env: Vec<(String, String)> = image
        .env
        .iter()
        .map(|(k, v)| (k.clone(), ctx.template(v, port)))
        .collect();
    if let Some(api) = ctx.shared.opts.api_server {
        env.push(("KUBERNETES_SERVICE_HOST".into(), api.ip().to_string()));
        env.push(("KUBERNETES_SERVICE_PORT".into(), api.port().to_string()));
    }
    for from in c.env_from.iter().flatten() {
        let prefix = from.prefix.clone().unwrap_or_default();
        if let Some(s) = &from.secret_ref {
            let optional = s.optional.unwrap_or(false);
            match secret(ctx, &s.name).await {
                Ok(Some(data)) => {
                    env.extend(data.into_iter().map(|(k, v)| (format!("{prefix}{k}"), v)))
                }
                Ok(None) if optional => {}
                Ok(None) => {
                    return Err(Prepare::Config(format!("secret \"{}\" not found", s.name)));
                }
                Err(e) => return Err(Prepare::Config(e.to_string())),
            }
        }
        if let Some(m) = &from.config_map_ref {
            let optional = m.optional.unwrap_or(false);
            match config_map(ctx, &m.name).await {
                Ok(Some(data)) => {
                    env.extend(data.into_iter().map(|(k, v)| (format!("{prefix}{k}"), v)))
                }
                Ok(None) if optional => {}
                Ok(None) => {
                    return Err(Prepare::Config(format!(
                        "configmap \"{}\" not found",
                        m.name
                    )));
                }
                Err(e) => return Err(Prepare::Config(e.to_string())),
            }
        }
    }
    for var in c.env.iter().flatten() {
        if let Some(value) = env_value(ctx, var, &env).await? {
            env.retain(|(k, _)| k != &var.name);
            env.push((var.name.clone(), value));
        }
    }
    let lookup: HashMap<&str, &str> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    let expand_all = |v: &[String]| v.iter().map(|a| expand(a, &lookup)).collect::<Vec<_>>();
    // `command` replaces the image's entrypoint (a path of the image), `args` its CMD.
    let (program, mut args) = match c.command.as_deref() {
        Some([first, rest @ ..]) => {
            let program = image
                .paths
                .get(first)
                .cloned()
                .or_else(|| {
                    (first == &image.program.display().to_string()).then(|| image.program.clone())
                })
                .ok_or_else(|| {
                    Prepare::Create(format!(
                        "exec: \"{first}\": executable file not found in the image"
                    ))
                })?;
            (program, expand_all(rest))
        }
        _ => (image.program.clone(), Vec::new()),
    };
    match (&c.command, &c.args) {
        (_, Some(a)) => args.extend(expand_all(a)),
        (None, None) => args.extend(image.args.iter().map(|a| ctx.template(a, port))),
        (Some(_), None) => {}
    }
    let mut cmd = match &ctx.sandbox {
        None => {
            let mut cmd = tokio::process::Command::new(program);
            cmd.args(args);
            cmd
        }
        Some(sandbox) => {
            let dir = ctx
                .shared
                .sandbox_dir
                .as_ref()
                .map(|d| d.path().join(&ctx.uid))
                .unwrap_or_default();
            let volumes = super::sandbox::materialize(&ctx.shared.client, &dir, &ctx.pod)
                .await
                .map_err(Prepare::Config)?;
            let mut c = c.clone();
            if super::sandbox::automounts_token(&ctx.pod) {
                c.volume_mounts
                    .get_or_insert_with(Vec::new)
                    .push(super::sandbox::service_account_mount());
            }
            sandbox
                .command(&c, &volumes, &program, &args)
                .map_err(|e| Prepare::Create(format!("{e:#}")))?
        }
    };
    cmd.env_clear()
        .envs(
            std::env::var_os("PATH").map(|p| ("PATH".to_owned(), p.to_string_lossy().into_owned())),
        )
        .envs(env)
        .current_dir(
            c.working_dir
                .as_deref()
                .filter(|d| std::path::Path::new(d).is_dir())
                .unwrap_or("/"),
        )
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0)
        .kill_on_drop(true);
    Ok(cmd)
}

/// `$(VAR)` as Kubernetes expands it in command, args and env values; `$$` is a `$`.
fn expand(s: &str, vars: &HashMap<&str, &str>) -> String {
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    while let Some(pos) = rest.find('$') {
        out.push_str(&rest[..pos]);
        let after = &rest[pos + 1..];
        if let Some(tail) = after.strip_prefix('$') {
            out.push('$');
            rest = tail;
        } else if let Some(inner) = after.strip_prefix('(')
            && let Some(end) = inner.find(')')
            && let Some(v) = vars.get(&inner[..end])
        {
            out.push_str(v);
            rest = &inner[end + 1..];
        } else {
            out.push('$');
            rest = after;
        }
    }
    out.push_str(rest);
    out
}

async fn env_value(
    ctx: &PodCtx,
    var: &EnvVar,
    env: &[(String, String)],
) -> Result<Option<String>, Prepare> {
    if let Some(v) = &var.value {
        let lookup: HashMap<&str, &str> =
            env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        return Ok(Some(expand(v, &lookup)));
    }
    let Some(from) = &var.value_from else {
        return Ok(Some(String::new()));
    };
    if let Some(s) = &from.secret_key_ref {
        let optional = s.optional.unwrap_or(false);
        return match secret(ctx, &s.name)
            .await
            .map_err(|e| Prepare::Config(e.to_string()))?
        {
            Some(data) => match data.get(&s.key) {
                Some(v) => Ok(Some(v.clone())),
                None if optional => Ok(None),
                None => Err(Prepare::Config(format!(
                    "couldn't find key {} in Secret {}/{}",
                    s.key, ctx.ns, s.name
                ))),
            },
            None if optional => Ok(None),
            None => Err(Prepare::Config(format!("secret \"{}\" not found", s.name))),
        };
    }
    if let Some(m) = &from.config_map_key_ref {
        let optional = m.optional.unwrap_or(false);
        return match config_map(ctx, &m.name)
            .await
            .map_err(|e| Prepare::Config(e.to_string()))?
        {
            Some(data) => match data.get(&m.key) {
                Some(v) => Ok(Some(v.clone())),
                None if optional => Ok(None),
                None => Err(Prepare::Config(format!(
                    "couldn't find key {} in ConfigMap {}/{}",
                    m.key, ctx.ns, m.name
                ))),
            },
            None if optional => Ok(None),
            None => Err(Prepare::Config(format!(
                "configmap \"{}\" not found",
                m.name
            ))),
        };
    }
    if let Some(f) = &from.field_ref {
        let meta = &ctx.pod.metadata;
        let spec = ctx.pod.spec.as_ref();
        let path = f.field_path.as_str();
        let label = |map: &Option<std::collections::BTreeMap<String, String>>, prefix: &str| {
            path.strip_prefix(prefix)
                .and_then(|k| k.strip_suffix("']"))
                .and_then(|k| map.as_ref()?.get(k).cloned())
        };
        let value = match path {
            "metadata.name" => Some(ctx.name.clone()),
            "metadata.namespace" => Some(ctx.ns.clone()),
            "metadata.uid" => Some(ctx.uid.clone()),
            "status.podIP" | "status.podIPs" => Some(ctx.ip.to_string()),
            "status.hostIP" | "status.hostIPs" => Some(ctx.shared.opts.node_ip.to_string()),
            "spec.nodeName" => Some(ctx.shared.opts.node_name.clone()),
            "spec.serviceAccountName" => Some(
                spec.and_then(|s| s.service_account_name.clone())
                    .unwrap_or_else(|| "default".into()),
            ),
            _ if path.starts_with("metadata.labels['") => label(&meta.labels, "metadata.labels['"),
            _ if path.starts_with("metadata.annotations['") => {
                label(&meta.annotations, "metadata.annotations['")
            }
            _ => return Err(Prepare::Config(format!("unsupported fieldRef {path}"))),
        };
        return Ok(Some(value.unwrap_or_default()));
    }
    Err(Prepare::Config(format!(
        "env {}: resourceFieldRef is not supported by the test kubelet",
        var.name
    )))
}

async fn secret(ctx: &PodCtx, name: &str) -> anyhow::Result<Option<HashMap<String, String>>> {
    let api: Api<Secret> = Api::namespaced(ctx.shared.client.clone(), &ctx.ns);
    let Some(s) = api.get_opt(name).await? else {
        return Ok(None);
    };
    let mut out = HashMap::new();
    for (k, v) in s.data.unwrap_or_default() {
        out.insert(k, String::from_utf8_lossy(&v.0).into_owned());
    }
    for (k, v) in s.string_data.unwrap_or_default() {
        out.insert(k, v);
    }
    Ok(Some(out))
}

async fn config_map(ctx: &PodCtx, name: &str) -> anyhow::Result<Option<HashMap<String, String>>> {
    let api: Api<ConfigMap> = Api::namespaced(ctx.shared.client.clone(), &ctx.ns);
    Ok(api
        .get_opt(name)
        .await?
        .map(|m| m.data.unwrap_or_default().into_iter().collect()))
}

type Started = (tokio::process::Child, Arc<super::logs::InstanceWriter>);

fn start(
    ctx: &PodCtx,
    state: &PodState,
    i: usize,
    c: &Container,
    mut cmd: tokio::process::Command,
) -> Result<Started, (&'static str, String)> {
    let mut child = cmd.spawn().map_err(|e| {
        (
            "RunContainerError",
            format!("failed to start container \"{}\": {e}", c.name),
        )
    })?;
    let pid = child.id().unwrap_or_default();
    let writer = Arc::new(
        ctx.shared
            .logs
            .start_instance(&ctx.ns, &ctx.name, &ctx.uid, &c.name),
    );
    for out in [
        child
            .stdout
            .take()
            .map(|s| Box::new(s) as Box<dyn tokio::io::AsyncRead + Send + Unpin>),
        child
            .stderr
            .take()
            .map(|s| Box::new(s) as Box<dyn tokio::io::AsyncRead + Send + Unpin>),
    ]
    .into_iter()
    .flatten()
    {
        let writer = writer.clone();
        tokio::spawn(async move {
            let mut lines = BufReader::new(out).lines();
            while let Ok(Some(line)) = lines.next_line().await {
                writer.line(line);
            }
        });
    }
    ctx.shared
        .processes
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .insert(
            pid,
            Process {
                namespace: ctx.ns.clone(),
                pod: ctx.name.clone(),
                container: c.name.clone(),
                pid,
            },
        );
    let has_readiness = c.readiness_probe.is_some();
    state.update(i, |s| {
        s.state = State::Running {
            started: SystemTime::now(),
        };
        s.started = true;
        s.ready = !has_readiness;
        s.pid = Some(pid);
    });
    Ok((child, writer))
}

/// Waits for the process to end, probing it meanwhile; stops it when the pod is deleted.
async fn supervise(
    ctx: &Arc<PodCtx>,
    state: &Arc<PodState>,
    i: usize,
    c: &Container,
    mut child: tokio::process::Child,
    started: SystemTime,
    stop: &mut watch::Receiver<Option<Duration>>,
) -> Exit {
    let pid = child.id().unwrap_or_default();
    let (dead_tx, mut dead_rx) = mpsc::channel::<()>(1);
    let mut probers = Vec::new();
    if let Some(p) = c.readiness_probe.clone() {
        let (ctx, state, c) = (ctx.clone(), state.clone(), c.clone());
        probers.push(tokio::spawn(async move {
            probe_loop(&ctx, &c, &p, |ok| state.update(i, |s| s.ready = ok), || {}).await;
        }));
    }
    if let Some(p) = c.liveness_probe.clone() {
        let (ctx, c) = (ctx.clone(), c.clone());
        probers.push(tokio::spawn(async move {
            let dead = dead_tx;
            probe_loop(
                &ctx,
                &c,
                &p,
                |_| {},
                move || {
                    let _ = dead.try_send(());
                },
            )
            .await;
        }));
    }
    enum Woke {
        Exited(Option<std::process::ExitStatus>),
        LivenessFailed,
        Stop(Duration),
    }
    let woke = tokio::select! {
        status = child.wait() => Woke::Exited(status.ok()),
        Some(()) = dead_rx.recv() => Woke::LivenessFailed,
        res = stop.wait_for(Option::is_some) => {
            Woke::Stop(res.map(|r| r.unwrap_or_default()).unwrap_or_default())
        }
    };
    let status = match woke {
        Woke::Exited(status) => status,
        // Liveness failed: the kubelet kills the container (after its grace period).
        Woke::LivenessFailed => terminate(&mut child, pid, Duration::from_secs(c_grace(ctx))).await,
        Woke::Stop(grace) => {
            for p in &probers {
                p.abort();
            }
            let deadline = tokio::time::Instant::now() + grace;
            if let Some(handler) = c.lifecycle.as_ref().and_then(|l| l.pre_stop.as_ref()) {
                let _ = tokio::time::timeout_at(deadline, pre_stop(ctx, c, handler)).await;
            }
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            let status = terminate(&mut child, pid, left).await;
            ctx.shared
                .processes
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .remove(&pid);
            let t = terminated(status, started);
            state.update(i, |s| {
                s.ready = false;
                s.pid = None;
                s.state = State::Terminated(t);
            });
            return Exit::Stop;
        }
    };
    for p in probers {
        p.abort();
    }
    ctx.shared
        .processes
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .remove(&pid);
    // What the process left behind in its group goes with it.
    kill_group(pid, Signal::SIGKILL);
    Exit::Ended(terminated(status, started))
}

fn c_grace(ctx: &PodCtx) -> u64 {
    ctx.pod
        .spec
        .as_ref()
        .and_then(|s| s.termination_grace_period_seconds)
        .unwrap_or(30)
        .max(0) as u64
}

fn terminated(status: Option<std::process::ExitStatus>, started: SystemTime) -> Terminated {
    use std::os::unix::process::ExitStatusExt;
    let (code, signal) = match status {
        Some(s) => match (s.code(), s.signal()) {
            (Some(c), _) => (c, None),
            (None, Some(sig)) => (128 + sig, Some(sig)),
            (None, None) => (-1, None),
        },
        None => (137, Some(9)),
    };
    Terminated {
        code,
        signal,
        reason: if code == 0 {
            "Completed".into()
        } else {
            "Error".into()
        },
        started,
        finished: SystemTime::now(),
    }
}

/// SIGTERM to the container's process group, SIGKILL after `grace`.
async fn terminate(
    child: &mut tokio::process::Child,
    pid: u32,
    grace: Duration,
) -> Option<std::process::ExitStatus> {
    kill_group(pid, Signal::SIGTERM);
    match tokio::time::timeout(grace, child.wait()).await {
        Ok(status) => {
            kill_group(pid, Signal::SIGKILL); // what the process left behind in its group
            status.ok()
        }
        Err(_) => {
            kill_group(pid, Signal::SIGKILL);
            child.wait().await.ok()
        }
    }
}

// === Probes and hooks ===

/// Runs `probe` at its period: `on_result` with each success/failure transition,
/// `on_failed` once `failureThreshold` consecutive failures are seen (liveness).
async fn probe_loop(
    ctx: &PodCtx,
    c: &Container,
    probe: &Probe,
    mut on_result: impl FnMut(bool),
    mut on_failed: impl FnMut(),
) {
    let secs = |v: Option<i32>, d: i32| Duration::from_secs(v.unwrap_or(d).max(0) as u64);
    let initial = secs(probe.initial_delay_seconds, 0).min(ctx.shared.opts.max_probe_period * 4);
    let period = secs(probe.period_seconds, 10).min(ctx.shared.opts.max_probe_period);
    let timeout = secs(probe.timeout_seconds, 1).max(Duration::from_millis(200));
    let failure_threshold = probe.failure_threshold.unwrap_or(3).max(1) as u32;
    let success_threshold = probe.success_threshold.unwrap_or(1).max(1) as u32;
    tokio::time::sleep(initial).await;
    let (mut ok_run, mut fail_run, mut current): (u32, u32, Option<bool>) = (0, 0, None);
    loop {
        let ok = tokio::time::timeout(timeout, probe_once(ctx, c, probe))
            .await
            .unwrap_or(false);
        if ok {
            ok_run += 1;
            fail_run = 0;
            if ok_run >= success_threshold && current != Some(true) {
                current = Some(true);
                on_result(true);
            }
        } else {
            fail_run += 1;
            ok_run = 0;
            if fail_run >= failure_threshold {
                if current != Some(false) {
                    current = Some(false);
                    on_result(false);
                }
                on_failed();
            }
        }
        tokio::time::sleep(period).await;
    }
}

fn resolve_port(c: &Container, port: &IntOrString) -> Option<u16> {
    match port {
        IntOrString::Int(p) => u16::try_from(*p).ok(),
        IntOrString::String(name) => c
            .ports
            .iter()
            .flatten()
            .find(|p: &&ContainerPort| p.name.as_deref() == Some(name))
            .map(|p| p.container_port as u16),
    }
}

async fn probe_once(ctx: &PodCtx, c: &Container, probe: &Probe) -> bool {
    if let Some(h) = &probe.http_get {
        let Some(port) = resolve_port(c, &h.port) else {
            return false;
        };
        let host = h.host.clone().unwrap_or_else(|| ctx.ip.to_string());
        let headers: Vec<(String, String)> = h
            .http_headers
            .iter()
            .flatten()
            .map(|x| (x.name.clone(), x.value.clone()))
            .collect();
        return matches!(
            http_get(&host, port, h.path.as_deref().unwrap_or("/"), &headers).await,
            Ok(code) if (200..400).contains(&code)
        );
    }
    if let Some(t) = &probe.tcp_socket {
        let Some(port) = resolve_port(c, &t.port) else {
            return false;
        };
        let host = t.host.clone().unwrap_or_else(|| ctx.ip.to_string());
        return tokio::net::TcpStream::connect((host.as_str(), port))
            .await
            .is_ok();
    }
    if let Some(e) = &probe.exec {
        return run_exec(e.command.as_deref().unwrap_or_default()).await;
    }
    false
}

async fn pre_stop(ctx: &PodCtx, c: &Container, handler: &LifecycleHandler) {
    if let Some(h) = &handler.http_get {
        if let Some(port) = resolve_port(c, &h.port) {
            let host = h.host.clone().unwrap_or_else(|| ctx.ip.to_string());
            let _ = http_get(&host, port, h.path.as_deref().unwrap_or("/"), &[]).await;
        }
    } else if let Some(s) = &handler.sleep {
        tokio::time::sleep(Duration::from_secs(s.seconds.max(0) as u64)).await;
    } else if let Some(e) = &handler.exec {
        run_exec(e.command.as_deref().unwrap_or_default()).await;
    }
}

/// An exec probe or hook: the command runs as a local process (the container's filesystem
/// is this machine's).
async fn run_exec(argv: &[String]) -> bool {
    let Some((program, args)) = argv.split_first() else {
        return false;
    };
    tokio::process::Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .status()
        .await
        .is_ok_and(|s| s.success())
}

/// A plain HTTP/1.1 GET; the status code.
async fn http_get(
    host: &str,
    port: u16,
    path: &str,
    headers: &[(String, String)],
) -> anyhow::Result<u16> {
    use http_body_util::Empty;
    let stream = tokio::net::TcpStream::connect((host, port)).await?;
    let (mut send, conn) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream)).await?;
    tokio::spawn(conn);
    let mut req = http::Request::get(path).header("host", format!("{host}:{port}"));
    for (k, v) in headers {
        req = req.header(k, v);
    }
    let resp = send
        .send_request(req.body(Empty::<bytes::Bytes>::new())?)
        .await
        .context("probe request")?;
    let code = resp.status().as_u16();
    if code == 0 {
        bail!("no status");
    }
    Ok(code)
}
