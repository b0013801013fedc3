//! Bodies that stream through the proxy.
//!
//! - [`ForwardBody`]: a request body whose first bytes were read for routing, replayed in front
//!   of the rest, which streams under the size limit.
//! - [`Tracked`]: every response body: an idle timeout, guards that run when the stream ends
//!   or the client goes away, and the observer that reads the answer on its way.
//! - [`EndpointRewriter`]: a legacy SSE stream whose `endpoint` event is rewritten (after the
//!   session is recorded) before it reaches the client; every later byte passes untouched.

use std::pin::Pin;

use std::task::{Context, Poll, ready};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use futures_util::future::BoxFuture;
use http_body::{Body, Frame, SizeHint};
use http_body_util::BodyExt;
use tokio::time::Instant;

use crate::error::ProxyError;
use crate::sse;
use crate::timer::LazyTimer;

pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// The body type of every response of the gateway.
pub type ProxyBody = http_body_util::combinators::UnsyncBoxBody<Bytes, BoxError>;

/// The request body grew past the configured limit while streaming.
#[derive(Debug, thiserror::Error)]
#[error("request body exceeds {0} bytes")]
pub struct BodyTooLarge(pub u64);

/// The replica sent nothing on a response stream for the idle timeout.
#[derive(Debug, thiserror::Error)]
#[error("upstream stream idle for {0:?}")]
pub struct StreamIdle(pub Duration);

// === impl ForwardBody ===

/// Bytes already read from the client (`prefix`) followed by the rest of its body.
pub struct ForwardBody {
    prefix: Vec<Bytes>,
    /// The next chunk of `prefix` to give.
    next: usize,
    rest: Option<ProxyBody>,
    /// A frame of `rest` was given (so the body cannot be sent again).
    streamed: bool,
    seen: u64,
    limit: u64,
}

impl ForwardBody {
    pub fn new(prefix: Vec<Bytes>, rest: Option<ProxyBody>, limit: u64) -> Self {
        let seen = prefix.iter().map(|b| b.len() as u64).sum();
        Self {
            prefix,
            next: 0,
            rest,
            streamed: false,
            seen,
            limit,
        }
    }
}

impl ForwardBody {
    /// A copy, when the whole body is held (nothing left to read from the client).
    pub fn try_clone(&self) -> Option<ForwardBody> {
        if self.rest.is_some() || self.streamed {
            return None;
        }
        Some(ForwardBody {
            prefix: self.prefix[self.next..].to_vec(),
            next: 0,
            rest: None,
            streamed: false,
            seen: self.seen,
            limit: self.limit,
        })
    }

    /// Starts again from the first byte, to send the body once more; false when some of it
    /// was streamed from the client (and is gone).
    pub(crate) fn rewind(&mut self) -> bool {
        if self.streamed {
            return false;
        }
        self.next = 0;
        true
    }
}

impl Body for ForwardBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        if let Some(chunk) = self.prefix.get(self.next) {
            let chunk = chunk.clone();
            self.next += 1;
            return Poll::Ready(Some(Ok(Frame::data(chunk))));
        }
        let Some(rest) = self.rest.as_mut() else {
            return Poll::Ready(None);
        };
        match ready!(Pin::new(rest).poll_frame(cx)) {
            Some(Ok(frame)) => {
                self.streamed = true;
                if let Some(data) = frame.data_ref() {
                    self.seen += data.len() as u64;
                    if self.seen > self.limit {
                        self.rest = None;
                        return Poll::Ready(Some(Err(Box::new(BodyTooLarge(self.limit)))));
                    }
                }
                Poll::Ready(Some(Ok(frame)))
            }
            Some(Err(e)) => Poll::Ready(Some(Err(e))),
            None => {
                self.rest = None;
                Poll::Ready(None)
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.next >= self.prefix.len() && self.rest.as_ref().is_none_or(|r| r.is_end_stream())
    }

    fn size_hint(&self) -> SizeHint {
        let buffered: u64 = self.prefix[self.next..]
            .iter()
            .map(|b| b.len() as u64)
            .sum();
        match &self.rest {
            None => SizeHint::with_exact(buffered),
            Some(r) => {
                let h = r.size_hint();
                let mut hint = SizeHint::new();
                hint.set_lower(buffered + h.lower());
                if let Some(upper) = h.upper() {
                    hint.set_upper(buffered + upper);
                }
                hint
            }
        }
    }
}

// === impl Tracked ===

/// Runs a closure once, when the response stream ends or is dropped.
pub struct OnClose(Option<Box<dyn FnOnce(bool) + Send>>);

impl OnClose {
    pub fn new(f: impl FnOnce(bool) + Send + 'static) -> Self {
        Self(Some(Box::new(f)))
    }

