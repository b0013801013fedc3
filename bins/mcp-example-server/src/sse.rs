//! Server-sent events: framing, and a streaming response body fed by a channel of JSON-RPC
//! messages.
//!
//! The body frames each message as it is polled, so a producer's send reaches the socket
//! without buffering; it writes a `: ping` comment after 15 s of silence (which also notices a
//! client that went away) and ends when every sender is gone.

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use serde_json::Value;
use tokio::sync::mpsc;
use tokio::time::{Interval, MissedTickBehavior};

use crate::session::{Session, SessionGuard};

/// Silence after which a keep-alive comment is written.
pub const KEEPALIVE: Duration = Duration::from_secs(15);

const PING: &[u8] = b": ping\n\n";

/// One SSE event. `data` must not contain line breaks (compact JSON never does).
pub fn event(name: Option<&str>, id: Option<u64>, data: &str) -> Bytes {
    let mut out = String::with_capacity(data.len() + 32);
    if let Some(name) = name {
        out.push_str("event: ");
        out.push_str(name);
        out.push('\n');
    }
    if let Some(id) = id {
        out.push_str("id: ");
        out.push_str(&id.to_string());
        out.push('\n');
    }
    out.push_str("data: ");
    out.push_str(data);
    out.push_str("\n\n");
    Bytes::from(out)
}

/// A streaming `text/event-stream` body.
#[derive(Debug)]
pub struct SseBody {
    preamble: Option<Bytes>,
    rx: mpsc::Receiver<Value>,
    /// The session whose event-id sequence numbers the events; none in the stateless era.
    ids: Option<Arc<Session>>,
    keepalive: Interval,
    /// Ends a legacy session when its stream goes away.
    _guard: Option<SessionGuard>,
}

impl SseBody {
    pub fn new(rx: mpsc::Receiver<Value>) -> Self {
        let mut keepalive =
            tokio::time::interval_at(tokio::time::Instant::now() + KEEPALIVE, KEEPALIVE);
        keepalive.set_missed_tick_behavior(MissedTickBehavior::Delay);
        Self {
            preamble: None,
            rx,
            ids: None,
            keepalive,
            _guard: None,
        }
    }

    /// Numbers every event (`id:`) from the session's sequence.
    pub fn with_event_ids(mut self, session: Arc<Session>) -> Self {
        self.ids = Some(session);
        self
    }

    /// Bytes written before anything from the channel (the legacy `endpoint` event, a priming event).
    pub fn with_preamble(mut self, preamble: Bytes) -> Self {
        self.preamble = Some(preamble);
        self
    }

    /// A message to write before anything from the channel.
    pub fn with_first(self, message: &Value) -> Self {
        let frame = self.encode(message);
        self.with_preamble(frame)
    }

    pub fn with_guard(mut self, guard: SessionGuard) -> Self {
        self._guard = Some(guard);
        self
    }

    fn encode(&self, message: &Value) -> Bytes {
        event(
            Some("message"),
            self.ids.as_ref().map(|s| s.next_event_id()),
            &message.to_string(),
        )
    }
}

impl http_body::Body for SseBody {
    type Data = Bytes;
    type Error = std::convert::Infallible;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Bytes>, Self::Error>>> {
        let this = self.get_mut();
        if let Some(preamble) = this.preamble.take() {
            return Poll::Ready(Some(Ok(http_body::Frame::data(preamble))));
        }
        match this.rx.poll_recv(cx) {
            Poll::Ready(Some(message)) => {
                this.keepalive.reset();
                Poll::Ready(Some(Ok(http_body::Frame::data(this.encode(&message)))))
            }
            Poll::Ready(None) => Poll::Ready(None),
            Poll::Pending => match this.keepalive.poll_tick(cx) {
                Poll::Ready(_) => {
                    Poll::Ready(Some(Ok(http_body::Frame::data(Bytes::from_static(PING)))))
                }
                Poll::Pending => Poll::Pending,
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::BodyExt;
    use serde_json::json;

    #[test]
    fn events_are_framed_with_name_id_and_data() {
        assert_eq!(
            event(Some("message"), Some(3), "{}"),
            "event: message\nid: 3\ndata: {}\n\n"
        );
        assert_eq!(
            event(Some("endpoint"), None, "/messages?sessionId=a"),
            "event: endpoint\ndata: /messages?sessionId=a\n\n"
        );
    }

    #[tokio::test]
    async fn the_body_streams_messages_with_ids_and_ends_with_the_senders() {
        let (tx, rx) = mpsc::channel(4);
        let session = Session::detached();
        let mut body = SseBody::new(rx)
            .with_event_ids(session)
            .with_preamble(Bytes::from_static(b": hi\n\n"));
        tx.send(json!({ "a": 1 })).await.unwrap();
        drop(tx);
        let first = body.frame().await.unwrap().unwrap().into_data().unwrap();
        assert_eq!(first, ": hi\n\n");
        let second = body.frame().await.unwrap().unwrap().into_data().unwrap();
        assert_eq!(second, "event: message\nid: 1\ndata: {\"a\":1}\n\n");
        assert!(body.frame().await.is_none());
    }

    #[tokio::test(start_paused = true)]
    async fn a_silent_stream_gets_keepalive_comments() {
        let (_tx, rx) = mpsc::channel::<Value>(1);
        let mut body = SseBody::new(rx);
        let start = tokio::time::Instant::now();
        let ping = body.frame().await.unwrap().unwrap().into_data().unwrap();
        assert_eq!(ping, PING);
        assert_eq!(start.elapsed(), KEEPALIVE);
    }
}
