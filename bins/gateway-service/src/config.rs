//! Configuration of `gateway-service`: a TOML file, each key overridable by a flag or an
//! environment variable (`MCP_GATEWAY_<KEY>`), defaults that run on a laptop.
//!
//! Precedence: flag > environment > file > default.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context as _, bail};
use clap::Parser;
use mcp_gateway_core::AdapterName;
pub use mcp_gateway_core::parse_duration;
use mcp_gateway_telemetry::LogFormat;
use serde::Deserialize;

/// MCP gateway data plane: one entry point for many MCP servers, with session-aware routing.
#[derive(Debug, Parser, Default)]
#[command(name = "gateway-service", version, about)]
pub struct Args {
    /// TOML configuration file. Every key below may also be set there (snake_case).
    #[arg(long, env = "MCP_GATEWAY_CONFIG")]
    pub config: Option<PathBuf>,
    /// Data-plane listen address (default 127.0.0.1:8080; port 0 picks a free port).
    #[arg(long, env = "MCP_GATEWAY_LISTEN")]
    pub listen: Option<SocketAddr>,
    /// Admin listen address for /healthz, /readyz and /metrics (default 127.0.0.1:9090).
    #[arg(long, env = "MCP_GATEWAY_ADMIN_LISTEN")]
    pub admin_listen: Option<SocketAddr>,
    /// An adapter fronting servers deployed elsewhere: NAME=URL[,URL...] (one URL per replica).
    /// Repeatable; in the environment, separate adapters with ';'.
    #[arg(long = "adapter", env = "MCP_GATEWAY_ADAPTERS", value_delimiter = ';')]
    pub adapters: Vec<String>,
    /// Log filter in RUST_LOG syntax (default "info").
    #[arg(long, env = "MCP_GATEWAY_LOG")]
    pub log: Option<String>,
    /// Log format: text or json (default text).
    #[arg(long, env = "MCP_GATEWAY_LOG_FORMAT")]
    pub log_format: Option<LogFormat>,
    /// Time to connect to a replica, e.g. 5s (default 5s).
    #[arg(long, env = "MCP_GATEWAY_CONNECT_TIMEOUT", value_parser = parse_duration)]
    pub connect_timeout: Option<Duration>,
    /// Time to a replica's response headers (default 300s).
    #[arg(long, env = "MCP_GATEWAY_REQUEST_TIMEOUT", value_parser = parse_duration)]
    pub request_timeout: Option<Duration>,
    /// Close a response stream silent for this long (default 600s).
    #[arg(long, env = "MCP_GATEWAY_STREAM_IDLE_TIMEOUT", value_parser = parse_duration)]
    pub stream_idle_timeout: Option<Duration>,
    /// Keep a failing replica (connection refused or timed out, or eject_after_5xx 5xx in a
    /// row) out of placement this long at first (default 10s); doubled for each further
    /// ejection without a success in between, up to eject_max.
    #[arg(long, env = "MCP_GATEWAY_EJECT_FOR", value_parser = parse_duration)]
    pub eject_for: Option<Duration>,
    /// Consecutive 5xx answers that eject a replica (default 3).
    #[arg(long, env = "MCP_GATEWAY_EJECT_AFTER_5XX")]
    pub eject_after_5xx: Option<u32>,
    /// The longest ejection (default 5m).
    #[arg(long, env = "MCP_GATEWAY_EJECT_MAX", value_parser = parse_duration)]
    pub eject_max: Option<Duration>,
    /// Close a pooled connection to a replica after this long unused (default 4s: below the 5 s
    /// keep-alive of common servers, so no request races a connection being closed).
    #[arg(long, env = "MCP_GATEWAY_UPSTREAM_IDLE_TIMEOUT", value_parser = parse_duration)]
    pub upstream_idle_timeout: Option<Duration>,
    /// Largest request body in bytes (default 4194304).
    #[arg(long, env = "MCP_GATEWAY_MAX_BODY_BYTES")]
    pub max_body_bytes: Option<u64>,
    /// Largest total request header size in bytes (default 32768).
    #[arg(long, env = "MCP_GATEWAY_MAX_HEADER_BYTES")]
    pub max_header_bytes: Option<usize>,
    /// Live sessions this gateway accepts (default 10000).
    #[arg(long, env = "MCP_GATEWAY_MAX_SESSIONS")]
    pub max_sessions: Option<u64>,
    /// Live sessions one caller (principal) may hold across all adapters (default 100); a new
    /// session beyond gets 429 with Retry-After.
    #[arg(long, env = "MCP_GATEWAY_MAX_SESSIONS_PER_PRINCIPAL")]
    pub max_sessions_per_principal: Option<u64>,
    /// Allowed Host values (comma-separated; "*" for any). Default: loopback names when
    /// listening on loopback, any otherwise.
    #[arg(long, env = "MCP_GATEWAY_ALLOWED_HOSTS", value_delimiter = ',')]
    pub allowed_hosts: Option<Vec<String>>,
    /// Allowed browser Origins (comma-separated; "*" for any). Loopback origins are allowed
    /// on a loopback Host.
    #[arg(long, env = "MCP_GATEWAY_ALLOWED_ORIGINS", value_delimiter = ',')]
    pub allowed_origins: Option<Vec<String>>,
    /// A session unused this long expires (default 1h).
    #[arg(long, env = "MCP_GATEWAY_SESSION_IDLE_TTL", value_parser = parse_duration)]
    pub session_idle_ttl: Option<Duration>,
    /// A session older than this expires (default 12h).
    #[arg(long, env = "MCP_GATEWAY_SESSION_MAX_LIFETIME", value_parser = parse_duration)]
    pub session_max_lifetime: Option<Duration>,
    /// Serve the management API (and run adapters with the local runtime) on the data-plane
    /// listener: true or false (default true). Adapters declared in this configuration are
    /// served either way but are not managed by the API.
    #[arg(long, env = "MCP_GATEWAY_MANAGEMENT")]
    pub management: Option<bool>,
    /// Where adapters of the management API run: "local" (default: child processes of this
    /// gateway) or "kubernetes" (McpAdapter resources reconciled into StatefulSets; the data
    /// plane discovers their pods). The cluster comes from KUBECONFIG or the in-cluster
    /// service account.
    #[arg(long, env = "MCP_GATEWAY_RUNTIME")]
    pub runtime: Option<RuntimeKind>,
    /// Kubernetes runtime: the namespace of the adapters (default: the pod's own namespace,
    /// else "default").
    #[arg(long, env = "MCP_GATEWAY_KUBERNETES_NAMESPACE")]
    pub kubernetes_namespace: Option<String>,
    /// Kubernetes runtime: the cluster's kubeconfig (default: KUBECONFIG, ~/.kube/config, or
    /// the in-cluster service account).
    #[arg(long, env = "KUBECONFIG")]
    pub kubeconfig: Option<PathBuf>,
    /// Kubernetes runtime: prefixed to every imageName ("registry.example.com/mcp").
    #[arg(long, env = "MCP_GATEWAY_IMAGE_REGISTRY")]
    pub image_registry: Option<String>,
    /// Kubernetes runtime: image pull Secrets given to every adapter pod (comma-separated).
    #[arg(long, env = "MCP_GATEWAY_IMAGE_PULL_SECRETS", value_delimiter = ',')]
    pub image_pull_secrets: Option<Vec<String>>,
    /// Kubernetes runtime: service account of adapters with useWorkloadIdentity (none: such
    /// adapters are refused).
    #[arg(long, env = "MCP_GATEWAY_WORKLOAD_IDENTITY_SERVICE_ACCOUNT")]
    pub workload_identity_service_account: Option<String>,
    /// Kubernetes runtime: how long a pod being removed or replaced keeps its live sessions
    /// when the adapter sets no drainTimeoutSeconds (default 5m).
    #[arg(long, env = "MCP_GATEWAY_DRAIN_TIMEOUT", value_parser = parse_duration)]
    pub drain_timeout: Option<Duration>,
    /// Where the management API keeps adapter records (default
    /// $XDG_DATA_HOME/mcp-gateway, else ~/.local/share/mcp-gateway).
    #[arg(long, env = "MCP_GATEWAY_DATA_DIR")]
    pub data_dir: Option<PathBuf>,
    /// Session store: "memory" (default; one gateway) or "redis://host:port/db" / "rediss://…"
    /// (shared by every gateway replica). The password comes from MCP_GATEWAY_REDIS_PASSWORD or
    /// redis_password_file, never from the URL.
    #[arg(long, env = "MCP_GATEWAY_SESSION_STORE")]
    pub session_store: Option<String>,
    /// File holding the Redis password (its first line).
    #[arg(long, env = "MCP_GATEWAY_REDIS_PASSWORD_FILE")]
    pub redis_password_file: Option<PathBuf>,
    /// How often a session's Redis TTL is slid forward by a gateway using it (default 30s); also
    /// the longest a gateway may route on a record deleted elsewhere if it missed the
    /// invalidation message.
    #[arg(long, env = "MCP_GATEWAY_SESSION_REFRESH_AFTER", value_parser = parse_duration)]
    pub session_refresh_after: Option<Duration>,
    /// On shutdown, how long in-flight requests may finish before streams are closed (default 30s).
    #[arg(long, env = "MCP_GATEWAY_SHUTDOWN_GRACE", value_parser = parse_duration)]
    pub shutdown_grace: Option<Duration>,
    /// On shutdown, how long /readyz answers 503 while new connections are still served, before
    /// the listener closes (default 0s; behind a load balancer or in Kubernetes set it above the
    /// readiness probe's period, e.g. 5s, so no client is refused before it is taken out).
    #[arg(long, env = "MCP_GATEWAY_SHUTDOWN_DELAY", value_parser = parse_duration)]
    pub shutdown_delay: Option<Duration>,
    /// Threads serving the data listener, each with a runtime, a listening socket
    /// (SO_REUSEPORT) and a pool of replica connections of its own, so a request's client
    /// connection, replica connection and tasks stay on one thread (default: the number of
    /// CPUs the process may use; 0: the data listener is served by the main multi-threaded
    /// runtime, which balances few busy connections over the cores better).
    #[arg(long, env = "MCP_GATEWAY_DATA_THREADS")]
    pub data_threads: Option<usize>,
    /// Serve without authentication: every caller is an anonymous admin. Refused unless the
    /// listen address is loopback. Without it and without [auth] issuers or api_keys, the
    /// gateway creates an admin API key in the data directory (admin.key) on first start.
    #[arg(long, env = "MCP_GATEWAY_INSECURE_NO_AUTH")]
    pub insecure_no_auth: bool,
    /// The gateway's external base URL (e.g. https://mcp.example.com), for the OAuth protected
    /// resource metadata and `WWW-Authenticate`. Default: http:// and the request's Host.
    #[arg(long, env = "MCP_GATEWAY_PUBLIC_URL")]
    pub public_url: Option<String>,
    /// OpenTelemetry collector receiving traces, e.g. http://otel-collector:4318 (OTLP/HTTP;
    /// /v1/traces is appended) or http://otel-collector:4317 with --otlp-protocol grpc.
    /// Default: OTEL_EXPORTER_OTLP_TRACES_ENDPOINT or OTEL_EXPORTER_OTLP_ENDPOINT; with none
    /// of them set, no traces are made.
    #[arg(long, env = "MCP_GATEWAY_OTLP_ENDPOINT")]
    pub otlp_endpoint: Option<String>,
    /// http/protobuf or grpc (default: OTEL_EXPORTER_OTLP_PROTOCOL, else http/protobuf).
    #[arg(long, env = "MCP_GATEWAY_OTLP_PROTOCOL")]
    pub otlp_protocol: Option<mcp_gateway_telemetry::OtlpProtocol>,
    /// Share of new traces kept, 0.0 to 1.0 (default 1.0); a client's sampled flag is followed.
    #[arg(long, env = "MCP_GATEWAY_TRACE_SAMPLE_RATIO")]
    pub trace_sample_ratio: Option<f64>,
    /// Audit trail of tool calls, resource reads, prompt gets and management changes, as JSON
    /// lines: "stdout" or a file path (appended to). Default: none.
    #[arg(long, env = "MCP_GATEWAY_AUDIT")]
    pub audit: Option<String>,
    /// Put tool and prompt arguments in audit lines (default false: only their SHA-256).
    #[arg(long, env = "MCP_GATEWAY_AUDIT_ARGUMENTS")]
    pub audit_arguments: Option<bool>,
    #[command(subcommand)]
    pub command: Option<Command>,
}

