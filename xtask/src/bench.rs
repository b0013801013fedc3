//! `cargo xtask bench`: throughput and latency of the gateway, measured side by side with the
//! same MCP server reached directly and through nginx.
//!
//! Nothing here asserts a number. The machine is shared and noisy, so what the benchmark reports
//! are ratios between targets measured in one run, interleaved (every target once per round, for
//! [`ROUNDS`] rounds), keeping each target's best round. See docs/benchmarks.md.

use std::fmt::Write as _;
use std::fs::File;
use std::io::{BufRead as _, BufReader, Write as _};
use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use bytes::Bytes;
use clap::Parser;
use http::header::{ACCEPT, CONTENT_TYPE};
use http::{HeaderMap, HeaderName, HeaderValue, Method, Request, StatusCode, Uri};
use http_body_util::{BodyExt as _, Full};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use serde::Serialize;
use serde_json::{Value, json};

use crate::{build_release, run_step, target_dir};

/// Each target runs this many times per scenario, interleaved with the others.
const ROUNDS: usize = 2;
/// How a target's result is chosen among its rounds (printed and written to the JSON file).
const SELECTION: &str = "best of 2 interleaved rounds (highest requests/s; fixed-rate: lowest p50)";
const SESSION_VERSION: &str = "2025-11-25";
const STATELESS_VERSION: &str = "2026-07-28";
const ACCEPT_BOTH: &str = "application/json, text/event-stream";
const STARTUP_TIMEOUT: Duration = Duration::from_secs(15);
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

const MCP_SESSION_ID: HeaderName = HeaderName::from_static("mcp-session-id");
const MCP_PROTOCOL_VERSION: HeaderName = HeaderName::from_static("mcp-protocol-version");
const MCP_METHOD: HeaderName = HeaderName::from_static("mcp-method");
const MCP_NAME: HeaderName = HeaderName::from_static("mcp-name");

#[derive(Debug, Parser)]
#[command(
    name = "cargo xtask bench",
    about = "Load and latency of the gateway vs the MCP server directly and vs nginx"
)]
struct Options {
    /// Seconds each measured run lasts.
    #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(u64).range(1..))]
    duration: u64,
    /// Concurrent workers of the load scenarios, one MCP session each.
    #[arg(long, default_value_t = 32, value_parser = clap::value_parser!(u64).range(1..=1000))]
    concurrency: u64,
    /// Smoke run: 2 seconds per run, whatever --duration says.
    #[arg(long)]
    quick: bool,
    /// Also write every run and the selected results to this JSON file.
    #[arg(long)]
    json: Option<PathBuf>,
    /// Requests per second of the fixed-rate scenario (all its workers together).
    #[arg(long, default_value_t = 5000, value_parser = clap::value_parser!(u64).range(1..=100_000))]
    rate: u64,
    /// Idle sessions opened through the gateway to measure its memory per session.
    #[arg(long, default_value_t = 10_000)]
    idle_sessions: u64,
    /// Legacy SSE streams the benchmark tries to hold open through one gateway at once.
    #[arg(long, default_value_t = 9_000)]
    sse_streams: u64,
    /// The gateway binary to measure (default: the release build of this checkout), e.g. a
    /// copy of an earlier build, to compare two versions with the same benchmark.
    #[arg(long)]
    gateway_bin: Option<PathBuf>,
    /// Run the gateways with `data_threads = N` (threads with a runtime, a SO_REUSEPORT
    /// socket and a replica pool each; 0: the shared multi-threaded runtime). Not given: left
    /// out of their configuration (the gateway's default, one per CPU; what earlier builds
    /// understand).
    #[arg(long)]
    data_threads: Option<u64>,
}

impl Options {
    fn run_duration(&self) -> Duration {
        Duration::from_secs(if self.quick { 2 } else { self.duration })
    }

    fn concurrency(&self) -> usize {
        usize::try_from(self.concurrency).unwrap_or(1)
    }

    /// `--quick` opens a tenth of the sessions and streams.
    fn idle_sessions(&self) -> usize {
        let n = usize::try_from(self.idle_sessions).unwrap_or(usize::MAX);
        if self.quick { n / 10 } else { n }
    }

    fn sse_streams(&self) -> usize {
        let n = usize::try_from(self.sse_streams).unwrap_or(usize::MAX);
        if self.quick { n / 10 } else { n }
    }
}

