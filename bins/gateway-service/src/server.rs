//! The accept loop shared by both listeners: HTTP/1.1 and HTTP/2 (cleartext) per connection,
//! graceful shutdown with a deadline.

use std::net::SocketAddr;
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

/// Serves `listener` until `shutdown` turns true, then waits up to `grace` for open
/// connections to finish their requests and closes the rest.
pub async fn serve<S, B>(
    listener: TcpListener,
    mut shutdown: watch::Receiver<bool>,
    grace: Duration,
    service_for: impl Fn(SocketAddr) -> S,
) where
    S: Service<http::Request<Incoming>, Response = http::Response<B>> + Send + 'static,
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
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, peer)) => {
                    let _ = stream.set_nodelay(true);
                    let conn = builder
                        .serve_connection(TokioIo::new(stream), service_for(peer))
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
    let open = graceful.count();
    tokio::select! {
        _ = graceful.shutdown() => tracing::debug!(open, "connections finished"),
        _ = tokio::time::sleep(grace) => {
            tracing::info!(open = connections.len(), "shutdown grace period over; closing remaining streams");
        }
    }
    connections.abort_all();
    while connections.join_next().await.is_some() {}
}
