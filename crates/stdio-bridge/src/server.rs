//! The HTTP listener, its routes, and the handle that owns the bridge.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;

use bytes::Bytes;
use http::{Method, Request, Response};
use http_body_util::{BodyExt, Limited};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpListener;
use tokio::sync::{broadcast, watch};
use tokio::task::JoinHandle;

use crate::body::Body;
use crate::bridge::{SessionInfo, Shared, reap_interval};
use crate::config::BridgeConfig;
use crate::error::BridgeError;
use crate::log::LogLine;
use crate::{legacy, streamable};

/// Starts bridges. See the crate documentation.
pub struct StdioBridge;

impl StdioBridge {
    /// Checks that the command can be found, binds `config.listen` and serves until the
    /// handle is shut down or dropped. No process runs until a client opens a session.
    pub async fn start(config: BridgeConfig) -> Result<BridgeHandle, BridgeError> {
        check_command(&config)?;
        let listener =
            TcpListener::bind(config.listen)
                .await
                .map_err(|source| BridgeError::Bind {
                    addr: config.listen,
                    source,
                })?;
        let addr = listener.local_addr().map_err(|source| BridgeError::Bind {
            addr: config.listen,
            source,
        })?;
        let shared = Shared::new(config);
        let (stop_tx, stop_rx) = watch::channel(false);
        let accept = tokio::spawn(accept_loop(listener, shared.clone(), stop_rx));
        let reaper = tokio::spawn(reap_loop(shared.clone()));
        tracing::info!(%addr, command = %shared.config.command, "stdio bridge listening");
        Ok(BridgeHandle {
            addr,
            shared,
            stop_tx,
            tasks: vec![accept, reaper],
        })
    }
}

/// A running bridge. Dropping it kills every process at once; [`shutdown`](Self::shutdown)
/// stops them politely first.
pub struct BridgeHandle {
    addr: SocketAddr,
    shared: Arc<Shared>,
    stop_tx: watch::Sender<bool>,
    tasks: Vec<JoinHandle<()>>,
}

impl BridgeHandle {
    /// The bound address (`http://{addr}/mcp`, `http://{addr}/sse`).
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// Live sessions, which is also the number of processes (one per session).
    pub fn live_sessions(&self) -> usize {
        self.shared.len()
    }

    /// The live sessions with their process ids.
    pub fn sessions(&self) -> Vec<SessionInfo> {
        self.shared.infos()
    }

    /// Every log line from now on (lines are dropped for a receiver that lags more than 1024
    /// behind; use [`BridgeConfig::on_log`] to see every one).
    pub fn logs(&self) -> broadcast::Receiver<LogLine> {
        self.shared.logs.subscribe()
    }

    /// Stops accepting connections, stops every process (stdin closed, SIGTERM to its group,
    /// SIGKILL after `stop_grace`) and returns once none is left.
    pub async fn shutdown(self) {
        let _ = self.stop_tx.send(true);
        self.shared.stop_all().await;
        // Drop aborts the tasks; no process is left to kill.
    }
}

impl Drop for BridgeHandle {
    fn drop(&mut self) {
        let _ = self.stop_tx.send(true);
        self.shared.kill_all_now();
        for task in &self.tasks {
            task.abort();
        }
    }
}

/// A command without `/` must be found in `PATH` (or the configured environment's `PATH`),
/// so a typo fails at start rather than at every session.
fn check_command(config: &BridgeConfig) -> Result<(), BridgeError> {
    let not_found = |what: &str| BridgeError::Spawn {
        command: config.command.clone(),
        source: std::io::Error::new(std::io::ErrorKind::NotFound, what.to_owned()),
    };
    if config.command.is_empty() {
        return Err(not_found("empty command"));
    }
    if config.command.contains('/') {
        let path = match &config.cwd {
            Some(cwd) => cwd.join(&config.command),
            None => Path::new(&config.command).to_path_buf(),
        };
        return if path.is_file() {
            Ok(())
        } else {
            Err(not_found("no such file"))
        };
    }
    let path = config
        .env
        .get("PATH")
        .cloned()
        .or_else(|| std::env::var("PATH").ok())
        .unwrap_or_default();
    if std::env::split_paths(&path).any(|dir| dir.join(&config.command).is_file()) {
        Ok(())
    } else {
        Err(not_found("not found in PATH"))
    }
}

