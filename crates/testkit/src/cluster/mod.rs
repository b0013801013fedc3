//! A real Kubernetes control plane for tests: etcd, kube-apiserver and kube-controller-manager,
//! built from the Kubernetes sources by `deployment/testenv/build.sh`, started on fresh ports
//! with fresh certificates and a token, stopped on drop.
//!
//! The API server listens on [`API_SERVER_IP`](crate::netns::API_SERVER_IP), so a cluster runs
//! inside a network namespace made by [`netns::run`](crate::netns::run) (or by `cargo xtask
//! cluster up`), where pods get addresses of `10.244.0.0/24` that EndpointSlices accept. The
//! controller manager runs the controllers a workload of StatefulSets, Deployments and Services
//! needs (statefulset, deployment, replicaset, endpointslice, garbage collector, namespace,
//! service account); there is no scheduler and no kubelet: [`TestKubelet`](crate::kubelet::TestKubelet)
//! binds pods to its node and runs them.

pub mod pki;

use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use kube::config::{KubeConfigOptions, Kubeconfig};

use crate::netns::API_SERVER_IP;

/// Environment variable naming the directory of the control plane binaries (etcd,
/// kube-apiserver, kube-controller-manager, kubectl); set, the build step is skipped.
pub const BIN_ENV: &str = "MCP_GATEWAY_TESTENV_BIN";

/// The directory of the control plane binaries: [`BIN_ENV`], or what
/// `deployment/testenv/build.sh` builds (once, then reused from `<target>/testenv`).
pub fn binaries() -> PathBuf {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        if let Some(dir) = std::env::var_os(BIN_ENV) {
            return PathBuf::from(dir);
        }
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
        let script = root.join("deployment/testenv/build.sh");
        let mut cmd = Command::new("bash");
        cmd.arg(&script).stderr(Stdio::inherit());
        if let Some(target) = target_dir() {
            cmd.env("CARGO_TARGET_DIR", target);
        }
        let out = cmd
            .output()
            .unwrap_or_else(|e| panic!("cannot run {}: {e}", script.display()));
        assert!(
            out.status.success(),
            "{} failed ({}): the Kubernetes tests need Go >= 1.26 and the Go module proxy",
            script.display(),
            out.status
        );
        let stdout = String::from_utf8_lossy(&out.stdout);
        PathBuf::from(
            stdout
                .lines()
                .last()
                .expect("build.sh prints the bin dir")
                .trim(),
        )
    })
    .clone()
}

/// `<target>` of the running binary (`<target>/debug/deps/<test>`, `<target>/debug/<bin>`).
fn target_dir() -> Option<PathBuf> {
    let exe = std::env::current_exe().ok()?;
    exe.ancestors()
        .find(|d| {
            matches!(
                d.file_name().and_then(|n| n.to_str()),
                Some("debug" | "release")
            )
        })
        .and_then(Path::parent)
        .map(Path::to_path_buf)
}

/// A kubeconfig user: a bearer token or a client certificate.
#[derive(Debug, Clone)]
pub enum Credentials {
    Token(String),
    Certificate { cert: PathBuf, key: PathBuf },
}

