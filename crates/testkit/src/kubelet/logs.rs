//! Container logs as the kubelet keeps them (the current and the previous instance of each
//! container) and the kubelet's HTTPS server that the API server proxies `pods/log` to
//! (`GET /containerLogs/{namespace}/{pod}/{container}`).

use std::collections::{HashMap, VecDeque};
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Full, StreamBody, combinators::BoxBody};
use hyper::body::{Frame, Incoming};
use k8s_openapi::jiff::Timestamp;
use tokio::sync::broadcast;

/// Lines kept per container instance.
const MAX_LINES: usize = 10_000;

#[derive(Debug, Clone)]
pub struct Line {
    pub time: SystemTime,
    pub text: String,
}

/// One run of a container.
#[derive(Debug)]
pub struct Instance {
    pub lines: VecDeque<Line>,
    /// Open while the process runs; followers end when it closes.
    pub live: Option<broadcast::Sender<Line>>,
}

impl Instance {
    fn new() -> Self {
        Self {
            lines: VecDeque::new(),
            live: Some(broadcast::channel(1024).0),
        }
    }
}

/// The logs of one container: the running (or last) instance and the one before it.
#[derive(Debug, Default)]
pub struct ContainerLog {
    /// The pod's UID: a new pod of the same name (a StatefulSet's) starts with no logs.
    pub uid: String,
    pub current: Option<Instance>,
    pub previous: Option<Instance>,
}

/// Why a container has no current log (the API server passes the message on to the client).
#[derive(Debug, Clone)]
pub enum Unavailable {
    /// `container "c" in pod "p" is waiting to start: ContainerCreating`
    Waiting(String),
}

/// Every container log of the kubelet, by (namespace, pod, container).
#[derive(Debug, Default, Clone)]
pub struct LogStore {
    inner: Arc<Mutex<Store>>,
}

#[derive(Debug, Default)]
struct Store {
    logs: HashMap<(String, String, String), ContainerLog>,
    waiting: HashMap<(String, String, String), String>,
}

type Key = (String, String, String);

fn key(ns: &str, pod: &str, container: &str) -> Key {
    (ns.to_owned(), pod.to_owned(), container.to_owned())
}

impl LogStore {
    /// A new instance of the container starts: the current one becomes the previous one.
    pub fn start_instance(
        &self,
        ns: &str,
        pod: &str,
        uid: &str,
        container: &str,
    ) -> InstanceWriter {
        let mut store = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        let k = key(ns, pod, container);
        store.waiting.remove(&k);
        let log = store.logs.entry(k.clone()).or_default();
        if log.uid != uid {
            *log = ContainerLog {
                uid: uid.to_owned(),
                ..ContainerLog::default()
            };
        }
        if let Some(mut old) = log.current.take() {
            old.live = None;
            log.previous = Some(old);
        }
        log.current = Some(Instance::new());
        InstanceWriter {
            store: self.clone(),
            key: k,
        }
    }

    /// Records why the container has no log yet (image pull, back-off).
    pub fn set_waiting(&self, ns: &str, pod: &str, uid: &str, container: &str, reason: &str) {
        let mut store = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        let k = key(ns, pod, container);
        if store.logs.get(&k).is_some_and(|l| l.uid != uid) {
            store.logs.remove(&k);
        }
        store.waiting.insert(k, reason.to_owned());
    }

    /// Forgets a pod's logs (the pod is gone), unless a new pod of the same name has some.
    pub fn remove_pod(&self, ns: &str, pod: &str, uid: &str) {
        let mut store = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        store
            .logs
            .retain(|(n, p, _), l| !(n == ns && p == pod && l.uid == uid));
    }