async fn accept_loop(listener: TcpListener, shared: Arc<Shared>, mut stop: watch::Receiver<bool>) {
    let Ok(local) = listener.local_addr() else {
        return;
    };
    let mut connections = tokio::task::JoinSet::new();
    loop {
        let (stream, _) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(err) => {
                    tracing::warn!(%err, "accept failed");
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = stop.changed() => break,
        };
        let shared = shared.clone();
        connections.spawn(async move {
            let service = service_fn(move |req| {
                let shared = shared.clone();
                async move { Ok::<_, Infallible>(route(&shared, local, req).await) }
            });
            let builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
            if let Err(err) = builder
                .serve_connection(TokioIo::new(stream), service)
                .await
            {
                tracing::debug!(%err, "connection ended with an error");
            }
        });
        while connections.try_join_next().is_some() {}
    }
    // Dropping `connections` aborts every open connection.
}

async fn reap_loop(shared: Arc<Shared>) {
    let mut tick = tokio::time::interval(reap_interval(shared.config.idle_timeout));
    loop {
        tick.tick().await;
        shared.reap_idle();
    }
}

/// Refuses a request that is not from the gateway: a missing or wrong access token, or, on a
/// loopback address, a `Host` that is not this address (a browser led here by DNS rebinding
/// sends the attacker's name).
fn check_caller<B>(
    config: &BridgeConfig,
    local: SocketAddr,
    req: &Request<B>,
) -> Result<(), BridgeError> {
    let headers = req.headers();
    if let Some(token) = &config.access_token {
        let given = headers
            .get(crate::config::ACCESS_TOKEN_HEADER)
            .map(|v| v.as_bytes())
            .unwrap_or_default();
        if !same_bytes(given, token.as_bytes()) {
            return Err(BridgeError::Forbidden(
                "this stdio bridge serves the gateway only; connect through the gateway",
            ));
        }
    }
    if local.ip().is_loopback() {
        // HTTP/2 names the host in `:authority`.
        let host = headers
            .get(http::header::HOST)
            .and_then(|v| v.to_str().ok())
            .or_else(|| req.uri().authority().map(|a| a.as_str()))
            .unwrap_or_default();
        let port = local.port();
        let ok = [
            local.ip().to_string(),
            format!("[{}]", local.ip()),
            "localhost".to_owned(),
        ]
        .iter()
        .any(|name| host.eq_ignore_ascii_case(&format!("{name}:{port}")));
        if !ok {
            return Err(BridgeError::Forbidden(
                "the Host header must name the bridge's loopback address and port",
            ));
        }
    }
    Ok(())
}

/// Compares in time independent of where the inputs differ.
fn same_bytes(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// Every route of the bridge.
async fn route(shared: &Arc<Shared>, local: SocketAddr, req: Request<Incoming>) -> Response<Body> {
    if let Err(err) = check_caller(&shared.config, local, &req) {
        return err.into_response(None);
    }
    let path = req.uri().path().to_owned();
    let query = req.uri().query().map(str::to_owned);
    let method = req.method().clone();
    match (path.as_str(), &method) {
        ("/mcp", &Method::POST) => match read_body(shared, req).await {
            Ok((headers, body)) => streamable::post(shared, &headers, body).await,
            Err(err) => err.into_response(None),
        },
        ("/mcp", &Method::GET) => streamable::get(shared, req.headers()).await,
        ("/mcp", &Method::DELETE) => streamable::delete(shared, req.headers()).await,
        ("/mcp", _) => {
            BridgeError::MethodNotAllowed(method, "GET, POST, DELETE").into_response(None)
        }
        ("/sse", &Method::GET) => legacy::open(shared).await,
        ("/sse", _) => BridgeError::MethodNotAllowed(method, "GET").into_response(None),
        ("/messages" | "/messages/", &Method::POST) => match read_body(shared, req).await {
            Ok((_, body)) => legacy::post(shared, query.as_deref(), body).await,
            Err(err) => err.into_response(None),
        },
        ("/messages" | "/messages/", _) => {
            BridgeError::MethodNotAllowed(method, "POST").into_response(None)
        }
        _ => BridgeError::NoRoute(path).into_response(None),
    }
}

async fn read_body(
    shared: &Shared,
    req: Request<Incoming>,
) -> Result<(http::HeaderMap, Bytes), BridgeError> {
    let limit = shared.config.max_body_bytes;
    let (parts, body) = req.into_parts();
    let body = Limited::new(body, limit)
        .collect()
        .await
        .map_err(
            |err| match err.downcast::<http_body_util::LengthLimitError>() {
                Ok(_) => BridgeError::BodyTooLarge(limit),
                Err(err) => BridgeError::Parse(format!("cannot read the request body: {err}")),
            },
        )?
        .to_bytes();
    Ok((parts.headers, body))
}
