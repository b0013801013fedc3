//! `gateway-service`: the MCP gateway's data plane as a library, so tests boot whole gateways
//! in-process. [`run`] binds the listeners and returns a [`Handle`] with the bound addresses
//! and a graceful shutdown.

mod auth;
pub mod config;
mod http1;
mod kubernetes;
mod management;
mod server;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use anyhow::Context as _;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use mcp_gateway_auth::{AuthLayer, Authenticator, Reject as _};
use mcp_gateway_core::{
    AdapterAccess, AdapterTarget, Authorizer, Principal, Replica, SessionStore, StaticResolver,
};
use mcp_gateway_routing::{ClientAddr, Gateway, ProxyBody};
use mcp_gateway_store::{MemoryStore, RedisConfig, RedisStore, StoreConfig};
use mcp_gateway_telemetry::MetricsHandle;
use std::convert::Infallible;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tower::{Layer as _, ServiceExt as _};

pub use auth::{ADMIN_KEY_FILE, METADATA_PATH};
pub use config::{AdapterConfig, Args, AuthSettings, Command, Config, SessionStoreConfig};

/// A running gateway.
pub struct Handle {
    /// Where the data plane listens (the real port when configured with port 0).
    pub data_addr: std::net::SocketAddr,
    /// Where /healthz, /readyz and /metrics listen.
    pub admin_addr: std::net::SocketAddr,
    shutdown: watch::Sender<bool>,
    tasks: Vec<JoinHandle<()>>,
    audit: Option<Arc<mcp_gateway_telemetry::AuditLog>>,
}

impl Handle {
    /// Stops accepting, lets in-flight requests finish within the configured grace period, then
    /// closes what remains (long-lived streams).
    pub async fn shutdown(self) {
        let _ = self.shutdown.send(true);
        for task in self.tasks {
            let _ = task.await;
        }
        // Every request has ended: the last audit lines are queued, and written now.
        if let Some(audit) = self.audit {
            audit.close();
        }
    }
}

/// The static adapters of the configuration as resolver targets (replica ids are indexes).
/// Fails when an upstream header's secret cannot be read.
pub fn targets(adapters: &[AdapterConfig]) -> anyhow::Result<Vec<AdapterTarget>> {
    adapters
        .iter()
        .map(|a| {
            let upstream_headers = mcp_gateway_local::upstream_headers(&a.upstream_headers)
                .map_err(|e| anyhow::anyhow!("adapter {}: {e}", a.name))?;
            Ok(AdapterTarget {
                name: a.name.clone(),
                replicas: a
                    .upstreams
                    .iter()
                    .enumerate()
                    .map(|(i, url)| Replica {
                        id: i.to_string().into(),
                        ordinal: i as u32,
                        base_url: url.trim_end_matches('/').into(),
                        ready: true,
                        draining: false,
                    })
                    .collect(),
                mcp_path: a.mcp_path.clone(),
                sse_path: a.sse_path.clone(),
                access: AdapterAccess {
                    created_by: None,
                    created_by_issuer: None,
                    required_roles: a.required_roles.clone(),
                },
                upstream_headers,
            })
        })
        .collect()
}

/// Runs the command `args` names other than serving (`api-key`), printing its output;
/// `false` when there is none and the binary should serve.
pub fn run_command(args: &Args) -> anyhow::Result<bool> {
    match &args.command {
        Some(Command::ApiKey { subject, roles }) => {
            #[allow(clippy::print_stdout)] // the command's output
            {
                print!("{}", new_api_key(subject, roles)?);
            }
            Ok(true)
        }
        None => Ok(false),
    }
}

/// `gateway-service api-key`: a new key and the configuration entry that accepts it (its
/// SHA-256; the key itself is stored nowhere).
pub fn new_api_key(subject: &str, roles: &[String]) -> anyhow::Result<String> {
    if subject.trim().is_empty() {
        anyhow::bail!("--subject must name the key's principal, e.g. ci-bot");
    }
    let key = mcp_gateway_auth::generate_api_key();
    let entry = mcp_gateway_auth::ApiKeyConfig {
        subject: subject.to_owned(),
        roles: roles.to_vec(),
        sha256: mcp_gateway_auth::hash_api_key(&key),
    };
    let toml = format!(
        "[[auth.api_keys]]\nsubject = {}\nroles = {}\nsha256 = \"{}\"\n",
        serde_json::to_string(&entry.subject)?,
        serde_json::to_string(&entry.roles)?,
        entry.sha256
    );
    Ok(format!(
        "API key (give it to the client; it is shown only now):\n\n    {key}\n\n\
         Add this to the gateway's configuration file:\n\n{toml}"
    ))
}

