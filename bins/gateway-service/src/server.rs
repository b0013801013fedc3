//! The accept loop shared by both listeners: HTTP/1.1 and HTTP/2 (cleartext) per connection,
//! graceful shutdown with a deadline.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use bytes::Bytes;
use hyper::body::Incoming;
use hyper::service::Service;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use mcp_gateway_routing::BoxError;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinSet;

/// `n` listening sockets on `addr` with `SO_REUSEPORT`, so the kernel spreads new connections
/// over them (port 0: the port the first one got, for all).
pub fn bind_reuseport(addr: SocketAddr, n: usize) -> std::io::Result<Vec<std::net::TcpListener>> {
    use socket2::{Domain, Socket, Type};
    let mut addr = addr;
    let mut listeners = Vec::with_capacity(n);
    for _ in 0..n {
        let socket = Socket::new(Domain::for_address(addr), Type::STREAM, None)?;
        socket.set_reuse_address(true)?;
        socket.set_reuse_port(true)?;
        socket.set_nonblocking(true)?;
        socket.bind(&addr.into())?;
        socket.listen(1024)?;
        let listener: std::net::TcpListener = socket.into();
        addr = listener.local_addr()?;
        listeners.push(listener);
    }
    Ok(listeners)
}

/// Serves each listener on a thread of its own with a single-threaded runtime, a connection's
/// tasks and the replica connections it opens staying on that thread, until `shutdown` turns
/// true and every thread has finished [`serve`].
pub async fn serve_threads<F, G, S, B>(
    listeners: Vec<std::net::TcpListener>,
    shutdown: watch::Receiver<bool>,
    grace: Duration,
    per_thread: F,
) where
    F: Fn() -> G,
    G: Fn(SocketAddr) -> S + Send + 'static,
    S: Service<http::Request<ClientBody>, Response = http::Response<B>> + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Into<BoxError>,
    B: http_body::Body<Data = Bytes> + Send + 'static,
    B::Error: Into<BoxError>,
{
    let mut finished = Vec::new();
    for (i, listener) in listeners.into_iter().enumerate() {
        let (done, finished_rx) = tokio::sync::oneshot::channel::<()>();
        let (shutdown, service_for) = (shutdown.clone(), per_thread());
        let spawned = std::thread::Builder::new()
            .name(format!("data-{i}"))
            .spawn(move || {
                let runtime = match tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                {
                    Ok(rt) => rt,
                    Err(e) => {
                        tracing::error!(error = %e, "cannot start a data-plane runtime");
                        return;
                    }
                };
                runtime.block_on(async move {
                    match TcpListener::from_std(listener) {
                        Ok(listener) => serve(listener, shutdown, grace, service_for).await,
                        Err(e) => tracing::error!(error = %e, "cannot serve a data listener"),
                    }
                });
                drop(done);
            });
        match spawned {
            Ok(_) => finished.push(finished_rx),
            Err(e) => tracing::error!(error = %e, "cannot start a data-plane thread"),
        }
    }
    for thread in finished {
        let _ = thread.await;
    }
}

/// How long a stopping listener keeps its idle keep-alive connections open, answering each
/// request on them with `Connection: close`, before it closes the rest (at most the grace).
///
/// Closing an idle keep-alive connection races with a client (a load balancer's pool) that
/// writes a request on it at that moment: the client sees a reset after sending, and does not
/// retry a POST (nginx answers 502). So a stopping gateway first lets each pooled connection
/// carry one more request and close cleanly after its answer; the client's next new connection
/// is refused (the listener is closed), which a balancer retries elsewhere since nothing was
/// sent. Only connections left idle through the whole linger are closed under the client.
pub const LINGER: Duration = Duration::from_secs(1);