/// A running control plane. Dropping it stops every process and removes its directory.
pub struct TestCluster {
    dir: tempfile::TempDir,
    processes: Vec<(&'static str, Child)>,
    pki: pki::Pki,
    url: String,
    admin_token: String,
    kubeconfig: PathBuf,
    client: kube::Client,
    started_in: Duration,
}

impl TestCluster {
    /// Starts etcd, the API server and the controller manager and waits until the API server
    /// is ready. Must run inside a test network namespace ([`netns::run`](crate::netns::run)).
    pub async fn start() -> anyhow::Result<Self> {
        let t0 = Instant::now();
        if TcpListener::bind((API_SERVER_IP, 0)).is_err() {
            bail!(
                "{API_SERVER_IP} is not a local address: run the test through \
                 mcp_gateway_testkit::netns::run (a network namespace with 10.244.0.0/24 on lo)"
            );
        }
        let bin = binaries();
        let dir = tempfile::Builder::new().prefix("mcp-testenv-").tempdir()?;
        let d = dir.path();
        std::fs::create_dir_all(d.join("pki"))?;
        std::fs::create_dir_all(d.join("logs"))?;

        // --- certificates and the admin token ---
        let pki = pki::Pki::new()?;
        write(d.join("pki/ca.crt"), &pki.ca.cert)?;
        let serving = pki.server(
            &[
                "localhost",
                "kubernetes",
                "kubernetes.default",
                "kubernetes.default.svc",
                "kubernetes.default.svc.cluster.local",
            ],
            &[
                IpAddr::V4(API_SERVER_IP),
                IpAddr::V4(Ipv4Addr::LOCALHOST),
                IpAddr::V4(Ipv4Addr::new(10, 96, 0, 1)),
            ],
        )?;
        write(d.join("pki/apiserver.crt"), &serving.cert)?;
        write(d.join("pki/apiserver.key"), &serving.key)?;
        let (sa_key, sa_pub) = pki::signing_key()?;
        write(d.join("pki/sa.key"), &sa_key)?;
        write(d.join("pki/sa.pub"), &sa_pub)?;
        let admin_token = random_hex(16);
        write(
            d.join("pki/tokens.csv"),
            &format!("{admin_token},admin,admin,\"system:masters\"\n"),
        )?;

        // --- etcd ---
        let etcd_client = free_port(Ipv4Addr::LOCALHOST)?;
        let etcd_peer = free_port(Ipv4Addr::LOCALHOST)?;
        let mut processes = Vec::new();
        let etcd_url = format!("http://127.0.0.1:{etcd_client}");
        let peer_url = format!("http://127.0.0.1:{etcd_peer}");
        processes.push((
            "etcd",
            spawn(
                Command::new(bin.join("etcd")).args([
                    "--name=test",
                    &format!("--data-dir={}", d.join("etcd").display()),
                    &format!("--listen-client-urls={etcd_url}"),
                    &format!("--advertise-client-urls={etcd_url}"),
                    &format!("--listen-peer-urls={peer_url}"),
                    &format!("--initial-advertise-peer-urls={peer_url}"),
                    &format!("--initial-cluster=test={peer_url}"),
                    "--unsafe-no-fsync=true",
                    "--log-level=warn",
                ]),
                &d.join("logs/etcd.log"),
            )?,
        ));

        // --- kube-apiserver ---
        let port = free_port(API_SERVER_IP)?;
        let url = format!("https://{API_SERVER_IP}:{port}");
        let pki_dir = d.join("pki");
        let p = |f: &str| pki_dir.join(f).display().to_string();
        processes.push((
            "kube-apiserver",
            spawn(
                Command::new(bin.join("kube-apiserver")).args([
                    format!("--etcd-servers={etcd_url}"),
                    format!("--bind-address={API_SERVER_IP}"),
                    format!("--advertise-address={API_SERVER_IP}"),
                    format!("--secure-port={port}"),
                    format!("--cert-dir={}", d.join("pki/generated").display()),
                    format!("--tls-cert-file={}", p("apiserver.crt")),
                    format!("--tls-private-key-file={}", p("apiserver.key")),
                    format!("--client-ca-file={}", p("ca.crt")),
                    format!("--token-auth-file={}", p("tokens.csv")),
                    "--authorization-mode=RBAC".into(),
                    "--service-cluster-ip-range=10.96.0.0/16".into(),
                    "--service-account-issuer=https://kubernetes.default.svc.cluster.local".into(),
                    format!("--service-account-key-file={}", p("sa.pub")),
                    format!("--service-account-signing-key-file={}", p("sa.key")),
                    // As envtest: pods need no service-account token volume.
                    "--disable-admission-plugins=ServiceAccount".into(),
                    "--allow-privileged=true".into(),
                    // The apiserver would otherwise write its own address into the
                    // `kubernetes` Service's endpoints and keep a lease for it.
                    "--endpoint-reconciler-type=none".into(),
                    "--kubelet-preferred-address-types=InternalIP".into(),
                    "--enable-priority-and-fairness=false".into(),
                    "--profiling=false".into(),
                    "--v=0".into(),
                ]),
                &d.join("logs/kube-apiserver.log"),
            )?,
        ));

        let kubeconfig = d.join("admin.kubeconfig");
        write_kubeconfig(
            &kubeconfig,
            &url,
            &d.join("pki/ca.crt"),
            &Credentials::Token(admin_token.clone()),
        )?;
        let config = kube::Config::from_custom_kubeconfig(
            Kubeconfig::read_from(&kubeconfig)?,
            &KubeConfigOptions::default(),
        )
        .await
        .context("load the admin kubeconfig")?;
        let client = kube::Client::try_from(config)?;
        let mut cluster = Self {
            dir,
            processes,
            pki,
            url,
            admin_token,
            kubeconfig,
            client,
            started_in: Duration::ZERO,
        };
        cluster.wait_ready(Duration::from_secs(90)).await?;

        // --- kube-controller-manager ---
        let kcm_port = free_port(Ipv4Addr::LOCALHOST)?;
        let d = cluster.dir.path().to_path_buf();
        let kcm = spawn(
            Command::new(bin.join("kube-controller-manager")).args([
                format!("--kubeconfig={}", cluster.kubeconfig.display()),
                "--leader-elect=false".into(),
                "--controllers=statefulset-controller,deployment-controller,\
                 replicaset-controller,endpointslice-controller,garbage-collector-controller,\
                 namespace-controller,serviceaccount-controller,disruption-controller,\
                 root-ca-certificate-publisher-controller"
                    .into(),
                // The kube-root-ca.crt ConfigMap of every namespace (pods' in-cluster CA).
                format!("--root-ca-file={}", cluster.ca_file().display()),
                "--bind-address=127.0.0.1".into(),
                format!("--secure-port={kcm_port}"),
                "--use-service-account-credentials=false".into(),
                // Prompt reactions: the defaults (5 s between namespace syncs...) slow tests.
                "--concurrent-statefulset-syncs=5".into(),
                "--v=0".into(),
            ]),
            &d.join("logs/kube-controller-manager.log"),
        )?;
        cluster.processes.push(("kube-controller-manager", kcm));
        cluster.started_in = t0.elapsed();
        Ok(cluster)
    }