/// Binds both listeners and starts serving.
pub async fn run(config: Config) -> anyhow::Result<Handle> {
    let metrics = mcp_gateway_telemetry::metrics()?;
    let (store, mut store_tasks) = session_store(&config)?;
    let resolver = Arc::new(StaticResolver::new(targets(&config.adapters)?));
    if matches!(config.session_store, SessionStoreConfig::Redis { .. }) {
        // The memory store keeps the live-sessions gauge itself; Redis is shared by every
        // gateway, so each one reads the counts for its own /metrics.
        store_tasks.push(spawn_live_sessions_gauge(
            resolver.clone(),
            store.clone(),
            config.live_sessions_every,
        ));
    }
    let authenticator = auth::authenticator(&config.auth, &config.data_dir)?;
    let policy: Arc<dyn Authorizer> = Arc::new(config.auth.policy.clone());
    let audit = match &config.audit {
        Some(target) => Some(Arc::new(mcp_gateway_telemetry::AuditLog::open(target)?)),
        None => None,
    };
    let audit_sink = audit
        .clone()
        .map(|a| a as Arc<dyn mcp_gateway_core::AuditSink>);
    let mut gateway = Gateway::new(config.routing.clone(), resolver.clone(), store.clone())
        .with_authorizer(policy.clone());
    if config.tracing.enabled() {
        gateway = gateway.with_tracing(mcp_gateway_telemetry::trace::propagator());
    }
    if let Some(sink) = &audit_sink {
        gateway = gateway.with_audit(sink.clone(), config.audit_arguments);
    }
    let options = mcp_gateway_api::ApiOptions {
        allowed_commands: config.auth.allowed_commands.clone(),
        allowed_images: config.auth.allowed_images.clone(),
        ..mcp_gateway_api::ApiOptions::default()
    };
    let configured: Vec<_> = config.adapters.iter().map(|a| a.name.clone()).collect();
    let mut kube_runtime = None;
    let (api, provisioner) = match &config.runtime {
        config::Runtime::Kubernetes(k8s) => {
            let k = kubernetes::start(
                k8s,
                config.data_plane,
                config.management,
                resolver,
                store.clone(),
                policy,
                options,
                configured,
                audit_sink.clone(),
            )
            .await?;
            let router = k.router.clone();
            kube_runtime = Some(k);
            (router, None)
        }
        config::Runtime::Local if config.management => {
            let m = management::start(
                &config.data_dir,
                resolver,
                store.clone(),
                policy,
                options,
                configured,
                audit_sink.clone(),
            )
            .await?;
            (Some(m.router), Some(m.provisioner))
        }
        config::Runtime::Local => (None, None),
    };

    let data = if config.data_threads == 0 {
        DataListener::Main(
            TcpListener::bind(config.listen)
                .await
                .with_context(|| format!("cannot listen on {} (listen)", config.listen))?,
        )
    } else {
        DataListener::Threads(
            server::bind_reuseport(config.listen, config.data_threads)
                .with_context(|| format!("cannot listen on {} (listen)", config.listen))?,
        )
    };
    let admin = TcpListener::bind(config.admin_listen)
        .await
        .with_context(|| format!("cannot listen on {} (admin_listen)", config.admin_listen))?;
    let data_addr = data.local_addr()?;
    let threads = config.data_threads;
    let admin_addr = admin.local_addr()?;
    tracing::info!(%data_addr, %admin_addr, adapters = config.adapters.len(), threads, "gateway listening");

    // Shutdown, in order: readiness fails at once; the data listener keeps serving new
    // connections for `shutdown_delay` (the load balancer is still sending), then closes and
    // drains for up to `shutdown_grace`; the admin listener closes last, so `/readyz` answers
    // 503 throughout.
    let (shutdown, mut rx) = watch::channel(false);
    let (stop_data, data_rx) = watch::channel(false);
    let (stop_admin, admin_rx) = watch::channel(false);
    let accepting = Arc::new(AtomicBool::new(true));
    let sequence_task = {
        let accepting = accepting.clone();
        let delay = config.shutdown_delay;
        tokio::spawn(async move {
            // A dropped Handle (Err) stops the gateway too.
            let _ = rx.wait_for(|stop| *stop).await;
            accepting.store(false, Ordering::Relaxed);
            if !delay.is_zero() {
                tracing::info!(
                    ?delay,
                    "not ready; still serving new connections for the shutdown delay"
                );
                tokio::time::sleep(delay).await;
            }
            let _ = stop_data.send(true);
        })
    };
    let front = Front {
        gateway,
        api,
        data_plane: config.data_plane,
        anonymous: Arc::new(Principal::anonymous(vec![
            config.auth.policy.admin_role.clone(),
        ])),
        auth: authenticator
            .clone()
            .map(|a| auth::layer(a, config.auth.public_url.as_deref())),
        settings: Arc::new(config.auth.clone()),
        authenticator,
        main: None,
    };
    let main = tokio::runtime::Handle::current();
    let data_task = {
        let grace = config.shutdown_grace;
        tokio::spawn(async move {
            match data {
                DataListener::Main(data) => {
                    server::serve(data, data_rx, grace, move |peer| front.service(peer)).await;
                }
                DataListener::Threads(listeners) => {
                    server::serve_threads(listeners, data_rx, grace, move || {
                        // Each thread its own pool of replica connections.
                        let front = Front {
                            gateway: front.gateway.clone().with_own_upstream_pool(),
                            main: Some(main.clone()),
                            ..front.clone()
                        };
                        move |peer| front.service(peer)
                    })
                    .await;
                }
            }
            if let Some(k) = kube_runtime {
                k.stop().await;
            }
            if let Some(provisioner) = provisioner {
                // Children never outlive the gateway; records stay for the next start.
                provisioner.shutdown().await;
            }
            for task in store_tasks {
                task.abort();
            }
            let _ = stop_admin.send(true);
        })
    };
    let admin_task = tokio::spawn(async move {
        server::serve(
            admin,
            admin_rx,
            std::time::Duration::from_secs(1),
            move |_| {
                let metrics = metrics.clone();
                let accepting = accepting.clone();
                let store = store.clone();
                hyper::service::service_fn(move |req: Request<server::ClientBody>| {
                    let res = admin_response(req.uri().path(), &metrics, &accepting, &*store);
                    async move { Ok::<_, std::convert::Infallible>(res) }
                })
            },
        )
        .await;
    });
    Ok(Handle {
        data_addr,
        admin_addr,
        shutdown,
        tasks: vec![sequence_task, data_task, admin_task],
        audit,
    })
}

