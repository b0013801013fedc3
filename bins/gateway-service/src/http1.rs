//! The gateway's HTTP/1.1 server connection: what hyper's server did for both listeners, in
//! the shape a proxy needs, and HTTP/2 with prior knowledge handed to hyper.
//!
//! One task per client connection reads a request head, calls the service, and writes its
//! answer, then reads the next head (keep-alive, pipelining). The request body is read by
//! whoever reads it, straight from the socket: the connection task and the body share the
//! socket and its read buffer, and a body that arrived with its head is handed over whole,
//! with no sharing. Neither side has a channel or a task of its own.
//!
//! The rules, RFC 9112 with a proxy's caution:
//! - A request body is framed by `Transfer-Encoding: chunked`, else `Content-Length`, else
//!   it has none. Both at once, a coding other than `chunked`, or differing lengths are
//!   refused (400, 501) and the connection closed: a gateway never guesses where a request
//!   ends.
//! - A head larger than [`Limits::head_bytes`] or with more than [`MAX_HEADERS`] fields gets
//!   431; a malformed one 400; an HTTP version other than 1.x 505. Each says what was wrong.
//! - The head must arrive within [`Limits::head_timeout`] of the connection waiting for it
//!   (slow loris; it also bounds an idle keep-alive connection). One timer per connection,
//!   moved only when it fires.
//! - `Expect: 100-continue` is answered when the service first reads the body; a service that
//!   answers without reading it gets its answer sent without the `100`, and the connection
//!   closes after it (the client may not send the body at all).
//! - A body left unread (an answer such as 401 before the upload's end) is read and thrown
//!   away, up to [`DRAIN_BYTES`] within [`DRAIN_TIME`], so that the client reads the answer
//!   instead of a reset and the connection stays open; more than that and it closes.
//! - The answer is framed by its `Content-Length` (or its body's exact size), else chunked,
//!   else (HTTP/1.0) by closing the connection. `HEAD`, 1xx, 204 and 304 answers have no body.
//! - While the service works and while the answer streams, the connection notices a client
//!   that closed it, and the request's future and the answer's body are dropped then: a held
//!   SSE stream ends when its client goes away.
//! - A stopping listener ([`Stop`]) first has every answer carry `Connection: close`, then
//!   closes connections that wait for a request.

use std::future::{Future, poll_fn};
use std::io::{self, IoSlice};
use std::pin::{Pin, pin};
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll, Waker, ready};
use std::time::Duration;

use bytes::{Buf, Bytes, BytesMut};
use http::{HeaderMap, HeaderValue, Method, Request, Response, StatusCode, Version};
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;
use hyper::service::Service;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use mcp_gateway_routing::BoxError;
use mcp_gateway_routing::timer::LazyTimer;
use mcp_gateway_routing::wire::{HeaderNames, header_line, list, push_decimal, push_hex};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio::sync::Notify;

/// Most header fields a request head may have.
pub const MAX_HEADERS: usize = 100;
/// Most of a request body the gateway drains when it answered without reading it all.
pub const DRAIN_BYTES: usize = 1024 * 1024;
/// The longest the gateway drains such a body.
pub const DRAIN_TIME: Duration = Duration::from_secs(5);
/// How many bytes of an answer's body are copied into the write buffer; a larger frame is
/// written from where it is.
const COPY_BYTES: usize = 16 * 1024;
/// How much of an answer is buffered before it is written even though the body has more ready.
const FLUSH_BYTES: usize = 64 * 1024;
/// Longest chunk-size line and trailer section of a chunked request body.
const CHUNK_LINE_BYTES: usize = 4 * 1024;
const TRAILER_BYTES: usize = 16 * 1024;
/// How long and how much a closing connection reads of what its client still sends.
const LINGER_TIME: Duration = Duration::from_secs(1);
const LINGER_BYTES: usize = 1024 * 1024;
const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
const CONTINUE: &[u8] = b"HTTP/1.1 100 Continue\r\n\r\n";

/// A connection's limits.
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    /// Largest request head, in bytes.
    pub head_bytes: usize,
    /// How long a request head may take to arrive, counted from when the connection starts
    /// waiting for it.
    pub head_timeout: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            head_bytes: 256 * 1024,
            head_timeout: Duration::from_secs(15),
        }
    }
}

/// How far a listener's connections are in stopping; shared by all of them.
#[derive(Default)]
pub struct Stop {
    phase: AtomicU8,
    idle: Notify,
}

const RUNNING: u8 = 0;
const CLOSING: u8 = 1;
const CLOSE_IDLE: u8 = 2;

impl Stop {
    /// From now on every answer carries `Connection: close` and its connection closes after it.
    pub fn closing(&self) {
        self.phase.fetch_max(CLOSING, Ordering::Relaxed);
    }

    /// Connections waiting for a request close now; busy ones after their answer.
    pub fn close_idle(&self) {
        self.phase.fetch_max(CLOSE_IDLE, Ordering::Relaxed);
        self.idle.notify_waiters();
    }

    fn phase(&self) -> u8 {
        self.phase.load(Ordering::Relaxed)
    }
}

/// Serves one client connection until it closes, the client breaks the protocol, or `stop`
/// says so. A connection that opens with HTTP/2's preface is served by hyper's HTTP/2 server.
pub async fn serve_connection<S, B>(io: TcpStream, service: S, stop: Arc<Stop>, limits: Limits)
where
    S: Service<Request<ClientBody>, Response = Response<B>> + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Into<BoxError>,
    B: Body<Data = Bytes> + Send + 'static,
    B::Error: Into<BoxError>,
{
    let shared = Arc::new(Shared {
        io,
        read: Mutex::new(ReadSide::default()),
    });
    let mut conn = Conn {
        shared,
        stop,
        limits,
        out: Vec::with_capacity(4096),
        timer: LazyTimer::default(),
        names: HeaderNames::default(),
    };
    let mut service = service;
    match conn.run(&mut service).await {
        Ok(End::Closed) => {}
        Ok(End::Http2) => {
            let Conn { shared, stop, .. } = conn;
            match Arc::try_unwrap(shared) {
                Ok(shared) => serve_http2(shared, service, &stop).await,
                Err(_) => tracing::debug!("an HTTP/2 connection still shared; closed"),
            }
        }
        Err(e) => tracing::debug!(error = %e, "client connection ended with an error"),
    }
}

/// The socket a connection task and its request body share, and its read side.
struct Shared {
    io: TcpStream,
    read: Mutex<ReadSide>,
}

impl Shared {
    fn read(&self) -> MutexGuard<'_, ReadSide> {
        self.read
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

#[derive(Default)]
struct ReadSide {
    buf: BytesMut,
    /// What is left of the current request's body.
    body: Framing,
    /// The client closed its side (a read returned 0).
    eof: bool,
    /// The body's handle was dropped before its end.
    abandoned: bool,
    /// Where the `100 Continue` owed to the client stands.
    continue_: Continue,
    /// The connection task, waiting for the body to end.
    waiting: Option<Waker>,
    /// Which request's body `body` is: a body kept past its request's end reads nothing of
    /// the next one's.
    generation: u64,
    /// Bytes of chunk size lines (with their extensions) read of the current body.
    line_bytes: usize,
    /// The body's reader, waiting for bytes (or to write its `100 Continue`): woken when the
    /// connection gives the body up.
    reader: Option<Waker>,
}

#[derive(Default, Clone, Copy, PartialEq, Eq, Debug)]
enum Framing {
    /// No body, or all of it read.
    #[default]
    Done,
    /// This many bytes still to come.
    Length(u64),
    Chunked(Chunk),
    /// The body was malformed or the connection broke: it cannot be used again.
    Broken,
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Chunk {
    Size,
    Data(u64),
    DataEnd,
    Trailers(usize),
}

#[derive(Default, Clone, Copy, PartialEq, Eq, Debug)]
enum Continue {
    /// Not asked for, or sent.
    #[default]
    None,
    /// Asked for, not sent yet.
    Owed,
    /// This many bytes of it written.
    Writing(usize),
    /// The answer started before it was sent: it never will be.
    Cancelled,
}

/// What the buffer holds of the body.
enum Step {
    Data(Bytes),
    End,
    More,
}

impl ReadSide {
    /// The next piece of the body that is in the buffer.
    fn step(&mut self) -> Result<Step, &'static str> {
        loop {
            match self.body {
                Framing::Done => return Ok(Step::End),
                Framing::Broken => return Err("the request body was cut short or malformed"),
                Framing::Length(left) => {
                    let Some((data, left)) = self.take(left) else {
                        return Ok(Step::More);
                    };
                    self.body = if left == 0 {
                        Framing::Done
                    } else {
                        Framing::Length(left)
                    };
                    return Ok(Step::Data(data));
                }
                Framing::Chunked(chunk) => match chunk {
                    Chunk::Size => match chunk_size_line(&self.buf) {
                        Ok(Some((used, size))) => {
                            self.line_bytes += used;
                            if self.line_bytes > CHUNK_LINE_BYTES {
                                return self.broken(
                                    "the request body's chunk size lines are too long in all",
                                );
                            }
                            self.buf.advance(used);
                            self.body = Framing::Chunked(if size == 0 {
                                Chunk::Trailers(0)
                            } else {
                                Chunk::Data(size)
                            });
                        }
                        Ok(None) if self.buf.len() < CHUNK_LINE_BYTES => return Ok(Step::More),
                        Ok(None) => {
                            return self
                                .broken("a chunk size line of the request body is too long");
                        }
                        Err(why) => return self.broken(why),
                    },
                    Chunk::Data(left) => {
                        let Some((data, left)) = self.take(left) else {
                            return Ok(Step::More);
                        };
                        self.body = Framing::Chunked(if left == 0 {
                            Chunk::DataEnd
                        } else {
                            Chunk::Data(left)
                        });
                        return Ok(Step::Data(data));
                    }
                    Chunk::DataEnd => {
                        if self.buf.len() < 2 {
                            return Ok(Step::More);
                        }
                        if &self.buf[..2] != b"\r\n" {
                            return self.broken("a chunk of the request body does not end in CRLF");
                        }
                        self.buf.advance(2);
                        self.body = Framing::Chunked(Chunk::Size);
                    }
                    Chunk::Trailers(seen) => {
                        let Some(at) = self.buf.windows(2).position(|w| w == b"\r\n") else {
                            if seen + self.buf.len() > TRAILER_BYTES {
                                return self.broken("the request body's trailers are too large");
                            }
                            return Ok(Step::More);
                        };
                        if self.buf[..at].iter().any(|&b| b == b'\r' || b == b'\n') {
                            return self
                                .broken("a trailer line of the request body has a bare CR or LF");
                        }
                        self.buf.advance(at + 2);
                        if at == 0 {
                            self.body = Framing::Done;
                        } else if seen + at + 2 > TRAILER_BYTES {
                            return self.broken("the request body's trailers are too large");
                        } else {
                            self.body = Framing::Chunked(Chunk::Trailers(seen + at + 2));
                        }
                    }
                },
            }
        }
    }