    async fn wait_ready(&mut self, within: Duration) -> anyhow::Result<()> {
        let deadline = Instant::now() + within;
        let mut last;
        loop {
            for (name, child) in &mut self.processes {
                if let Some(status) = child.try_wait()? {
                    bail!(
                        "{name} exited ({status}) during start:\n{}",
                        tail_of(&self.dir.path().join(format!("logs/{name}.log")), 30)
                    );
                }
            }
            let req = http::Request::get("/readyz").body(Vec::new())?;
            match self.client.request_text(req).await {
                Ok(body) if body.trim() == "ok" => return Ok(()),
                Ok(body) => last = body,
                Err(e) => last = e.to_string(),
            }
            if Instant::now() > deadline {
                bail!(
                    "kube-apiserver not ready within {within:?}: {last}\n{}",
                    tail_of(&self.dir.path().join("logs/kube-apiserver.log"), 30)
                );
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// A client with the admin token (group `system:masters`).
    pub fn client(&self) -> kube::Client {
        self.client.clone()
    }

    /// The API server's URL (`https://10.244.0.1:PORT`).
    pub fn url(&self) -> &str {
        &self.url
    }

    /// The admin kubeconfig file, for `kubectl --kubeconfig` and `KUBECONFIG`.
    pub fn kubeconfig(&self) -> &Path {
        &self.kubeconfig
    }

    /// The CA that signed the API server's certificate.
    pub fn ca_file(&self) -> PathBuf {
        self.dir.path().join("pki/ca.crt")
    }

    /// The admin bearer token.
    pub fn admin_token(&self) -> &str {
        &self.admin_token
    }

    /// A kubeconfig for `user` in `groups` (a client certificate signed by the cluster's CA),
    /// so a test can check what a least-privilege identity may do.
    pub fn kubeconfig_for(&self, user: &str, groups: &[&str]) -> anyhow::Result<PathBuf> {
        let pem = self.pki.client(user, groups)?;
        let base = self.dir.path().join(format!("users/{user}"));
        std::fs::create_dir_all(&base)?;
        let (cert, key) = (base.join("client.crt"), base.join("client.key"));
        write(&cert, &pem.cert)?;
        write(&key, &pem.key)?;
        let path = base.join("kubeconfig");
        write_kubeconfig(
            &path,
            &self.url,
            &self.ca_file(),
            &Credentials::Certificate { cert, key },
        )?;
        Ok(path)
    }

    /// A client from [`kubeconfig_for`](Self::kubeconfig_for).
    pub async fn client_for(&self, user: &str, groups: &[&str]) -> anyhow::Result<kube::Client> {
        let path = self.kubeconfig_for(user, groups)?;
        let config = kube::Config::from_custom_kubeconfig(
            Kubeconfig::read_from(&path)?,
            &KubeConfigOptions::default(),
        )
        .await?;
        Ok(kube::Client::try_from(config)?)
    }

    /// `kubectl` of the same version, with the admin kubeconfig.
    pub fn kubectl(&self) -> Command {
        let mut cmd = Command::new(binaries().join("kubectl"));
        cmd.arg("--kubeconfig").arg(&self.kubeconfig);
        cmd
    }

    /// Runs `kubectl ARGS` and returns its standard output; fails with its standard error.
    pub fn kubectl_ok(&self, args: &[&str]) -> anyhow::Result<String> {
        let out = self.kubectl().args(args).stdin(Stdio::null()).output()?;
        if !out.status.success() {
            bail!(
                "kubectl {} failed ({}): {}",
                args.join(" "),
                out.status,
                String::from_utf8_lossy(&out.stderr)
            );
        }
        Ok(String::from_utf8(out.stdout)?)
    }

    /// How long [`start`](Self::start) took until the controller manager was launched.
    pub fn started_in(&self) -> Duration {
        self.started_in
    }

    /// The directory holding certificates, data and the components' logs (`logs/*.log`).
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// The last `n` lines a component (`etcd`, `kube-apiserver`, `kube-controller-manager`)
    /// wrote, for failure messages.
    pub fn log_tail(&self, component: &str, n: usize) -> String {
        tail_of(&self.dir.path().join(format!("logs/{component}.log")), n)
    }

    /// Process ids of the control plane's processes.
    pub fn pids(&self) -> Vec<(&'static str, u32)> {
        self.processes.iter().map(|(n, c)| (*n, c.id())).collect()
    }
}

impl Drop for TestCluster {
    fn drop(&mut self) {
        // The controller manager first, etcd last, so nothing logs a lost dependency for long.
        for (_, child) in self.processes.iter_mut().rev() {
            stop(child, Duration::from_secs(5));
        }
        if std::env::var_os("MCP_GATEWAY_KEEP_TESTENV").is_some() {
            let kept = std::mem::replace(
                &mut self.dir,
                tempfile::Builder::new()
                    .tempdir()
                    .expect("a tempdir for the swap"),
            );
            eprintln!("test cluster kept in {}", kept.keep().display());
        }
    }
}

/// SIGTERM, then SIGKILL after `grace`.
pub(crate) fn stop(child: &mut Child, grace: Duration) {
    use nix::sys::signal::{Signal, kill};
    use nix::unistd::Pid;
    if matches!(child.try_wait(), Ok(Some(_))) {
        return;
    }
    let pid = Pid::from_raw(child.id() as i32);
    let _ = kill(pid, Signal::SIGTERM);
    let deadline = Instant::now() + grace;
    while Instant::now() < deadline {
        if matches!(child.try_wait(), Ok(Some(_))) {
            return;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let _ = child.kill();
    let _ = child.wait();
}

fn spawn(cmd: &mut Command, log: &Path) -> anyhow::Result<Child> {
    let file = std::fs::File::create(log)?;
    let program = cmd.get_program().to_owned();
    cmd.stdin(Stdio::null())
        .stdout(file.try_clone()?)
        .stderr(file)
        .spawn()
        .with_context(|| format!("start {}", Path::new(&program).display()))
}

/// Writes a kubeconfig (JSON, which every kubeconfig reader accepts as YAML).
pub fn write_kubeconfig(
    path: &Path,
    server: &str,
    ca: &Path,
    credentials: &Credentials,
) -> anyhow::Result<()> {
    let user = match credentials {
        Credentials::Token(token) => serde_json::json!({ "token": token }),
        Credentials::Certificate { cert, key } => serde_json::json!({
            "client-certificate": cert, "client-key": key,
        }),
    };
    let config = serde_json::json!({
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{ "name": "test", "cluster": {
            "server": server, "certificate-authority": ca,
        }}],
        "users": [{ "name": "test", "user": user }],
        "contexts": [{ "name": "test", "context": { "cluster": "test", "user": "test", "namespace": "default" }}],
        "current-context": "test",
    });
    write(path, &serde_json::to_string_pretty(&config)?)
}

fn write(path: impl AsRef<Path>, contents: &str) -> anyhow::Result<()> {
    use std::os::unix::fs::OpenOptionsExt;
    let path = path.as_ref();
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
        .with_context(|| format!("write {}", path.display()))?;
    std::io::Write::write_all(&mut f, contents.as_bytes())?;
    Ok(())
}

/// A port free on `ip` right now (bound, then released).
pub fn free_port(ip: Ipv4Addr) -> anyhow::Result<u16> {
    Ok(TcpListener::bind(SocketAddr::from((ip, 0)))?
        .local_addr()?
        .port())
}

pub(crate) fn random_hex(bytes: usize) -> String {
    let mut buf = vec![0u8; bytes];
    getrandom::fill(&mut buf).expect("getrandom");
    buf.iter().map(|b| format!("{b:02x}")).collect()
}

fn tail_of(path: &Path, n: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}
