//! Pod sandboxes ([`KubeletOptions::sandboxes`](super::KubeletOptions)): what a container
//! runtime and a CNI plugin give a pod on a small real node, made of Linux namespaces and the
//! `ip`, `nsenter`, `unshare`, `mount` and `chroot` commands, so pods of unmodified manifests
//! (listening on `0.0.0.0`, reading files at absolute paths) run here as they would there.
//!
//! - **Network**: each pod has a network namespace of its own, held by a pause process
//!   (`unshare --net sleep infinity`), joined to the node by a veth pair: `eth0` in the pod
//!   with the pod's address (`10.244.1.N/32`), a default route via the node (`10.244.0.254`);
//!   on the node side `vpN` and a host route to the pod, with forwarding on, so pods reach
//!   each other, the API server and the node, and the test reaches the pods.
//! - **Files**: each container starts in a mount namespace of its own, chrooted into a root
//!   made of the machine's top-level directories (bind mounts; the images are this machine's
//!   programs) and the pod's volumes mounted at their `mountPath`s (`readOnly` honoured). A
//!   mount path whose directory does not exist gets an overlay on its nearest existing
//!   ancestor, so nothing is created on the machine itself.
//! - **Volumes**: `emptyDir`, `configMap`, `secret`, `downwardAPI` and `projected` (its
//!   `serviceAccountToken` from the TokenRequest API, bound to the pod), written once when the
//!   container starts. Unless `automountServiceAccountToken` is false, the service account's
//!   token, `ca.crt` (the `kube-root-ca.crt` ConfigMap) and `namespace` are mounted at
//!   `/var/run/secrets/kubernetes.io/serviceaccount`, as the ServiceAccount admission plugin
//!   and the real kubelet do together (the test API server runs without that plugin).
//! - **Names**: `/etc/hosts` of each container is the pod's own file, rewritten every second
//!   from the namespace's Services and EndpointSlices: `<svc>`, `<svc>.<ns>`,
//!   `<svc>.<ns>.svc` and `<svc>.<ns>.svc.cluster.local` resolve to a ready endpoint of the
//!   Service (there is no kube-proxy: a ClusterIP Service's name resolves to one of its pods,
//!   not to its ClusterIP), `kubernetes.default.svc` to the API server.

use std::collections::{BTreeMap, HashMap};
use std::fmt::Write as _;
use std::net::{Ipv4Addr, SocketAddr};
use std::os::unix::fs::PermissionsExt as _;
use std::path::{Component, Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, bail};
use k8s_openapi::api::core::v1::{
    ConfigMap, Container, DownwardAPIVolumeFile, KeyToPath, Pod, Secret, Service, ServiceAccount,
    Volume,
};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::api::{Api, ListParams, PostParams};
use tokio::task::JoinHandle;

/// Where the pods' sandbox addresses are: `10.244.1.10` and up (outside the node's local
/// `10.244.0.0/24`, so they are routed to the pods' veths).
pub(crate) const SANDBOX_PREFIX: [u8; 3] = [10, 244, 1];

/// The standard service-account mount.
pub(crate) const SERVICE_ACCOUNT_DIR: &str = "/var/run/secrets/kubernetes.io/serviceaccount";

/// A pod's network namespace, its files and its hosts file.
pub(crate) struct Sandbox {
    pause: tokio::process::Child,
    pause_pid: u32,
    dir: PathBuf,
    hosts: JoinHandle<()>,
}