    /// Up to `left` bytes of body from the buffer, and what is left after them; `None` when
    /// the buffer is empty.
    fn take(&mut self, left: u64) -> Option<(Bytes, u64)> {
        if self.buf.is_empty() {
            return None;
        }
        let n = usize::try_from(left)
            .unwrap_or(usize::MAX)
            .min(self.buf.len());
        Some((self.buf.split_to(n).freeze(), left - n as u64))
    }

    fn broken<T>(&mut self, why: &'static str) -> Result<T, &'static str> {
        self.body = Framing::Broken;
        Err(why)
    }

    /// The connection gives up the current body (it closes, or waited too long for it): its
    /// reader, if one waits, is told.
    fn give_up_body(&mut self) {
        if !matches!(self.body, Framing::Done | Framing::Broken) {
            self.body = Framing::Broken;
        }
        if let Some(w) = self.reader.take() {
            w.wake();
        }
    }
}

/// A chunk size line at the start of `buf` (RFC 9112, 7.1): hex digits, then optional
/// extensions (`;name[=value]`, without CR, LF or other control bytes), then CRLF. `Ok(None)`
/// while its CRLF has not come. Stricter than `httparse::parse_chunk_size`, which takes a
/// missing size for 0 and a bare LF inside an extension, either of which would let a proxy in
/// front and the gateway disagree on where a body ends.
fn chunk_size_line(buf: &[u8]) -> Result<Option<(usize, u64)>, &'static str> {
    const BAD: &str = "a chunk size line of the request body is invalid";
    let digits = buf.iter().take_while(|b| b.is_ascii_hexdigit()).count();
    if digits == buf.len() {
        return if digits > 16 { Err(BAD) } else { Ok(None) };
    }
    if digits == 0 || digits > 16 {
        return Err(BAD);
    }
    let size = buf[..digits].iter().fold(0u64, |n, &b| {
        (n << 4) | u64::from((b as char).to_digit(16).unwrap_or(0))
    });
    let rest = &buf[digits..];
    let Some(cr) = rest.iter().position(|&b| b == b'\r') else {
        // No CR yet: everything so far must be a valid extension byte.
        return if rest.iter().all(|&b| is_extension_byte(b)) {
            Ok(None)
        } else {
            Err(BAD)
        };
    };
    let extensions = &rest[..cr];
    if !extensions.iter().all(|&b| is_extension_byte(b))
        || !(extensions.is_empty() || extensions.trim_ascii_start().starts_with(b";"))
    {
        return Err(BAD);
    }
    match rest.get(cr + 1) {
        None => Ok(None),
        Some(b'\n') => Ok(Some((digits + cr + 2, size))),
        Some(_) => Err(BAD),
    }
}

/// A byte a chunk extension may hold: visible ASCII, space, tab and obs-text.
fn is_extension_byte(b: u8) -> bool {
    b == b'\t' || b == b' ' || (0x21..0x7f).contains(&b) || b >= 0x80
}

/// Reads what the socket has into `buf`: `Ok(0)` at the client's end.
///
/// A read that did not fill the room it had emptied the socket: its readiness is cleared
/// then (as tokio's own `AsyncRead` does), so that the next wait for the client costs no
/// `recv` that would only say "nothing yet".
fn poll_read(io: &TcpStream, buf: &mut BytesMut, cx: &mut Context<'_>) -> Poll<io::Result<usize>> {
    if buf.capacity() - buf.len() < 1024 {
        buf.reserve(8 * 1024);
    }
    loop {
        ready!(io.poll_read_ready(cx))?;
        let room = buf.capacity() - buf.len();
        let mut got = None;
        let read = io.try_io(tokio::io::Interest::READABLE, || {
            let n = io.try_read_buf(&mut *buf)?;
            got = Some(n);
            if n < room {
                Err(io::ErrorKind::WouldBlock.into())
            } else {
                Ok(())
            }
        });
        match (got, read) {
            (Some(n), _) => return Poll::Ready(Ok(n)),
            (None, Err(e)) if e.kind() == io::ErrorKind::WouldBlock => {}
            (None, Err(e)) => return Poll::Ready(Err(e)),
            (None, Ok(())) => unreachable!("a read that succeeded sets `got`"),
        }
    }
}

/// Writes `slices` from the start, returning how much was written.
fn poll_write(
    io: &TcpStream,
    slices: &[IoSlice<'_>],
    cx: &mut Context<'_>,
) -> Poll<io::Result<usize>> {
    loop {
        ready!(io.poll_write_ready(cx))?;
        let written = if slices.len() == 1 {
            io.try_write(&slices[0])
        } else {
            io.try_write_vectored(slices)
        };
        match written {
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
            Ok(0) => return Poll::Ready(Err(io::ErrorKind::WriteZero.into())),
            done => return Poll::Ready(done),
        }
    }
}

/// A request head, parsed.
struct Head {
    request: Request<()>,
    framing: Framing,
    keep_alive: bool,
    expect_continue: bool,
}

/// Why a head cannot be served; each is answered and the connection closed.
struct Refusal {
    status: StatusCode,
    why: &'static str,
}

fn refuse<T>(status: StatusCode, why: &'static str) -> Result<T, Refusal> {
    Err(Refusal { status, why })
}

/// Parses the head at the start of `buf`: `Ok(None)` when it is not all there yet.
fn parse_head(
    buf: &mut BytesMut,
    limits: &Limits,
    names: &mut HeaderNames,
) -> Result<Option<Head>, Refusal> {
    // Most heads have a few fields: room for 32 first, for all that are allowed only if
    // that was too little (the arrays are on the stack; clearing room for 100 cost more than
    // parsing a head).
    match parse_head_with::<32>(buf, limits, names) {
        Err(Refusal { status, .. }) if status == StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE => {
            parse_head_with::<MAX_HEADERS>(buf, limits, names)
        }
        parsed => parsed,
    }
}

fn parse_head_with<const N: usize>(
    buf: &mut BytesMut,
    limits: &Limits,
    names: &mut HeaderNames,
) -> Result<Option<Head>, Refusal> {
    let mut fields = [const { std::mem::MaybeUninit::<httparse::Header<'_>>::uninit() }; N];
    let mut parsed = httparse::Request::new(&mut []);
    let len = match parsed.parse_with_uninit_headers(buf, &mut fields) {
        Ok(httparse::Status::Complete(len)) => len,
        Ok(httparse::Status::Partial) if buf.len() >= limits.head_bytes => {
            return refuse(
                StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
                "the request head is larger than the gateway reads",
            );
        }
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(httparse::Error::TooManyHeaders) => {
            return refuse(
                StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
                "the request has more header fields than the gateway reads (100)",
            );
        }
        Err(httparse::Error::Version) => {
            return refuse(
                StatusCode::HTTP_VERSION_NOT_SUPPORTED,
                "only HTTP/1.0, HTTP/1.1 and HTTP/2 are served",
            );
        }
        Err(_) => return refuse(StatusCode::BAD_REQUEST, "the request head is malformed"),
    };
    if len > limits.head_bytes {
        return refuse(
            StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            "the request head is larger than the gateway reads",
        );
    }
    // Where each piece lies in the buffer, so that the head's bytes can be frozen and shared
    // by the request's target and header values instead of copied.
    let start = buf.as_ptr() as usize;
    let at = |s: &[u8]| (s.as_ptr() as usize - start, s.len());
    let (Some(method), Some(target), Some(minor)) = (parsed.method, parsed.path, parsed.version)
    else {
        return refuse(StatusCode::BAD_REQUEST, "the request line is malformed");
    };
    let method = Method::from_bytes(method.as_bytes())
        .or_else(|_| refuse(StatusCode::BAD_REQUEST, "the request method is invalid"))?;
    let target = at(target.as_bytes());
    let mut spans = [((0, 0), (0, 0)); N];
    let n = parsed.headers.len();
    for (span, field) in spans.iter_mut().zip(parsed.headers.iter()) {
        *span = (at(field.name.as_bytes()), at(field.value));
    }
    let head = buf.split_to(len).freeze();
    let slice = |(off, len): (usize, usize)| head.slice(off..off + len);

    let mut request = Request::new(());
    *request.method_mut() = method;
    *request.version_mut() = if minor == 1 {
        Version::HTTP_11
    } else {
        Version::HTTP_10
    };
    *request.uri_mut() = http::Uri::from_maybe_shared(slice(target)).or_else(|_| {
        refuse(
            StatusCode::BAD_REQUEST,
            "the request target is not a valid URI",
        )
    })?;

    let mut headers = HeaderMap::with_capacity(n);
    let mut length: Option<u64> = None;
    let mut chunked = false;
    let (mut said_close, mut said_keep_alive, mut hosts) = (false, false, 0);
    let mut expect_continue = false;
    for (at, &(name, value)) in spans[..n].iter().enumerate() {
        let name = names
            .name(at, &head[name.0..name.0 + name.1])
            .or_else(|_| refuse(StatusCode::BAD_REQUEST, "a header name is invalid"))?;
        let value = HeaderValue::from_maybe_shared(slice(value))
            .or_else(|_| refuse(StatusCode::BAD_REQUEST, "a header value is invalid"))?;
        if name == http::header::CONTENT_LENGTH {
            for part in list(value.as_bytes()) {
                let parsed = (!part.is_empty() && part.iter().all(u8::is_ascii_digit))
                    .then(|| std::str::from_utf8(part).ok()?.parse::<u64>().ok())
                    .flatten();
                match (parsed, length) {
                    (None, _) => {
                        return refuse(StatusCode::BAD_REQUEST, "Content-Length is not a number");
                    }
                    (Some(a), Some(b)) if a != b => {
                        return refuse(
                            StatusCode::BAD_REQUEST,
                            "the request has differing Content-Length values",
                        );
                    }
                    (some, _) => length = some,
                }
            }
        } else if name == http::header::TRANSFER_ENCODING {
            if minor == 0 {
                return refuse(
                    StatusCode::BAD_REQUEST,
                    "HTTP/1.0 requests cannot use Transfer-Encoding",
                );
            }
            for coding in list(value.as_bytes()) {
                if chunked || !coding.eq_ignore_ascii_case(b"chunked") {
                    return refuse(
                        StatusCode::NOT_IMPLEMENTED,
                        "the only transfer coding served is chunked, once",
                    );
                }
                chunked = true;
            }
        } else if name == http::header::CONNECTION {
            for token in list(value.as_bytes()) {
                if token.eq_ignore_ascii_case(b"close") {
                    said_close = true;
                } else if token.eq_ignore_ascii_case(b"keep-alive") {
                    said_keep_alive = true;
                }
            }
        } else if name == http::header::HOST {
            hosts += 1;
        } else if name == http::header::EXPECT {
            // HTTP/1.0 clients do not wait for a 100 (RFC 9110, 10.1.1).
            expect_continue = minor == 1 && value.as_bytes().eq_ignore_ascii_case(b"100-continue");
        }
        headers.append(name, value);
    }
    // RFC 9112, 3.2: exactly one Host on HTTP/1.1 (at most one on 1.0). Two could be read
    // differently by a proxy in front and by the gateway's Host check.
    if hosts > 1 || (hosts == 0 && minor == 1) {
        return refuse(
            StatusCode::BAD_REQUEST,
            "an HTTP/1.1 request needs exactly one Host header",
        );
    }
    let close = said_close || (minor == 0 && !said_keep_alive);
    let framing = match (chunked, length) {
        (true, Some(_)) => {
            return refuse(
                StatusCode::BAD_REQUEST,
                "the request has both Transfer-Encoding and Content-Length",
            );
        }
        (true, None) => Framing::Chunked(Chunk::Size),
        (false, Some(n)) if n > 0 => Framing::Length(n),
        _ => Framing::Done,
    };
    *request.headers_mut() = headers;
    Ok(Some(Head {
        request,
        framing,
        keep_alive: !close,
        expect_continue: expect_continue && framing != Framing::Done,
    }))
}

enum End {
    Closed,
    Http2,
}

struct Conn {
    shared: Arc<Shared>,
    stop: Arc<Stop>,
    limits: Limits,
    /// What is to be written: a head, small body frames, chunk framing.
    out: Vec<u8>,
    /// The head timeout.
    timer: LazyTimer,
    /// The names of the last head's fields.
    names: HeaderNames,
}

impl Conn {
    async fn run<S, B>(&mut self, service: &mut S) -> io::Result<End>
    where
        S: Service<Request<ClientBody>, Response = Response<B>>,
        S::Error: Into<BoxError>,
        B: Body<Data = Bytes>,
        B::Error: Into<BoxError>,
    {
        let mut first = true;
        loop {
            let head = match self.read_head(first).await {
                Ok(HeadRead::Head(head)) => head,
                Ok(HeadRead::Http2) => return Ok(End::Http2),
                Ok(HeadRead::Closed) => return Ok(End::Closed),
                Err(refusal) => {
                    self.refuse(&refusal).await;
                    return Ok(End::Closed);
                }
            };
            first = false;
            let Head {
                request,
                framing,
                keep_alive,
                expect_continue,
            } = head;
            let head_only = request.method() == Method::HEAD;
            let version = request.version();
            let body = self.body(framing, expect_continue);
            let future = service.call(request.map(|()| body));
            let Some(answer) = self.wait_for(future).await else {
                return Ok(End::Closed);
            };
            let answer = match answer {
                Ok(answer) => answer,
                Err(e) => {
                    tracing::warn!(error = %e, "the service failed a request");
                    self.refuse(&Refusal {
                        status: StatusCode::INTERNAL_SERVER_ERROR,
                        why: "the request failed",
                    })
                    .await;
                    return Ok(End::Closed);
                }
            };
            let keep_alive = keep_alive && self.stop.phase() == RUNNING;
            if !self.answer(answer, version, head_only, keep_alive).await? {
                self.close().await;
                return Ok(End::Closed);
            }
            if !self.finish_body().await {
                self.close().await;
                return Ok(End::Closed);
            }
        }
    }

    /// The request's body: what of it came with the head, or a reader of the socket.
    fn body(&self, framing: Framing, expect_continue: bool) -> ClientBody {
        let mut read = self.shared.read();
        read.continue_ = if expect_continue {
            Continue::Owed
        } else {
            Continue::None
        };
        if let Framing::Length(n) = framing
            && !expect_continue
            && n <= read.buf.len() as u64
        {
            let data = read.buf.split_to(n as usize).freeze();
            return ClientBody(Kind::Full(Some(data)));
        }
        if framing == Framing::Done {
            return ClientBody(Kind::Full(None));
        }
        read.body = framing;
        read.abandoned = false;
        read.generation += 1;
        read.line_bytes = 0;
        ClientBody(Kind::Stream(StreamBody {
            generation: read.generation,
            shared: self.shared.clone(),
            left: match framing {
                Framing::Length(n) => Some(n),
                _ => None,
            },
            ended: false,
        }))
    }

    async fn read_head(&mut self, first: bool) -> Result<HeadRead, Refusal> {
        let deadline = tokio::time::Instant::now() + self.limits.head_timeout;
        let stop = self.stop.clone();
        let mut stopping = pin!(stop.idle.notified());
        poll_fn(|cx| {
            let mut read = self.shared.read();
            loop {
                if !read.buf.is_empty() {
                    let n = read.buf.len().min(H2_PREFACE.len());
                    if first && read.buf[..n] == H2_PREFACE[..n] {
                        if n == H2_PREFACE.len() {
                            return Poll::Ready(Ok(HeadRead::Http2));
                        }
                        // Part of the preface: read on.
                    } else if let Some(head) =
                        parse_head(&mut read.buf, &self.limits, &mut self.names)?
                    {
                        return Poll::Ready(Ok(HeadRead::Head(head)));
                    }
                }
                if read.eof {
                    // A head cut short is not answered: its client is gone.
                    return Poll::Ready(Ok(HeadRead::Closed));
                }
                match poll_read(&self.shared.io, &mut read.buf, cx) {
                    Poll::Ready(Ok(0)) => read.eof = true,
                    Poll::Ready(Ok(_)) => {}
                    Poll::Ready(Err(_)) => return Poll::Ready(Ok(HeadRead::Closed)),
                    Poll::Pending => break,
                }
            }
            let idle = read.buf.is_empty();
            drop(read);
            if idle && (self.stop.phase() >= CLOSE_IDLE || stopping.as_mut().poll(cx).is_ready()) {
                return Poll::Ready(Ok(HeadRead::Closed));
            }
            if self.timer.poll_expired(deadline, cx).is_ready() {
                tracing::debug!(idle, "no request head within the timeout; closing");
                return Poll::Ready(Ok(HeadRead::Closed));
            }
            Poll::Pending
        })
        .await
    }

    /// Drives the service's future, watching the client meanwhile: `None` if it went away.
    async fn wait_for<F, T, E>(&self, future: F) -> Option<Result<T, BoxError>>
    where
        F: Future<Output = Result<T, E>>,
        E: Into<BoxError>,
    {
        let mut future = pin!(future);
        poll_fn(|cx| {
            if let Poll::Ready(done) = future.as_mut().poll(cx) {
                return Poll::Ready(Some(done.map_err(Into::into)));
            }
            if self.poll_client_gone(cx).is_ready() {
                return Poll::Ready(None);
            }
            Poll::Pending
        })
        .await
    }

    /// Ready when the client closed the connection or it broke. Reads ahead what the client
    /// sends meanwhile (a pipelined request), up to a head's limit; only while no request body
    /// is being read.
    fn poll_client_gone(&self, cx: &mut Context<'_>) -> Poll<()> {
        let mut read = self.shared.read();
        if read.eof {
            return Poll::Ready(());
        }
        if read.body != Framing::Done {
            // The body's reader has the socket; woken when the body ends, the connection
            // watches the client again.
            read.waiting = Some(cx.waker().clone());
            return Poll::Pending;
        }
        loop {
            if read.eof {
                return Poll::Ready(());
            }
            if read.buf.len() >= self.limits.head_bytes {
                return Poll::Pending;
            }
            match poll_read(&self.shared.io, &mut read.buf, cx) {
                Poll::Ready(Ok(0)) => read.eof = true,
                Poll::Ready(Ok(_)) => {}
                Poll::Ready(Err(_)) => return Poll::Ready(()),
                Poll::Pending => return Poll::Pending,
            }
        }
    }

    /// Writes the answer; whether the connection can carry another request after it.
    async fn answer<B>(
        &mut self,
        answer: Response<B>,
        version: Version,
        head_only: bool,
        keep_alive: bool,
    ) -> io::Result<bool>
    where
        B: Body<Data = Bytes>,
        B::Error: Into<BoxError>,
    {
        let (parts, body) = answer.into_parts();
        let status = parts.status;
        let mut keep_alive = keep_alive && !connection_close(&parts.headers);
        let bodyless = status.is_informational()
            || status == StatusCode::NO_CONTENT
            || status == StatusCode::NOT_MODIFIED;
        let declared = parts
            .headers
            .get(http::header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse::<u64>().ok());
        let length = declared.or_else(|| body.size_hint().exact());
        let mut framing = if bodyless || head_only {
            Out::None
        } else if let Some(n) = length {
            Out::Length(n)
        } else if version == Version::HTTP_11 {
            Out::Chunked
        } else {
            keep_alive = false;
            Out::Close
        };
        if status.is_informational() {
            keep_alive = false;
        }

        keep_alive &= self.start_answer();
        let out = &mut self.out;
        status_line(out, status);
        let mut dated = false;
        for (name, value) in &parts.headers {
            if name == http::header::CONTENT_LENGTH
                || name == http::header::TRANSFER_ENCODING
                || name == http::header::CONNECTION
            {
                continue;
            }
            dated |= name == http::header::DATE;
            header_line(out, name.as_str(), value.as_bytes());
        }
        if !dated {
            date::write(out);
        }
        match framing {
            Out::Length(n) => content_length(out, n),
            Out::Chunked => out.extend_from_slice(b"transfer-encoding: chunked\r\n"),
            // A HEAD's answer states the length the service declared, or its body's size when
            // it gave one (an empty body says nothing of the GET's answer).
            Out::None if head_only && !bodyless => {
                if let Some(n) = declared.or(length.filter(|&n| n > 0)) {
                    content_length(out, n);
                }
            }
            Out::None | Out::Close => {}
        }
        if !keep_alive {
            out.extend_from_slice(b"connection: close\r\n");
        } else if version == Version::HTTP_10 {
            out.extend_from_slice(b"connection: keep-alive\r\n");
        }
        out.extend_from_slice(b"\r\n");

        if matches!(framing, Out::None) {
            drop(body);
            self.flush().await?;
            return Ok(keep_alive);
        }
        let whole = self.stream_body(body, &mut framing).await?;
        Ok(keep_alive && whole)
    }

    /// Streams the answer's body behind the head in `out`: whether all of it was written.
    ///
    /// What the body has ready is gathered behind the head first, so that a whole answer
    /// leaves in one write; a body that has nothing ready has what came before it written,
    /// and frames larger than [`COPY_BYTES`] are written from where they are.
    async fn stream_body<B>(&mut self, body: B, framing: &mut Out) -> io::Result<bool>
    where
        B: Body<Data = Bytes>,
        B::Error: Into<BoxError>,
    {
        let mut body = pin!(body);
        let mut big: Option<Bytes> = None;
        let mut ended = false;
        let mut overrun = false;
        let mut written = 0;
        let chunked = matches!(framing, Out::Chunked);
        let whole = poll_fn(|cx| {
            loop {
                let mut waiting = false;
                while !ended && big.is_none() && self.out.len() < FLUSH_BYTES {
                    match body.as_mut().poll_frame(cx) {
                        Poll::Ready(Some(Ok(frame))) => {
                            // Trailers are not sent over HTTP/1.1.
                            let Ok(data) = frame.into_data() else {
                                continue;
                            };
                            if data.is_empty() {
                                continue;
                            }
                            let mut data = data;
                            if let Out::Length(left) = framing {
                                if data.len() as u64 > *left {
                                    // What fits is written; the connection then closes.
                                    tracing::warn!("an answer's body is longer than its length");
                                    data.truncate(*left as usize);
                                    ended = true;
                                    overrun = true;
                                }
                                *left -= data.len() as u64;
                            }
                            if chunked {
                                chunk_size(&mut self.out, data.len());
                            }
                            if data.len() > COPY_BYTES {
                                big = Some(data);
                            } else {
                                self.out.extend_from_slice(&data);
                                if chunked {
                                    self.out.extend_from_slice(b"\r\n");
                                }
                            }
                        }
                        Poll::Ready(Some(Err(e))) => {
                            let e: BoxError = e.into();
                            tracing::debug!(error = %e, "an answer's body failed");
                            return Poll::Ready(Ok::<bool, io::Error>(false));
                        }
                        Poll::Ready(None) => {
                            ended = true;
                            match framing {
                                Out::Chunked => self.out.extend_from_slice(b"0\r\n\r\n"),
                                Out::Length(left) if *left > 0 => {
                                    tracing::warn!("an answer's body is shorter than its length");
                                    // What there is gets written; the connection then closes.
                                    *framing = Out::Close;
                                }
                                _ => {}
                            }
                        }
                        Poll::Pending => {
                            waiting = true;
                            break;
                        }
                    }
                }
                while !self.out.is_empty() || big.is_some() {
                    let pending = &self.out[written..];
                    let (slices, count) = match &big {
                        Some(b) if pending.is_empty() => ([IoSlice::new(b), IoSlice::new(&[])], 1),
                        Some(b) => ([IoSlice::new(pending), IoSlice::new(b)], 2),
                        None => ([IoSlice::new(pending), IoSlice::new(&[])], 1),
                    };
                    // A client that stopped reading is noticed by its socket turning
                    // writable with an error.
                    let mut n = ready!(poll_write(&self.shared.io, &slices[..count], cx))?;
                    let left = self.out.len() - written;
                    if n < left {
                        written += n;
                        continue;
                    }
                    n -= left;
                    self.out.clear();
                    written = 0;
                    if let Some(b) = big.as_mut() {
                        b.advance(n);
                        if b.is_empty() {
                            big = None;
                            if chunked {
                                self.out.extend_from_slice(b"\r\n");
                            }
                        }
                    }
                }
                if ended {
                    return Poll::Ready(Ok(!overrun));
                }
                if waiting {
                    if self.poll_client_gone(cx).is_ready() {
                        return Poll::Ready(Ok(false));
                    }
                    return Poll::Pending;
                }
            }
        })
        .await?;
        Ok(whole && !matches!(framing, Out::Close))
    }

    async fn flush(&mut self) -> io::Result<()> {
        let mut written = 0;
        poll_fn(|cx| {
            while written < self.out.len() {
                let slice = [IoSlice::new(&self.out[written..])];
                written += ready!(poll_write(&self.shared.io, &slice, cx))?;
            }
            Poll::Ready(Ok::<(), io::Error>(()))
        })
        .await?;
        self.out.clear();
        Ok(())
    }

    /// Waits for the request's body to end, draining one its reader dropped: whether the
    /// connection can read the next request.
    async fn finish_body(&mut self) -> bool {
        /// `Ready(false)` once [`DRAIN_TIME`] has passed since the first wait.
        fn out_of_time(
            timer: &mut Option<Pin<Box<tokio::time::Sleep>>>,
            cx: &mut Context<'_>,
        ) -> Poll<bool> {
            let timer = timer.get_or_insert_with(|| Box::pin(tokio::time::sleep(DRAIN_TIME)));
            timer.as_mut().poll(cx).map(|()| false)
        }
        let mut drained = 0usize;
        let mut deadline: Option<Pin<Box<tokio::time::Sleep>>> = None;
        let shared = &*self.shared;
        poll_fn(|cx| {
            let mut read = shared.read();
            loop {
                match read.body {
                    Framing::Done => return Poll::Ready(read.continue_ != Continue::Cancelled),
                    Framing::Broken => return Poll::Ready(false),
                    // No `100` was sent: the client may never send the body.
                    _ if read.continue_ == Continue::Cancelled => return Poll::Ready(false),
                    _ if !read.abandoned => {
                        // Its reader still has it: wait for the body's end, as long as a
                        // drain would take at most.
                        read.waiting = Some(cx.waker().clone());
                        drop(read);
                        return out_of_time(&mut deadline, cx);
                    }
                    _ => {}
                }
                match read.step() {
                    Ok(Step::Data(data)) => {
                        drained += data.len();
                        if drained > DRAIN_BYTES {
                            return Poll::Ready(false);
                        }
                        continue;
                    }
                    Ok(Step::End) => continue,
                    Ok(Step::More) => {}
                    Err(_) => return Poll::Ready(false),
                }
                if read.eof {
                    return Poll::Ready(false);
                }
                match poll_read(&shared.io, &mut read.buf, cx) {
                    Poll::Ready(Ok(0)) => read.eof = true,
                    Poll::Ready(Ok(_)) => {}
                    Poll::Ready(Err(_)) => return Poll::Ready(false),
                    Poll::Pending => {
                        drop(read);
                        return out_of_time(&mut deadline, cx);
                    }
                }
            }
        })
        .await
    }

    /// Clears `out` for an answer's head, after the rest of a `100 Continue` being written:
    /// one not sent yet never will be. False when a `100` was owed (the client may not send
    /// its body: the connection cannot carry another request).
    fn start_answer(&mut self) -> bool {
        let continued = {
            let mut read = self.shared.read();
            let state = read.continue_;
            read.continue_ = match state {
                Continue::Owed | Continue::Cancelled => Continue::Cancelled,
                _ => Continue::None,
            };
            state
        };
        self.out.clear();
        match continued {
            Continue::Writing(n) => {
                self.out.extend_from_slice(&CONTINUE[n..]);
                true
            }
            Continue::Owed | Continue::Cancelled => false,
            Continue::None => true,
        }
    }

    /// Answers a request the gateway cannot serve with what was wrong, and closes.
    async fn refuse(&mut self, refusal: &Refusal) {
        self.start_answer();
        let out = &mut self.out;
        status_line(out, refusal.status);
        out.extend_from_slice(b"content-type: text/plain; charset=utf-8\r\n");
        date::write(out);
        content_length(out, refusal.why.len() as u64 + 1);
        out.extend_from_slice(b"connection: close\r\n\r\n");
        out.extend_from_slice(refusal.why.as_bytes());
        out.push(b'\n');
        if self.flush().await.is_ok() {
            self.close().await;
        }
    }

    /// Closes the connection after an answer: ends its sending side, then reads what the
    /// client still sends until it closes too (at most [`LINGER_BYTES`] within
    /// [`LINGER_TIME`]). Unread bytes at the close would have the kernel reset the connection,
    /// and a client could lose the answer it has not read yet.
    async fn close(&self) {
        if socket2::SockRef::from(&self.shared.io)
            .shutdown(std::net::Shutdown::Write)
            .is_err()
        {
            return;
        }
        self.shared.read().give_up_body();
        let mut seen = 0;
        let lingering = poll_fn(|cx| {
            let mut read = self.shared.read();
            loop {
                if read.eof || seen > LINGER_BYTES {
                    return Poll::Ready(());
                }
                read.buf.clear();
                match poll_read(&self.shared.io, &mut read.buf, cx) {
                    Poll::Ready(Ok(0)) => read.eof = true,
                    Poll::Ready(Ok(n)) => seen += n,
                    Poll::Ready(Err(_)) => return Poll::Ready(()),
                    Poll::Pending => return Poll::Pending,
                }
            }
        });
        let _ = tokio::time::timeout(LINGER_TIME, lingering).await;
    }
}

// Returned once per request and taken apart at once: boxing the head would cost an allocation.
#[allow(clippy::large_enum_variant)]
enum HeadRead {
    Head(Head),
    Http2,
    Closed,
}

/// How an answer's body is framed.
#[derive(Clone, Copy)]
enum Out {
    None,
    Length(u64),
    Chunked,
    Close,
}

fn connection_close(headers: &HeaderMap) -> bool {
    headers
        .get_all(http::header::CONNECTION)
        .iter()
        .flat_map(|v| list(v.as_bytes()))
        .any(|t| t.eq_ignore_ascii_case(b"close"))
}

fn status_line(out: &mut Vec<u8>, status: StatusCode) {
    out.extend_from_slice(b"HTTP/1.1 ");
    out.extend_from_slice(status.as_str().as_bytes());
    out.push(b' ');
    out.extend_from_slice(status.canonical_reason().unwrap_or("Unknown").as_bytes());
    out.extend_from_slice(b"\r\n");
}

fn content_length(out: &mut Vec<u8>, n: u64) {
    out.extend_from_slice(b"content-length: ");
    push_decimal(out, n);
    out.extend_from_slice(b"\r\n");
}

fn chunk_size(out: &mut Vec<u8>, n: usize) {
    push_hex(out, n);
    out.extend_from_slice(b"\r\n");
}

/// The `Date` header, formatted once a second per thread.
mod date {
    use std::cell::RefCell;
    use std::time::{SystemTime, UNIX_EPOCH};

    thread_local! {
        static CACHED: RefCell<(u64, Vec<u8>)> = const { RefCell::new((u64::MAX, Vec::new())) };
    }

    pub(super) fn write(out: &mut Vec<u8>) {
        let now = SystemTime::now();
        let second = now.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
        CACHED.with_borrow_mut(|(at, line)| {
            if *at != second {
                *at = second;
                line.clear();
                line.extend_from_slice(b"date: ");
                line.extend_from_slice(httpdate::fmt_http_date(now).as_bytes());
                line.extend_from_slice(b"\r\n");
            }
            out.extend_from_slice(line);
        });
    }
}

/// A client's request body.
pub struct ClientBody(Kind);

enum Kind {
    /// All of it, read with the head (or no body).
    Full(Option<Bytes>),
    /// Read from the connection as it is polled.
    Stream(StreamBody),
    /// An HTTP/2 stream's; drained in the background when dropped before its end.
    Http2(Option<Incoming>),
}

struct StreamBody {
    shared: Arc<Shared>,
    generation: u64,
    /// What is left of a `Content-Length` body.
    left: Option<u64>,
    ended: bool,
}

/// Why a request body could not be read.
#[derive(Debug)]
pub struct BodyError(BoxError);

impl std::fmt::Display for BodyError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "reading the request body: {}", self.0)
    }
}

impl std::error::Error for BodyError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        Some(&*self.0)
    }
}