    fn push(&self, k: &Key, text: String) {
        let mut store = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        let Some(instance) = store.logs.get_mut(k).and_then(|l| l.current.as_mut()) else {
            return;
        };
        let line = Line {
            time: SystemTime::now(),
            text,
        };
        if instance.lines.len() == MAX_LINES {
            instance.lines.pop_front();
        }
        instance.lines.push_back(line.clone());
        if let Some(live) = &instance.live {
            let _ = live.send(line);
        }
    }

    fn end(&self, k: &Key) {
        let mut store = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(instance) = store.logs.get_mut(k).and_then(|l| l.current.as_mut()) {
            instance.live = None;
        }
    }

    /// The lines a query selects, and a receiver of later lines when it follows a running
    /// instance.
    fn select(&self, k: &Key, q: &LogQuery) -> Result<Selection, (StatusCode, String)> {
        let store = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        let (ns, pod, container) = k;
        let log = store.logs.get(k);
        let instance = if q.previous {
            log.and_then(|l| l.previous.as_ref()).ok_or_else(|| {
                (
                    StatusCode::BAD_REQUEST,
                    format!(
                        "previous terminated container \"{container}\" in pod \"{pod}\" not found"
                    ),
                )
            })?
        } else {
            match log.and_then(|l| l.current.as_ref()) {
                Some(i) => i,
                None => {
                    let reason = store
                        .waiting
                        .get(k)
                        .map_or("ContainerCreating", String::as_str);
                    return Err((
                        StatusCode::BAD_REQUEST,
                        format!(
                            "container \"{container}\" in pod \"{pod}\" is waiting to start: {reason}"
                        ),
                    ));
                }
            }
        };
        let _ = ns;
        let mut lines: Vec<Line> = instance
            .lines
            .iter()
            .filter(|l| q.since.is_none_or(|s| l.time >= s))
            .cloned()
            .collect();
        if let Some(n) = q.tail {
            lines.drain(..lines.len().saturating_sub(n));
        }
        let rx = if q.follow && !q.previous {
            instance.live.as_ref().map(broadcast::Sender::subscribe)
        } else {
            None
        };
        Ok((lines, rx))
    }
}

/// The lines a query selects now, and a receiver of later ones when it follows.
type Selection = (Vec<Line>, Option<broadcast::Receiver<Line>>);

/// Writes the lines of one running instance; ends the instance's followers when dropped.
pub struct InstanceWriter {
    store: LogStore,
    key: Key,
}

impl InstanceWriter {
    pub fn line(&self, text: String) {
        self.store.push(&self.key, text);
    }
}

impl Drop for InstanceWriter {
    fn drop(&mut self) {
        self.store.end(&self.key);
    }
}

/// The kubelet's log query parameters (those the API server forwards).
#[derive(Debug, Default)]
struct LogQuery {
    follow: bool,
    previous: bool,
    timestamps: bool,
    tail: Option<usize>,
    since: Option<SystemTime>,
    limit_bytes: Option<usize>,
}

fn parse_query(query: Option<&str>) -> Result<LogQuery, String> {
    let mut q = LogQuery::default();
    let truthy = |v: &str| v == "true" || v == "1";
    for (k, v) in form_urlencoded::parse(query.unwrap_or("").as_bytes()) {
        match &*k {
            "follow" => q.follow = truthy(&v),
            "previous" => q.previous = truthy(&v),
            "timestamps" => q.timestamps = truthy(&v),
            "tailLines" => {
                let n: i64 = v.parse().map_err(|_| format!("invalid tailLines {v:?}"))?;
                q.tail = Some(n.max(0) as usize);
            }
            "sinceSeconds" => {
                let n: u64 = v
                    .parse()
                    .map_err(|_| format!("invalid sinceSeconds {v:?}"))?;
                q.since = SystemTime::now().checked_sub(Duration::from_secs(n));
            }
            "sinceTime" => {
                let t: Timestamp = v.parse().map_err(|_| format!("invalid sinceTime {v:?}"))?;
                q.since = Some(SystemTime::from(t));
            }
            "limitBytes" => {
                let n: usize = v.parse().map_err(|_| format!("invalid limitBytes {v:?}"))?;
                q.limit_bytes = Some(n);
            }
            _ => {}
        }
    }
    Ok(q)
}