/// Commands other than serving.
#[derive(Debug, Clone, clap::Subcommand)]
pub enum Command {
    /// Print a new API key and the [[auth.api_keys]] entry (its SHA-256) to put in the config.
    ApiKey {
        /// The key's principal, recorded as createdBy and sent upstream as X-Mcp-UserId.
        #[arg(long)]
        subject: String,
        /// Its roles (comma-separated), e.g. mcp.admin.
        #[arg(long, value_delimiter = ',')]
        roles: Vec<String>,
    },
}

/// The configuration file. Unknown keys are an error, so a typo does not pass silently.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileConfig {
    listen: Option<SocketAddr>,
    admin_listen: Option<SocketAddr>,
    otlp_endpoint: Option<String>,
    otlp_protocol: Option<mcp_gateway_telemetry::OtlpProtocol>,
    trace_sample_ratio: Option<f64>,
    audit: Option<String>,
    audit_arguments: Option<bool>,
    log: Option<String>,
    log_format: Option<LogFormat>,
    #[serde(
        default,
        deserialize_with = "mcp_gateway_core::deserialize_optional_duration"
    )]
    connect_timeout: Option<Duration>,
    #[serde(
        default,
        deserialize_with = "mcp_gateway_core::deserialize_optional_duration"
    )]
    request_timeout: Option<Duration>,
    #[serde(
        default,
        deserialize_with = "mcp_gateway_core::deserialize_optional_duration"
    )]
    stream_idle_timeout: Option<Duration>,
    #[serde(
        default,
        deserialize_with = "mcp_gateway_core::deserialize_optional_duration"
    )]
    eject_for: Option<Duration>,
    eject_after_5xx: Option<u32>,
    #[serde(
        default,
        deserialize_with = "mcp_gateway_core::deserialize_optional_duration"
    )]
    eject_max: Option<Duration>,
    #[serde(
        default,
        deserialize_with = "mcp_gateway_core::deserialize_optional_duration"
    )]
    upstream_idle_timeout: Option<Duration>,
    max_body_bytes: Option<u64>,
    max_header_bytes: Option<usize>,
    max_sessions: Option<u64>,
    max_sessions_per_principal: Option<u64>,
    allowed_hosts: Option<Vec<String>>,
    allowed_origins: Option<Vec<String>>,
    #[serde(
        default,
        deserialize_with = "mcp_gateway_core::deserialize_optional_duration"
    )]
    session_idle_ttl: Option<Duration>,
    #[serde(
        default,
        deserialize_with = "mcp_gateway_core::deserialize_optional_duration"
    )]
    session_max_lifetime: Option<Duration>,
    #[serde(
        default,
        deserialize_with = "mcp_gateway_core::deserialize_optional_duration"
    )]
    shutdown_grace: Option<Duration>,
    #[serde(
        default,
        deserialize_with = "mcp_gateway_core::deserialize_optional_duration"
    )]
    shutdown_delay: Option<Duration>,
    data_threads: Option<usize>,
    management: Option<bool>,
    runtime: Option<RuntimeKind>,
    kubernetes_namespace: Option<String>,
    kubeconfig: Option<PathBuf>,
    image_registry: Option<String>,
    image_pull_secrets: Option<Vec<String>>,
    workload_identity_service_account: Option<String>,
    #[serde(
        default,
        deserialize_with = "mcp_gateway_core::deserialize_optional_duration"
    )]
    drain_timeout: Option<Duration>,
    data_dir: Option<PathBuf>,
    session_store: Option<String>,
    redis_password_file: Option<PathBuf>,
    #[serde(
        default,
        deserialize_with = "mcp_gateway_core::deserialize_optional_duration"
    )]
    session_refresh_after: Option<Duration>,
    #[serde(default)]
    adapters: Vec<AdapterConfig>,
    insecure_no_auth: Option<bool>,
    public_url: Option<String>,
    #[serde(default)]
    auth: AuthSection,
}