impl ClientBody {
    fn http2(body: Incoming) -> Self {
        Self(Kind::Http2(Some(body)))
    }
}

impl Body for ClientBody {
    type Data = Bytes;
    type Error = BodyError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        match &mut self.get_mut().0 {
            Kind::Full(data) => Poll::Ready(data.take().map(|d| Ok(Frame::data(d)))),
            Kind::Stream(body) => body
                .poll_data(cx)
                .map(|polled| polled.map(|r| r.map(Frame::data).map_err(|e| BodyError(e.into())))),
            Kind::Http2(inner) => {
                let Some(body) = inner.as_mut() else {
                    return Poll::Ready(None);
                };
                let polled = Pin::new(body).poll_frame(cx);
                if matches!(polled, Poll::Ready(None | Some(Err(_)))) {
                    *inner = None;
                }
                polled.map(|p| p.map(|r| r.map_err(|e| BodyError(e.into()))))
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        match &self.0 {
            Kind::Full(data) => data.is_none(),
            Kind::Stream(body) => body.ended || body.left == Some(0),
            Kind::Http2(inner) => inner.as_ref().is_none_or(Body::is_end_stream),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.0 {
            Kind::Full(data) => SizeHint::with_exact(data.as_ref().map_or(0, |d| d.len() as u64)),
            Kind::Stream(body) => match (body.ended, body.left) {
                (true, _) => SizeHint::with_exact(0),
                (false, Some(n)) => SizeHint::with_exact(n),
                (false, None) => SizeHint::default(),
            },
            Kind::Http2(inner) => inner
                .as_ref()
                .map_or_else(|| SizeHint::with_exact(0), Body::size_hint),
        }
    }
}

impl StreamBody {
    fn poll_data(&mut self, cx: &mut Context<'_>) -> Poll<Option<Result<Bytes, &'static str>>> {
        if self.ended {
            return Poll::Ready(None);
        }
        let shared = &*self.shared;
        let mut read = shared.read();
        if read.generation != self.generation {
            self.ended = true;
            return Poll::Ready(None);
        }
        // The `100 Continue`, when the body is first wanted (and the answer has not started).
        loop {
            let from = match read.continue_ {
                Continue::Owed => 0,
                Continue::Writing(n) => n,
                Continue::None | Continue::Cancelled => break,
            };
            match poll_write(&shared.io, &[IoSlice::new(&CONTINUE[from..])], cx) {
                Poll::Ready(Ok(n)) if from + n == CONTINUE.len() => read.continue_ = Continue::None,
                Poll::Ready(Ok(n)) => read.continue_ = Continue::Writing(from + n),
                Poll::Ready(Err(_)) => {
                    read.body = Framing::Broken;
                    return end(&mut self.ended, read, Err("the connection broke"));
                }
                Poll::Pending => {
                    if read.continue_ == Continue::Owed {
                        read.continue_ = Continue::Writing(0);
                    }
                    read.reader = Some(cx.waker().clone());
                    return Poll::Pending;
                }
            }
        }
        loop {
            match read.step() {
                Ok(Step::Data(data)) => {
                    if let Some(left) = self.left.as_mut() {
                        *left -= data.len() as u64;
                    }
                    if read.body == Framing::Done {
                        // Tell a waiting connection now: this may be the body's last poll.
                        if let Some(w) = read.waiting.take() {
                            w.wake();
                        }
                    }
                    return Poll::Ready(Some(Ok(data)));
                }
                Ok(Step::End) => return end(&mut self.ended, read, Ok(())),
                Ok(Step::More) => {}
                Err(why) => return end(&mut self.ended, read, Err(why)),
            }
            if read.eof {
                read.body = Framing::Broken;
                return end(
                    &mut self.ended,
                    read,
                    Err("the client closed the connection before the body's end"),
                );
            }
            match poll_read(&shared.io, &mut read.buf, cx) {
                Poll::Ready(Ok(0)) => read.eof = true,
                Poll::Ready(Ok(_)) => {}
                Poll::Ready(Err(_)) => {
                    read.body = Framing::Broken;
                    return end(&mut self.ended, read, Err("the connection broke"));
                }
                Poll::Pending => {
                    read.reader = Some(cx.waker().clone());
                    return Poll::Pending;
                }
            }
        }
    }
}

/// A body's end: `how` it ended, told to the connection if it waits for it.
fn end(
    ended: &mut bool,
    mut read: MutexGuard<'_, ReadSide>,
    how: Result<(), &'static str>,
) -> Poll<Option<Result<Bytes, &'static str>>> {
    *ended = true;
    if let Some(w) = read.waiting.take() {
        w.wake();
    }
    Poll::Ready(how.err().map(Err))
}

impl Drop for StreamBody {
    fn drop(&mut self) {
        if self.ended {
            return;
        }
        let mut read = self.shared.read();
        if read.generation != self.generation {
            return;
        }
        read.abandoned = true;
        if let Some(w) = read.waiting.take() {
            w.wake();
        }
    }
}

impl Drop for ClientBody {
    fn drop(&mut self) {
        let Kind::Http2(inner) = &mut self.0 else {
            return;
        };
        let Some(body) = inner.take() else {
            return;
        };
        if body.is_end_stream() {
            return;
        }
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            runtime.spawn(drain(body));
        }
    }
}

/// Reads an HTTP/2 request body left unread, up to [`DRAIN_BYTES`] within [`DRAIN_TIME`]
/// (its stream's flow-control window then lets the client finish sending and read the answer).
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

/// An HTTP/2 connection, served by hyper from the bytes already read on; told to finish
/// (GOAWAY) when the listener closes idle connections.
async fn serve_http2<S, B>(shared: Shared, service: S, stop: &Stop)
where
    S: Service<Request<ClientBody>, Response = Response<B>> + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Into<BoxError>,
    B: Body<Data = Bytes> + Send + 'static,
    B::Error: Into<BoxError>,
{
    let read = shared
        .read
        .into_inner()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    let io = Prefixed {
        prefix: read.buf.freeze(),
        io: shared.io,
    };
    let conn = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
        .timer(TokioTimer::new())
        .serve_connection(TokioIo::new(io), Http2Service(service));
    let mut conn = pin!(conn);
    let stopping = stop.idle.notified();
    let mut stopping = pin!(stopping);
    stopping.as_mut().enable();
    let mut told = false;
    let done = poll_fn(|cx| {
        if !told && (stop.phase() >= CLOSE_IDLE || stopping.as_mut().poll(cx).is_ready()) {
            told = true;
            conn.as_mut().graceful_shutdown();
        }
        conn.as_mut().poll(cx)
    })
    .await;
    if let Err(e) = done {
        tracing::debug!(error = %e, "HTTP/2 connection ended with an error");
    }
}

struct Http2Service<S>(S);

impl<S> Service<Request<Incoming>> for Http2Service<S>
where
    S: Service<Request<ClientBody>>,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = S::Future;