fn format_line(line: &Line, timestamps: bool) -> String {
    if timestamps {
        let ts = Timestamp::try_from(line.time).unwrap_or(Timestamp::UNIX_EPOCH);
        format!("{ts} {}\n", line.text)
    } else {
        format!("{}\n", line.text)
    }
}

type Body = BoxBody<Bytes, Infallible>;

fn text(status: StatusCode, body: String) -> Response<Body> {
    Response::builder()
        .status(status)
        .header("content-type", "text/plain; charset=utf-8")
        .body(Full::new(Bytes::from(body)).boxed())
        .expect("static response parts")
}

/// Answers one request of the kubelet's server.
pub async fn serve(store: LogStore, req: Request<Incoming>) -> Response<Body> {
    let path = req.uri().path().to_owned();
    if path == "/healthz" {
        return text(StatusCode::OK, "ok".into());
    }
    let parts: Vec<&str> = path.trim_start_matches('/').split('/').collect();
    let ["containerLogs", ns, pod, container] = parts.as_slice() else {
        return text(
            StatusCode::NOT_FOUND,
            format!("{path}: not served by the test kubelet"),
        );
    };
    let q = match parse_query(req.uri().query()) {
        Ok(q) => q,
        Err(e) => return text(StatusCode::BAD_REQUEST, e),
    };
    let (lines, rx) = match store.select(&key(ns, pod, container), &q) {
        Ok(sel) => sel,
        Err((status, msg)) => return text(status, msg),
    };
    let mut head = String::new();
    for l in &lines {
        head.push_str(&format_line(l, q.timestamps));
    }
    if let Some(limit) = q.limit_bytes
        && head.len() >= limit
    {
        head.truncate(limit);
        return text(StatusCode::OK, head);
    }
    let Some(rx) = rx else {
        return text(StatusCode::OK, head);
    };
    let timestamps = q.timestamps;
    let first = futures_util::stream::once(async move { Ok(Frame::data(Bytes::from(head))) });
    let rest = futures_util::stream::unfold(rx, move |mut rx| async move {
        loop {
            match rx.recv().await {
                Ok(line) => {
                    let chunk = Bytes::from(format_line(&line, timestamps));
                    return Some((Ok(Frame::data(chunk)), rx));
                }
                Err(broadcast::error::RecvError::Lagged(_)) => continue,
                Err(broadcast::error::RecvError::Closed) => return None,
            }
        }
    });
    use futures_util::StreamExt;
    Response::builder()
        .header("content-type", "text/plain; charset=utf-8")
        .body(BodyExt::boxed(StreamBody::new(first.chain(rest))))
        .expect("static response parts")
}

/// Serves the kubelet's HTTPS endpoint on `addr` until `shutdown` resolves.
pub async fn run_server(
    listener: tokio::net::TcpListener,
    tls: Arc<rustls::ServerConfig>,
    store: LogStore,
) {
    let acceptor = tokio_rustls::TlsAcceptor::from(tls);
    loop {
        let Ok((tcp, _peer)): Result<(tokio::net::TcpStream, SocketAddr), _> =
            listener.accept().await
        else {
            continue;
        };
        let acceptor = acceptor.clone();
        let store = store.clone();
        tokio::spawn(async move {
            let Ok(tls) = acceptor.accept(tcp).await else {
                return;
            };
            let service = hyper::service::service_fn(move |req| {
                let store = store.clone();
                async move { Ok::<_, Infallible>(serve(store, req).await) }
            });
            let _ =
                hyper_util::server::conn::auto::Builder::new(hyper_util::rt::TokioExecutor::new())
                    .serve_connection(hyper_util::rt::TokioIo::new(tls), service)
                    .await;
        });
    }
}