/// `[auth]`: who may call, and what the gateway tells replicas about them.
#[derive(Debug, Default, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct AuthSection {
    /// OIDC / JWT issuers whose tokens are accepted.
    #[serde(default)]
    issuers: Vec<mcp_gateway_auth::IssuerConfig>,
    /// Static API keys (stored as SHA-256 digests).
    #[serde(default)]
    api_keys: Vec<mcp_gateway_auth::ApiKeyConfig>,
    #[serde(
        default,
        deserialize_with = "mcp_gateway_core::deserialize_optional_duration"
    )]
    jwks_cache_ttl: Option<Duration>,
    #[serde(
        default,
        deserialize_with = "mcp_gateway_core::deserialize_optional_duration"
    )]
    jwks_min_refresh_interval: Option<Duration>,
    /// The role that may do everything (default mcp.admin).
    admin_role: Option<String>,
    /// When set, only holders of this role (or admins) may create adapters.
    creator_role: Option<String>,
    /// Header carrying the caller's subject to replicas (default X-Mcp-UserId; "" for none).
    user_id_header: Option<String>,
    /// Header carrying the caller's roles to replicas (default X-Mcp-Roles; "" for none).
    roles_header: Option<String>,
    /// Programs a non-admin may set as an adapter's command: `"/path/to/server"`, or
    /// `{ command = "/path/to/server", env = ["GITHUB_TOKEN"] }` to let non-admins set those
    /// environment variables (and no others) for it.
    #[serde(default)]
    allowed_commands: Vec<AllowedCommandEntry>,
    /// Images a non-admin may run (Kubernetes runtime): exact names, or prefixes ending in `*`.
    /// Empty: any image.
    #[serde(default)]
    allowed_images: Vec<String>,
}

/// One `allowed_commands` entry: a program alone, or with the variables non-admins may set.
#[derive(Debug, Clone, Deserialize)]
#[serde(
    untagged,
    expecting = "a program path, or { command = \"…\", env = [\"NAME\", …] }"
)]
enum AllowedCommandEntry {
    Program(String),
    WithEnv(mcp_gateway_api::AllowedCommand),
}