/// Runs the benchmarks with the arguments after `cargo xtask bench`.
pub fn run(args: Vec<String>) -> anyhow::Result<()> {
    let options =
        Options::parse_from(std::iter::once("cargo xtask bench".to_owned()).chain(args.clone()));
    build_release(&["-p", "xtask"])?;
    if cfg!(debug_assertions) {
        // The load generator shares the cores with what it measures: run it optimised.
        let release = target_dir().join("release/xtask");
        return run_step(Command::new(release).arg("bench").args(args));
    }

    let dir = target_dir().join("bench");
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let nginx = find_nginx();
    if nginx.is_none() {
        eprintln!(
            "bench: nginx is not on PATH, so the nginx comparison is skipped \
             (install it with `apt-get install -y nginx`)"
        );
    }
    raise_fd_limit()?;
    let gateway_bin = options
        .gateway_bin
        .clone()
        .unwrap_or_else(|| target_dir().join("release/gateway-service"));
    let mut stack = Stack::start(&dir, nginx.as_deref(), &gateway_bin, options.data_threads)?;

    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the tokio runtime")?;
    let received = OtlpReceived::default();
    let (runs, capacity) = runtime.block_on(async {
        if let Some(listener) = stack.otlp.take() {
            otlp_receiver(listener, received.clone())?;
        }
        stack.wait_ready().await?;
        let runs = measure_all(&stack.targets(), &options).await?;
        let capacity = measure_capacity(&stack, &options).await?;
        anyhow::Ok((runs, capacity))
    })?;
    eprintln!(
        "bench: the OTLP receiver got {} export requests, {} bytes",
        received.requests.load(std::sync::atomic::Ordering::Relaxed),
        received.bytes.load(std::sync::atomic::Ordering::Relaxed)
    );
    drop(runtime);
    drop(stack);

    let mut report = Report::new(&options, &runs, capacity);
    report.command = std::iter::once("cargo xtask bench".to_owned())
        .chain(args)
        .collect::<Vec<_>>()
        .join(" ");
    report.gateway_bin = gateway_bin.display().to_string();
    let mut stdout = std::io::stdout().lock();
    stdout.write_all(report.render()?.as_bytes())?;
    stdout.flush()?;
    if let Some(path) = &options.json {
        let json = serde_json::to_string_pretty(&report)?;
        std::fs::write(path, json + "\n").with_context(|| format!("writing {}", path.display()))?;
        eprintln!("bench: results written to {}", path.display());
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Processes under test

/// A child process stopped when dropped, also on error paths: SIGTERM first (so nginx's master
/// takes its workers along and the servers shut down cleanly), SIGKILL if it lingers.
struct ChildGuard {
    name: String,
    log: PathBuf,
    child: Child,
}

impl ChildGuard {
    /// Spawns `cmd` with stderr (and stdout unless `capture_stdout`) going to `log`.
    fn spawn(
        name: &str,
        cmd: &mut Command,
        log: PathBuf,
        capture_stdout: bool,
    ) -> anyhow::Result<Self> {
        let file = File::create(&log).with_context(|| format!("creating {}", log.display()))?;
        let stdout = if capture_stdout {
            Stdio::piped()
        } else {
            Stdio::from(file.try_clone()?)
        };
        // Only the traced gateway exports spans, whatever the caller's environment says.
        for var in [
            "OTEL_EXPORTER_OTLP_ENDPOINT",
            "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
            "OTEL_EXPORTER_OTLP_PROTOCOL",
            "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL",
        ] {
            cmd.env_remove(var);
        }
        let child = cmd
            .stdin(Stdio::null())
            .stdout(stdout)
            .stderr(file)
            .spawn()
            .with_context(|| format!("could not start {name}: {cmd:?}"))?;
        Ok(Self {
            name: name.to_owned(),
            log,
            child,
        })
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Fails when the process has exited, pointing at its log.
    fn check_running(&mut self) -> anyhow::Result<()> {
        match self.child.try_wait()? {
            None => Ok(()),
            Some(status) => bail!(
                "{} exited ({status}); see {}",
                self.name,
                self.log.display()
            ),
        }
    }

    /// The first line the process prints on stdout; the rest is drained in the background.
    fn first_stdout_line(&mut self) -> anyhow::Result<String> {
        let stdout = self
            .child
            .stdout
            .take()
            .context("stdout of the child is not captured")?;
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            let mut lines = BufReader::new(stdout).lines();
            let _ = tx.send(lines.next());
            lines.for_each(drop);
        });
        match rx.recv_timeout(STARTUP_TIMEOUT) {
            Ok(Some(Ok(line))) => Ok(line),
            Ok(Some(Err(err))) => Err(err).context(format!("reading stdout of {}", self.name)),
            Ok(None) | Err(_) => bail!(
                "{} printed no address within {STARTUP_TIMEOUT:?}; see {}",
                self.name,
                self.log.display()
            ),
        }
    }
}

impl Drop for ChildGuard {
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(Some(_))) {
            return;
        }
        terminate(&self.child);
        let deadline = Instant::now() + Duration::from_secs(3);
        while Instant::now() < deadline {
            match self.child.try_wait() {
                Ok(None) => std::thread::sleep(Duration::from_millis(20)),
                Ok(Some(_)) | Err(_) => return,
            }
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[cfg(unix)]
fn terminate(child: &Child) {
    let _ = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
}

#[cfg(not(unix))]
fn terminate(_child: &Child) {}

/// Two example-server replicas, the gateway in front of them, and nginx in front of replica 1.
struct Stack {
    replicas: [String; 2],
    gateway: String,
    admin: String,
    /// A second gateway that authenticates every request (an API key), and that key.
    gateway_auth: String,
    admin_auth: String,
    api_key: String,
    /// A third gateway that traces every request (sampled at 100 %) to `otlp`, an OTLP/HTTP
    /// receiver run by the benchmark itself.
    gateway_traced: String,
    admin_traced: String,
    otlp: Option<TcpListener>,
    nginx: Option<String>,
    /// Process ids, for CPU time and memory: replica 1, the three gateways, nginx's master.
    pids: Pids,
    /// In start order; stopped in reverse.
    children: Vec<ChildGuard>,
}

impl Drop for Stack {
    fn drop(&mut self) {
        while let Some(child) = self.children.pop() {
            drop(child);
        }
    }
}

impl Stack {
    fn start(
        dir: &Path,
        nginx: Option<&Path>,
        gateway_bin: &Path,
        data_threads: Option<u64>,
    ) -> anyhow::Result<Self> {
        let gateway_config = |port, admin_port, replicas: &[String; 2]| {
            let mut config = gateway_config(port, admin_port, replicas);
            if let Some(n) = data_threads {
                config.insert_str(0, &format!("data_threads = {n}\n"));
            }
            config
        };
        let mut pids = Pids::default();
        let mut children = Vec::new();
        let mut replicas = [String::new(), String::new()];
        for (i, url) in replicas.iter_mut().enumerate() {
            let (child, base) = start_replica(dir, &format!("r{}", i + 1))?;
            pids.replicas.push(child.pid());
            children.push(child);
            *url = base;
        }
        let (gateway_port, admin_port) = (free_port()?, free_port()?);
        let config = gateway_config(gateway_port, admin_port, &replicas);
        let gateway = start_gateway(gateway_bin, dir, "", &config, &[])?;
        pids.gateway = Some(gateway.pid());
        children.push(gateway);
        let api_key = new_api_key()?;
        let (auth_port, auth_admin_port) = (free_port()?, free_port()?);
        let config = format!(
            "{}\n[[auth.api_keys]]\nsubject = \"bench\"\nroles = []\nsha256 = \"{}\"\n",
            gateway_config(auth_port, auth_admin_port, &replicas)
                .replace("insecure_no_auth = true\n", ""),
            api_key.1
        );
        let data_dir = dir.join("gateway-auth-data");
        let data_dir = [std::ffi::OsStr::new("--data-dir"), data_dir.as_os_str()];
        let gateway = start_gateway(gateway_bin, dir, "auth", &config, &data_dir)?;
        pids.gateway_auth = Some(gateway.pid());
        children.push(gateway);
        let otlp = TcpListener::bind("127.0.0.1:0").context("binding the OTLP receiver")?;
        let otlp_port = otlp.local_addr()?.port();
        let (traced_port, traced_admin_port) = (free_port()?, free_port()?);
        let config = format!(
            "otlp_endpoint = \"http://127.0.0.1:{otlp_port}\"\notlp_protocol = \"http/protobuf\"\n\
             trace_sample_ratio = 1.0\n{}",
            gateway_config(traced_port, traced_admin_port, &replicas)
        );
        let gateway = start_gateway(gateway_bin, dir, "traced", &config, &[])?;
        pids.gateway_traced = Some(gateway.pid());
        children.push(gateway);
        let nginx = match nginx {
            Some(binary) => {
                let (child, base) = start_nginx(binary, &dir.join("nginx"), &replicas[0])?;
                pids.nginx = Some(child.pid());
                children.push(child);
                Some(base)
            }
            None => None,
        };
        Ok(Self {
            replicas,
            gateway: format!("http://127.0.0.1:{gateway_port}"),
            admin: format!("http://127.0.0.1:{admin_port}"),
            gateway_auth: format!("http://127.0.0.1:{auth_port}"),
            admin_auth: format!("http://127.0.0.1:{auth_admin_port}"),
            api_key: api_key.0,
            gateway_traced: format!("http://127.0.0.1:{traced_port}"),
            admin_traced: format!("http://127.0.0.1:{traced_admin_port}"),
            otlp: Some(otlp),
            nginx,
            pids,
            children,
        })
    }

    /// Waits for the gateway's `/readyz` to answer 200 and for nginx to accept connections.
    async fn wait_ready(&mut self) -> anyhow::Result<()> {
        let client = http_client(1);
        let readyz: Uri = format!("{}/readyz", self.admin).parse()?;
        self.wait_for("gateway-service /readyz", || {
            gateway_ready(&client, &readyz)
        })
        .await?;
        let readyz: Uri = format!("{}/readyz", self.admin_auth).parse()?;
        self.wait_for("gateway-service (auth) /readyz", || {
            gateway_ready(&client, &readyz)
        })
        .await?;
        let readyz: Uri = format!("{}/readyz", self.admin_traced).parse()?;
        self.wait_for("gateway-service (traced) /readyz", || {
            gateway_ready(&client, &readyz)
        })
        .await?;
        if let Some(nginx) = &self.nginx {
            let addr: SocketAddr = nginx.trim_start_matches("http://").parse()?;
            self.wait_for("nginx", || async move {
                tokio::net::TcpStream::connect(addr).await.is_ok()
            })
            .await?;
        }
        Ok(())
    }

    async fn wait_for<F, Fut>(&mut self, what: &str, mut probe: F) -> anyhow::Result<()>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = bool>,
    {
        let deadline = Instant::now() + STARTUP_TIMEOUT;
        loop {
            for child in &mut self.children {
                child.check_running()?;
            }
            if probe().await {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!("{what} was not ready within {STARTUP_TIMEOUT:?}");
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// What is measured, in the order each round runs them.
    fn targets(&self) -> Vec<Target> {
        let pids = &self.pids;
        let mut targets = vec![
            Target::new("direct", format!("{}/mcp", self.replicas[0]))
                .cpu_of(pids.replicas.first().copied()),
            Target::new("gateway", format!("{}/adapters/single/mcp", self.gateway))
                .cpu_of(pids.gateway),
        ];
        if let Some(nginx) = &self.nginx {
            targets.push(Target::new("nginx", format!("{nginx}/mcp")).cpu_of(pids.nginx));
        }
        targets.push(
            Target::new(
                "gateway-2-replicas",
                format!("{}/adapters/bench/mcp", self.gateway),
            )
            .cpu_of(pids.gateway),
        );
        let mut auth = Target::new(
            "gateway-api-key",
            format!("{}/adapters/single/mcp", self.gateway_auth),
        )
        .cpu_of(pids.gateway_auth);
        auth.authorization = Some(format!("Bearer {}", self.api_key));
        targets.push(auth);
        targets.push(
            Target::new(
                "gateway-traced",
                format!("{}/adapters/single/mcp", self.gateway_traced),
            )
            .cpu_of(pids.gateway_traced),
        );
        targets
    }
}

/// Writes `config` to `<dir>/gateway[-<variant>].toml` and starts the gateway on it (its log
/// beside it), with `extra` arguments.
fn start_gateway(
    bin: &Path,
    dir: &Path,
    variant: &str,
    config: &str,
    extra: &[&std::ffi::OsStr],
) -> anyhow::Result<ChildGuard> {
    let file = if variant.is_empty() {
        "gateway".to_owned()
    } else {
        format!("gateway-{variant}")
    };
    let config_path = dir.join(format!("{file}.toml"));
    std::fs::write(&config_path, config)
        .with_context(|| format!("writing {}", config_path.display()))?;
    let mut cmd = Command::new(bin);
    cmd.arg("--config").arg(&config_path).args(extra);
    let name = if variant.is_empty() {
        "gateway-service".to_owned()
    } else {
        format!("gateway-service ({variant})")
    };
    ChildGuard::spawn(&name, &mut cmd, dir.join(format!("{file}.log")), false)
}

fn start_replica(dir: &Path, id: &str) -> anyhow::Result<(ChildGuard, String)> {
    let mut cmd = Command::new(target_dir().join("release/mcp-example-server"));
    cmd.args(["--transport", "all", "--port", "0", "--replica", id])
        .env("RUST_LOG", "warn");
    let name = format!("mcp-example-server {id}");
    let mut child = ChildGuard::spawn(&name, &mut cmd, dir.join(format!("{id}.log")), true)?;
    let line = child.first_stdout_line()?;
    let base = line
        .strip_prefix("listening on ")
        .with_context(|| format!("{name} printed {line:?}, not `listening on URL`"))?;
    Ok((child, base.trim().to_owned()))
}

/// The main gateway runs on loopback with `insecure_no_auth`, so its numbers measure proxying
/// alone and stay comparable with the direct and nginx targets (which check no token either)
/// and with earlier runs; a second gateway (`gateway-api-key`) authenticates every request with
/// an API key, and its comparison with the first is what authentication costs.
fn gateway_config(port: u16, admin_port: u16, replicas: &[String; 2]) -> String {
    format!(
        r#"listen = "127.0.0.1:{port}"
admin_listen = "127.0.0.1:{admin_port}"
log = "warn"
insecure_no_auth = true
max_sessions = 1000000

[[adapters]]
name = "bench"
upstreams = ["{r1}", "{r2}"]

[[adapters]]
name = "single"
upstreams = ["{r1}"]
"#,
        r1 = replicas[0],
        r2 = replicas[1],
    )
}

async fn gateway_ready(client: &HttpClient, readyz: &Uri) -> bool {
    let request = Request::get(readyz.clone()).body(Full::default());
    match request {
        Ok(request) => client
            .request(request)
            .await
            .is_ok_and(|response| response.status() == StatusCode::OK),
        Err(_) => false,
    }
}

/// nginx from PATH, else Debian's /usr/sbin/nginx (not on a normal user's PATH).
fn find_nginx() -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .map(|dir| dir.join("nginx"))
        .chain([PathBuf::from("/usr/sbin/nginx")])
        .find(|candidate| candidate.is_file())
}

/// nginx in the foreground with its prefix, config, logs and temp files under `prefix`.
fn start_nginx(
    binary: &Path,
    prefix: &Path,
    upstream: &str,
) -> anyhow::Result<(ChildGuard, String)> {
    std::fs::create_dir_all(prefix.join("tmp"))
        .with_context(|| format!("creating {}", prefix.display()))?;
    let port = free_port()?;
    let upstream = upstream.trim_start_matches("http://");
    let config = nginx_config(prefix, port, upstream);
    let config_path = prefix.join("nginx.conf");
    std::fs::write(&config_path, config)
        .with_context(|| format!("writing {}", config_path.display()))?;
    let mut cmd = Command::new(binary);
    cmd.arg("-p")
        .arg(prefix)
        .arg("-c")
        .arg(&config_path)
        .arg("-e")
        .arg(prefix.join("error.log"));
    let child = ChildGuard::spawn("nginx", &mut cmd, prefix.join("stderr.log"), false)?;
    Ok((child, format!("http://127.0.0.1:{port}")))
}

/// A plain reverse proxy: HTTP/1.1 with upstream keep-alive, no buffering either way.
fn nginx_config(prefix: &Path, port: u16, upstream: &str) -> String {
    let p = prefix.display();
    format!(
        r#"daemon off;
worker_processes auto;
pid {p}/nginx.pid;
error_log {p}/error.log warn;
events {{ worker_connections 4096; }}
http {{
    access_log off;
    client_body_temp_path {p}/tmp/client_body;
    proxy_temp_path {p}/tmp/proxy;
    fastcgi_temp_path {p}/tmp/fastcgi;
    uwsgi_temp_path {p}/tmp/uwsgi;
    scgi_temp_path {p}/tmp/scgi;
    upstream replica {{
        server {upstream};
        keepalive 128;
    }}
    server {{
        listen 127.0.0.1:{port};
        location / {{
            proxy_pass http://replica;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_set_header Host $http_host;
            proxy_buffering off;
            proxy_request_buffering off;
        }}
    }}
}}
"#
    )
}

/// What the benchmark's OTLP receiver was sent.
#[derive(Clone, Default)]
struct OtlpReceived {
    requests: std::sync::Arc<std::sync::atomic::AtomicU64>,
    bytes: std::sync::Arc<std::sync::atomic::AtomicU64>,
}

/// An OTLP/HTTP receiver: reads each export, counts it and answers 200 (as a collector would).
fn otlp_receiver(listener: TcpListener, received: OtlpReceived) -> anyhow::Result<()> {
    use std::sync::atomic::Ordering::Relaxed;
    listener.set_nonblocking(true)?;
    let listener = tokio::net::TcpListener::from_std(listener)?;
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let received = received.clone();
            let service = hyper::service::service_fn(move |req: Request<hyper::body::Incoming>| {
                let received = received.clone();
                async move {
                    let body = req.into_body().collect().await?.to_bytes();
                    received.requests.fetch_add(1, Relaxed);
                    received.bytes.fetch_add(body.len() as u64, Relaxed);
                    let mut res = http::Response::new(Full::new(Bytes::new()));
                    res.headers_mut().insert(
                        CONTENT_TYPE,
                        HeaderValue::from_static("application/x-protobuf"),
                    );
                    Ok::<_, hyper::Error>(res)
                }
            });
            tokio::spawn(async move {
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(hyper_util::rt::TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    Ok(())
}

fn free_port() -> anyhow::Result<u16> {
    let listener = TcpListener::bind("127.0.0.1:0").context("binding a free port")?;
    Ok(listener.local_addr()?.port())
}

// ---------------------------------------------------------------------------------------------
// Load generator

type HttpClient = Client<HttpConnector, Full<Bytes>>;

/// A keep-alive HTTP/1.1 client holding up to `connections` idle connections.
fn http_client(connections: usize) -> HttpClient {
    let mut connector = HttpConnector::new();
    connector.set_nodelay(true);
    Client::builder(TokioExecutor::new())
        .pool_max_idle_per_host(connections)
        .build(connector)
}

struct Target {
    name: &'static str,
    url: String,
    /// Sent with every request (the gateway that authenticates).
    authorization: Option<String>,
    /// The process (with its children: nginx's workers) whose CPU time a request costs: the
    /// proxy's; for `direct`, the replica's.
    cpu: Option<u32>,
}

impl Target {
    fn new(name: &'static str, url: String) -> Self {
        Self {
            name,
            url,
            authorization: None,
            cpu: None,
        }
    }

    fn cpu_of(mut self, pid: Option<u32>) -> Self {
        self.cpu = pid;
        self
    }
}

/// A new API key and its SHA-256, made by `gateway-service api-key` as an operator would.
fn new_api_key() -> anyhow::Result<(String, String)> {
    let out = Command::new(target_dir().join("release/gateway-service"))
        .args(["api-key", "--subject", "bench"])
        .output()
        .context("running gateway-service api-key")?;
    let text = String::from_utf8_lossy(&out.stdout);
    let key = text
        .lines()
        .map(str::trim)
        .find(|l| l.starts_with("mcpgw_"))
        .context("gateway-service api-key printed no key")?;
    let sha = text
        .lines()
        .find_map(|l| l.strip_prefix("sha256 = "))
        .map(|v| v.trim_matches('"'))
        .context("gateway-service api-key printed no sha256")?;
    Ok((key.to_owned(), sha.to_owned()))
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
enum Scenario {
    /// Session era (2025-11-25): C workers, each in its own session.
    Sessions,
    /// Stateless era (2026-07-28): C workers, no session, the envelope on every request.
    Stateless,
    /// Session era, one worker: latency without queueing.
    Sequential,
    /// Session era, a fixed total rate (`--rate`) well under saturation: the latency a hop
    /// adds when nothing queues.
    FixedRate,
}

/// Requests per second one worker (one session, one connection) of the fixed-rate scenario
/// sends, on average.
const RATE_PER_WORKER: u64 = 200;

impl Scenario {
    const ALL: [Self; 4] = [
        Self::Sessions,
        Self::Stateless,
        Self::Sequential,
        Self::FixedRate,
    ];

    fn concurrency(self, options: &Options) -> usize {
        match self {
            Self::Sequential => 1,
            Self::Sessions | Self::Stateless => options.concurrency(),
            Self::FixedRate => usize::try_from(options.rate.div_ceil(RATE_PER_WORKER)).unwrap_or(1),
        }
    }

    fn describe(self, concurrency: usize) -> String {
        match self {
            Self::Sessions => format!("sessions (2025-11-25), {concurrency} concurrent sessions"),
            Self::Stateless => format!("stateless (2026-07-28), {concurrency} concurrent workers"),
            Self::Sequential => "sequential (2025-11-25), 1 session, request after request".into(),
            Self::FixedRate => format!(
                "fixed-rate (2025-11-25), {concurrency} sessions sending at a fixed total rate"
            ),
        }
    }
}

/// One worker's prepared `tools/call echo` request.
struct Caller {
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
}

impl Caller {
    fn request(&self) -> Request<Full<Bytes>> {
        let mut request = Request::new(Full::new(self.body.clone()));
        *request.method_mut() = Method::POST;
        *request.uri_mut() = self.uri.clone();
        *request.headers_mut() = self.headers.clone();
        request
    }
}

fn base_headers(version: &str, authorization: Option<&HeaderValue>) -> anyhow::Result<HeaderMap> {
    let mut headers = HeaderMap::new();
    if let Some(value) = authorization {
        headers.insert(http::header::AUTHORIZATION, value.clone());
    }
    headers.insert(ACCEPT, HeaderValue::from_static(ACCEPT_BOTH));
    headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    headers.insert(MCP_PROTOCOL_VERSION, HeaderValue::from_str(version)?);
    Ok(headers)
}

fn echo_params() -> Value {
    json!({ "name": "echo", "arguments": { "text": "hello" } })
}

fn rpc(id: usize, method: &str, params: Value) -> Bytes {
    Bytes::from(
        json!({ "jsonrpc": "2.0", "id": id, "method": method, "params": params }).to_string(),
    )
}

fn stateless_caller(
    uri: &Uri,
    worker: usize,
    authorization: Option<&HeaderValue>,
) -> anyhow::Result<Caller> {
    let mut headers = base_headers(STATELESS_VERSION, authorization)?;
    headers.insert(MCP_METHOD, HeaderValue::from_static("tools/call"));
    headers.insert(MCP_NAME, HeaderValue::from_static("echo"));
    let mut params = echo_params();
    params["_meta"] = json!({
        "io.modelcontextprotocol/protocolVersion": STATELESS_VERSION,
        "io.modelcontextprotocol/clientCapabilities": {},
    });
    Ok(Caller {
        uri: uri.clone(),
        headers,
        body: rpc(worker, "tools/call", params),
    })
}

/// Opens a session (initialize + notifications/initialized) and prepares calls in it.
async fn session_caller(
    client: &HttpClient,
    uri: &Uri,
    worker: usize,
    authorization: Option<&HeaderValue>,
) -> anyhow::Result<Caller> {
    let initialize = rpc(
        0,
        "initialize",
        json!({
            "protocolVersion": SESSION_VERSION,
            "capabilities": {},
            "clientInfo": { "name": "xtask-bench", "version": env!("CARGO_PKG_VERSION") },
        }),
    );
    let mut caller = Caller {
        uri: uri.clone(),
        headers: base_headers(SESSION_VERSION, authorization)?,
        body: initialize,
    };
    let response = client.request(caller.request()).await?;
    let status = response.status();
    let session = response.headers().get(MCP_SESSION_ID).cloned();
    response.into_body().collect().await?;
    if status != StatusCode::OK {
        bail!("initialize answered {status}");
    }
    let session = session.context("initialize answered without Mcp-Session-Id")?;
    caller.headers.insert(MCP_SESSION_ID, session);

    caller.body = Bytes::from_static(br#"{"jsonrpc":"2.0","method":"notifications/initialized"}"#);
    let response = client.request(caller.request()).await?;
    let status = response.status();
    response.into_body().collect().await?;
    if status != StatusCode::ACCEPTED {
        bail!("notifications/initialized answered {status}");
    }
    caller.body = rpc(worker + 1, "tools/call", echo_params());
    Ok(caller)
}

/// Ends a session; best effort, the result does not count.
async fn close_session(client: &HttpClient, caller: &Caller) {
    let mut request = caller.request();
    *request.method_mut() = Method::DELETE;
    *request.body_mut() = Full::default();
    if let Ok(response) = client.request(request).await {
        let _ = response.into_body().collect().await;
    }
}

/// What workers measured: latencies of successful calls (µs) and failed calls.
#[derive(Default)]
struct Sample {
    latencies_us: Vec<u64>,
    errors: u64,
    first_error: Option<String>,
}

impl Sample {
    /// Makes one call and records its latency (to the end of the body), or its error.
    async fn call(&mut self, client: &HttpClient, caller: &Caller) {
        let started = Instant::now();
        let outcome = tokio::time::timeout(REQUEST_TIMEOUT, call(client, caller)).await;
        match outcome.unwrap_or_else(|_| Err(anyhow::anyhow!("timed out"))) {
            Ok(()) => self.latencies_us.push(micros(started.elapsed())),
            Err(err) => {
                self.errors += 1;
                self.first_error.get_or_insert_with(|| format!("{err:#}"));
            }
        }
    }

    fn merge(&mut self, other: Sample) {
        self.latencies_us.extend(other.latencies_us);
        self.errors += other.errors;
        if self.first_error.is_none() {
            self.first_error = other.first_error;
        }
    }
}

/// Calls request after request until `deadline`; hands the caller back to close its session.
async fn worker(client: HttpClient, caller: Caller, deadline: Instant) -> (Caller, Sample) {
    let mut sample = Sample::default();
    while Instant::now() < deadline {
        sample.call(&client, &caller).await;
    }
    (caller, sample)
}

/// Calls once per tick it is sent, until the ticks stop. Latency runs from sending to the end
/// of the body (a tick that waited for the worker's previous call does not count its wait).
async fn paced_worker(
    client: HttpClient,
    caller: Caller,
    mut ticks: tokio::sync::mpsc::UnboundedReceiver<()>,
) -> (Caller, Sample) {
    let mut sample = Sample::default();
    while ticks.recv().await.is_some() {
        sample.call(&client, &caller).await;
    }
    (caller, sample)
}

/// Sends a tick every `interval` until `deadline`, to the workers in turn. A thread of its
/// own that sleeps to each tick's time: tokio's timer has a 1 ms resolution, which would send
/// the ticks in bursts.
fn pace(
    workers: Vec<tokio::sync::mpsc::UnboundedSender<()>>,
    interval: Duration,
    deadline: Instant,
) -> std::thread::JoinHandle<()> {
    std::thread::spawn(move || {
        let start = Instant::now();
        for k in 0u32.. {
            let at = start + interval * k;
            if at >= deadline {
                break;
            }
            let now = Instant::now();
            if at > now {
                std::thread::sleep(at - now);
            }
            if let Some(worker) = workers.get(k as usize % workers.len()) {
                let _ = worker.send(());
            }
        }
    })
}

/// One `tools/call`: a 200 whose body is a successful JSON-RPC result, or an error.
async fn call(client: &HttpClient, caller: &Caller) -> anyhow::Result<()> {
    let response = client.request(caller.request()).await?;
    let status = response.status();
    let body = response.into_body().collect().await?.to_bytes();
    let head = String::from_utf8_lossy(&body[..body.len().min(200)]).into_owned();
    if status != StatusCode::OK {
        bail!("HTTP {status}: {head}");
    }
    if !contains(&body, b"\"result\"") || contains(&body, b"\"isError\":true") {
        bail!("not a successful result: {head}");
    }
    Ok(())
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack
        .windows(needle.len())
        .any(|window| window == needle)
}

fn micros(duration: Duration) -> u64 {
    u64::try_from(duration.as_micros()).unwrap_or(u64::MAX)
}

/// Every scenario, each round running every target once.
async fn measure_all(targets: &[Target], options: &Options) -> anyhow::Result<Vec<Run>> {
    let duration = options.run_duration();
    let mut runs = Vec::new();
    for scenario in Scenario::ALL {
        let concurrency = scenario.concurrency(options);
        eprintln!("bench: {}", scenario.describe(concurrency));
        // The fixed-rate scenario's time between two calls (of any worker).
        let interval = Duration::from_secs_f64(1.0 / options.rate as f64);
        for round in 1..=ROUNDS {
            for target in targets {
                let run = measure(target, scenario, concurrency, duration, round, interval)
                    .await
                    .with_context(|| format!("{scenario:?} against {}", target.name))?;
                eprintln!(
                    "bench:   round {round} {:<20} {:>9.0} req/s  p50 {:>6} µs  p99 {:>6} µs  \
                     CPU {:>6} µs/req  errors {}",
                    run.target,
                    run.requests_per_s,
                    run.p50_us,
                    run.p99_us,
                    run.cpu_us_per_request
                        .map_or_else(|| "-".to_owned(), |c| format!("{c:.1}")),
                    run.errors
                );
                runs.push(run);
            }
        }
    }
    Ok(runs)
}

/// One run: prepare `concurrency` callers, load the target for `duration`, close the sessions.
async fn measure(
    target: &Target,
    scenario: Scenario,
    concurrency: usize,
    duration: Duration,
    round: usize,
    interval: Duration,
) -> anyhow::Result<Run> {
    let client = http_client(concurrency);
    let uri: Uri = target.url.parse()?;
    let authorization = target
        .authorization
        .as_deref()
        .map(HeaderValue::from_str)
        .transpose()?;
    let mut callers = Vec::with_capacity(concurrency);
    for worker in 0..concurrency {
        callers.push(match scenario {
            Scenario::Stateless => stateless_caller(&uri, worker, authorization.as_ref())?,
            Scenario::Sessions | Scenario::Sequential | Scenario::FixedRate => {
                session_caller(&client, &uri, worker, authorization.as_ref())
                    .await
                    .context("opening a session")?
            }
        });
    }

    let cpu_before = target.cpu.and_then(cpu_ticks);
    let started = Instant::now();
    let deadline = started + duration;
    let mut ticks = Vec::new();
    let workers: Vec<_> = callers
        .into_iter()
        .map(|caller| match scenario {
            Scenario::FixedRate => {
                let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
                ticks.push(tx);
                tokio::spawn(paced_worker(client.clone(), caller, rx))
            }
            _ => tokio::spawn(worker(client.clone(), caller, deadline)),
        })
        .collect();
    let pacer = (!ticks.is_empty()).then(|| pace(ticks, interval, deadline));
    let mut total = Sample::default();
    let mut callers = Vec::with_capacity(concurrency);
    for handle in workers {
        let (caller, sample) = handle.await.context("a load worker panicked")?;
        total.merge(sample);
        callers.push(caller);
    }
    let elapsed = started.elapsed();
    if let Some(pacer) = pacer {
        let _ = pacer.join();
    }
    let cpu_after = target.cpu.and_then(cpu_ticks);
    let cpu_us = match (cpu_before, cpu_after) {
        (Some(before), Some(after)) => Some(ticks_to_us(after.saturating_sub(before))),
        _ => None,
    };

    if scenario != Scenario::Stateless {
        for caller in &callers {
            close_session(&client, caller).await;
        }
    }
    Ok(Run::new(
        target,
        scenario,
        round,
        concurrency,
        elapsed,
        total,
        cpu_us,
    ))
}

// ---------------------------------------------------------------------------------------------
// Results

/// One measured run. `requests` and the latencies count successful calls only.
#[derive(Debug, Serialize)]
struct Run {
    scenario: Scenario,
    target: &'static str,
    round: usize,
    concurrency: usize,
    seconds: f64,
    requests: u64,
    errors: u64,
    requests_per_s: f64,
    p50_us: u64,
    p90_us: u64,
    p99_us: u64,
    max_us: u64,
    /// CPU time (user + system) the target's process spent per successful call, from its own
    /// `/proc/<pid>/stat` (nginx: master and workers) over the run.
    cpu_us_per_request: Option<f64>,
    /// That process's CPU time over the run's wall time, in cores.
    cpu_cores: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    first_error: Option<String>,
}

impl Run {
    fn new(
        target: &Target,
        scenario: Scenario,
        round: usize,
        concurrency: usize,
        elapsed: Duration,
        mut sample: Sample,
        cpu_us: Option<f64>,
    ) -> Self {
        sample.latencies_us.sort_unstable();
        let latencies = &sample.latencies_us;
        let requests = latencies.len() as u64;
        Self {
            scenario,
            target: target.name,
            round,
            concurrency,
            seconds: elapsed.as_secs_f64(),
            requests,
            errors: sample.errors,
            requests_per_s: requests as f64 / elapsed.as_secs_f64(),
            p50_us: percentile(latencies, 0.50),
            p90_us: percentile(latencies, 0.90),
            p99_us: percentile(latencies, 0.99),
            max_us: latencies.last().copied().unwrap_or(0),
            cpu_us_per_request: cpu_us
                .filter(|_| requests > 0)
                .map(|us| us / requests as f64),
            cpu_cores: cpu_us.map(|us| us / 1e6 / elapsed.as_secs_f64()),
            first_error: sample.first_error,
        }
    }
}

impl Run {
    /// Which of two rounds is kept: the one with more requests/s; at a fixed rate (where
    /// requests/s is what was asked for), the one with the lower p50.
    fn better_than(&self, other: &Run) -> bool {
        match self.scenario {
            Scenario::FixedRate => {
                self.errors <= other.errors
                    && (self.p50_us, self.p99_us) < (other.p50_us, other.p99_us)
            }
            _ => self.requests_per_s > other.requests_per_s,
        }
    }
}

/// The nearest-rank percentile of sorted values (0 when there are none).
fn percentile(sorted: &[u64], quantile: f64) -> u64 {
    if sorted.is_empty() {
        return 0;
    }
    let rank = (quantile * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

/// Comparisons printed under each scenario: (measured, baseline).
const COMPARISONS: [(&str, &str); 6] = [
    ("gateway", "direct"),
    ("gateway", "nginx"),
    ("nginx", "direct"),
    ("gateway-2-replicas", "direct"),
    ("gateway-api-key", "gateway"),
    ("gateway-traced", "gateway"),
];

#[derive(Serialize)]
struct Report<'a> {
    /// The command line that produced this report.
    command: String,
    /// The gateway binary measured.
    gateway_bin: String,
    cores: usize,
    seconds_per_run: f64,
    concurrency: usize,
    rounds: usize,
    selection: &'static str,
    /// Per scenario and target, the round kept.
    selected: Vec<&'a Run>,
    /// Every run, in the order they ran.
    runs: &'a [Run],
    /// Memory per idle session and open SSE streams of one gateway.
    capacity: Capacity,
}

impl<'a> Report<'a> {
    fn new(options: &Options, runs: &'a [Run], capacity: Capacity) -> Self {
        let mut selected: Vec<&Run> = Vec::new();
        for run in runs {
            match selected
                .iter_mut()
                .find(|kept| kept.scenario == run.scenario && kept.target == run.target)
            {
                Some(kept) if run.better_than(kept) => *kept = run,
                Some(_) => {}
                None => selected.push(run),
            }
        }
        Self {
            command: String::new(),
            gateway_bin: String::new(),
            capacity,
            cores: std::thread::available_parallelism().map_or(0, usize::from),
            seconds_per_run: options.run_duration().as_secs_f64(),
            concurrency: options.concurrency(),
            rounds: ROUNDS,
            selection: SELECTION,
            selected,
            runs,
        }
    }

    fn selected(&self, scenario: Scenario, target: &str) -> Option<&'a Run> {
        self.selected
            .iter()
            .copied()
            .find(|run| run.scenario == scenario && run.target == target)
    }

    fn render(&self) -> Result<String, std::fmt::Error> {
        let mut out = String::new();
        writeln!(
            out,
            "\nMCP gateway benchmark: tools/call echo {{\"text\":\"hello\"}}, {} s per run, \
             {} cores, {SELECTION}",
            self.seconds_per_run, self.cores
        )?;
        for scenario in Scenario::ALL {
            let rows: Vec<&Run> = self
                .selected
                .iter()
                .copied()
                .filter(|run| run.scenario == scenario)
                .collect();
            if let Some(first) = rows.first() {
                writeln!(out, "\n{}", scenario.describe(first.concurrency))?;
                render_table(&mut out, &rows)?;
                self.render_comparisons(&mut out, scenario)?;
            }
        }
        self.capacity.render(&mut out)?;
        self.render_errors(&mut out)?;
        writeln!(
            out,
            "\nCommand: {} (gateway: {})",
            self.command, self.gateway_bin
        )?;
        Ok(out)
    }

    fn render_comparisons(&self, out: &mut String, scenario: Scenario) -> std::fmt::Result {
        for (measured, baseline) in COMPARISONS {
            let (Some(a), Some(b)) = (
                self.selected(scenario, measured),
                self.selected(scenario, baseline),
            ) else {
                continue;
            };
            let cpu = match (a.cpu_us_per_request, b.cpu_us_per_request) {
                (Some(x), Some(y)) if y > 0.0 && baseline != "direct" => {
                    format!(", CPU per request {:.2}x", x / y)
                }
                _ => String::new(),
            };
            writeln!(
                out,
                "  {:<32} throughput {:.2}x, p50 {:+} µs, p99 {:+} µs{cpu}",
                format!("{measured} vs {baseline}:"),
                a.requests_per_s / b.requests_per_s,
                signed_diff(a.p50_us, b.p50_us),
                signed_diff(a.p99_us, b.p99_us),
            )?;
        }
        Ok(())
    }

    /// Runs with failed calls (selected or not), with the first failure of each.
    fn render_errors(&self, out: &mut String) -> std::fmt::Result {
        let failed: Vec<&Run> = self.runs.iter().filter(|run| run.errors > 0).collect();
        if failed.is_empty() {
            return writeln!(out, "\nNo failed calls.");
        }
        writeln!(out, "\nFailed calls:")?;
        for run in failed {
            writeln!(
                out,
                "  {:?} {} round {}: {} errors, first: {}",
                run.scenario,
                run.target,
                run.round,
                run.errors,
                run.first_error.as_deref().unwrap_or("?")
            )?;
        }
        Ok(())
    }
}

fn render_table(out: &mut String, rows: &[&Run]) -> std::fmt::Result {
    writeln!(
        out,
        "  {:<20} {:>10} {:>9} {:>9} {:>9} {:>12} {:>9} {:>8}",
        "target", "req/s", "p50 µs", "p90 µs", "p99 µs", "CPU µs/req", "CPU cores", "errors"
    )?;
    for run in rows {
        writeln!(
            out,
            "  {:<20} {:>10.0} {:>9} {:>9} {:>9} {:>12} {:>9} {:>8}",
            run.target,
            run.requests_per_s,
            run.p50_us,
            run.p90_us,
            run.p99_us,
            run.cpu_us_per_request
                .map_or_else(|| "-".to_owned(), |c| format!("{c:.1}")),
            run.cpu_cores
                .map_or_else(|| "-".to_owned(), |c| format!("{c:.2}")),
            run.errors
        )?;
    }
    Ok(())
}

fn signed_diff(a: u64, b: u64) -> i128 {
    i128::from(a) - i128::from(b)
}

// ---------------------------------------------------------------------------------------------
// Processes: CPU time, memory, file descriptors

/// Process ids of what is measured.
#[derive(Default)]
struct Pids {
    replicas: Vec<u32>,
    gateway: Option<u32>,
    gateway_auth: Option<u32>,
    gateway_traced: Option<u32>,
    nginx: Option<u32>,
}

/// Clock ticks per second of `/proc/<pid>/stat` times (`getconf CLK_TCK`, normally 100).
fn clock_ticks() -> u64 {
    static TICKS: std::sync::OnceLock<u64> = std::sync::OnceLock::new();
    *TICKS.get_or_init(|| {
        Command::new("getconf")
            .arg("CLK_TCK")
            .output()
            .ok()
            .and_then(|out| String::from_utf8_lossy(&out.stdout).trim().parse().ok())
            .unwrap_or(100)
    })
}

fn ticks_to_us(ticks: u64) -> f64 {
    ticks as f64 * 1e6 / clock_ticks() as f64
}

/// User + system CPU time of `pid` and of its child processes (nginx's workers), in clock
/// ticks; `None` when the process is gone.
fn cpu_ticks(pid: u32) -> Option<u64> {
    let mut total = 0;
    let mut found = false;
    for entry in std::fs::read_dir("/proc").ok()?.flatten() {
        let Some(p) = entry
            .file_name()
            .to_str()
            .and_then(|n| n.parse::<u32>().ok())
        else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{p}/stat")) else {
            continue;
        };
        // The fields after the command name (which may hold spaces): state is field 3, ppid 4,
        // utime 14 and stime 15 of proc(5).
        let Some((_, rest)) = stat.rsplit_once(')') else {
            continue;
        };
        let fields: Vec<&str> = rest.split_whitespace().collect();
        let field = |n: usize| fields.get(n - 3).and_then(|f| f.parse::<u64>().ok());
        if p == pid || field(4) == Some(u64::from(pid)) {
            total += field(14).unwrap_or(0) + field(15).unwrap_or(0);
            found |= p == pid;
        }
    }
    found.then_some(total)
}

/// Resident memory of `pid`, in KiB (`VmRSS` of `/proc/<pid>/status`).
fn rss_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))?
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .ok()
}

/// Open file descriptors of `pid`.
fn fd_count(pid: u32) -> Option<usize> {
    Some(std::fs::read_dir(format!("/proc/{pid}/fd")).ok()?.count())
}

/// Raises this process's soft limit of open files to the hard limit (the SSE scenario holds
/// thousands of connections), and returns the limit.
fn raise_fd_limit() -> anyhow::Result<u64> {
    use nix::sys::resource::{Resource, getrlimit, setrlimit};
    let (_, hard) = getrlimit(Resource::RLIMIT_NOFILE).context("reading RLIMIT_NOFILE")?;
    setrlimit(Resource::RLIMIT_NOFILE, hard, hard).context("raising RLIMIT_NOFILE")?;
    Ok(hard)
}

/// Raises a child's soft limit of open files to `limit` with util-linux `prlimit`.
fn raise_child_fd_limit(pid: u32, limit: u64) -> anyhow::Result<()> {
    let status = Command::new("prlimit")
        .arg(format!("--pid={pid}"))
        .arg(format!("--nofile={limit}:{limit}"))
        .status()
        .context("running prlimit (util-linux)")?;
    if !status.success() {
        bail!("prlimit --pid={pid} --nofile={limit}:{limit} failed ({status})");
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Capacity: memory per idle session, open SSE streams

#[derive(Serialize, Default)]
struct Capacity {
    idle_sessions: Option<IdleSessions>,
    sse_streams: Option<SseStreams>,
}

/// Sessions opened through the gateway and left idle, and what the gateway's memory grew by.
#[derive(Serialize)]
struct IdleSessions {
    asked: usize,
    opened: usize,
    rss_before_kib: u64,
    rss_after_kib: u64,
    bytes_per_session: f64,
    #[serde(skip_serializing_if = "Option::is_none")]
    first_error: Option<String>,
}

/// Legacy SSE streams held open through one gateway at once.
#[derive(Serialize)]
struct SseStreams {
    asked: usize,
    /// Streams that delivered their (rewritten) endpoint event.
    opened: usize,
    /// Of those, still open once the last was opened.
    still_open: usize,
    /// The gateway's open file descriptors then, and its limit.
    gateway_fds: usize,
    fd_limit: u64,
    /// The gateway's resident memory before and with the streams open.
    rss_before_kib: u64,
    rss_after_kib: u64,
    seconds: f64,
    #[serde(skip_serializing_if = "Option::is_none")]
    first_error: Option<String>,
}

impl Capacity {
    fn render(&self, out: &mut String) -> std::fmt::Result {
        if let Some(m) = &self.idle_sessions {
            writeln!(
                out,
                "\nidle sessions: {} of {} opened through the gateway; its RSS {} -> {} KiB: \
                 {:.0} bytes per session",
                m.opened, m.asked, m.rss_before_kib, m.rss_after_kib, m.bytes_per_session
            )?;
            if let Some(e) = &m.first_error {
                writeln!(out, "  first failure: {e}")?;
            }
        }
        if let Some(s) = &self.sse_streams {
            writeln!(
                out,
                "SSE streams: {} of {} opened through one gateway in {:.1} s, {} still open; \
                 gateway fds {} (limit {}), RSS {} -> {} KiB",
                s.opened,
                s.asked,
                s.seconds,
                s.still_open,
                s.gateway_fds,
                s.fd_limit,
                s.rss_before_kib,
                s.rss_after_kib
            )?;
            if let Some(e) = &s.first_error {
                writeln!(out, "  first failure: {e}")?;
            }
        }
        Ok(())
    }
}

/// Idle sessions, then SSE streams, against the main gateway (`/adapters/single`).
async fn measure_capacity(stack: &Stack, options: &Options) -> anyhow::Result<Capacity> {
    let Some(pid) = stack.pids.gateway else {
        return Ok(Capacity::default());
    };
    let limit = raise_fd_limit()?;
    raise_child_fd_limit(pid, limit)?;
    for replica in &stack.pids.replicas {
        raise_child_fd_limit(*replica, limit)?;
    }
    let url: Uri = format!("{}/adapters/single/mcp", stack.gateway).parse()?;
    let idle = idle_sessions(&url, pid, options.idle_sessions()).await?;
    eprintln!(
        "bench: idle sessions: {} opened, {:.0} bytes each",
        idle.opened, idle.bytes_per_session
    );
    let addr: SocketAddr = stack.gateway.trim_start_matches("http://").parse()?;
    let sse = sse_streams(addr, pid, options.sse_streams(), limit).await?;
    eprintln!(
        "bench: SSE streams: {} opened, {} still open",
        sse.opened, sse.still_open
    );
    Ok(Capacity {
        idle_sessions: Some(idle),
        sse_streams: Some(sse),
    })
}

/// Workers opening things concurrently.
const OPENERS: usize = 32;

/// Opens `n` sessions (`initialize` + `notifications/initialized`) and leaves them idle.
async fn idle_sessions(url: &Uri, pid: u32, n: usize) -> anyhow::Result<IdleSessions> {
    tokio::time::sleep(Duration::from_secs(1)).await;
    let rss_before_kib = rss_kib(pid).context("reading the gateway's RSS")?;
    let next = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let mut openers = tokio::task::JoinSet::new();
    for _ in 0..OPENERS {
        let (next, url) = (next.clone(), url.clone());
        openers.spawn(async move {
            let client = http_client(1);
            let (mut opened, mut first_error) = (0, None);
            while next.fetch_add(1, std::sync::atomic::Ordering::Relaxed) < n {
                match session_caller(&client, &url, 0, None).await {
                    Ok(_) => opened += 1,
                    Err(e) => {
                        first_error.get_or_insert_with(|| format!("{e:#}"));
                    }
                }
            }
            (opened, first_error)
        });
    }
    let (mut opened, mut first_error) = (0, None);
    while let Some(done) = openers.join_next().await {
        let (o, e) = done.context("a session opener panicked")?;
        opened += o;
        first_error = first_error.or(e);
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    let rss_after_kib = rss_kib(pid).context("reading the gateway's RSS")?;
    Ok(IdleSessions {
        asked: n,
        opened,
        rss_before_kib,
        rss_after_kib,
        bytes_per_session: rss_after_kib.saturating_sub(rss_before_kib) as f64 * 1024.0
            / opened.max(1) as f64,
        first_error,
    })
}

/// Opens one legacy SSE stream through the gateway and reads it up to its endpoint event,
/// which the gateway rewrites to its own `/adapters/single/messages` once it recorded the
/// session.
async fn open_sse(addr: SocketAddr) -> anyhow::Result<tokio::net::TcpStream> {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let mut stream = tokio::net::TcpStream::connect(addr).await?;
    stream
        .write_all(
            format!(
                "GET /adapters/single/sse HTTP/1.1\r\nHost: {addr}\r\nAccept: text/event-stream\r\n\r\n"
            )
            .as_bytes(),
        )
        .await?;
    let mut seen = Vec::new();
    let mut chunk = [0u8; 2048];
    loop {
        let n = stream.read(&mut chunk).await?;
        if n == 0 {
            bail!(
                "closed before the endpoint event: {}",
                String::from_utf8_lossy(&seen)
            );
        }
        seen.extend_from_slice(&chunk[..n]);
        if seen.len() >= 12 && !seen.starts_with(b"HTTP/1.1 200") {
            bail!(
                "answered {}",
                String::from_utf8_lossy(&seen[..seen.len().min(200)])
            );
        }
        if contains(&seen, b"/adapters/single/messages") {
            return Ok(stream);
        }
        if seen.len() > 64 * 1024 {
            bail!("no endpoint event in the first 64 KiB");
        }
    }
}

/// Opens up to `n` SSE streams at once through the gateway and holds them; stops early after
/// 20 failures.
async fn sse_streams(
    addr: SocketAddr,
    pid: u32,
    n: usize,
    fd_limit: u64,
) -> anyhow::Result<SseStreams> {
    use std::sync::atomic::Ordering::Relaxed;
    let rss_before_kib = rss_kib(pid).context("reading the gateway's RSS")?;
    let started = Instant::now();
    let next = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let failures = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let mut openers = tokio::task::JoinSet::new();
    for _ in 0..OPENERS {
        let (next, failures) = (next.clone(), failures.clone());
        openers.spawn(async move {
            let (mut held, mut first_error) = (Vec::new(), None);
            while failures.load(Relaxed) < 20 && next.fetch_add(1, Relaxed) < n {
                match tokio::time::timeout(REQUEST_TIMEOUT, open_sse(addr)).await {
                    Ok(Ok(stream)) => held.push(stream),
                    Ok(Err(e)) => {
                        failures.fetch_add(1, Relaxed);
                        first_error.get_or_insert_with(|| format!("{e:#}"));
                    }
                    Err(_) => {
                        failures.fetch_add(1, Relaxed);
                        first_error.get_or_insert_with(|| "timed out".to_owned());
                    }
                }
            }
            (held, first_error)
        });
    }
    let (mut held, mut first_error) = (Vec::new(), None);
    while let Some(done) = openers.join_next().await {
        let (h, e) = done.context("an SSE opener panicked")?;
        held.extend(h);
        first_error = first_error.or(e);
    }
    let seconds = started.elapsed().as_secs_f64();
    tokio::time::sleep(Duration::from_secs(1)).await;
    let mut buf = [0u8; 512];
    let still_open = held
        .iter()
        .filter(|s| match s.try_read(&mut buf) {
            Ok(0) => false,
            Ok(_) => true,
            Err(e) => e.kind() == std::io::ErrorKind::WouldBlock,
        })
        .count();
    let gateway_fds = fd_count(pid).unwrap_or(0);
    let rss_after_kib = rss_kib(pid).unwrap_or(0);
    let opened = held.len();
    drop(held);
    Ok(SseStreams {
        asked: n,
        opened,
        still_open,
        gateway_fds,
        fd_limit,
        rss_before_kib,
        rss_after_kib,
        seconds,
        first_error,
    })
}
