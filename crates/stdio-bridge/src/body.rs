//! Response bodies: whole JSON documents, and SSE streams fed from a channel.

use std::convert::Infallible;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderValue, Response, StatusCode, header};
use http_body::Frame;
use http_body_util::{BodyExt, Full};
use serde_json::Value;
use tokio::sync::mpsc;
use tokio::time::{Instant, Interval, interval_at};

/// The body type of every response of the bridge.
pub(crate) type Body = http_body_util::combinators::UnsyncBoxBody<Bytes, Infallible>;

/// A comment sent on idle SSE streams so that proxies in between keep them open.
const KEEPALIVE: Duration = Duration::from_secs(25);

pub(crate) fn empty(status: StatusCode) -> Response<Body> {
    let mut res = Response::new(Full::new(Bytes::new()).boxed_unsync());
    *res.status_mut() = status;
    res
}

pub(crate) fn json_response(status: StatusCode, message: &Value) -> Response<Body> {
    let mut res = Response::new(Full::new(Bytes::from(message.to_string())).boxed_unsync());
    *res.status_mut() = status;
    res.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    res
}

/// One SSE event; `event` is omitted for the default type (`message`).
pub(crate) fn sse_event(event: Option<&str>, data: &str) -> Bytes {
    let mut out = String::with_capacity(data.len() + 32);
    if let Some(event) = event {
        out.push_str("event: ");
        out.push_str(event);
        out.push('\n');
    }
    for line in data.split('\n') {
        out.push_str("data: ");
        out.push_str(line);
        out.push('\n');
    }
    out.push('\n');
    Bytes::from(out)
}

/// An SSE response whose events are sent on the returned channel; the stream ends when every
/// sender is dropped, and a sender sees `closed()` once the client has gone away.
pub(crate) fn sse_response(keepalive: bool) -> (mpsc::Sender<Bytes>, Response<Body>) {
    let (tx, rx) = mpsc::channel(64);
    let body = SseBody {
        rx,
        keepalive: keepalive.then(|| interval_at(Instant::now() + KEEPALIVE, KEEPALIVE)),
    };
    let mut res = Response::new(body.boxed_unsync());
    let headers = res.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/event-stream"),
    );
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    (tx, res)
}

struct SseBody {
    rx: mpsc::Receiver<Bytes>,
    keepalive: Option<Interval>,
}

impl http_body::Body for SseBody {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        match self.rx.poll_recv(cx) {
            Poll::Ready(Some(bytes)) => return Poll::Ready(Some(Ok(Frame::data(bytes)))),
            Poll::Ready(None) => return Poll::Ready(None),
            Poll::Pending => {}
        }
        if let Some(keepalive) = self.keepalive.as_mut()
            && keepalive.poll_tick(cx).is_ready()
        {
            return Poll::Ready(Some(Ok(Frame::data(Bytes::from_static(
                b": keepalive\n\n",
            )))));
        }
        Poll::Pending
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_are_framed() {
        assert_eq!(sse_event(None, "{}"), Bytes::from_static(b"data: {}\n\n"));
        assert_eq!(
            sse_event(Some("endpoint"), "/messages?sessionId=a"),
            Bytes::from_static(b"event: endpoint\ndata: /messages?sessionId=a\n\n")
        );
    }

    #[tokio::test]
    async fn the_stream_ends_when_the_senders_are_gone() {
        let (tx, res) = sse_response(false);
        tx.send(sse_event(None, "1")).await.unwrap();
        drop(tx);
        let body = res.into_body().collect().await.unwrap().to_bytes();
        assert_eq!(body, Bytes::from_static(b"data: 1\n\n"));
    }
}