type ServeFuture =
    futures_util::future::BoxFuture<'static, Result<Response<ProxyBody>, Infallible>>;

/// What the data-plane listener serves: protected resource metadata and the OpenAPI document
/// to anyone; everything else behind authentication, then the API or the data plane.
#[derive(Clone)]
struct Front {
    gateway: Gateway,
    api: Option<axum::Router>,
    data_plane: bool,
    /// The caller of every request when authentication is off.
    anonymous: Arc<Principal>,
    settings: Arc<AuthSettings>,
    authenticator: Option<Authenticator>,
    /// Built once; `None` when authentication is off.
    auth: Option<AuthLayer<auth::Refusal>>,
    /// On a data thread: the main runtime, where management API requests run, so that what
    /// they start (an adapter's processes and their supervisors) lives on the runtime that
    /// outlasts the data threads at shutdown and stops them last.
    main: Option<tokio::runtime::Handle>,
}

/// Where the data plane listens: on the main runtime, or one socket per data thread.
enum DataListener {
    Main(TcpListener),
    Threads(Vec<std::net::TcpListener>),
}

impl DataListener {
    fn local_addr(&self) -> std::io::Result<std::net::SocketAddr> {
        match self {
            DataListener::Main(l) => l.local_addr(),
            DataListener::Threads(ls) => ls.first().map_or_else(
                || Err(std::io::ErrorKind::NotFound.into()),
                |l| l.local_addr(),
            ),
        }
    }
}

impl Front {
    /// The service of one client connection from `peer`.
    fn service(
        &self,
        peer: std::net::SocketAddr,
    ) -> impl hyper::service::Service<
        Request<server::ClientBody>,
        Response = Response<ProxyBody>,
        Error = Infallible,
        Future = ServeFuture,
    >
    + Send
    + 'static
    + use<> {
        // One copy per connection, shared by its requests through one `Arc`: a connection
        // stays on one thread, so a request touches that count only, not the counts of the
        // gateway's shared parts, which every thread's requests would otherwise increment and
        // decrement on the same cache lines.
        // Without authentication the anonymous caller is copied too: each request lends it on
        // (an `Arc` clone), and that count, shared by all connections, would move between
        // cores on every request.
        let mut front = self.clone();
        if self.auth.is_none() {
            front.anonymous = Arc::new(Principal::clone(&self.anonymous));
        }
        let front = Arc::new(front);
        hyper::service::service_fn(move |mut req: Request<server::ClientBody>| {
            req.extensions_mut().insert(ClientAddr(peer));
            Arc::clone(&front).serve(req)
        })
    }