    /// `complete`: the stream reached its end (rather than failing or being dropped).
    fn fire(&mut self, complete: bool) {
        if let Some(f) = self.0.take() {
            f(complete);
        }
    }
}

impl Drop for OnClose {
    fn drop(&mut self) {
        self.fire(false);
    }
}

/// Reads a response body as it streams to the client, and is told once how it ended.
pub(crate) trait Watch: Send {
    fn frame(&mut self, data: &Bytes);
    /// `complete`: the stream reached its end (rather than failing, idling out or being
    /// dropped).
    fn end(self: Box<Self>, complete: bool);
}

/// The idle timeout of a response stream. The timer is made the first time the stream has
/// nothing to give (a JSON answer read at once never makes one), and re-armed only when it
/// fires early: re-arming per frame would touch the timer wheel on every chunk.
struct Idle {
    after: Duration,
    /// When the last frame passed, kept while the timer is armed (a body answered at once,
    /// the usual case, never reads the clock for it).
    last_frame: Option<Instant>,
    timer: LazyTimer,
}

/// Every response of the gateway: its body, with an optional idle timeout, the hooks to run
/// when it ends or the client goes away ([`OnClose`]), and an optional [`Watch`] that reads it
/// on the way (the MCP operation's observation). One wrapper, polled once per frame.
pub struct Tracked {
    inner: ProxyBody,
    idle: Option<Idle>,
    on_close: Vec<OnClose>,
    watch: Option<Box<dyn Watch>>,
    /// The attempt on a replica that produced this response, until the observer takes it.
    pub(crate) attempt: Option<crate::observe::Upstream>,
    /// Counts the response as in flight on its replica until it ends.
    pub(crate) in_flight: Option<crate::placement::InFlight>,
}

impl Tracked {
    /// A replica's response stream: idles out after `idle` without a frame.
    pub fn new(inner: ProxyBody, idle: Duration) -> Self {
        Self {
            inner,
            idle: Some(Idle {
                after: idle,
                last_frame: None,
                timer: LazyTimer::default(),
            }),
            on_close: Vec::new(),
            watch: None,
            attempt: None,
            in_flight: None,
        }
    }

    /// A body the gateway made itself (an error answer): no timeout, no hooks yet.
    pub fn plain(inner: ProxyBody) -> Self {
        Self {
            inner,
            idle: None,
            on_close: Vec::new(),
            watch: None,
            attempt: None,
            in_flight: None,
        }
    }

    /// Wraps the stream inside the timeout and hooks (e.g. to rewrite it).
    pub fn map_inner(mut self, f: impl FnOnce(ProxyBody) -> ProxyBody) -> Self {
        let inner = std::mem::replace(
            &mut self.inner,
            http_body_util::Empty::new()
                .map_err(|n| match n {})
                .boxed_unsync(),
        );
        self.inner = f(inner);
        self
    }

    pub fn on_close(&mut self, hook: OnClose) {
        self.on_close.push(hook);
    }

    pub(crate) fn watch(&mut self, watch: Box<dyn Watch>) {
        self.watch = Some(watch);
    }

    fn close(&mut self, complete: bool) {
        if let Some(watch) = self.watch.take() {
            watch.end(complete);
        }
        for hook in &mut self.on_close {
            hook.fire(complete);
        }
        self.in_flight = None;
    }
}

impl Drop for Tracked {
    fn drop(&mut self) {
        self.close(false);
    }
}

