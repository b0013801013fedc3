//! The accept loop shared by both listeners: each connection served by [`http1`] (HTTP/1.1,
//! and HTTP/2 with prior knowledge), graceful shutdown with a deadline.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use hyper::service::Service;
use mcp_gateway_routing::BoxError;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinSet;

use crate::http1;
pub use crate::http1::ClientBody;

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
    let limits = http1::Limits::default();
    let stop = Arc::new(http1::Stop::default());
    let mut connections = JoinSet::new();
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, peer)) => {
                    let _ = stream.set_nodelay(true);
                    let service = service_for(peer);
                    connections.spawn(http1::serve_connection(stream, service, stop.clone(), limits));
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
    stop.closing();
    let linger = LINGER.min(grace);
    let lingering = tokio::time::sleep(linger);
    tokio::pin!(lingering);
    while !connections.is_empty() {
        tokio::select! {
            _ = connections.join_next() => {}
            () = &mut lingering => break,
        }
    }
    stop.close_idle();
    let open = connections.len();
    let finishing = async { while connections.join_next().await.is_some() {} };
    if tokio::time::timeout(grace.saturating_sub(linger), finishing)
        .await
        .is_ok()
    {
        tracing::debug!(open, "connections finished");
    } else {
        tracing::info!(
            open = connections.len(),
            "shutdown grace period over; closing remaining streams"
        );
    }
    connections.abort_all();
    while connections.join_next().await.is_some() {}
}