    /// A boxed future built outside any `async` block: the compiler then proves the
    /// authentication layer's future `Send` for the concrete body type (inside an `async`
    /// block it would have to for every lifetime, and cannot; rust-lang/rust#102211).
    fn serve(self: Arc<Self>, mut req: Request<server::ClientBody>) -> ServeFuture {
        let path = req.uri().path();
        if auth::is_metadata_path(path) {
            let res = match mcp_gateway_routing::check_host_and_origin(
                req.headers(),
                self.gateway.config(),
            ) {
                Err(e) => problem(StatusCode::FORBIDDEN, &e.to_string()),
                Ok(()) => auth::metadata(&req, self.authenticator.as_ref(), &self.settings),
            };
            return Box::pin(std::future::ready(Ok(res)));
        }
        if path == "/openapi.json" && self.api.is_some() {
            // Public, and served as a caller with no rights at all.
            req.extensions_mut()
                .insert(Principal::anonymous(Vec::new()));
            return self.route(req);
        }
        let Some(layer) = self.auth.clone() else {
            req.extensions_mut().insert(Arc::clone(&self.anonymous));
            return self.route(req);
        };
        // What is decided without waiting (an API key, a missing or malformed header) is
        // decided here, as the layer would: the request then takes the same short way as
        // without authentication, not the layer's futures (which moved the request four times).
        if let Some(outcome) = self
            .authenticator
            .as_ref()
            .and_then(|a| a.authenticate_now_shared(req.headers()))
        {
            return match outcome {
                Ok(principal) => {
                    req.extensions_mut().insert(principal);
                    self.route(req)
                }
                Err(e) => {
                    let (parts, _) = req.into_parts();
                    Box::pin(std::future::ready(Ok(layer.refusal().reject(&parts, &e))))
                }
            };
        }
        // The routing future boxed on its own: the authentication future and the `Oneshot`
        // around it then move a pointer, not the routing state, as they change state (three
        // moves of it were ~2 000 instructions per request).
        let inner =
            tower::service_fn(move |req: Request<server::ClientBody>| self.clone().route(req));
        Box::pin(layer.layer(inner).oneshot(req))
    }

    /// An authenticated request (its [`Principal`] is an extension): the API or the data plane.
    /// Decided here, before the future is boxed: the box then holds the routing future itself,
    /// not a future around it (each level is one more move of the whole state per request).
    fn route(self: Arc<Self>, req: Request<server::ClientBody>) -> ServeFuture {
        let data_path = Gateway::handles_path(req.uri().path());
        match &self.api {
            Some(api) if !data_path => {
                if let Err(e) =
                    mcp_gateway_routing::check_host_and_origin(req.headers(), self.gateway.config())
                {
                    return Box::pin(std::future::ready(Ok(problem(
                        StatusCode::FORBIDDEN,
                        &e.to_string(),
                    ))));
                }
                let api = api.clone();
                Box::pin(async move {
                    Ok(match &self.main {
                        None => serve_api(api, req).await,
                        Some(main) => main.spawn(serve_api(api, req)).await.unwrap_or_else(|e| {
                            tracing::error!(error = %e, "management API request failed");
                            problem(StatusCode::INTERNAL_SERVER_ERROR, "the request failed")
                        }),
                    })
                })
            }
            _ if data_path && !self.data_plane => Box::pin(std::future::ready(Ok(problem(
                StatusCode::NOT_FOUND,
                "this is the control plane (gateway-management): MCP clients connect to \
                 gateway-service",
            )))),
            _ => Box::pin(async move { Ok(self.gateway.handle(req).await) }),
        }
    }
}

/// A management API request, past the same DNS-rebinding checks as the data plane (a page in
/// a browser must not be able to create adapters that run commands).
async fn serve_api(api: axum::Router, req: Request<server::ClientBody>) -> Response<ProxyBody> {
    use tower::ServiceExt;
    match api.oneshot(req).await {
        Ok(res) => res.map(|b| b.map_err(Into::into).boxed_unsync()),
        Err(never) => match never {},
    }
}

pub(crate) fn problem(status: StatusCode, detail: &str) -> Response<ProxyBody> {
    let body = serde_json::json!({
        "type": "about:blank",
        "title": status.canonical_reason().unwrap_or(""),
        "status": status.as_u16(),
        "detail": detail,
    });
    mcp_gateway_routing::json_response(status, "application/problem+json", &body)
}

/// Tasks that live as long as the gateway.
type BackgroundTasks = Vec<JoinHandle<()>>;

