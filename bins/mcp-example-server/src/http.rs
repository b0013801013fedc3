//! The HTTP listener: accepts connections (HTTP/1.1 and h2c), routes requests to the streamable
//! HTTP endpoint (`/mcp`) and the legacy HTTP+SSE endpoints (`/sse`, `/messages`), and shuts
//! down gracefully.

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, HeaderValue, Method, Request, Response, StatusCode, header};
use http_body_util::{BodyExt, Limited};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use serde_json::Value;
use tokio::net::TcpListener;

use crate::error::Error;
use crate::protocol::Server;
use crate::sse::SseBody;
use crate::{Transport, legacy, streamable};

/// Largest request body accepted.
const MAX_BODY: usize = 8 * 1024 * 1024;
/// How long in-flight requests may run on after a shutdown signal.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(5);

/// Serves `listener` until `shutdown` resolves, then drains: session streams are ended and
/// in-flight requests get [`DRAIN_TIMEOUT`] to finish.
pub async fn serve(
    listener: TcpListener,
    server: Arc<Server>,
    transport: Transport,
    shutdown: impl Future<Output = ()>,
) {
    let builder = auto::Builder::new(TokioExecutor::new());
    let graceful = GracefulShutdown::new();
    tokio::pin!(shutdown);
    loop {
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(err) => {
                    // Out of file descriptors and the like: back off instead of spinning.
                    tracing::warn!(%err, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        if let Err(err) = stream.set_nodelay(true) {
            tracing::debug!(%err, "TCP_NODELAY");
        }
        let server = server.clone();
        let service = hyper::service::service_fn(move |req| route(server.clone(), transport, req));
        let conn = graceful.watch(
            builder
                .serve_connection(TokioIo::new(stream), service)
                .into_owned(),
        );
        tokio::spawn(async move {
            if let Err(err) = conn.await {
                tracing::debug!(%peer, %err, "connection ended with an error");
            }
        });
    }
    drop(listener);
    server.sessions().close_all();
    if tokio::time::timeout(DRAIN_TIMEOUT, graceful.shutdown())
        .await
        .is_err()
    {
        tracing::warn!("connections still open after {DRAIN_TIMEOUT:?}, closing them");
    }
}

async fn route(
    server: Arc<Server>,
    transport: Transport,
    req: Request<Incoming>,
) -> Result<Response<Body>, Infallible> {
    let (parts, body) = req.into_parts();
    let (streamable, legacy) = (transport.serves_streamable_http(), transport.serves_sse());
    let response = match (&parts.method, parts.uri.path()) {
        (&Method::POST, "/mcp") if streamable => match read_body(body).await {
            Ok(body) => streamable::post(&server, &parts.headers, body).await,
            Err(err) => error(&err, None),
        },
        (&Method::GET, "/mcp") if streamable => streamable::get(&server, &parts.headers),
        (&Method::DELETE, "/mcp") if streamable => streamable::delete(&server, &parts.headers),
        (_, "/mcp") if streamable => method_not_allowed("GET, POST, DELETE"),
        (&Method::GET, "/sse") if legacy => legacy::open(&server),
        (&Method::POST, "/messages" | "/messages/") if legacy => match read_body(body).await {
            Ok(body) => legacy::post(&server, parts.uri.query(), body),
            Err(err) => error(&err, None),
        },
        (_, "/sse") if legacy => method_not_allowed("GET"),
        (_, "/messages" | "/messages/") if legacy => method_not_allowed("POST"),
        // For readiness probes (Kubernetes `httpGet`): answers once the server accepts requests.
        (&Method::GET, "/healthz") => empty(StatusCode::OK),
        _ => empty(StatusCode::NOT_FOUND),
    };
    tracing::debug!(method = %parts.method, path = parts.uri.path(), status = response.status().as_u16(), "request");
    Ok(response)
}

async fn read_body(body: Incoming) -> Result<Bytes, Error> {
    match Limited::new(body, MAX_BODY).collect().await {
        Ok(collected) => Ok(collected.to_bytes()),
        Err(err) if err.is::<http_body_util::LengthLimitError>() => Err(Error::BodyTooLarge),
        Err(err) => Err(Error::InvalidRequest(format!(
            "could not read the request body: {err}"
        ))),
    }
}

// === Responses ===

/// A response body: a complete buffer or an SSE stream.
#[derive(Debug)]
pub enum Body {
    Full(Option<Bytes>),
    Sse(SseBody),
}

impl http_body::Body for Body {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Bytes>, Infallible>>> {
        match self.get_mut() {
            Self::Full(bytes) => Poll::Ready(bytes.take().map(|b| Ok(http_body::Frame::data(b)))),
            Self::Sse(sse) => Pin::new(sse).poll_frame(cx),
        }
    }

    fn is_end_stream(&self) -> bool {
        matches!(self, Self::Full(None))
    }

    fn size_hint(&self) -> http_body::SizeHint {
        match self {
            Self::Full(bytes) => {
                http_body::SizeHint::with_exact(bytes.as_ref().map_or(0, |b| b.len() as u64))
            }
            Self::Sse(_) => http_body::SizeHint::default(),
        }
    }
}

/// A JSON response.
pub fn json(status: StatusCode, value: &Value) -> Response<Body> {
    let mut response = Response::new(Body::Full(Some(Bytes::from(value.to_string()))));
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    response
}

/// An error answered on its own: its JSON-RPC body with its HTTP status.
pub fn error(err: &Error, id: Option<&Value>) -> Response<Body> {
    json(err.status(), &err.to_response(id))
}

pub fn empty(status: StatusCode) -> Response<Body> {
    let mut response = Response::new(Body::Full(None));
    *response.status_mut() = status;
    response
}

/// A `text/event-stream` response; proxies are asked not to buffer it.
pub fn sse(body: SseBody) -> Response<Body> {
    let mut response = Response::new(Body::Sse(body));
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/event-stream"),
    );
    headers.insert(
        header::CACHE_CONTROL,
        HeaderValue::from_static("no-cache, no-transform"),
    );
    headers.insert("x-accel-buffering", HeaderValue::from_static("no"));
    response
}

fn method_not_allowed(allow: &'static str) -> Response<Body> {
    let mut response = empty(StatusCode::METHOD_NOT_ALLOWED);
    response
        .headers_mut()
        .insert(header::ALLOW, HeaderValue::from_static(allow));
    response
}

// === Request headers ===

/// A header's value when present once and valid text.
pub fn header_str<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers.get(name).and_then(|v| v.to_str().ok())
}

/// Whether the client's `Accept` lists `media_type` (parameters ignored, case-insensitive).
pub fn accepts(headers: &HeaderMap, media_type: &str) -> bool {
    headers
        .get_all(header::ACCEPT)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|item| {
            item.split(';')
                .next()
                .is_some_and(|t| t.trim().eq_ignore_ascii_case(media_type))
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accept_lists_are_split_and_parameters_ignored() {
        let mut headers = HeaderMap::new();
        headers.insert(
            header::ACCEPT,
            HeaderValue::from_static("application/json, Text/Event-Stream;q=0.9"),
        );
        assert!(accepts(&headers, "text/event-stream"));
        assert!(accepts(&headers, "application/json"));
        assert!(!accepts(&headers, "text/html"));
        assert!(!accepts(&HeaderMap::new(), "text/event-stream"));
    }

    #[test]
    fn full_bodies_announce_their_length() {
        let response = json(StatusCode::OK, &serde_json::json!({ "a": 1 }));
        assert_eq!(http_body::Body::size_hint(response.body()).exact(), Some(7));
    }
}