impl Drop for Sandbox {
    fn drop(&mut self) {
        self.hosts.abort();
        let _ = self.pause.start_kill();
        // The veth goes with the namespace; the pod's files with the kubelet's directory.
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

async fn sh(what: &str, cmd: &mut tokio::process::Command) -> anyhow::Result<()> {
    let out = cmd
        .stdin(std::process::Stdio::null())
        .output()
        .await
        .with_context(|| format!("{what}: cannot run {cmd:?}"))?;
    if !out.status.success() {
        bail!(
            "{what}: {cmd:?} failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

fn cmd(program: &str, args: &[&str]) -> tokio::process::Command {
    let mut c = tokio::process::Command::new(program);
    c.args(args);
    c
}

impl Sandbox {
    /// Makes the pod's network namespace (pause process, veth, addresses, routes) and its
    /// directory, and starts its hosts file.
    pub(crate) async fn create(
        shared: &super::Shared,
        uid: &str,
        namespace: &str,
        hostname: &str,
        ip: Ipv4Addr,
    ) -> anyhow::Result<Self> {
        let client = shared.client.clone();
        let base = shared
            .sandbox_dir
            .as_ref()
            .context("sandboxes are off")?
            .path();
        let (node_ip, api_server) = (shared.opts.node_ip, shared.opts.api_server);
        let dir = base.join(uid);
        std::fs::create_dir_all(&dir)?;
        // Forwarding between the pods' veths (this network namespace's own setting).
        std::fs::write("/proc/sys/net/ipv4/ip_forward", "1")
            .context("enable forwarding for the pod network")?;
        let own_netns = std::fs::read_link("/proc/self/ns/net")?;
        let mut pause = tokio::process::Command::new("unshare")
            .args(["--net", "sleep", "infinity"])
            .stdin(std::process::Stdio::null())
            .process_group(0)
            .kill_on_drop(true)
            .spawn()
            .context("start the pod's pause process (unshare --net sleep infinity)")?;
        let pid = pause.id().context("pause pid")?;
        // Until unshare has made the namespace (then it execs sleep).
        let netns = format!("/proc/{pid}/ns/net");
        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        while std::fs::read_link(&netns).ok().as_ref() == Some(&own_netns)
            || std::fs::read_link(&netns).is_err()
        {
            if tokio::time::Instant::now() > deadline {
                let _ = pause.start_kill();
                bail!("the pause process made no network namespace");
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let veth = format!("vp{}", ip.octets()[3]);
        let ip_s = ip.to_string();
        let node = node_ip.to_string();
        let pid_s = pid.to_string();
        // A veth of an earlier pod with this address may still be there (its namespace held a
        // moment longer by a dying process).
        let _ = cmd("ip", &["link", "del", &veth])
            .stderr(std::process::Stdio::null())
            .status()
            .await;
        sh(
            "pod network",
            &mut cmd(
                "ip",
                &[
                    "link", "add", &veth, "type", "veth", "peer", "name", "eth0", "netns", &pid_s,
                ],
            ),
        )
        .await?;
        sh("pod network", &mut cmd("ip", &["link", "set", &veth, "up"])).await?;
        sh(
            "pod network",
            &mut cmd(
                "ip",
                &[
                    "route",
                    "replace",
                    &format!("{ip_s}/32"),
                    "dev",
                    &veth,
                    "src",
                    &node,
                ],
            ),
        )
        .await?;
        let inside = format!(
            "ip link set lo up && ip addr add {ip_s}/32 dev eth0 && ip link set eth0 up && \
             ip route add {node}/32 dev eth0 && ip route add default via {node} dev eth0"
        );
        sh(
            "pod network",
            &mut cmd("nsenter", &[&format!("--net={netns}"), "sh", "-c", &inside]),
        )
        .await?;
        let hosts_file = dir.join("hosts");
        let first = render_hosts(&client, namespace, hostname, ip, api_server).await;
        std::fs::write(&hosts_file, first.unwrap_or_default())?;
        let hosts = tokio::spawn(refresh_hosts(
            client,
            namespace.to_owned(),
            hostname.to_owned(),
            ip,
            api_server,
            hosts_file,
        ));
        Ok(Self {
            pause,
            pause_pid: pid,
            dir,
            hosts,
        })
    }

    /// The command that runs `program args` as `c` in this sandbox: in the pod's network
    /// namespace, in a mount namespace of its own, chrooted into a root with the pod's
    /// volumes. `volumes` are the materialized volumes by name.
    pub(crate) fn command(
        &self,
        c: &Container,
        volumes: &HashMap<String, PathBuf>,
        program: &Path,
        args: &[String],
    ) -> anyhow::Result<tokio::process::Command> {
        let script = self.mount_script(c, volumes)?;
        let mut cmd = tokio::process::Command::new("nsenter");
        cmd.arg(format!("--net=/proc/{}/ns/net", self.pause_pid))
            .args(["--", "unshare", "--mount", "--propagation", "private", "--"])
            .args(["sh", "-c", &script, "sh"])
            .arg(program)
            .args(args);
        Ok(cmd)
    }

    /// The shell script that builds the container's root and execs the program (`"$@"`).
    fn mount_script(
        &self,
        c: &Container,
        volumes: &HashMap<String, PathBuf>,
    ) -> anyhow::Result<String> {
        let root = self.dir.join("rootfs").join(&c.name);
        let overlays = self.dir.join("overlay").join(&c.name);
        // A fresh root each start (an overlay's upper dir keeps nothing across restarts).
        let _ = std::fs::remove_dir_all(&overlays);
        std::fs::create_dir_all(&root)?;
        std::fs::create_dir_all(&overlays)?;
        let q = |p: &Path| shell_quote(&p.display().to_string());
        let r = q(&root);
        let mut s = String::from("set -e\n");
        writeln!(s, "mount -t tmpfs -o mode=0755 tmpfs {r}")?;
        // The machine's top level: directories bound, symbolic links copied.
        let mut entries: Vec<_> = std::fs::read_dir("/")?.flatten().collect();
        entries.sort_by_key(|e| e.file_name());
        for e in entries {
            let name = e.file_name().to_string_lossy().into_owned();
            let host = Path::new("/").join(&name);
            let inside = q(&root.join(&name));
            let Ok(meta) = std::fs::symlink_metadata(&host) else {
                continue;
            };
            if meta.file_type().is_symlink() {
                let target = std::fs::read_link(&host)?;
                writeln!(s, "ln -s {} {inside}", q(&target))?;
            } else if meta.is_dir() {
                writeln!(s, "mkdir {inside} && mount --rbind {} {inside}", q(&host))?;
            }
        }
        let mut mounts: Vec<(PathBuf, PathBuf, bool)> = Vec::new();
        for m in c.volume_mounts.iter().flatten() {
            let Some(src) = volumes.get(&m.name) else {
                bail!(
                    "volumeMount {}: no volume {} in the pod",
                    m.mount_path,
                    m.name
                );
            };
            let src = match m.sub_path.as_deref().filter(|p| !p.is_empty()) {
                Some(sub) => src.join(sub),
                None => src.clone(),
            };
            mounts.push((
                resolve(Path::new(&m.mount_path))?,
                src,
                m.read_only.unwrap_or(false),
            ));
        }
        mounts.push((PathBuf::from("/etc/hosts"), self.dir.join("hosts"), true));
        // Parents before children.
        mounts.sort_by_key(|(p, _, _)| p.components().count());
        // First the overlays (a bind mount made before an overlay on its parent would be
        // hidden by it), then the mounts, parents first.
        let mut overlaid: Vec<PathBuf> = Vec::new();
        for (path, _, _) in &mounts {
            let ancestor = existing_ancestor(path);
            if ancestor != *path && ancestor != Path::new("/") && !overlaid.contains(&ancestor) {
                // The directory to mount on does not exist: an overlay on its nearest existing
                // ancestor makes it, in this container's view only.
                let n = overlaid.len();
                let upper = overlays.join(format!("{n}/upper"));
                let work = overlays.join(format!("{n}/work"));
                std::fs::create_dir_all(&upper)?;
                std::fs::create_dir_all(&work)?;
                let target = root.join(ancestor.strip_prefix("/")?);
                writeln!(
                    s,
                    "mount -t overlay overlay -o {} {}",
                    shell_quote(&format!(
                        "lowerdir={},upperdir={},workdir={}",
                        target.display(),
                        upper.display(),
                        work.display()
                    )),
                    q(&target)
                )?;
                overlaid.push(ancestor);
            }
        }
        for (path, src, read_only) in &mounts {
            let target = root.join(path.strip_prefix("/")?);
            if src.is_dir() {
                writeln!(s, "mkdir -p {}", q(&target))?;
            } else {
                writeln!(s, "mkdir -p {}", q(target.parent().context("a parent")?))?;
                writeln!(s, "[ -e {t} ] || : > {t}", t = q(&target))?;
            }
            writeln!(s, "mount --bind {} {}", q(src), q(&target))?;
            if *read_only {
                writeln!(s, "mount -o remount,bind,ro {}", q(&target))?;
            }
        }
        writeln!(s, "exec chroot {r} \"$@\"")?;
        Ok(s)
    }
}

/// `path` with symbolic links of this machine resolved as inside the container's root (whose
/// directories are this machine's): `/var/run/x` becomes `/run/x`. Components that do not
/// exist are kept.
fn resolve(path: &Path) -> anyhow::Result<PathBuf> {
    if !path.is_absolute() {
        bail!("mountPath {} must be absolute", path.display());
    }
    // A stack of the components still to walk, the next on top.
    fn components(p: &Path) -> Vec<std::ffi::OsString> {
        p.components()
            .filter_map(|c| match c {
                Component::Normal(n) => Some(n.to_os_string()),
                Component::ParentDir => Some("..".into()),
                _ => None,
            })
            .rev()
            .collect()
    }
    let mut out = PathBuf::from("/");
    let mut rest = components(path);
    let mut links = 0;
    while let Some(c) = rest.pop() {
        if c == ".." {
            out.pop();
            continue;
        }
        let next = out.join(&c);
        match std::fs::read_link(&next) {
            Ok(target) => {
                links += 1;
                if links > 20 {
                    bail!("too many symbolic links in {}", path.display());
                }
                if target.is_absolute() {
                    out = PathBuf::from("/");
                }
                rest.extend(components(&target));
            }
            Err(_) => out = next,
        }
    }
    Ok(out)
}

fn existing_ancestor(path: &Path) -> PathBuf {
    let mut p = path.to_path_buf();
    while !p.exists() {
        if !p.pop() {
            return PathBuf::from("/");
        }
    }
    p
}

fn shell_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', r"'\''"))
}

// === volumes ===

/// Writes the pod's volumes under `dir/volumes/<name>` and returns where each is. The
/// service-account volume (when automounted) is `kube-api-access`, mounted by
/// [`service_account_mount`].
pub(crate) async fn materialize(
    client: &kube::Client,
    dir: &Path,
    pod: &Pod,
) -> Result<HashMap<String, PathBuf>, String> {
    let ns = pod.metadata.namespace.clone().unwrap_or_default();
    let spec = pod.spec.clone().unwrap_or_default();
    let base = dir.join("volumes");
    let mut out = HashMap::new();
    for v in spec.volumes.iter().flatten() {
        // Written again at each container start; an emptyDir keeps its files across restarts.
        let path = base.join(&v.name);
        std::fs::create_dir_all(&path).map_err(|e| e.to_string())?;
        volume(client, &ns, pod, v, &path).await?;
        out.insert(v.name.clone(), path);
    }
    if automounts_token(pod) {
        let path = base.join("kube-api-access");
        std::fs::create_dir_all(&path).map_err(|e| e.to_string())?;
        let sa = spec
            .service_account_name
            .clone()
            .unwrap_or_else(|| "default".into());
        let token = token(client, &ns, &sa, pod, None, 3607).await?;
        write_file(&path.join("token"), &token, 0o644)?;
        let ca = config_map(client, &ns, "kube-root-ca.crt")
            .await?
            .and_then(|d| d.get("ca.crt").cloned())
            .ok_or("configmap \"kube-root-ca.crt\" not found (the root-ca-cert-publisher controller makes it)")?;
        write_file(&path.join("ca.crt"), ca.as_bytes(), 0o644)?;
        write_file(&path.join("namespace"), ns.as_bytes(), 0o644)?;
        out.insert("kube-api-access".into(), path);
    }
    Ok(out)
}

/// Whether the pod gets the service-account token mounted.
pub(crate) fn automounts_token(pod: &Pod) -> bool {
    let spec = pod.spec.as_ref();
    spec.and_then(|s| s.automount_service_account_token) != Some(false)
        && !spec.into_iter().flat_map(|s| &s.containers).any(|c| {
            c.volume_mounts
                .iter()
                .flatten()
                .any(|m| m.mount_path.trim_end_matches('/') == SERVICE_ACCOUNT_DIR)
        })
}

/// The mount of the automounted service-account volume.
pub(crate) fn service_account_mount() -> k8s_openapi::api::core::v1::VolumeMount {
    k8s_openapi::api::core::v1::VolumeMount {
        name: "kube-api-access".into(),
        mount_path: SERVICE_ACCOUNT_DIR.into(),
        read_only: Some(true),
        ..Default::default()
    }
}

fn write_file(path: &Path, data: &[u8], mode: u32) -> Result<(), String> {
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent).map_err(|e| e.to_string())?;
    }
    std::fs::write(path, data).map_err(|e| format!("{}: {e}", path.display()))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).map_err(|e| e.to_string())
}

/// A key → path mapping's files: every key, or the listed items.
fn write_keys(
    dir: &Path,
    data: &BTreeMap<String, Vec<u8>>,
    items: Option<&Vec<KeyToPath>>,
    default_mode: u32,
    what: &str,
) -> Result<(), String> {
    match items {
        None => {
            for (k, v) in data {
                write_file(&dir.join(k), v, default_mode)?;
            }
        }
        Some(items) => {
            for i in items {
                let v = data
                    .get(&i.key)
                    .ok_or_else(|| format!("couldn't find key {} in {what}", i.key))?;
                let mode = i.mode.map_or(default_mode, |m| m as u32);
                write_file(&dir.join(&i.path), v, mode)?;
            }
        }
    }
    Ok(())
}

async fn volume(
    client: &kube::Client,
    ns: &str,
    pod: &Pod,
    v: &Volume,
    path: &Path,
) -> Result<(), String> {
    let mode = |m: Option<i32>| m.map_or(0o644, |m| m as u32);
    if v.empty_dir.is_some() {
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o777))
            .map_err(|e| e.to_string())?;
        return Ok(());
    }
    if let Some(cm) = &v.config_map {
        return config_map_files(
            client,
            ns,
            &cm.name,
            cm.items.as_ref(),
            mode(cm.default_mode),
            cm.optional,
            path,
        )
        .await;
    }
    if let Some(s) = &v.secret {
        let name = s.secret_name.clone().unwrap_or_default();
        return secret_files(
            client,
            ns,
            &name,
            s.items.as_ref(),
            mode(s.default_mode),
            s.optional,
            path,
        )
        .await;
    }
    if let Some(d) = &v.downward_api {
        return downward_files(pod, d.items.as_ref(), mode(d.default_mode), path);
    }
    if let Some(p) = &v.projected {
        let default_mode = mode(p.default_mode);
        for src in p.sources.iter().flatten() {
            if let Some(t) = &src.service_account_token {
                let sa = pod
                    .spec
                    .as_ref()
                    .and_then(|s| s.service_account_name.clone())
                    .unwrap_or_else(|| "default".into());
                let token = token(
                    client,
                    ns,
                    &sa,
                    pod,
                    t.audience.clone(),
                    t.expiration_seconds.unwrap_or(3600),
                )
                .await?;
                write_file(&path.join(&t.path), &token, default_mode)?;
            }
            if let Some(cm) = &src.config_map {
                config_map_files(
                    client,
                    ns,
                    &cm.name,
                    cm.items.as_ref(),
                    default_mode,
                    cm.optional,
                    path,
                )
                .await?;
            }
            if let Some(s) = &src.secret {
                secret_files(
                    client,
                    ns,
                    &s.name,
                    s.items.as_ref(),
                    default_mode,
                    s.optional,
                    path,
                )
                .await?;
            }
            if let Some(d) = &src.downward_api {
                downward_files(pod, d.items.as_ref(), default_mode, path)?;
            }
        }
        return Ok(());
    }
    Err(format!(
        "volume {}: only emptyDir, configMap, secret, downwardAPI and projected volumes are supported by the test kubelet",
        v.name
    ))
}

/// A downwardAPI volume's (or projection's) files: each item's field of the pod at its path.
fn downward_files(
    pod: &Pod,
    items: Option<&Vec<DownwardAPIVolumeFile>>,
    default_mode: u32,
    dir: &Path,
) -> Result<(), String> {
    for item in items.into_iter().flatten() {
        let value = downward(pod, item.field_ref.as_ref().map(|f| f.field_path.as_str()))?;
        let mode = item.mode.map_or(default_mode, |m| m as u32);
        write_file(&dir.join(&item.path), value.as_bytes(), mode)?;
    }
    Ok(())
}

fn downward(pod: &Pod, field: Option<&str>) -> Result<String, String> {
    let meta = &pod.metadata;
    Ok(match field {
        Some("metadata.name") => meta.name.clone().unwrap_or_default(),
        Some("metadata.namespace") => meta.namespace.clone().unwrap_or_default(),
        Some("metadata.uid") => meta.uid.clone().unwrap_or_default(),
        Some("metadata.labels") => meta
            .labels
            .iter()
            .flatten()
            .map(|(k, v)| format!("{k}=\"{v}\"\n"))
            .collect(),
        Some("metadata.annotations") => meta
            .annotations
            .iter()
            .flatten()
            .map(|(k, v)| format!("{k}=\"{v}\"\n"))
            .collect(),
        other => {
            return Err(format!(
                "downwardAPI field {other:?} is not supported by the test kubelet"
            ));
        }
    })
}

async fn config_map(
    client: &kube::Client,
    ns: &str,
    name: &str,
) -> Result<Option<BTreeMap<String, String>>, String> {
    let api: Api<ConfigMap> = Api::namespaced(client.clone(), ns);
    Ok(api
        .get_opt(name)
        .await
        .map_err(|e| e.to_string())?
        .map(|m| m.data.unwrap_or_default()))
}

async fn config_map_files(
    client: &kube::Client,
    ns: &str,
    name: &str,
    items: Option<&Vec<KeyToPath>>,
    mode: u32,
    optional: Option<bool>,
    path: &Path,
) -> Result<(), String> {
    match config_map(client, ns, name).await? {
        Some(data) => {
            let data = data.into_iter().map(|(k, v)| (k, v.into_bytes())).collect();
            write_keys(path, &data, items, mode, &format!("ConfigMap {ns}/{name}"))
        }
        None if optional == Some(true) => Ok(()),
        None => Err(format!("configmap \"{name}\" not found")),
    }
}

async fn secret_files(
    client: &kube::Client,
    ns: &str,
    name: &str,
    items: Option<&Vec<KeyToPath>>,
    mode: u32,
    optional: Option<bool>,
    path: &Path,
) -> Result<(), String> {
    let api: Api<Secret> = Api::namespaced(client.clone(), ns);
    match api.get_opt(name).await.map_err(|e| e.to_string())? {
        Some(s) => {
            let mut data: BTreeMap<String, Vec<u8>> = s
                .data
                .unwrap_or_default()
                .into_iter()
                .map(|(k, v)| (k, v.0))
                .collect();
            for (k, v) in s.string_data.unwrap_or_default() {
                data.insert(k, v.into_bytes());
            }
            write_keys(path, &data, items, mode, &format!("Secret {ns}/{name}"))
        }
        None if optional == Some(true) => Ok(()),
        None => Err(format!("secret \"{name}\" not found")),
    }
}

/// A token of `sa` bound to the pod, from the TokenRequest API.
async fn token(
    client: &kube::Client,
    ns: &str,
    sa: &str,
    pod: &Pod,
    audience: Option<String>,
    expiration_seconds: i64,
) -> Result<Vec<u8>, String> {
    let api: Api<ServiceAccount> = Api::namespaced(client.clone(), ns);
    let mut request = serde_json::json!({
        "apiVersion": "authentication.k8s.io/v1", "kind": "TokenRequest",
        "spec": {
            "audiences": audience.into_iter().collect::<Vec<_>>(),
            "expirationSeconds": expiration_seconds,
        },
    });
    // Bound to the pod (the token dies with it), as the kubelet does. A pod that names no
    // service account cannot be bound to: the admission plugin that would write "default"
    // into its spec is off in the test API server.
    if pod
        .spec
        .as_ref()
        .and_then(|s| s.service_account_name.as_deref())
        == Some(sa)
    {
        request["spec"]["boundObjectRef"] = serde_json::json!({ "apiVersion": "v1", "kind": "Pod",
            "name": pod.metadata.name, "uid": pod.metadata.uid });
    }
    let reply: serde_json::Value = api
        .create_subresource("token", sa, &PostParams::default(), &request)
        .await
        .map_err(|e| format!("token of serviceaccount {ns}/{sa}: {e}"))?;
    reply["status"]["token"]
        .as_str()
        .map(|t| t.as_bytes().to_vec())
        .ok_or_else(|| format!("token of serviceaccount {ns}/{sa}: no token in {reply}"))
}

// === names ===

async fn refresh_hosts(
    client: kube::Client,
    ns: String,
    hostname: String,
    ip: Ipv4Addr,
    api_server: Option<SocketAddr>,
    file: PathBuf,
) {
    let mut last = std::fs::read_to_string(&file).unwrap_or_default();
    loop {
        tokio::time::sleep(Duration::from_secs(1)).await;
        if let Ok(hosts) = render_hosts(&client, &ns, &hostname, ip, api_server).await
            && hosts != last
        {
            // In place: the containers see this inode through their bind mounts.
            if std::fs::write(&file, &hosts).is_ok() {
                last = hosts;
            }
        }
    }
}

async fn render_hosts(
    client: &kube::Client,
    ns: &str,
    hostname: &str,
    ip: Ipv4Addr,
    api_server: Option<SocketAddr>,
) -> anyhow::Result<String> {
    let mut s = format!(
        "# Written by the test kubelet for a pod of {ns}.\n127.0.0.1\tlocalhost\n::1\tlocalhost\n{ip}\t{hostname}\n"
    );
    if let Some(api) = api_server {
        writeln!(
            s,
            "{}\tkubernetes kubernetes.default kubernetes.default.svc kubernetes.default.svc.cluster.local",
            api.ip()
        )?;
    }
    let services: Api<Service> = Api::namespaced(client.clone(), ns);
    let slices: Api<EndpointSlice> = Api::namespaced(client.clone(), ns);
    let slices = slices.list(&ListParams::default()).await?.items;
    for svc in services.list(&ListParams::default()).await?.items {
        let Some(name) = svc.metadata.name.clone() else {
            continue;
        };
        let ready = slices
            .iter()
            .filter(|sl| {
                sl.metadata
                    .labels
                    .as_ref()
                    .and_then(|l| l.get("kubernetes.io/service-name"))
                    == Some(&name)
            })
            .flat_map(|sl| sl.endpoints.iter().flatten())
            .filter(|e| e.conditions.as_ref().and_then(|c| c.ready) != Some(false))
            .find_map(|e| e.addresses.first().cloned());
        if let Some(addr) = ready {
            writeln!(
                s,
                "{addr}\t{name} {name}.{ns} {name}.{ns}.svc {name}.{ns}.svc.cluster.local"
            )?;
        }
    }
    Ok(s)
}