    fn call(&self, req: Request<Incoming>) -> Self::Future {
        self.0.call(req.map(ClientBody::http2))
    }
}

/// A socket whose first bytes were already read.
struct Prefixed {
    prefix: Bytes,
    io: TcpStream,
}

impl AsyncRead for Prefixed {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if !self.prefix.is_empty() {
            let n = self.prefix.len().min(buf.remaining());
            buf.put_slice(&self.prefix[..n]);
            self.prefix.advance(n);
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut self.io).poll_read(cx, buf)
    }
}

impl AsyncWrite for Prefixed {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        true
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use std::convert::Infallible;
    use std::sync::atomic::AtomicBool;
    use std::time::Instant;

    use http_body_util::combinators::BoxBody;
    use http_body_util::{BodyExt as _, Full, StreamBody as Frames};
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    use tokio::net::TcpListener;

    use super::*;

    type Answer = Response<BoxBody<Bytes, BoxError>>;

    fn full(status: StatusCode, body: impl Into<Bytes>) -> Answer {
        let mut answer = Response::new(Full::new(body.into()).map_err(|e| match e {}).boxed());
        *answer.status_mut() = status;
        answer
    }

    /// The service the tests talk to, by path.
    async fn service(
        req: Request<ClientBody>,
        dropped: Arc<AtomicBool>,
    ) -> Result<Answer, Infallible> {
        Ok(match req.uri().path() {
            "/echo" => {
                let (parts, body) = req.into_parts();
                let body = body.collect().await.map(|b| b.to_bytes());
                match body {
                    Ok(b) => {
                        let mut answer = full(StatusCode::OK, b);
                        let target = parts.uri.to_string();
                        answer
                            .headers_mut()
                            .insert("x-target", target.parse().unwrap());
                        answer
                    }
                    Err(e) => full(StatusCode::BAD_REQUEST, e.to_string()),
                }
            }
            "/refuse" => full(StatusCode::UNAUTHORIZED, "who are you"),
            "/fixed" => full(StatusCode::OK, "0123456789"),
            "/stream" => {
                let frames = futures_util::stream::unfold(0u8, |n| async move {
                    if n == 2 {
                        return None;
                    }
                    tokio::time::sleep(Duration::from_millis(20)).await;
                    let data = Bytes::from(vec![b'a' + n]);
                    Some((Ok::<_, BoxError>(Frame::data(data)), n + 1))
                });
                Response::new(http_body_util::BodyExt::boxed(Frames::new(frames)))
            }
            "/hang" => {
                let _flag = Flag(dropped);
                std::future::pending::<()>().await;
                unreachable!()
            }
            // The body read to its end by another task (as the management API's requests are,
            // on the main runtime), then no answer.
            "/elsewhere" => {
                let _flag = Flag(dropped);
                let body = req.into_body();
                let read = tokio::spawn(async move {
                    let _ = body.collect().await;
                    std::future::pending::<()>().await;
                });
                let _ = read.await;
                unreachable!()
            }
            _ => full(StatusCode::NOT_FOUND, "no such path"),
        })
    }