/// The session store of the configuration, with its background tasks.
fn session_store(config: &Config) -> anyhow::Result<(Arc<dyn SessionStore>, BackgroundTasks)> {
    match &config.session_store {
        SessionStoreConfig::Memory => {
            let store = Arc::new(MemoryStore::new(StoreConfig {
                idle_ttl: config.session_idle_ttl,
                max_lifetime: config.session_max_lifetime,
            }));
            let reaper = store.spawn_reaper(std::time::Duration::from_secs(30));
            Ok((store, vec![reaper]))
        }
        SessionStoreConfig::Redis {
            url,
            password,
            refresh_after,
        } => {
            let mut redis = RedisConfig::new(url.clone());
            redis.password = password.clone();
            redis.idle_ttl = config.session_idle_ttl;
            redis.max_lifetime = config.session_max_lifetime;
            redis.refresh_after = *refresh_after;
            let store = RedisStore::connect(redis)?;
            let tasks = store.spawn_tasks();
            tracing::info!(url = %url, "session store: Redis, with a local cache");
            Ok((store, tasks))
        }
    }
}

/// Sets `mcp_gateway_sessions_live{adapter,replica}` from the session store every `every`,
/// for every replica of every adapter (0 for a replica without sessions).
fn spawn_live_sessions_gauge(
    resolver: Arc<StaticResolver>,
    store: Arc<dyn SessionStore>,
    every: std::time::Duration,
) -> JoinHandle<()> {
    use mcp_gateway_core::ReplicaResolver as _;
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(every);
        loop {
            tick.tick().await;
            for name in resolver.names() {
                let Some(target) = resolver.resolve(name.as_str()) else {
                    continue;
                };
                let counts = match store.live_sessions(&name).await {
                    Ok(counts) => counts,
                    Err(e) => {
                        tracing::debug!(adapter = %name, error = %e, "live sessions unknown");
                        continue;
                    }
                };
                for replica in &target.replicas {
                    let n = counts.get(&replica.id).copied().unwrap_or(0);
                    metrics::gauge!("mcp_gateway_sessions_live",
                        "adapter" => name.to_string(), "replica" => replica.id.to_string())
                    .set(n as f64);
                }
            }
        }
    })
}

/// `/readyz` stays 200 while the session store is degraded (sessions this gateway knows keep
/// working, and taking every gateway out of service over a Redis outage would be worse); the
/// body says so.
fn admin_response(
    path: &str,
    metrics: &MetricsHandle,
    accepting: &AtomicBool,
    store: &dyn SessionStore,
) -> Response<ProxyBody> {
    let (status, content_type, body) = match path {
        "/healthz" => (StatusCode::OK, "text/plain", "ok\n".to_owned()),
        "/readyz" if accepting.load(Ordering::Relaxed) => match store.degraded() {
            None => (StatusCode::OK, "text/plain", "ready\n".to_owned()),
            Some(why) => (
                StatusCode::OK,
                "text/plain",
                format!("ready; session store degraded: {why}\n"),
            ),
        },
        "/readyz" => (
            StatusCode::SERVICE_UNAVAILABLE,
            "text/plain",
            "shutting down\n".to_owned(),
        ),
        "/metrics" => (
            StatusCode::OK,
            "text/plain; version=0.0.4",
            metrics.render(),
        ),
        _ => (
            StatusCode::NOT_FOUND,
            "text/plain",
            "not found: use /healthz, /readyz or /metrics\n".to_owned(),
        ),
    };
    let mut res = Response::new(
        Full::new(bytes::Bytes::from(body))
            .map_err(|never| match never {})
            .boxed_unsync(),
    );
    *res.status_mut() = status;
    res.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static(content_type),
    );
    res
}

/// What both binaries do once configured: log, run until SIGTERM or SIGINT, shut down.
pub async fn serve_until_signal(config: Config) -> anyhow::Result<()> {
    let tracing = if config.tracing.enabled() {
        Some(mcp_gateway_telemetry::Tracing::start(&config.tracing)?)
    } else {
        None
    };
    mcp_gateway_telemetry::init(&config.log, config.log_format, tracing.as_ref())?;
    let handle = run(config).await?;
    shutdown_signal().await;
    tracing::info!("shutting down");
    handle.shutdown().await;
    if let Some(tracing) = tracing {
        // The spans of the last requests go out before the process ends.
        tracing.shutdown();
    }
    Ok(())
}

/// Resolves on SIGTERM or SIGINT.
async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(s) => s,
                Err(_) => return std::future::pending().await,
            };
        tokio::select! {
            _ = ctrl_c => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    let _ = ctrl_c.await;
}