impl From<AllowedCommandEntry> for mcp_gateway_api::AllowedCommand {
    fn from(entry: AllowedCommandEntry) -> Self {
        match entry {
            AllowedCommandEntry::Program(command) => Self::new(command),
            AllowedCommandEntry::WithEnv(allowed) => allowed,
        }
    }
}

/// How callers are authenticated and authorized.
#[derive(Debug, Clone)]
pub struct AuthSettings {
    /// `None`: no authentication (`--insecure-no-auth`), every caller is an anonymous admin.
    /// With no issuers and no keys, the gateway adds the admin key of the data directory.
    pub tokens: Option<mcp_gateway_auth::AuthConfig>,
    pub policy: mcp_gateway_core::RolePolicy,
    /// Programs non-admins may run as adapters, each with the variables they may set for it.
    pub allowed_commands: Vec<mcp_gateway_api::AllowedCommand>,
    /// Images non-admins may run (`allowed_images`); empty: any.
    pub allowed_images: Vec<String>,
    /// External base URL, without a trailing '/'.
    pub public_url: Option<String>,
}

/// An adapter fronting MCP servers deployed elsewhere, one upstream URL per replica.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AdapterConfig {
    pub name: AdapterName,
    /// Base URLs (`http://host:port`), one per replica; replica ids are their indexes.
    pub upstreams: Vec<String>,
    /// The replicas' streamable HTTP endpoint path.
    #[serde(default = "default_mcp_path")]
    pub mcp_path: String,
    /// The replicas' legacy HTTP+SSE endpoint path.
    #[serde(default = "default_sse_path")]
    pub sse_path: String,
    /// Roles any of which lets a principal use the adapter (empty: every authenticated
    /// principal). Adapters of the configuration have no creator: admins manage them.
    #[serde(default)]
    pub required_roles: Vec<String>,
    /// Headers added to requests to the upstreams, read from the gateway's secrets:
    /// `{ "Authorization" = { env = "GITHUB_TOKEN" } }` or `{ file = "/run/secrets/x" }`.
    #[serde(default)]
    pub upstream_headers: std::collections::BTreeMap<String, mcp_gateway_core::SecretRef>,
}

fn default_mcp_path() -> String {
    "/mcp".into()
}

fn default_sse_path() -> String {
    "/sse".into()
}

/// Where session records live.
#[derive(Clone, PartialEq, Eq)]
pub enum SessionStoreConfig {
    Memory,
    Redis {
        url: String,
        password: Option<String>,
        refresh_after: Duration,
    },
}

impl std::fmt::Debug for SessionStoreConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Memory => f.write_str("Memory"),
            Self::Redis {
                url,
                password,
                refresh_after,
            } => f
                .debug_struct("Redis")
                .field("url", url)
                .field("password", &password.as_ref().map(|_| "<redacted>"))
                .field("refresh_after", refresh_after)
                .finish(),
        }
    }
}

/// The resolved configuration.
#[derive(Debug, Clone)]
pub struct Config {
    pub listen: SocketAddr,
    pub admin_listen: SocketAddr,
    pub log: String,
    pub log_format: LogFormat,
    pub routing: mcp_gateway_routing::RoutingConfig,
    pub session_idle_ttl: Duration,
    pub session_max_lifetime: Duration,
    pub shutdown_grace: Duration,
    /// Readiness fails this long before the data listener closes.
    pub shutdown_delay: Duration,
    /// Threads with a runtime of their own serving the data listener; 0: the main runtime.
    /// Default: one per CPU the process may use ([`default_data_threads`]).
    pub data_threads: usize,
    pub session_store: SessionStoreConfig,
    /// Serve the management API with the local runtime.
    pub management: bool,
    /// Serve the data plane (`gateway-management` turns it off: control plane only).
    pub data_plane: bool,
    /// Where the management API's adapters run.
    pub runtime: Runtime,
    pub data_dir: PathBuf,
    pub adapters: Vec<AdapterConfig>,
    pub auth: AuthSettings,
    /// Trace export; off unless an endpoint is configured here or in `OTEL_EXPORTER_OTLP_*`.
    pub tracing: mcp_gateway_telemetry::TracingConfig,
    /// Where audit lines go; `None`: no audit trail.
    pub audit: Option<mcp_gateway_telemetry::AuditTarget>,
    /// Whether audit lines carry tool and prompt arguments (not only their hash).
    pub audit_arguments: bool,
    /// With the Redis store, how often `mcp_gateway_sessions_live` is read back from Redis
    /// (15 s; not a file key: tests shorten it).
    pub live_sessions_every: Duration,
}

/// `runtime` as written in the configuration.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Deserialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum RuntimeKind {
    #[default]
    Local,
    Kubernetes,
}

/// Where the management API's adapters run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Runtime {
    /// Child processes of this gateway.
    Local,
    /// McpAdapter resources of a cluster.
    Kubernetes(KubernetesConfig),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KubernetesConfig {
    pub namespace: String,
    /// None: KUBECONFIG's default search, then the in-cluster service account.
    pub kubeconfig: Option<PathBuf>,
    pub image_registry: Option<String>,
    pub image_pull_secrets: Vec<String>,
    pub workload_identity_service_account: Option<String>,
    pub drain_timeout: Duration,
}

/// The namespace of this pod, when running in a cluster.
fn in_cluster_namespace() -> Option<String> {
    std::fs::read_to_string("/var/run/secrets/kubernetes.io/serviceaccount/namespace")
        .ok()
        .map(|s| s.trim().to_owned())
        .filter(|s| !s.is_empty())
}

impl Config {
    /// Defaults for tests: every port 0, no adapters, no authentication.
    pub fn for_tests() -> Self {
        Self::resolve(Args {
            listen: Some("127.0.0.1:0".parse().expect("literal address")),
            admin_listen: Some("127.0.0.1:0".parse().expect("literal address")),
            management: Some(false),
            insecure_no_auth: true,
            ..Args::default()
        })
        .expect("defaults are valid")
    }