    /// Set when the request's future is dropped.
    struct Flag(Arc<AtomicBool>);

    impl Drop for Flag {
        fn drop(&mut self) {
            self.0.store(true, Ordering::SeqCst);
        }
    }

    struct Server {
        addr: std::net::SocketAddr,
        stop: Arc<Stop>,
        dropped: Arc<AtomicBool>,
    }

    async fn server(limits: Limits) -> Server {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let stop = Arc::new(Stop::default());
        let dropped = Arc::new(AtomicBool::new(false));
        let (s, d) = (stop.clone(), dropped.clone());
        tokio::spawn(async move {
            loop {
                let (io, _) = listener.accept().await.unwrap();
                let d = d.clone();
                let svc = hyper::service::service_fn(move |req| service(req, d.clone()));
                tokio::spawn(serve_connection(io, svc, s.clone(), limits));
            }
        });
        Server {
            addr,
            stop,
            dropped,
        }
    }

    async fn connect(server: &Server) -> TcpStream {
        TcpStream::connect(server.addr).await.unwrap()
    }

    struct Read {
        status: u16,
        headers: Vec<(String, String)>,
        body: Vec<u8>,
    }

    impl Read {
        fn header(&self, name: &str) -> Option<&str> {
            self.headers
                .iter()
                .find(|(n, _)| n.eq_ignore_ascii_case(name))
                .map(|(_, v)| v.as_str())
        }
    }