/// Serves `listener` until `shutdown` turns true, then waits up to `grace` for open
/// connections to finish their requests and closes the rest: for [`LINGER`] connections stay
/// open and every answer carries `Connection: close`, then idle ones are closed and busy ones
/// (streams) get the rest of the grace.
pub async fn serve<S, B>(
    listener: TcpListener,
    mut shutdown: watch::Receiver<bool>,
    grace: Duration,
    service_for: impl Fn(SocketAddr) -> S,
) where
    S: Service<http::Request<ClientBody>, Response = http::Response<B>> + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Into<BoxError>,
    B: http_body::Body<Data = Bytes> + Send + 'static,
    B::Error: Into<BoxError>,
{
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        // Slow-loris protection: the request head must arrive within this.
        .header_read_timeout(Duration::from_secs(15))
        .max_buf_size(256 * 1024);
    builder.http2().timer(TokioTimer::new());
    let graceful = GracefulShutdown::new();
    let mut connections = JoinSet::new();
    let closing = Arc::new(AtomicBool::new(false));
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, peer)) => {
                    let _ = stream.set_nodelay(true);
                    let conn = builder
                        .serve_connection(
                            TokioIo::new(stream),
                            CloseWhenStopping {
                                inner: service_for(peer),
                                closing: closing.clone(),
                            },
                        )
                        .into_owned();
                    let conn = graceful.watch(conn);
                    connections.spawn(async move {
                        if let Err(e) = conn.await {
                            tracing::debug!(%peer, error = %e, "connection ended with an error");
                        }
                    });
                }
                Err(e) => {
                    // Out of file descriptors and the like: back off instead of spinning.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            },
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
            _ = shutdown.changed() => break,
        }
    }
    drop(listener);
    closing.store(true, Ordering::Relaxed);
    let linger = LINGER.min(grace);
    let lingering = tokio::time::sleep(linger);
    tokio::pin!(lingering);
    while !connections.is_empty() {
        tokio::select! {
            _ = connections.join_next() => {}
            () = &mut lingering => break,
        }
    }
    let open = graceful.count();
    tokio::select! {
        _ = graceful.shutdown() => tracing::debug!(open, "connections finished"),
        _ = tokio::time::sleep(grace.saturating_sub(linger)) => {
            tracing::info!(open = connections.len(), "shutdown grace period over; closing remaining streams");
        }
    }
    connections.abort_all();
    while connections.join_next().await.is_some() {}
}

/// The connection's service, whose answers carry `Connection: close` once the listener stops
/// (HTTP/1.1: hyper closes the connection after writing such an answer; HTTP/2 drops the
/// header, and its connections get GOAWAY from the graceful shutdown).
struct CloseWhenStopping<S> {
    inner: S,
    closing: Arc<AtomicBool>,
}

type Finish<B> = fn(http::Response<B>) -> http::Response<B>;

fn keep<B>(response: http::Response<B>) -> http::Response<B> {
    response
}

fn close<B>(mut response: http::Response<B>) -> http::Response<B> {
    response.headers_mut().insert(
        http::header::CONNECTION,
        http::HeaderValue::from_static("close"),
    );
    response
}

impl<S, B> Service<http::Request<Incoming>> for CloseWhenStopping<S>
where
    S: Service<http::Request<ClientBody>, Response = http::Response<B>>,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = futures_util::future::MapOk<S::Future, Finish<B>>;

    fn call(&self, req: http::Request<Incoming>) -> Self::Future {
        use futures_util::TryFutureExt as _;
        let finish: Finish<B> = if self.closing.load(Ordering::Relaxed) {
            close
        } else {
            keep
        };
        self.inner.call(req.map(ClientBody::new)).map_ok(finish)
    }
}

/// Most of a request body the gateway drains when it answered without reading it all.
const DRAIN_BYTES: usize = 1024 * 1024;
/// The longest the gateway drains such a body.
const DRAIN_TIME: Duration = Duration::from_secs(5);

/// A client's request body. Dropped before its end (the gateway answered without reading it
/// all: a refusal such as 401, 404 or 431, or an error), it is read to its end in the
/// background, up to [`DRAIN_BYTES`] within [`DRAIN_TIME`].
///
/// Without this, hyper closes the connection after such an answer while the client may
/// still be sending the body; the unread bytes make the kernel reset the connection, and a
/// client whose reset arrives before it read the answer sees "connection reset" instead of,
/// say, the 401 that would have started its OAuth flow. Drained, the answer arrives and the
/// connection stays open for the next request.
pub struct ClientBody {
    inner: Option<Incoming>,
}

impl ClientBody {
    fn new(inner: Incoming) -> Self {
        Self { inner: Some(inner) }
    }
}

impl http_body::Body for ClientBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<http_body::Frame<Bytes>, hyper::Error>>> {
        let Some(inner) = self.inner.as_mut() else {
            return std::task::Poll::Ready(None);
        };
        let polled = std::pin::Pin::new(inner).poll_frame(cx);
        if matches!(polled, std::task::Poll::Ready(None | Some(Err(_)))) {
            self.inner = None;
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner
            .as_ref()
            .is_none_or(http_body::Body::is_end_stream)
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.as_ref().map_or_else(
            || http_body::SizeHint::with_exact(0),
            http_body::Body::size_hint,
        )
    }
}

impl Drop for ClientBody {
    fn drop(&mut self) {
        let Some(body) = self.inner.take() else {
            return;
        };
        if http_body::Body::is_end_stream(&body) {
            return;
        }
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            runtime.spawn(drain(body));
        }
    }
}

async fn drain(mut body: Incoming) {
    use http_body_util::BodyExt as _;
    let read = async {
        let mut n = 0;
        while let Some(Ok(frame)) = body.frame().await {
            n += frame.data_ref().map_or(0, Bytes::len);
            if n > DRAIN_BYTES {
                return;
            }
        }
    };
    let _ = tokio::time::timeout(DRAIN_TIME, read).await;
}