    /// Reads the file named by `--config` (if any) and applies flags and environment on top.
    pub fn resolve(args: Args) -> anyhow::Result<Self> {
        let file = match &args.config {
            Some(path) => read_file(path)?,
            None => FileConfig::default(),
        };
        let listen = args
            .listen
            .or(file.listen)
            .unwrap_or_else(|| "127.0.0.1:8080".parse().expect("literal address"));
        let defaults = mcp_gateway_routing::RoutingConfig::default();
        let routing = mcp_gateway_routing::RoutingConfig {
            connect_timeout: args
                .connect_timeout
                .or(file.connect_timeout)
                .unwrap_or(defaults.connect_timeout),
            request_timeout: args
                .request_timeout
                .or(file.request_timeout)
                .unwrap_or(defaults.request_timeout),
            stream_idle_timeout: args
                .stream_idle_timeout
                .or(file.stream_idle_timeout)
                .unwrap_or(defaults.stream_idle_timeout),
            eject_for: args
                .eject_for
                .or(file.eject_for)
                .unwrap_or(defaults.eject_for),
            eject_after_5xx: args
                .eject_after_5xx
                .or(file.eject_after_5xx)
                .unwrap_or(defaults.eject_after_5xx),
            eject_max: args
                .eject_max
                .or(file.eject_max)
                .unwrap_or(defaults.eject_max),
            upstream_idle_timeout: args
                .upstream_idle_timeout
                .or(file.upstream_idle_timeout)
                .unwrap_or(defaults.upstream_idle_timeout),
            max_body_bytes: args
                .max_body_bytes
                .or(file.max_body_bytes)
                .unwrap_or(defaults.max_body_bytes),
            max_header_bytes: args
                .max_header_bytes
                .or(file.max_header_bytes)
                .unwrap_or(defaults.max_header_bytes),
            max_sessions: args
                .max_sessions
                .or(file.max_sessions)
                .unwrap_or(defaults.max_sessions),
            max_sessions_per_principal: args
                .max_sessions_per_principal
                .or(file.max_sessions_per_principal)
                .unwrap_or(defaults.max_sessions_per_principal),
            allowed_hosts: args
                .allowed_hosts
                .or(file.allowed_hosts)
                .unwrap_or_else(|| {
                    mcp_gateway_routing::RoutingConfig::default_allowed_hosts(listen.ip())
                }),
            allowed_origins: args
                .allowed_origins
                .or(file.allowed_origins)
                .unwrap_or_default(),
            identity_headers: identity_headers(&file.auth)?,
        };
        let auth = auth_settings(
            file.auth,
            args.insecure_no_auth || file.insecure_no_auth.unwrap_or(false),
            args.public_url.or(file.public_url),
            listen,
        )?;
        let sample_ratio = args
            .trace_sample_ratio
            .or(file.trace_sample_ratio)
            .unwrap_or(1.0);
        if !(0.0..=1.0).contains(&sample_ratio) {
            bail!("trace_sample_ratio is {sample_ratio}: use a share between 0.0 and 1.0");
        }
        let tracing = mcp_gateway_telemetry::TracingConfig {
            endpoint: args.otlp_endpoint.or(file.otlp_endpoint),
            protocol: args.otlp_protocol.or(file.otlp_protocol),
            sample_ratio,
            ..mcp_gateway_telemetry::TracingConfig::new("gateway-service")
        };
        let audit = match args.audit.or(file.audit) {
            Some(target) => Some(
                target
                    .parse()
                    .map_err(|e: String| anyhow::anyhow!("audit: {e}"))?,
            ),
            None => None,
        };
        let audit_arguments = args
            .audit_arguments
            .or(file.audit_arguments)
            .unwrap_or(false);
        let mut adapters = file.adapters;
        for spec in &args.adapters {
            let adapter = parse_adapter_flag(spec)?;
            adapters.retain(|a| a.name != adapter.name);
            adapters.push(adapter);
        }
        let config = Self {
            listen,
            admin_listen: args
                .admin_listen
                .or(file.admin_listen)
                .unwrap_or_else(|| "127.0.0.1:9090".parse().expect("literal address")),
            log: args.log.or(file.log).unwrap_or_else(|| "info".into()),
            log_format: args.log_format.or(file.log_format).unwrap_or_default(),
            routing,
            session_idle_ttl: args
                .session_idle_ttl
                .or(file.session_idle_ttl)
                .unwrap_or(Duration::from_secs(3600)),
            session_max_lifetime: args
                .session_max_lifetime
                .or(file.session_max_lifetime)
                .unwrap_or(Duration::from_secs(12 * 3600)),
            shutdown_grace: args
                .shutdown_grace
                .or(file.shutdown_grace)
                .unwrap_or(Duration::from_secs(30)),
            shutdown_delay: args
                .shutdown_delay
                .or(file.shutdown_delay)
                .unwrap_or(Duration::ZERO),
            data_threads: args
                .data_threads
                .or(file.data_threads)
                .unwrap_or_else(default_data_threads),
            session_store: session_store(
                args.session_store.or(file.session_store),
                args.redis_password_file.or(file.redis_password_file),
                args.session_refresh_after
                    .or(file.session_refresh_after)
                    .unwrap_or(Duration::from_secs(30)),
            )?,
            management: args.management.or(file.management).unwrap_or(true),
            data_plane: true,
            runtime: match args.runtime.or(file.runtime).unwrap_or_default() {
                RuntimeKind::Local => Runtime::Local,
                RuntimeKind::Kubernetes => Runtime::Kubernetes(KubernetesConfig {
                    namespace: args
                        .kubernetes_namespace
                        .or(file.kubernetes_namespace)
                        .or_else(in_cluster_namespace)
                        .unwrap_or_else(|| "default".into()),
                    kubeconfig: args.kubeconfig.or(file.kubeconfig),
                    image_registry: args.image_registry.or(file.image_registry),
                    image_pull_secrets: args
                        .image_pull_secrets
                        .or(file.image_pull_secrets)
                        .unwrap_or_default(),
                    workload_identity_service_account: args
                        .workload_identity_service_account
                        .or(file.workload_identity_service_account),
                    drain_timeout: args
                        .drain_timeout
                        .or(file.drain_timeout)
                        .unwrap_or(Duration::from_secs(300)),
                }),
            },
            data_dir: args
                .data_dir
                .or(file.data_dir)
                .unwrap_or_else(default_data_dir),
            adapters,
            auth,
            tracing,
            audit,
            audit_arguments,
            live_sessions_every: Duration::from_secs(15),
        };
        config.validate()?;
        Ok(config)
    }