    async fn more(io: &mut TcpStream, pending: &mut Vec<u8>) -> usize {
        let mut chunk = [0u8; 4096];
        let n = tokio::time::timeout(Duration::from_secs(5), io.read(&mut chunk))
            .await
            .expect("an answer within 5 s")
            .unwrap();
        pending.extend_from_slice(&chunk[..n]);
        n
    }

    /// Reads one answer from `io`, `pending` holding what was read past the previous one.
    async fn read_answer(io: &mut TcpStream, pending: &mut Vec<u8>, head_only: bool) -> Read {
        let (status, headers, len) = loop {
            let mut fields = [httparse::EMPTY_HEADER; 64];
            let mut answer = httparse::Response::new(&mut fields);
            if let httparse::Status::Complete(len) = answer.parse(pending).unwrap() {
                let headers = answer
                    .headers
                    .iter()
                    .map(|h| {
                        (
                            h.name.to_owned(),
                            String::from_utf8_lossy(h.value).into_owned(),
                        )
                    })
                    .collect::<Vec<_>>();
                break (answer.code.unwrap(), headers, len);
            }
            assert_ne!(
                more(io, pending).await,
                0,
                "the connection closed before an answer"
            );
        };
        pending.drain(..len);
        let mut read = Read {
            status,
            headers,
            body: Vec::new(),
        };
        if head_only || status == 100 || status == 204 || status == 304 {
            return read;
        }
        if let Some(n) = read
            .header("content-length")
            .map(|v| v.parse::<usize>().unwrap())
        {
            while pending.len() < n {
                assert_ne!(more(io, pending).await, 0, "the body was cut short");
            }
            read.body = pending.drain(..n).collect();
        } else if read.header("transfer-encoding") == Some("chunked") {
            loop {
                let size = loop {
                    if let Ok(httparse::Status::Complete((used, size))) =
                        httparse::parse_chunk_size(pending)
                    {
                        pending.drain(..used);
                        break size as usize;
                    }
                    assert_ne!(more(io, pending).await, 0);
                };
                while pending.len() < size + 2 {
                    assert_ne!(more(io, pending).await, 0);
                }
                read.body.extend(pending.drain(..size));
                assert_eq!(pending.drain(..2).collect::<Vec<_>>(), b"\r\n");
                if size == 0 {
                    break;
                }
            }
        } else {
            while more(io, pending).await > 0 {}
            read.body = std::mem::take(pending);
        }
        read
    }