impl Body for Tracked {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = &mut *self;
        match Pin::new(&mut this.inner).poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(idle) = &mut this.idle
                    && idle.timer.is_armed()
                {
                    idle.last_frame = Some(Instant::now());
                }
                if let (Some(data), Some(watch)) = (frame.data_ref(), this.watch.as_mut()) {
                    watch.frame(data);
                }
                if this.inner.is_end_stream() {
                    // The server may not poll again after the last frame.
                    this.close(true);
                }
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Ready(Some(Err(e))) => {
                this.close(false);
                Poll::Ready(Some(Err(e)))
            }
            Poll::Ready(None) => {
                this.close(true);
                Poll::Ready(None)
            }
            Poll::Pending => {
                let Some(idle) = &mut this.idle else {
                    return Poll::Pending;
                };
                let last_frame = match idle.last_frame {
                    Some(at) if idle.timer.is_armed() => at,
                    _ => *idle.last_frame.insert(Instant::now()),
                };
                ready!(idle.timer.poll_expired(last_frame + idle.after, cx));
                let after = idle.after;
                this.close(false);
                Poll::Ready(Some(Err(Box::new(StreamIdle(after)))))
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

// === impl EndpointRewriter ===

/// Largest prefix of a legacy SSE stream read while looking for its `endpoint` event.
const MAX_ENDPOINT_PREFIX: usize = 64 * 1024;

/// Given the `endpoint` event's data, records the session and returns the URL to send instead.
pub type OnEndpoint =
    Box<dyn FnOnce(String) -> BoxFuture<'static, Result<String, ProxyError>> + Send>;

enum Rewrite {
    /// Looking for the endpoint event; `buf` holds an incomplete event.
    Scanning {
        buf: BytesMut,
        on_endpoint: OnEndpoint,
    },
    /// Recording the session; `head` is what to send once that is done, `id` the event id.
    Recording {
        fut: BoxFuture<'static, Result<String, ProxyError>>,
        before: Bytes,
        id: Option<String>,
        after: Bytes,
    },
    Passthrough,
    Failed,
}

/// A legacy SSE response stream with its `endpoint` event rewritten.
pub struct EndpointRewriter {
    inner: ProxyBody,
    state: Rewrite,
}

impl EndpointRewriter {
    pub fn new(inner: ProxyBody, on_endpoint: OnEndpoint) -> Self {
        Self {
            inner,
            state: Rewrite::Scanning {
                buf: BytesMut::new(),
                on_endpoint,
            },
        }
    }
}

fn fail(msg: impl Into<String>) -> BoxError {
    msg.into().into()
}

impl Body for EndpointRewriter {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = &mut *self;
        loop {
            match &mut this.state {
                Rewrite::Passthrough => return Pin::new(&mut this.inner).poll_frame(cx),
                Rewrite::Failed => return Poll::Ready(None),
                Rewrite::Recording { fut, .. } => {
                    let url = ready!(fut.as_mut().poll(cx));
                    let Rewrite::Recording {
                        before, id, after, ..
                    } = std::mem::replace(&mut this.state, Rewrite::Passthrough)
                    else {
                        unreachable!("state checked above")
                    };
                    return match url {
                        Ok(url) => {
                            let mut out = BytesMut::from(&before[..]);
                            out.extend_from_slice(&sse::endpoint_event(&url, id.as_deref()));
                            out.extend_from_slice(&after);
                            Poll::Ready(Some(Ok(Frame::data(out.freeze()))))
                        }
                        Err(e) => {
                            this.state = Rewrite::Failed;
                            Poll::Ready(Some(Err(fail(e.to_string()))))
                        }
                    };
                }
                Rewrite::Scanning { buf, .. } => {
                    let frame = match ready!(Pin::new(&mut this.inner).poll_frame(cx)) {
                        Some(Ok(frame)) => frame,
                        Some(Err(e)) => {
                            this.state = Rewrite::Failed;
                            return Poll::Ready(Some(Err(e)));
                        }
                        None => {
                            this.state = Rewrite::Failed;
                            return Poll::Ready(Some(Err(fail(
                                "legacy SSE stream ended before its endpoint event",
                            ))));
                        }
                    };
                    let Ok(data) = frame.into_data() else {
                        continue; // trailers on an SSE stream: nothing to forward
                    };
                    buf.extend_from_slice(&data);
                    // Split off complete events; stop at the endpoint event.
                    let mut passed = 0;
                    let mut found = None;
                    while let Some(ev) = sse::next_event(&buf[passed..]) {
                        let len = ev.raw.len();
                        if ev.event == Some("endpoint") {
                            found = Some((ev.data, ev.id.map(str::to_owned), passed, len));
                            break;
                        }
                        passed += len;
                    }
                    match found {
                        Some((data, id, at, len)) => {
                            let buf = buf.split().freeze();
                            let Rewrite::Scanning { on_endpoint, .. } =
                                std::mem::replace(&mut this.state, Rewrite::Failed)
                            else {
                                unreachable!("state checked above")
                            };
                            this.state = Rewrite::Recording {
                                fut: on_endpoint(data),
                                before: buf.slice(..at),
                                id,
                                after: buf.slice(at + len..),
                            };
                        }
                        None if buf.len() > MAX_ENDPOINT_PREFIX => {
                            this.state = Rewrite::Failed;
                            return Poll::Ready(Some(Err(fail(
                                "legacy SSE stream sent no endpoint event in its first 64 KiB",
                            ))));
                        }
                        None if passed > 0 => {
                            // Events before the endpoint (comments, pings) go out at once.
                            let out = buf.split_to(passed).freeze();
                            return Poll::Ready(Some(Ok(Frame::data(out))));
                        }
                        None => {}
                    }
                }
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        matches!(self.state, Rewrite::Failed)
            || (matches!(self.state, Rewrite::Passthrough) && self.inner.is_end_stream())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::{BodyExt, StreamBody};

    #[tokio::test(start_paused = true)]
    async fn a_stream_idles_out_after_its_last_frame() {
        // A frame after 600 ms, then nothing: the stream fails 1 s after that frame.
        let frames = futures_util::stream::unfold(0, |n| async move {
            if n > 0 {
                std::future::pending::<()>().await;
            }
            tokio::time::sleep(Duration::from_millis(600)).await;
            Some((Ok::<_, BoxError>(Frame::data(Bytes::from_static(b"x"))), 1))
        });
        let start = Instant::now();
        let mut body = Tracked::new(
            StreamBody::new(frames).boxed_unsync(),
            Duration::from_secs(1),
        );
        let frame = body.frame().await.unwrap().unwrap();
        assert_eq!(frame.into_data().unwrap(), "x");
        let failed = body.frame().await.unwrap().unwrap_err();
        assert!(failed.downcast_ref::<StreamIdle>().is_some(), "{failed}");
        assert_eq!(Instant::now() - start, Duration::from_millis(1600));
    }

    fn chunks(parts: &[&'static str]) -> ProxyBody {
        let frames: Vec<Result<Frame<Bytes>, BoxError>> = parts
            .iter()
            .map(|p| Ok(Frame::data(Bytes::from_static(p.as_bytes()))))
            .collect();
        StreamBody::new(futures_util::stream::iter(frames)).boxed_unsync()
    }

    async fn collect(body: impl Body<Data = Bytes, Error = BoxError>) -> Result<String, String> {
        body.collect()
            .await
            .map(|c| String::from_utf8(c.to_bytes().to_vec()).unwrap())
            .map_err(|e| e.to_string())
    }

    #[tokio::test]
    async fn forward_body_replays_the_prefix_then_streams_the_rest() {
        let body = ForwardBody::new(
            vec![Bytes::from_static(b"ab"), Bytes::from_static(b"c")],
            Some(chunks(&["de", "f"])),
            100,
        );
        assert_eq!(collect(body).await.unwrap(), "abcdef");
    }

    #[tokio::test]
    async fn forward_body_enforces_the_limit_while_streaming() {
        let body = ForwardBody::new(
            vec![Bytes::from_static(b"abc")],
            Some(chunks(&["de", "f"])),
            4,
        );
        assert!(collect(body).await.unwrap_err().contains("exceeds 4 bytes"));
    }

    #[tokio::test]
    async fn rewriter_rewrites_only_the_endpoint_event() {
        let upstream = chunks(&[
            ": hello\n\n",
            "event: endp",
            "oint\ndata: /messages/?session_id=abc\n\nevent: message\ndata: {}\n\n",
            "event: endpoint\ndata: /not-rewritten\n\n",
        ]);
        let on_endpoint: OnEndpoint = Box::new(|data| {
            Box::pin(async move {
                assert_eq!(data, "/messages/?session_id=abc");
                Ok("/adapters/x/messages?session_id=abc".to_owned())
            })
        });
        let out = collect(EndpointRewriter::new(upstream, on_endpoint))
            .await
            .unwrap();
        assert_eq!(
            out,
            ": hello\n\nevent: endpoint\ndata: /adapters/x/messages?session_id=abc\n\n\
             event: message\ndata: {}\n\nevent: endpoint\ndata: /not-rewritten\n\n"
        );
    }

    #[tokio::test]
    async fn rewriter_fails_when_recording_fails() {
        let on_endpoint: OnEndpoint =
            Box::new(|_| Box::pin(async { Err(ProxyError::SessionNotFound) }));
        let upstream = chunks(&["event: endpoint\ndata: /m?sessionId=1\n\n"]);
        assert!(
            collect(EndpointRewriter::new(upstream, on_endpoint))
                .await
                .is_err()
        );
    }

    #[tokio::test(start_paused = true)]
    async fn tracked_body_times_out_when_idle_and_fires_close_hooks() {
        let (tx, rx) = tokio::sync::oneshot::channel();
        let pending = StreamBody::new(futures_util::stream::pending::<
            Result<Frame<Bytes>, BoxError>,
        >())
        .boxed_unsync();
        let mut body = Tracked::new(pending, Duration::from_secs(30));
        body.on_close(OnClose::new(move |complete| {
            let _ = tx.send(complete);
        }));
        let err = collect(body).await.unwrap_err();
        assert!(err.contains("idle"), "{err}");
        assert_eq!(rx.await, Ok(false));
    }

    #[tokio::test]
    async fn tracked_body_reports_completion() {
        let (tx, rx) = tokio::sync::oneshot::channel();
        let mut body = Tracked::new(chunks(&["a"]), Duration::from_secs(30));
        body.on_close(OnClose::new(move |complete| {
            let _ = tx.send(complete);
        }));
        assert_eq!(collect(body).await.unwrap(), "a");
        assert_eq!(rx.await, Ok(true));
    }
}