    fn validate(&self) -> anyhow::Result<()> {
        let mut seen = std::collections::HashSet::new();
        for a in &self.adapters {
            if !seen.insert(a.name.clone()) {
                bail!("adapter {} is declared twice", a.name);
            }
            if a.upstreams.is_empty() {
                bail!("adapter {}: upstreams must list at least one URL", a.name);
            }
            for u in &a.upstreams {
                check_upstream(u).with_context(|| format!("adapter {}", a.name))?;
            }
            mcp_gateway_local::upstream_headers(&a.upstream_headers)
                .map_err(|e| anyhow::anyhow!("adapter {}: {e}", a.name))?;
            for (key, path) in [("mcp_path", &a.mcp_path), ("sse_path", &a.sse_path)] {
                if !path.starts_with('/') || path.contains('?') {
                    bail!(
                        "adapter {}: {key} {path:?} must be a path starting with '/'",
                        a.name
                    );
                }
            }
        }
        if self.routing.max_body_bytes == 0 || self.routing.max_sessions == 0 {
            bail!("max_body_bytes and max_sessions must be greater than 0");
        }
        if self.routing.max_sessions_per_principal == 0 {
            bail!("max_sessions_per_principal must be greater than 0");
        }
        if self.routing.eject_after_5xx == 0 {
            bail!("eject_after_5xx must be at least 1");
        }
        if self.management
            && self.data_plane
            && self.runtime == Runtime::Local
            && matches!(self.session_store, SessionStoreConfig::Redis { .. })
        {
            // The local runtime's replicas are processes of this gateway, named by ids only it
            // can resolve: another gateway sharing the store would send the session to its own
            // process of that name (someone else's program, possibly), which answers 404, and
            // the session would then be deleted for every gateway.
            bail!(
                "session_store = \"redis://…\" shares sessions between gateways, but adapters of \
                 the management API run as processes of one gateway (the local runtime) that the \
                 others cannot reach. Set management = false (MCP_GATEWAY_MANAGEMENT=false) on \
                 every gateway sharing the store and declare the adapters' upstreams in \
                 [[adapters]], or keep session_store = \"memory\" on a single gateway"
            );
        }
        Ok(())
    }
}

/// One data thread per CPU the process may use (its affinity mask and cgroup CPU quota, as
/// `std::thread::available_parallelism` reads them; 1 when that cannot be read): measured,
/// per-CPU threads cost less CPU per request and add less latency than the shared runtime
/// (docs/benchmarks.md).
pub fn default_data_threads() -> usize {
    std::thread::available_parallelism().map_or(1, usize::from)
}

fn identity_headers(
    auth: &AuthSection,
) -> anyhow::Result<Option<mcp_gateway_routing::IdentityHeaders>> {
    let defaults = mcp_gateway_routing::IdentityHeaders::default();
    let name = |value: &Option<String>, default: http::HeaderName, key: &str| match value {
        None => Ok(Some(default)),
        Some(v) if v.is_empty() => Ok(None),
        Some(v) => http::HeaderName::from_bytes(v.as_bytes())
            .map(Some)
            .with_context(|| format!("auth.{key} {v:?} is not a valid header name")),
    };
    let user_id = name(&auth.user_id_header, defaults.user_id, "user_id_header")?;
    let roles = name(&auth.roles_header, defaults.roles, "roles_header")?;
    Ok(match (user_id, roles) {
        (Some(user_id), Some(roles)) => {
            Some(mcp_gateway_routing::IdentityHeaders { user_id, roles })
        }
        (None, None) => None,
        _ => bail!("auth.user_id_header and auth.roles_header: set both to \"\" or neither"),
    })
}

fn auth_settings(
    section: AuthSection,
    insecure: bool,
    public_url: Option<String>,
    listen: SocketAddr,
) -> anyhow::Result<AuthSettings> {
    let has_tokens = !section.issuers.is_empty() || !section.api_keys.is_empty();
    if insecure && has_tokens {
        bail!(
            "insecure_no_auth is set together with [auth] issuers or api_keys: remove one (tokens \
             would be ignored)"
        );
    }
    if insecure && !listen.ip().is_loopback() {
        bail!(
            "--insecure-no-auth is only allowed on a loopback listen address, and listen is \
             {listen}: configure [auth] issuers or api_keys (or use the generated admin key)"
        );
    }
    let public_url = match public_url {
        Some(url) => {
            let uri: http::Uri = url
                .parse()
                .with_context(|| format!("public_url {url:?} is not a URL"))?;
            if !matches!(uri.scheme_str(), Some("http" | "https")) || uri.authority().is_none() {
                bail!("public_url {url:?} must be an http(s) URL such as https://mcp.example.com");
            }
            Some(url.trim_end_matches('/').to_owned())
        }
        None => None,
    };
    if public_url.is_none()
        && let Some(i) = section.issuers.iter().find(|i| i.resource_audiences)
    {
        bail!(
            "auth issuer {:?} has resource_audiences: set public_url (the URL clients use, e.g. \
             https://mcp.example.com), which the resource-bound audiences are built from",
            i.issuer
        );
    }
    let mut policy = mcp_gateway_core::RolePolicy::default();
    if let Some(role) = section.admin_role {
        if role.trim().is_empty() {
            bail!("auth.admin_role must not be empty");
        }
        policy.admin_role = role;
    }
    policy.creator_role = section.creator_role.filter(|r| !r.trim().is_empty());
    let tokens = (!insecure).then(|| {
        let defaults = mcp_gateway_auth::AuthConfig::default();
        mcp_gateway_auth::AuthConfig {
            issuers: section.issuers,
            api_keys: section.api_keys,
            jwks_cache_ttl: section.jwks_cache_ttl.unwrap_or(defaults.jwks_cache_ttl),
            jwks_min_refresh_interval: section
                .jwks_min_refresh_interval
                .unwrap_or(defaults.jwks_min_refresh_interval),
            ..defaults
        }
    });
    Ok(AuthSettings {
        tokens,
        policy,
        allowed_commands: section
            .allowed_commands
            .into_iter()
            .map(Into::into)
            .collect(),
        allowed_images: allowed_images(section.allowed_images)?,
        public_url,
    })
}