    /// Whether the request's future is dropped within a second.
    /// Checks that the request is still being served while its client stays, then that the
    /// client's leaving drops it within a second.
    async fn leave_and_see_the_request_dropped(server: &Server, io: TcpStream) {
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(!server.dropped.load(Ordering::SeqCst));
        drop(io);
        for _ in 0..100 {
            if server.dropped.load(Ordering::SeqCst) {
                return;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        panic!("the request's future outlived its client");
    }

    async fn closed(io: &mut TcpStream) -> bool {
        let mut rest = Vec::new();
        matches!(
            tokio::time::timeout(Duration::from_secs(5), io.read_to_end(&mut rest)).await,
            Ok(Ok(0))
        )
    }

    #[tokio::test]
    async fn keep_alive_and_pipelined_requests_are_answered_in_order() {
        let server = server(Limits::default()).await;
        let mut io = connect(&server).await;
        let mut pending = Vec::new();
        io.write_all(
            b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nhello\
              GET /echo?q=1 HTTP/1.1\r\nHost: x\r\n\r\n",
        )
        .await
        .unwrap();
        let first = read_answer(&mut io, &mut pending, false).await;
        assert_eq!((first.status, first.body.as_slice()), (200, &b"hello"[..]));
        assert_eq!(first.header("connection"), None);
        assert!(first.header("date").is_some());
        let second = read_answer(&mut io, &mut pending, false).await;
        assert_eq!((second.status, second.body.as_slice()), (200, &b""[..]));
        assert_eq!(second.header("x-target"), Some("/echo?q=1"));
        // And one more, later, on the same connection.
        io.write_all(b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\n\r\nabc")
            .await
            .unwrap();
        let third = read_answer(&mut io, &mut pending, false).await;
        assert_eq!(third.body, b"abc");
    }

    #[tokio::test]
    async fn bodies_arriving_after_their_head_are_read_from_the_socket() {
        let server = server(Limits::default()).await;
        let mut io = connect(&server).await;
        let mut pending = Vec::new();
        // Chunked, split inside a chunk, with a chunk extension and a trailer.
        io.write_all(
            b"POST /echo HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n5;ext=1\r\nhel",
        )
        .await
        .unwrap();
        tokio::time::sleep(Duration::from_millis(30)).await;
        io.write_all(b"lo\r\n1\r\n!\r\n0\r\nX-Trailer: 1\r\n\r\n")
            .await
            .unwrap();
        let answer = read_answer(&mut io, &mut pending, false).await;
        assert_eq!(
            (answer.status, answer.body.as_slice()),
            (200, &b"hello!"[..])
        );
        // A Content-Length body that comes in two writes.
        io.write_all(b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 6\r\n\r\nab")
            .await
            .unwrap();
        tokio::time::sleep(Duration::from_millis(30)).await;
        io.write_all(b"cdef").await.unwrap();
        let answer = read_answer(&mut io, &mut pending, false).await;
        assert_eq!(answer.body, b"abcdef");
    }

    #[tokio::test]
    async fn a_broken_chunked_body_fails_the_read_and_closes() {
        let server = server(Limits::default()).await;
        let mut io = connect(&server).await;
        let mut pending = Vec::new();
        io.write_all(b"POST /echo HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n")
            .await
            .unwrap();
        let answer = read_answer(&mut io, &mut pending, false).await;
        assert_eq!(answer.status, 400);
        assert!(String::from_utf8_lossy(&answer.body).contains("chunk size"));
        assert!(closed(&mut io).await);
    }

    #[tokio::test]
    async fn chunk_size_lines_and_trailers_are_read_strictly() {
        let server = server(Limits::default()).await;
        let head = "POST /echo HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n";
        // Each would be read differently by some proxy in front: refused, not guessed.
        for (body, why) in [
            ("2;\nxx\r\n45\r\n0\r\n\r\n", "chunk size"),
            ("\r\n0\r\n\r\n", "chunk size"),
            (";x\r\n0\r\n\r\n", "chunk size"),
            ("0x5\r\nhello\r\n0\r\n\r\n", "chunk size"),
            ("5\rhello\r\n0\r\n\r\n", "chunk size"),
            ("11111111111111111\r\n", "chunk size"),
            ("0\r\nX-T: a\nb\r\n\r\n", "bare CR or LF"),
        ] {
            let mut io = connect(&server).await;
            let mut pending = Vec::new();
            io.write_all(format!("{head}{body}").as_bytes())
                .await
                .unwrap();
            let answer = read_answer(&mut io, &mut pending, false).await;
            let text = String::from_utf8_lossy(&answer.body).into_owned();
            assert_eq!(answer.status, 400, "{body:?}: {text}");
            assert!(text.contains(why), "{body:?}: {text}");
            assert!(closed(&mut io).await);
        }
        // Extensions (with spaces before them) and trailers are fine.
        let mut io = connect(&server).await;
        let mut pending = Vec::new();
        io.write_all(format!("{head}3 ;a=b;c\r\nabc\r\n0\r\nX-T: 1\r\n\r\n").as_bytes())
            .await
            .unwrap();
        assert_eq!(read_answer(&mut io, &mut pending, false).await.body, b"abc");
    }

    #[tokio::test]
    async fn expect_100_continue_is_answered_when_the_body_is_read() {
        let server = server(Limits::default()).await;
        let mut io = connect(&server).await;
        let mut pending = Vec::new();
        io.write_all(
            b"POST /echo HTTP/1.1\r\nHost: x\r\nExpect: 100-continue\r\nContent-Length: 5\r\n\r\n",
        )
        .await
        .unwrap();
        let interim = read_answer(&mut io, &mut pending, false).await;
        assert_eq!(interim.status, 100);
        io.write_all(b"hello").await.unwrap();
        let answer = read_answer(&mut io, &mut pending, false).await;
        assert_eq!(
            (answer.status, answer.body.as_slice()),
            (200, &b"hello"[..])
        );
        assert_eq!(answer.header("connection"), None);

        // Answered without reading the body: no 100, and the connection closes after.
        let mut io = connect(&server).await;
        let mut pending = Vec::new();
        io.write_all(b"POST /refuse HTTP/1.1\r\nHost: x\r\nExpect: 100-continue\r\nContent-Length: 5\r\n\r\n")
            .await
            .unwrap();
        let answer = read_answer(&mut io, &mut pending, false).await;
        assert_eq!(answer.status, 401);
        assert_eq!(answer.header("connection"), Some("close"));
        assert!(closed(&mut io).await);
    }

    #[tokio::test]
    async fn an_unread_body_is_drained_and_the_connection_kept() {
        let server = server(Limits::default()).await;
        let mut io = connect(&server).await;
        let mut pending = Vec::new();
        io.write_all(b"POST /refuse HTTP/1.1\r\nHost: x\r\nContent-Length: 10\r\n\r\n01234")
            .await
            .unwrap();
        let answer = read_answer(&mut io, &mut pending, false).await;
        assert_eq!(answer.status, 401);
        assert_eq!(answer.header("connection"), None);
        io.write_all(b"56789GET /fixed HTTP/1.1\r\nHost: x\r\n\r\n")
            .await
            .unwrap();
        let next = read_answer(&mut io, &mut pending, false).await;
        assert_eq!(
            (next.status, next.body.as_slice()),
            (200, &b"0123456789"[..])
        );

        // More than the gateway drains: the connection closes after the answer.
        let mut io = connect(&server).await;
        let mut pending = Vec::new();
        let big = DRAIN_BYTES + 64 * 1024;
        io.write_all(
            format!("POST /refuse HTTP/1.1\r\nHost: x\r\nContent-Length: {big}\r\n\r\n").as_bytes(),
        )
        .await
        .unwrap();
        let answer = read_answer(&mut io, &mut pending, false).await;
        assert_eq!(answer.status, 401);
        let sent = io.write_all(&vec![b'x'; big]).await;
        let mut rest = Vec::new();
        let end = tokio::time::timeout(Duration::from_secs(5), io.read_to_end(&mut rest)).await;
        assert!(
            sent.is_err() || matches!(end, Ok(Ok(_)) | Ok(Err(_))),
            "the connection closes"
        );
    }

    #[tokio::test]
    async fn http_1_0_closes_unless_kept_alive_and_streams_until_the_close() {
        let server = server(Limits::default()).await;
        let mut io = connect(&server).await;
        let mut pending = Vec::new();
        io.write_all(b"GET /fixed HTTP/1.0\r\n\r\n").await.unwrap();
        let answer = read_answer(&mut io, &mut pending, false).await;
        assert_eq!(
            (answer.status, answer.body.as_slice()),
            (200, &b"0123456789"[..])
        );
        assert_eq!(answer.header("connection"), Some("close"));
        assert!(closed(&mut io).await);

        let mut io = connect(&server).await;
        let mut pending = Vec::new();
        io.write_all(b"GET /fixed HTTP/1.0\r\nConnection: keep-alive\r\n\r\n")
            .await
            .unwrap();
        let answer = read_answer(&mut io, &mut pending, false).await;
        assert_eq!(answer.header("connection"), Some("keep-alive"));
        // A body of unknown length is not chunked for HTTP/1.0: it ends with the connection.
        io.write_all(b"GET /stream HTTP/1.0\r\nConnection: keep-alive\r\n\r\n")
            .await
            .unwrap();
        let answer = read_answer(&mut io, &mut pending, false).await;
        assert_eq!(answer.header("transfer-encoding"), None);
        assert_eq!(answer.header("connection"), Some("close"));
        assert_eq!(answer.body, b"ab");
    }

    #[tokio::test]
    async fn streamed_answers_are_chunked_and_head_answers_have_no_body() {
        let server = server(Limits::default()).await;
        let mut io = connect(&server).await;
        let mut pending = Vec::new();
        io.write_all(
            b"GET /stream HTTP/1.1\r\nHost: x\r\n\r\nHEAD /fixed HTTP/1.1\r\nHost: x\r\n\r\n",
        )
        .await
        .unwrap();
        let answer = read_answer(&mut io, &mut pending, false).await;
        assert_eq!(answer.header("transfer-encoding"), Some("chunked"));
        assert_eq!(answer.body, b"ab");
        let head = read_answer(&mut io, &mut pending, true).await;
        assert_eq!(head.header("content-length"), Some("10"));
        io.write_all(b"GET /fixed HTTP/1.1\r\nHost: x\r\n\r\n")
            .await
            .unwrap();
        let next = read_answer(&mut io, &mut pending, false).await;
        assert_eq!(
            next.body, b"0123456789",
            "no body bytes followed the HEAD answer"
        );
    }

    #[tokio::test]
    async fn bad_heads_get_a_status_that_says_why_and_the_connection_closes() {
        let limits = Limits {
            head_bytes: 4096,
            ..Limits::default()
        };
        let server = server(limits).await;
        let many: String = (0..101).map(|i| format!("X-{i}: v\r\n")).collect();
        let long = format!("X-Long: {}\r\n", "v".repeat(5000));
        let cases: Vec<(Vec<u8>, u16, &str)> = vec![
            (
                b"POST /echo HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nContent-Length: 5\r\n\r\n"
                    .to_vec(),
                400,
                "both",
            ),
            (
                b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: five\r\n\r\n".to_vec(),
                400,
                "not a number",
            ),
            (
                b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\n".to_vec(),
                400,
                "differing",
            ),
            (
                b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 5, 6\r\n\r\n".to_vec(),
                400,
                "differing",
            ),
            (
                b"POST /echo HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: gzip, chunked\r\n\r\n".to_vec(),
                501,
                "chunked",
            ),
            (
                b"POST /echo HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n".to_vec(),
                400,
                "HTTP/1.0",
            ),
            (
                format!("GET / HTTP/1.1\r\n{many}\r\n").into_bytes(),
                431,
                "header fields",
            ),
            (
                format!("GET / HTTP/1.1\r\n{long}\r\n").into_bytes(),
                431,
                "larger",
            ),
            (
                format!("GET / HTTP/1.1\r\n{long}").into_bytes(),
                431,
                "larger",
            ),
            (
                b"GET / HTTP/1.1\r\nBad Name: v\r\n\r\n".to_vec(),
                400,
                "malformed",
            ),
            (b"GET / HTTP/3.0\r\n\r\n".to_vec(), 505, "HTTP/1.0"),
            (b"GET /fixed HTTP/1.1\r\n\r\n".to_vec(), 400, "exactly one Host"),
            (b"GET /fixed HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n".to_vec(), 400, "exactly one Host"),
        ];
        for (raw, status, why) in cases {
            let mut io = connect(&server).await;
            let mut pending = Vec::new();
            io.write_all(&raw).await.unwrap();
            let answer = read_answer(&mut io, &mut pending, false).await;
            let text = String::from_utf8_lossy(&answer.body).into_owned();
            assert_eq!(answer.status, status, "{text}");
            assert!(text.contains(why), "{status}: {text:?} should say {why:?}");
            assert_eq!(answer.header("connection"), Some("close"));
            assert!(closed(&mut io).await);
        }
        // Identical repeated lengths are one length.
        let mut io = connect(&server).await;
        let mut pending = Vec::new();
        io.write_all(b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 2, 2\r\n\r\nok")
            .await
            .unwrap();
        assert_eq!(read_answer(&mut io, &mut pending, false).await.body, b"ok");
    }

    #[tokio::test]
    async fn a_head_that_does_not_arrive_in_time_closes_the_connection() {
        let limits = Limits {
            head_timeout: Duration::from_millis(300),
            ..Limits::default()
        };
        let server = server(limits).await;
        // Slow loris: part of a head, then nothing.
        let mut io = connect(&server).await;
        let started = Instant::now();
        io.write_all(b"GET /fixed HTTP/1.1\r\nHost:").await.unwrap();
        assert!(closed(&mut io).await);
        assert!(started.elapsed() >= Duration::from_millis(300));
        // An idle keep-alive connection, after a request: the timer counts from the answer.
        let mut io = connect(&server).await;
        let mut pending = Vec::new();
        tokio::time::sleep(Duration::from_millis(200)).await;
        io.write_all(b"GET /fixed HTTP/1.1\r\nHost: x\r\n\r\n")
            .await
            .unwrap();
        assert_eq!(read_answer(&mut io, &mut pending, false).await.status, 200);
        tokio::time::sleep(Duration::from_millis(200)).await;
        io.write_all(b"GET /fixed HTTP/1.1\r\nHost: x\r\n\r\n")
            .await
            .unwrap();
        assert_eq!(read_answer(&mut io, &mut pending, false).await.status, 200);
        let idle = Instant::now();
        assert!(closed(&mut io).await);
        assert!(idle.elapsed() >= Duration::from_millis(250));
    }

    #[tokio::test]
    async fn a_client_that_goes_away_drops_its_request() {
        let server = server(Limits::default()).await;
        let mut io = connect(&server).await;
        io.write_all(b"GET /hang HTTP/1.1\r\nHost: x\r\n\r\n")
            .await
            .unwrap();
        leave_and_see_the_request_dropped(&server, io).await;
    }

    #[tokio::test]
    async fn a_client_that_goes_away_is_noticed_after_another_task_read_its_body() {
        let server = server(Limits::default()).await;
        let mut io = connect(&server).await;
        io.write_all(b"POST /elsewhere HTTP/1.1\r\nHost: x\r\nContent-Length: 10\r\n\r\n01234")
            .await
            .unwrap();
        tokio::time::sleep(Duration::from_millis(30)).await;
        io.write_all(b"56789").await.unwrap();
        leave_and_see_the_request_dropped(&server, io).await;
    }

    #[tokio::test]
    async fn a_stopping_server_closes_after_answers_then_closes_idle_connections() {
        let server = server(Limits::default()).await;
        let mut io = connect(&server).await;
        let mut idle = connect(&server).await;
        let mut pending = Vec::new();
        io.write_all(b"GET /fixed HTTP/1.1\r\nHost: x\r\n\r\n")
            .await
            .unwrap();
        assert_eq!(
            read_answer(&mut io, &mut pending, false)
                .await
                .header("connection"),
            None
        );
        server.stop.closing();
        io.write_all(b"GET /fixed HTTP/1.1\r\nHost: x\r\n\r\n")
            .await
            .unwrap();
        let last = read_answer(&mut io, &mut pending, false).await;
        assert_eq!(
            (last.status, last.header("connection")),
            (200, Some("close"))
        );
        assert!(closed(&mut io).await);
        server.stop.close_idle();
        assert!(closed(&mut idle).await);
    }

    #[tokio::test]
    async fn http2_with_prior_knowledge_is_handed_to_hyper() {
        let server = server(Limits::default()).await;
        let io = connect(&server).await;
        let (mut sender, conn) =
            hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(io))
                .await
                .unwrap();
        tokio::spawn(conn);
        let req = Request::post("http://x/echo")
            .body(Full::new(Bytes::from_static(b"over h2")))
            .unwrap();
        let answer = sender.send_request(req).await.unwrap();
        assert_eq!(answer.version(), Version::HTTP_2);
        let body = answer.into_body().collect().await.unwrap().to_bytes();
        assert_eq!(&body[..], b"over h2");
    }
}