/// `allowed_images` entries: an image name, or a prefix ending in `*`; a `*` anywhere else, a tag
/// or an empty entry is refused (each would silently match nothing or everything).
fn allowed_images(entries: Vec<String>) -> anyhow::Result<Vec<String>> {
    for entry in &entries {
        let name = entry.strip_suffix('*').unwrap_or(entry);
        if entry.is_empty() || entry == "*" {
            anyhow::bail!(
                "auth.allowed_images: {entry:?} would allow every image; leave allowed_images \
                 out (or empty) to allow any image"
            );
        }
        if name.contains('*') || name.contains(char::is_whitespace) {
            anyhow::bail!(
                "auth.allowed_images: {entry:?}: only a trailing * is a wildcard \
                 (e.g. \"ghcr.io/acme/*\"), and names have no spaces"
            );
        }
        if name
            .rsplit('/')
            .next()
            .is_some_and(|last| last.contains(':') || last.contains('@'))
        {
            anyhow::bail!(
                "auth.allowed_images: {entry:?} names a tag or digest; list the image name \
                 (imageName) alone: every tag of it is allowed"
            );
        }
    }
    Ok(entries)
}

fn session_store(
    spec: Option<String>,
    password_file: Option<PathBuf>,
    refresh_after: Duration,
) -> anyhow::Result<SessionStoreConfig> {
    let spec = spec.unwrap_or_else(|| "memory".into());
    if spec == "memory" {
        return Ok(SessionStoreConfig::Memory);
    }
    if !(spec.starts_with("redis://") || spec.starts_with("rediss://")) {
        bail!("session_store {spec:?}: use \"memory\" or a redis:// / rediss:// URL");
    }
    let password = match (
        std::env::var("MCP_GATEWAY_REDIS_PASSWORD").ok(),
        password_file,
    ) {
        (Some(pw), _) if !pw.is_empty() => Some(pw),
        (_, Some(path)) => {
            let text = std::fs::read_to_string(&path)
                .with_context(|| format!("cannot read redis_password_file {}", path.display()))?;
            Some(text.lines().next().unwrap_or("").to_owned())
        }
        _ => None,
    };
    Ok(SessionStoreConfig::Redis {
        url: spec,
        password,
        refresh_after,
    })
}

fn default_data_dir() -> PathBuf {
    let base = std::env::var_os("XDG_DATA_HOME")
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".local/share")));
    match base {
        Some(b) => b.join("mcp-gateway"),
        None => PathBuf::from("mcp-gateway-data"),
    }
}

fn read_file(path: &Path) -> anyhow::Result<FileConfig> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("cannot read config file {}", path.display()))?;
    toml::from_str(&text).with_context(|| format!("invalid config file {}", path.display()))
}

/// `NAME=URL[,URL...]`
fn parse_adapter_flag(spec: &str) -> anyhow::Result<AdapterConfig> {
    let Some((name, urls)) = spec.split_once('=') else {
        bail!("--adapter {spec:?}: expected NAME=URL[,URL...]");
    };
    Ok(AdapterConfig {
        name: AdapterName::new(name.trim())?,
        upstreams: urls
            .split(',')
            .map(|u| u.trim().to_owned())
            .filter(|u| !u.is_empty())
            .collect(),
        mcp_path: default_mcp_path(),
        sse_path: default_sse_path(),
        required_roles: Vec::new(),
        upstream_headers: Default::default(),
    })
}

/// An upstream is `http://host:port` with no path: the adapter's paths are appended.
fn check_upstream(url: &str) -> anyhow::Result<()> {
    let uri: http::Uri = url
        .parse()
        .with_context(|| format!("upstream {url:?} is not a URL"))?;
    if uri.scheme_str() != Some("http") {
        bail!("upstream {url:?} must start with http:// (TLS to replicas is not supported yet)");
    }
    if uri.authority().is_none() {
        bail!("upstream {url:?} has no host");
    }
    if !matches!(uri.path(), "" | "/") || uri.query().is_some() {
        bail!("upstream {url:?} must have no path; set mcp_path/sse_path instead");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn from_toml(text: &str, flags: &[&str]) -> anyhow::Result<Config> {
        let dir = tempfile::tempdir()?;
        let path = dir.path().join("gw.toml");
        std::fs::write(&path, text)?;
        let mut argv = vec![
            "gateway-service".to_owned(),
            "--config".into(),
            path.display().to_string(),
        ];
        argv.extend(flags.iter().map(|s| s.to_string()));
        Config::resolve(Args::try_parse_from(argv)?)
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(48))]
        /// An arbitrary configuration file (known keys with values of any type, unknown keys,
        /// or text that is not TOML) never panics: it is a configuration or an error.
        #[test]
        fn arbitrary_config_files_are_read_or_refused_never_a_panic(
            entries in proptest::collection::vec((
                proptest::prop_oneof![
                    proptest::strategy::Just("listen"), proptest::strategy::Just("admin_listen"),
                    proptest::strategy::Just("session_store"), proptest::strategy::Just("max_sessions"),
                    proptest::strategy::Just("session_idle_ttl"), proptest::strategy::Just("runtime"),
                    proptest::strategy::Just("drain_timeout"), proptest::strategy::Just("public_url"),
                    proptest::strategy::Just("log_format"), proptest::strategy::Just("unknown_key"),
                ],
                proptest::prop_oneof![
                    "\"[ -~]{0,24}\"", "-?[0-9]{1,12}", "true", "\\[\"[a-z]{0,5}\"\\]", "[ -~]{0,16}",
                ],
            ), 0..6),
            garbage in "[ -~\n]{0,60}",
        ) {
            let mut text = String::new();
            for (k, v) in &entries {
                text.push_str(&format!("{k} = {v}\n"));
            }
            let _ = from_toml(&text, &[]);
            let _ = from_toml(&garbage, &[]);
        }
    }

    #[test]
    fn reads_the_documented_example() {
        let c = from_toml(
            r#"
listen = "127.0.0.1:8080"
admin_listen = "127.0.0.1:9090"
[[adapters]]
name = "everything"
upstreams = ["http://127.0.0.1:9001", "http://127.0.0.1:9002"]
mcp_path = "/mcp"
sse_path = "/sse"
"#,
            &[],
        )
        .unwrap();
        assert_eq!(c.listen.port(), 8080);
        assert_eq!(c.adapters.len(), 1);
        assert_eq!(c.adapters[0].upstreams.len(), 2);
        assert_eq!(c.routing.allowed_hosts, ["localhost", "127.0.0.1", "[::1]"]);
    }

    #[test]
    fn flags_override_the_file() {
        let c = from_toml(
            "listen = \"127.0.0.1:1\"\nrequest_timeout = \"2s\"\nconnect_timeout = 3\n",
            &[
                "--listen",
                "127.0.0.1:0",
                "--adapter",
                "x=http://127.0.0.1:5,http://127.0.0.1:6",
            ],
        )
        .unwrap();
        assert_eq!(c.listen.port(), 0);
        assert_eq!(c.routing.request_timeout, Duration::from_secs(2));
        assert_eq!(c.routing.connect_timeout, Duration::from_secs(3));
        assert_eq!(c.adapters[0].name.as_str(), "x");
        assert_eq!(c.adapters[0].upstreams.len(), 2);
    }

    #[test]
    fn bad_configs_say_what_to_fix() {
        let err = |text: &str| format!("{:#}", from_toml(text, &[]).unwrap_err());
        assert!(err("lisen = \"x\"").contains("unknown field"));
        assert!(
            err("[[adapters]]\nname = \"Bad_Name\"\nupstreams = [\"http://a:1\"]")
                .contains("DNS-1123")
        );
        assert!(err("[[adapters]]\nname = \"a\"\nupstreams = []").contains("at least one"));
        assert!(
            err("[[adapters]]\nname = \"a\"\nupstreams = [\"http://a:1/mcp\"]").contains("no path")
        );
        assert!(err("[[adapters]]\nname = \"a\"\nupstreams = [\"ftp://a:1\"]").contains("http://"));
        assert!(err("request_timeout = \"5 parsecs\"").contains("duration"));
    }

    #[test]
    fn a_shared_redis_store_is_refused_with_the_local_runtime() {
        let redis = "session_store = \"redis://127.0.0.1:6379/0\"\n";
        let err = format!("{:#}", from_toml(redis, &[]).unwrap_err());
        assert!(err.contains("management = false"), "{err}");
        let c = from_toml(&format!("{redis}management = false\n"), &[]).unwrap();
        assert!(matches!(c.session_store, SessionStoreConfig::Redis { .. }));
        assert!(from_toml(redis, &["--management", "false"]).is_ok());
    }

    #[test]
    fn reads_the_auth_section() {
        let c = from_toml(
            r#"
public_url = "https://mcp.example.com/"
[auth]
admin_role = "platform-admin"
creator_role = "mcp.creator"
allowed_commands = ["npx", { command = "/opt/gh-server", env = ["GITHUB_TOKEN"] }]
allowed_images = ["ghcr.io/acme/*", "docker.io/mcp/everything"]
jwks_cache_ttl = "5m"
jwks_min_refresh_interval = "1s"
user_id_header = "X-User"
roles_header = "X-Groups"
[[auth.issuers]]
issuer = "https://keycloak.example.com/realms/mcp"
audiences = ["mcp-gateway"]
roles_claim = "realm_access.roles"
[[auth.api_keys]]
subject = "ci-bot"
roles = ["team-a"]
sha256 = "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08"
[[adapters]]
name = "gh"
upstreams = ["http://127.0.0.1:9001"]
required_roles = ["team-a"]
upstream_headers = { "X-Token" = { env = "PATH" } }
"#,
            &[],
        )
        .unwrap();
        assert_eq!(
            c.auth.public_url.as_deref(),
            Some("https://mcp.example.com")
        );
        assert_eq!(c.auth.policy.admin_role, "platform-admin");
        assert_eq!(c.auth.policy.creator_role.as_deref(), Some("mcp.creator"));
        assert_eq!(
            c.auth.allowed_commands,
            [
                mcp_gateway_api::AllowedCommand::new("npx"),
                mcp_gateway_api::AllowedCommand::new("/opt/gh-server").with_env(["GITHUB_TOKEN"]),
            ]
        );
        assert_eq!(
            c.auth.allowed_images,
            ["ghcr.io/acme/*", "docker.io/mcp/everything"]
        );
        let tokens = c.auth.tokens.as_ref().unwrap();
        assert_eq!(tokens.issuers[0].roles_claim, "realm_access.roles");
        assert_eq!(tokens.api_keys[0].subject, "ci-bot");
        assert_eq!(tokens.jwks_cache_ttl, Duration::from_secs(300));
        let ids = c.routing.identity_headers.as_ref().unwrap();
        assert_eq!(
            (ids.user_id.as_str(), ids.roles.as_str()),
            ("x-user", "x-groups")
        );
        assert_eq!(c.adapters[0].required_roles, ["team-a"]);
        for (entry, says) in [
            ("*", "every image"),
            ("", "every image"),
            ("ghcr.io/*/server", "only a trailing *"),
            ("ghcr.io/acme/server:1.2", "tag or digest"),
        ] {
            let err = format!(
                "{:#}",
                from_toml(&format!("[auth]\nallowed_images = [{entry:?}]"), &[]).unwrap_err()
            );
            assert!(err.contains(says), "{entry}: {err}");
        }
        // A registry with a port is a name, not a tag.
        let c = from_toml("[auth]\nallowed_images = [\"reg:5000/acme/*\"]", &[]).unwrap();
        assert_eq!(c.auth.allowed_images, ["reg:5000/acme/*"]);
        // Each secret must be readable at start.
        let err = format!(
            "{:#}",
            from_toml(
                "[[adapters]]\nname = \"a\"\nupstreams = [\"http://a:1\"]\n\
                 upstream_headers = { \"X-T\" = { env = \"MCPGW_SURELY_UNSET\" } }",
                &[]
            )
            .unwrap_err()
        );
        assert!(err.contains("MCPGW_SURELY_UNSET is not set"), "{err}");
        let err = format!(
            "{:#}",
            from_toml(
                "insecure_no_auth = true\n[[auth.api_keys]]\nsubject = \"x\"\nsha256 = \"00\"",
                &[]
            )
            .unwrap_err()
        );
        assert!(err.contains("remove one"), "{err}");
        let err = format!(
            "{:#}",
            from_toml(
                "[[auth.issuers]]\nissuer = \"https://idp.example.com\"\naudiences = []\n\
                 resource_audiences = true",
                &[]
            )
            .unwrap_err()
        );
        assert!(err.contains("set public_url"), "{err}");
    }
}
