//! HTTP/1.1 on a connection to a replica, written for the proxy's path: the request's head and
//! its body's first bytes leave in one write, the answer's head is parsed in place, and its
//! body is read by whoever reads the response. No task and no channel stand between a request
//! and its connection, so a request costs no wake-up beyond its socket's.
//!
//! The rules kept (RFC 9112):
//! - A request body of known length is sent with `Content-Length`, any other chunked; the
//!   client's own framing headers are never forwarded.
//! - An answer's body is framed by `Transfer-Encoding` (chunked, else read to the close), then
//!   `Content-Length`, else read to the close; 1xx answers are skipped, 204 and 304 (and a
//!   `HEAD`'s answer) have none. `101 Switching Protocols` is refused: the gateway never asks
//!   for an upgrade.
//! - An answer with both `Transfer-Encoding` and `Content-Length`, or with differing
//!   `Content-Length`s, is framed by the former and its connection is not reused (or refused,
//!   for the latter): the request-smuggling defences.
//! - A connection carries another request only when its answer was read to its end, the
//!   request was written whole, the replica did not say `Connection: close` (or spoke
//!   HTTP/1.0), and no byte followed the answer.
//! - The replica may answer before it read the whole request (an early 413, say): the answer
//!   is taken, the rest of the request is not sent, and the connection is not reused.

use std::io::{self, ErrorKind};
use std::mem::MaybeUninit;
use std::pin::Pin;
use std::task::{Context, Poll, Waker, ready};

use bytes::{Buf, Bytes, BytesMut};
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Method, StatusCode};
use http_body::{Body, Frame, SizeHint};
use tokio::io::AsyncWrite;
use tokio::net::TcpStream;
use tokio::time::Instant;

use crate::body::{BoxError, ForwardBody};
use crate::timer::LazyTimer;
use crate::wire::{HeaderNames, header_line, list, push_decimal, push_hex};

/// The most headers an answer may carry (hyper's default).
const MAX_HEADERS: usize = 100;
/// The most bytes an answer's head may take.
const MAX_HEAD: usize = 64 * 1024;
/// Request bytes gathered before they are written.
const WRITE_BATCH: usize = 64 * 1024;
/// Room made in the read buffer before each read.
const READ_ROOM: usize = 8 * 1024;

/// An HTTP/1.1 connection to a replica, between exchanges or in one.
pub(crate) struct Conn {
    io: TcpStream,
    /// Bytes read and not yet used.
    read: BytesMut,
    /// The request being written (its buffer kept from one request to the next).
    write: Vec<u8>,
    /// The answers' deadlines: no timer is registered and removed per request.
    timer: LazyTimer,
    /// The names of the last answer's fields.
    names: HeaderNames,
}

/// Why an exchange failed.
#[derive(Debug)]
pub(crate) enum Error {
    /// Reading or writing the connection failed.
    Io(io::Error),
    /// The connection closed before any byte of an answer came: a kept-alive connection the
    /// replica closed as the request went out, which another connection may carry.
    Unanswered,
    /// The client's request body failed (too large, or the client went away).
    Body(BoxError),
    /// The replica's answer is not HTTP/1.1 the gateway accepts.
    Protocol(String),
    /// No answer's head came by the exchange's deadline.
    TimedOut,
}

impl std::fmt::Display for Error {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Error::Io(e) => write!(f, "connection failed: {e}"),
            Error::Unanswered => f.write_str("the connection closed before any answer"),
            Error::Body(e) => write!(f, "the request body failed: {e}"),
            Error::Protocol(e) => write!(f, "invalid answer: {e}"),
            Error::TimedOut => f.write_str("no answer by the request's deadline"),
        }
    }
}

impl std::error::Error for Error {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Error::Io(e) => Some(e),
            Error::Body(e) => Some(&**e),
            _ => None,
        }
    }
}

/// A request's head, as the gateway sends it.
pub(crate) struct Head<'a> {
    pub method: &'a Method,
    /// The replica's base path (without its trailing `/`), then the client's path and query.
    pub prefix: &'a str,
    pub path_and_query: &'a str,
    pub host: &'a HeaderValue,
    /// The end-to-end headers; `Host` and the framing headers are the client's own.
    pub headers: &'a dyn WriteHeaders,
}

/// Writes a request's header lines (`name: value\r\n`), leaving out `Host`,
/// `Content-Length` and `Transfer-Encoding`, which the client writes itself.
pub(crate) trait WriteHeaders: Sync {
    fn write_headers(&self, out: &mut Vec<u8>);
}

/// A header map sent as it is (but for the headers the client writes).
impl WriteHeaders for HeaderMap {
    fn write_headers(&self, out: &mut Vec<u8>) {
        for (name, value) in self {
            if name != header::HOST
                && name != header::CONTENT_LENGTH
                && name != header::TRANSFER_ENCODING
            {
                header_line(out, name.as_str(), value.as_bytes());
            }
        }
    }
}

/// Whether `target` can be sent as a request target: origin-form, visible ASCII.
pub(crate) fn check_target(prefix: &str, path_and_query: &str) -> Result<(), String> {
    if !path_and_query.starts_with('/') {
        return Err(format!("{path_and_query:?} is not an absolute path"));
    }
    let bad = |s: &str| s.bytes().any(|b| !(0x21..0x7f).contains(&b));
    if bad(prefix) || bad(path_and_query) {
        return Err(format!(
            "{prefix}{path_and_query:?} has a byte a request target may not carry"
        ));
    }
    Ok(())
}

/// How an answer's body is framed, and how much of it is left.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Framing {
    /// No body, or its end was reached.
    Done,
    Length(u64),
    Chunked(Chunk),
    /// Read until the replica closes the connection.
    Close,
}

/// Where a chunked body's decoder is.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Chunk {
    /// Before a chunk's size line.
    Size,
    /// Inside a chunk's data, with this much left.
    Data(u64),
    /// After a chunk's data, before its CRLF.
    DataEnd,
    /// After the last chunk, in its trailer section (dropped).
    Trailers,
}

/// The head of a replica's answer, and how its body is read.
pub(crate) struct Answer {
    pub status: StatusCode,
    pub headers: HeaderMap,
    framing: Framing,
    /// The connection may carry another request once the body was read.
    reusable: bool,
}

impl Conn {
    pub(crate) fn new(io: TcpStream) -> Self {
        Self {
            io,
            read: BytesMut::new(),
            write: Vec::new(),
            timer: LazyTimer::default(),
            names: HeaderNames::default(),
        }
    }

    /// Whether an idle connection can carry another request: neither a byte nor a close came
    /// since its last answer. A syscall only when the socket was seen readable.
    pub(crate) fn is_reusable(&self) -> bool {
        if !self.read.is_empty() {
            return false;
        }
        let mut cx = Context::from_waker(Waker::noop());
        match self.io.poll_read_ready(&mut cx) {
            Poll::Pending => true,
            Poll::Ready(Err(_)) => false,
            Poll::Ready(Ok(())) => {
                let mut probe = [0u8; 1];
                matches!(self.io.try_read(&mut probe), Err(e) if e.kind() == ErrorKind::WouldBlock)
            }
        }
    }

    /// Writes the request and reads the answer's head, by `deadline` ([`Error::TimedOut`]).
    /// `body` is polled as its bytes can be written; on [`Error::Unanswered`] of a connection
    /// that carried an earlier request, it may be rewound and sent again on another.
    pub(crate) async fn exchange(
        &mut self,
        head: &Head<'_>,
        body: &mut ForwardBody,
        deadline: Option<Instant>,
    ) -> Result<Answer, Error> {
        let framing = body_framing(head.method, body);
        self.write.clear();
        encode_head(&mut self.write, head, framing);
        let mut ex = Exchange {
            written: 0,
            chunked: framing == BodyFraming::Chunked,
            body_done: framing == BodyFraming::None,
            sent: false,
            write_failed: None,
            answered: false,
        };
        let head_request = head.method == Method::HEAD;
        std::future::poll_fn(|cx| {
            if let Poll::Ready(done) = ex.poll(self, body, head_request, cx) {
                return Poll::Ready(done);
            }
            match deadline {
                Some(deadline) if self.timer.poll_expired(deadline, cx).is_ready() => {
                    Poll::Ready(Err(Error::TimedOut))
                }
                _ => Poll::Pending,
            }
        })
        .await
    }

    /// Reads into the buffer; `Ok(0)` at the close.
    fn poll_read(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<usize>> {
        if self.read.capacity() - self.read.len() < READ_ROOM / 4 {
            self.read.reserve(READ_ROOM);
        }
        tokio_util::io::poll_read_buf(Pin::new(&mut self.io), cx, &mut self.read)
    }
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum BodyFraming {
    None,
    Length(u64),
    Chunked,
}

/// `Content-Length` for a body of known length (none for an empty one of a method that carries
/// none), chunked for any other.
fn body_framing(method: &Method, body: &ForwardBody) -> BodyFraming {
    match body.size_hint().exact() {
        Some(0) if matches!(*method, Method::GET | Method::HEAD | Method::DELETE) => {
            BodyFraming::None
        }
        Some(0) if body.is_end_stream() => BodyFraming::Length(0),
        Some(n) if n > 0 => BodyFraming::Length(n),
        _ => BodyFraming::Chunked,
    }
}

fn encode_head(out: &mut Vec<u8>, head: &Head<'_>, framing: BodyFraming) {
    out.extend_from_slice(head.method.as_str().as_bytes());
    out.push(b' ');
    out.extend_from_slice(head.prefix.as_bytes());
    out.extend_from_slice(head.path_and_query.as_bytes());
    out.extend_from_slice(b" HTTP/1.1\r\n");
    header_line(out, "host", head.host.as_bytes());
    head.headers.write_headers(out);
    match framing {
        BodyFraming::None => {}
        BodyFraming::Length(n) => {
            out.extend_from_slice(b"content-length: ");
            push_decimal(out, n);
            out.extend_from_slice(b"\r\n");
        }
        BodyFraming::Chunked => out.extend_from_slice(b"transfer-encoding: chunked\r\n"),
    }
    out.extend_from_slice(b"\r\n");
}

/// One exchange's progress: the request written as its body comes, the answer watched for
/// all along (a replica may answer early).
struct Exchange {
    /// Bytes of `Conn::write` written.
    written: usize,
    chunked: bool,
    /// The body's end was reached (and its last chunk queued, when chunked).
    body_done: bool,
    /// The whole request was written.
    sent: bool,
    write_failed: Option<io::Error>,
    /// Some byte of an answer came.
    answered: bool,
}

impl Exchange {
    fn poll(
        &mut self,
        conn: &mut Conn,
        body: &mut ForwardBody,
        head_request: bool,
        cx: &mut Context<'_>,
    ) -> Poll<Result<Answer, Error>> {
        if !self.sent && self.write_failed.is_none() {
            self.poll_send(conn, body, cx)?;
        }
        loop {
            if !conn.read.is_empty() {
                self.answered = true;
                if let Some(mut answer) =
                    parse_answer(&mut conn.read, &mut conn.names, head_request)?
                {
                    answer.reusable &= self.sent;
                    return Poll::Ready(Ok(answer));
                }
                if conn.read.len() > MAX_HEAD {
                    return Poll::Ready(Err(Error::Protocol(format!(
                        "its head is over {MAX_HEAD} bytes"
                    ))));
                }
            }
            match conn.poll_read(cx) {
                Poll::Ready(Ok(0)) if !self.answered => {
                    return Poll::Ready(Err(match self.write_failed.take() {
                        Some(e) if !is_reset(&e) => Error::Io(e),
                        _ => Error::Unanswered,
                    }));
                }
                Poll::Ready(Ok(0)) => {
                    return Poll::Ready(Err(Error::Protocol(
                        "the connection closed inside its head".into(),
                    )));
                }
                Poll::Ready(Ok(_)) => continue,
                Poll::Ready(Err(e)) if !self.answered && is_reset(&e) => {
                    return Poll::Ready(Err(Error::Unanswered));
                }
                Poll::Ready(Err(e)) => return Poll::Ready(Err(Error::Io(e))),
                Poll::Pending => {}
            }
            // Nothing to read: a failed write has no answer coming.
            if let Some(e) = self.write_failed.take() {
                return Poll::Ready(Err(if is_reset(&e) && !self.answered {
                    Error::Unanswered
                } else {
                    Error::Io(e)
                }));
            }
            return Poll::Pending;
        }
    }

    /// Gathers the body's ready bytes behind what is queued and writes them, until the request
    /// is sent or a side is not ready. A write error is kept: an answer may still be read.
    fn poll_send(
        &mut self,
        conn: &mut Conn,
        body: &mut ForwardBody,
        cx: &mut Context<'_>,
    ) -> Result<(), Error> {
        loop {
            while !self.body_done && conn.write.len() - self.written < WRITE_BATCH {
                match Pin::new(&mut *body).poll_frame(cx) {
                    Poll::Ready(Some(Ok(frame))) => {
                        let Ok(data) = frame.into_data() else {
                            continue; // trailers are not forwarded
                        };
                        if data.is_empty() {
                            continue;
                        }
                        if self.chunked {
                            push_hex(&mut conn.write, data.len());
                            conn.write.extend_from_slice(b"\r\n");
                            conn.write.extend_from_slice(&data);
                            conn.write.extend_from_slice(b"\r\n");
                        } else {
                            conn.write.extend_from_slice(&data);
                        }
                    }
                    Poll::Ready(Some(Err(e))) => return Err(Error::Body(e)),
                    Poll::Ready(None) => {
                        self.body_done = true;
                        if self.chunked {
                            conn.write.extend_from_slice(b"0\r\n\r\n");
                        }
                    }
                    Poll::Pending => break,
                }
            }
            if self.written < conn.write.len() {
                match Pin::new(&mut conn.io).poll_write(cx, &conn.write[self.written..]) {
                    Poll::Ready(Ok(0)) => {
                        self.write_failed = Some(ErrorKind::WriteZero.into());
                        return Ok(());
                    }
                    Poll::Ready(Ok(n)) => {
                        self.written += n;
                        if self.written == conn.write.len() {
                            conn.write.clear();
                            self.written = 0;
                        }
                        continue;
                    }
                    Poll::Ready(Err(e)) => {
                        self.write_failed = Some(e);
                        return Ok(());
                    }
                    Poll::Pending => return Ok(()),
                }
            }
            if self.body_done {
                self.sent = true;
            }
            return Ok(());
        }
    }
}

fn is_reset(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        ErrorKind::ConnectionReset | ErrorKind::BrokenPipe | ErrorKind::ConnectionAborted
    )
}

/// Parses an answer's head at the start of `buf`, past any 1xx answers; `None` while it is
/// incomplete. The head's bytes are taken from `buf`; header values share them.
fn parse_answer(
    buf: &mut BytesMut,
    names: &mut HeaderNames,
    head_request: bool,
) -> Result<Option<Answer>, Error> {
    loop {
        let mut slots = [const { MaybeUninit::<httparse::Header<'_>>::uninit() }; MAX_HEADERS];
        let mut res = httparse::Response::new(&mut []);
        let parsed = httparse::ParserConfig::default()
            .parse_response_with_uninit_headers(&mut res, buf, &mut slots);
        let len = match parsed {
            Ok(httparse::Status::Complete(len)) => len,
            Ok(httparse::Status::Partial) => return Ok(None),
            Err(e) => return Err(Error::Protocol(e.to_string())),
        };
        let code = res.code.unwrap_or_default();
        if code == 101 {
            return Err(Error::Protocol(
                "101 Switching Protocols, which the gateway did not ask for".into(),
            ));
        }
        if (100..200).contains(&code) {
            buf.advance(len);
            continue;
        }
        let status = StatusCode::from_u16(code).map_err(|e| Error::Protocol(e.to_string()))?;
        // Where each header lies in the head, so the values can share its bytes.
        let base = buf.as_ptr() as usize;
        let mut spans = Vec::with_capacity(res.headers.len());
        for (at, h) in res.headers.iter().enumerate() {
            let name = names
                .name(at, h.name.as_bytes())
                .map_err(|_| Error::Protocol(format!("invalid header name {:?}", h.name)))?;
            let start = h.value.as_ptr() as usize - base;
            spans.push((name, start, start + h.value.len()));
        }
        let http10 = res.version == Some(0);
        let head = buf.split_to(len).freeze();
        return answer(status, http10, head_request, &head, spans).map(Some);
    }
}

fn answer(
    status: StatusCode,
    http10: bool,
    head_request: bool,
    head: &Bytes,
    spans: Vec<(HeaderName, usize, usize)>,
) -> Result<Answer, Error> {
    let mut headers = HeaderMap::with_capacity(spans.len());
    let mut chunked = None;
    let mut length: Option<u64> = None;
    let mut close = http10;
    for (name, start, end) in spans {
        let value = HeaderValue::from_maybe_shared(head.slice(start..end))
            .map_err(|_| Error::Protocol(format!("invalid value of {name}")))?;
        if name == header::TRANSFER_ENCODING {
            // Chunked only as the last coding; anything else is read to the close.
            let last = list(value.as_bytes()).next_back().unwrap_or(b"");
            chunked = Some(last.eq_ignore_ascii_case(b"chunked"));
        } else if name == header::CONTENT_LENGTH {
            let n = std::str::from_utf8(value.as_bytes())
                .ok()
                .and_then(|v| v.trim().parse::<u64>().ok())
                .ok_or_else(|| Error::Protocol(format!("Content-Length {value:?}")))?;
            if length.is_some_and(|l| l != n) {
                return Err(Error::Protocol("differing Content-Length values".into()));
            }
            length = Some(n);
        } else if name == header::CONNECTION {
            for token in list(value.as_bytes()) {
                if token.eq_ignore_ascii_case(b"close") {
                    close = true;
                } else if http10 && token.eq_ignore_ascii_case(b"keep-alive") {
                    close = false;
                }
            }
        }
        headers.append(name, value);
    }
    let framing =
        if head_request || status == StatusCode::NO_CONTENT || status == StatusCode::NOT_MODIFIED {
            Framing::Done
        } else if let Some(chunked) = chunked {
            if length.is_some() {
                // Framed by Transfer-Encoding; the length is not passed on, nor the connection
                // kept.
                headers.remove(header::CONTENT_LENGTH);
                close = true;
            }
            if chunked {
                Framing::Chunked(Chunk::Size)
            } else {
                Framing::Close
            }
        } else if let Some(n) = length {
            Framing::Length(n)
        } else {
            Framing::Close
        };
    Ok(Answer {
        status,
        headers,
        reusable: !close && framing != Framing::Close,
        framing,
    })
}

/// What is done with a connection whose answer was read to its end.
pub(crate) type GiveBack = Box<dyn FnOnce(Conn) + Send>;

/// The body of a replica's answer, read from its connection as the client reads it. Once read
/// to its end, the connection is given back (when it can carry another request); dropped
/// before, the connection closes with it.
pub(crate) struct AnswerBody {
    conn: Option<Conn>,
    framing: Framing,
    reusable: bool,
    give_back: Option<GiveBack>,
}

impl AnswerBody {
    pub(crate) fn new(conn: Conn, answer: &Answer, give_back: GiveBack) -> Self {
        let mut body = Self {
            conn: Some(conn),
            framing: answer.framing,
            reusable: answer.reusable,
            give_back: Some(give_back),
        };
        if matches!(body.framing, Framing::Done | Framing::Length(0)) {
            body.finish();
        }
        body
    }

    /// The end was reached: the connection goes back, or closes.
    fn finish(&mut self) {
        self.framing = Framing::Done;
        let Some(conn) = self.conn.take() else {
            return;
        };
        if self.reusable
            && conn.read.is_empty()
            && let Some(give_back) = self.give_back.take()
        {
            give_back(conn);
        }
    }

    fn fail(&mut self, e: impl Into<BoxError>) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        self.framing = Framing::Done;
        self.conn = None;
        Poll::Ready(Some(Err(e.into())))
    }
}

impl Body for AnswerBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = &mut *self;
        loop {
            let Some(conn) = this.conn.as_mut() else {
                return Poll::Ready(None);
            };
            let buf = &mut conn.read;
            match this.framing {
                Framing::Done => {
                    this.finish();
                    return Poll::Ready(None);
                }
                Framing::Length(left) if !buf.is_empty() => {
                    let n = left.min(buf.len() as u64);
                    let data = buf.split_to(n as usize).freeze();
                    this.framing = Framing::Length(left - n);
                    if left == n {
                        this.finish();
                    }
                    return Poll::Ready(Some(Ok(Frame::data(data))));
                }
                Framing::Close if !buf.is_empty() => {
                    let data = buf.split().freeze();
                    return Poll::Ready(Some(Ok(Frame::data(data))));
                }
                Framing::Chunked(chunk) if !buf.is_empty() => {
                    match decode_chunk(buf, chunk, &mut this.framing) {
                        Ok(Step::Data(data)) => return Poll::Ready(Some(Ok(Frame::data(data)))),
                        Ok(Step::Again) => continue,
                        Ok(Step::More) => {}
                        Err(e) => return this.fail(e),
                    }
                }
                _ => {}
            }
            match ready!(conn.poll_read(cx)) {
                Ok(0) if this.framing == Framing::Close => {
                    this.reusable = false;
                    this.finish();
                    return Poll::Ready(None);
                }
                Ok(0) => {
                    return this.fail(Error::Protocol(
                        "the connection closed before the body's end".into(),
                    ));
                }
                Ok(_) => {}
                Err(e) => return this.fail(Error::Io(e)),
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.framing == Framing::Done
    }

    fn size_hint(&self) -> SizeHint {
        match self.framing {
            Framing::Done => SizeHint::with_exact(0),
            Framing::Length(n) => SizeHint::with_exact(n),
            _ => SizeHint::default(),
        }
    }
}

/// What decoding a chunked body's buffered bytes gave.
enum Step {
    Data(Bytes),
    /// The state moved on: decode again.
    Again,
    /// A line is incomplete: read more first.
    More,
}

/// Decodes what `buf` holds of a chunked body at `chunk`, moving `framing` on. A line is left
/// in `buf` until it is whole.
fn decode_chunk(buf: &mut BytesMut, chunk: Chunk, framing: &mut Framing) -> Result<Step, Error> {
    const MAX_LINE: usize = 4096;
    let line_too_long = || Error::Protocol("a chunk line is too long".into());
    match chunk {
        Chunk::Size => match httparse::parse_chunk_size(buf) {
            Ok(httparse::Status::Complete((used, size))) => {
                buf.advance(used);
                *framing = Framing::Chunked(if size == 0 {
                    Chunk::Trailers
                } else {
                    Chunk::Data(size)
                });
                Ok(Step::Again)
            }
            Ok(httparse::Status::Partial) if buf.len() > MAX_LINE => Err(line_too_long()),
            Ok(httparse::Status::Partial) => Ok(Step::More),
            Err(_) => Err(Error::Protocol("invalid chunk size".into())),
        },
        Chunk::Data(left) => {
            let n = left.min(buf.len() as u64);
            let data = buf.split_to(n as usize).freeze();
            *framing = Framing::Chunked(if left == n {
                Chunk::DataEnd
            } else {
                Chunk::Data(left - n)
            });
            Ok(Step::Data(data))
        }
        Chunk::DataEnd => {
            if buf.len() < 2 {
                return Ok(Step::More);
            }
            if &buf[..2] != b"\r\n" {
                return Err(Error::Protocol(
                    "a chunk's data does not end in CRLF".into(),
                ));
            }
            buf.advance(2);
            *framing = Framing::Chunked(Chunk::Size);
            Ok(Step::Again)
        }
        Chunk::Trailers => {
            let Some(lf) = buf.iter().position(|&b| b == b'\n') else {
                return if buf.len() > MAX_LINE {
                    Err(line_too_long())
                } else {
                    Ok(Step::More)
                };
            };
            let empty = lf == 0 || (lf == 1 && buf[0] == b'\r');
            buf.advance(lf + 1);
            if empty {
                *framing = Framing::Done;
            }
            Ok(Step::Again)
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::time::Duration;

    use http_body_util::BodyExt;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpListener;

    use super::*;

    /// A replica that reads one request (its head, then the body its framing says, unless
    /// `answer_early`), writes `script` piece by piece, and closes; gives back the request's
    /// bytes.
    async fn replica(
        script: &'static [&'static [u8]],
        answer_early: bool,
    ) -> (Conn, tokio::task::JoinHandle<Vec<u8>>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let server = tokio::spawn(async move {
            let (mut s, _) = listener.accept().await.unwrap();
            let mut got = Vec::new();
            let mut buf = [0u8; 4096];
            loop {
                let head_end = got.windows(4).position(|w| w == b"\r\n\r\n");
                if let Some(end) = head_end {
                    let head = String::from_utf8_lossy(&got[..end]).to_lowercase();
                    let body = &got[end + 4..];
                    let done = answer_early
                        || if let Some(l) = head.split("content-length: ").nth(1) {
                            let n: usize = l.split("\r\n").next().unwrap().parse().unwrap();
                            body.len() >= n
                        } else if head.contains("transfer-encoding: chunked") {
                            body.ends_with(b"0\r\n\r\n")
                        } else {
                            true
                        };
                    if done {
                        break;
                    }
                }
                let n = s.read(&mut buf).await.unwrap();
                if n == 0 {
                    break;
                }
                got.extend_from_slice(&buf[..n]);
            }
            for piece in script {
                s.write_all(piece).await.unwrap();
                s.flush().await.unwrap();
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            got
        });
        let io = TcpStream::connect(addr).await.unwrap();
        (Conn::new(io), server)
    }

    fn head<'a>(method: &'a Method, host: &'a HeaderValue, headers: &'a HeaderMap) -> Head<'a> {
        Head {
            method,
            prefix: "",
            path_and_query: "/mcp",
            host,
            headers,
        }
    }

    /// One exchange and its body read whole: the answer's status and headers, the body, and
    /// whether the connection was given back.
    async fn exchange(
        script: &'static [&'static [u8]],
        method: Method,
        mut body: ForwardBody,
    ) -> Result<(StatusCode, HeaderMap, Bytes, bool, Vec<u8>), Error> {
        let (mut conn, server) = replica(script, false).await;
        let host = HeaderValue::from_static("replica:1");
        let mut headers = HeaderMap::new();
        headers.insert("x-keep", HeaderValue::from_static("yes"));
        headers.insert(header::CONTENT_LENGTH, HeaderValue::from_static("999"));
        let answer = conn
            .exchange(&head(&method, &host, &headers), &mut body, None)
            .await?;
        let back = Arc::new(AtomicBool::new(false));
        let b = back.clone();
        let (status, headers) = (answer.status, answer.headers.clone());
        let body = AnswerBody::new(
            conn,
            &answer,
            Box::new(move |_| b.store(true, Ordering::SeqCst)),
        );
        let bytes = body
            .collect()
            .await
            .map_err(|e| Error::Protocol(e.to_string()))?
            .to_bytes();
        let request = server.await.unwrap();
        Ok((status, headers, bytes, back.load(Ordering::SeqCst), request))
    }

    fn json(body: &'static str) -> ForwardBody {
        ForwardBody::new(vec![Bytes::from_static(body.as_bytes())], None, 1 << 20)
    }

    /// The error of an exchange (and its body's reading) that must fail.
    async fn failure(
        script: &'static [&'static [u8]],
        method: Method,
        body: &'static str,
    ) -> Error {
        match exchange(script, method, json(body)).await {
            Ok(_) => panic!("the exchange succeeded"),
            Err(e) => e,
        }
    }

    #[tokio::test]
    async fn no_answer_by_the_deadline_is_a_timeout_even_after_a_later_deadline() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            // Answers the first request, then reads on and never answers.
            let (mut s, _) = listener.accept().await.unwrap();
            let mut buf = [0u8; 4096];
            let _ = s.read(&mut buf).await;
            s.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n")
                .await
                .unwrap();
            while s.read(&mut buf).await.unwrap_or(0) > 0 {}
        });
        let mut conn = Conn::new(TcpStream::connect(addr).await.unwrap());
        let host = HeaderValue::from_static("replica:1");
        let headers = HeaderMap::new();
        // The first exchange waits for its answer: the connection's timer is made for its
        // deadline, a minute away.
        let far = Instant::now() + Duration::from_secs(60);
        let answer = conn
            .exchange(
                &head(&Method::GET, &host, &headers),
                &mut json(""),
                Some(far),
            )
            .await
            .unwrap();
        assert_eq!(answer.status, 200);
        let started = Instant::now();
        let soon = started + Duration::from_millis(100);
        let failed = conn
            .exchange(
                &head(&Method::GET, &host, &headers),
                &mut json(""),
                Some(soon),
            )
            .await;
        assert!(matches!(failed, Err(Error::TimedOut)), "{:?}", failed.err());
        let waited = started.elapsed();
        assert!(waited >= Duration::from_millis(100), "{waited:?}");
        assert!(
            waited < Duration::from_secs(5),
            "the earlier deadline held: {waited:?}"
        );
    }

    #[tokio::test]
    async fn a_request_goes_out_with_its_length_and_a_length_framed_answer_keeps_the_connection() {
        let (status, headers, body, back, request) = exchange(
            &[b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 2\r\n\r\n{}"],
            Method::POST,
            json(r#"{"a":1}"#),
        )
        .await
        .unwrap();
        assert_eq!(status, 200);
        assert_eq!(headers["content-type"], "application/json");
        assert_eq!(body, "{}");
        assert!(back, "read to its end: given back");
        // The client's own Content-Length is not forwarded; the body's length is.
        assert_eq!(
            String::from_utf8(request).unwrap(),
            "POST /mcp HTTP/1.1\r\nhost: replica:1\r\nx-keep: yes\r\ncontent-length: 7\r\n\r\n{\"a\":1}"
        );
    }

    #[tokio::test]
    async fn a_body_of_unknown_length_goes_out_chunked() {
        let rest =
            http_body_util::StreamBody::new(futures_util::stream::iter([Ok::<_, BoxError>(
                Frame::data(Bytes::from_static(b"world")),
            )]))
            .boxed_unsync();
        let body = ForwardBody::new(vec![Bytes::from_static(b"hello ")], Some(rest), 1 << 20);
        let (.., request) = exchange(
            &[b"HTTP/1.1 202 Accepted\r\ncontent-length: 0\r\n\r\n"],
            Method::POST,
            body,
        )
        .await
        .unwrap();
        let request = String::from_utf8(request).unwrap();
        assert!(
            request.ends_with(
                "transfer-encoding: chunked\r\n\r\n6\r\nhello \r\n5\r\nworld\r\n0\r\n\r\n"
            ),
            "{request}"
        );
        assert!(!request.contains("999"));
    }

    #[tokio::test]
    async fn a_chunked_answer_is_decoded_across_reads_and_keeps_the_connection() {
        let (status, headers, body, back, _) = exchange(
            &[
                b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n5\r\nhel",
                b"lo\r\n6;ext=1\r\n world\r",
                b"\n0\r\nx-trailer: 1\r\n",
                b"\r\n",
            ],
            Method::GET,
            json(""),
        )
        .await
        .unwrap();
        assert_eq!((status, &body[..]), (StatusCode::OK, &b"hello world"[..]));
        assert!(headers.contains_key(header::TRANSFER_ENCODING));
        assert!(back);
    }

    #[tokio::test]
    async fn interim_answers_are_skipped_and_a_204_has_no_body() {
        let (status, _, body, back, _) = exchange(
            &[b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 204 No Content\r\n\r\n"],
            Method::DELETE,
            json(""),
        )
        .await
        .unwrap();
        assert_eq!(
            (status, body.len(), back),
            (StatusCode::NO_CONTENT, 0, true)
        );
    }

    #[tokio::test]
    async fn an_answer_with_both_framings_is_read_chunked_and_its_connection_not_kept() {
        let (_, headers, body, back, _) = exchange(
            &[b"HTTP/1.1 200 OK\r\ncontent-length: 100\r\ntransfer-encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n"],
            Method::GET,
            json(""),
        )
        .await
        .unwrap();
        assert_eq!(body, "abc");
        assert!(!headers.contains_key(header::CONTENT_LENGTH));
        assert!(!back);
    }

    #[tokio::test]
    async fn differing_lengths_are_refused() {
        let err = failure(
            &[b"HTTP/1.1 200 OK\r\ncontent-length: 1\r\ncontent-length: 2\r\n\r\nab"],
            Method::GET,
            "",
        )
        .await;
        assert!(
            matches!(err, Error::Protocol(ref e) if e.contains("differing")),
            "{err}"
        );
    }

    #[tokio::test]
    async fn answers_read_to_the_close_or_saying_close_or_with_bytes_after_them_are_not_kept() {
        const CLOSE_DELIMITED: &[&[u8]] = &[b"HTTP/1.1 200 OK\r\n\r\nab", b"c"];
        for script in [
            CLOSE_DELIMITED,
            &[b"HTTP/1.1 200 OK\r\nconnection: close\r\ncontent-length: 3\r\n\r\nabc"],
            &[b"HTTP/1.0 200 OK\r\ncontent-length: 3\r\n\r\nabc"],
            &[b"HTTP/1.1 200 OK\r\ncontent-length: 3\r\n\r\nabcHTTP/1.1"],
        ] {
            let (_, _, body, back, _) = exchange(script, Method::GET, json("")).await.unwrap();
            assert_eq!(body, "abc");
            assert!(!back, "{:?}", String::from_utf8_lossy(script[0]));
        }
    }

    #[tokio::test]
    async fn a_body_cut_short_is_an_error() {
        let err = failure(
            &[b"HTTP/1.1 200 OK\r\ncontent-length: 10\r\n\r\nabc"],
            Method::GET,
            "",
        )
        .await;
        assert!(err.to_string().contains("before the body's end"), "{err}");
        let err = failure(
            &[b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\nzz\r\n"],
            Method::GET,
            "",
        )
        .await;
        assert!(err.to_string().contains("chunk size"), "{err}");
    }

    #[tokio::test]
    async fn a_connection_closed_without_an_answer_is_unanswered() {
        let err = failure(&[], Method::POST, "{}").await;
        assert!(matches!(err, Error::Unanswered), "{err}");
        let err = failure(&[b"HTTP/1.1 20"], Method::POST, "{}").await;
        assert!(matches!(err, Error::Protocol(_)), "{err}");
    }

    #[tokio::test]
    async fn an_early_answer_is_taken_without_the_rest_of_the_body() {
        // The client's body never ends; the replica answers after the head.
        let rest = http_body_util::StreamBody::new(futures_util::stream::pending::<
            Result<Frame<Bytes>, BoxError>,
        >())
        .boxed_unsync();
        let mut body = ForwardBody::new(vec![Bytes::from_static(b"{")], Some(rest), 1 << 20);
        let (mut conn, _server) = replica(
            &[b"HTTP/1.1 413 Payload Too Large\r\ncontent-length: 0\r\n\r\n"],
            true,
        )
        .await;
        let host = HeaderValue::from_static("r");
        let headers = HeaderMap::new();
        let answer = tokio::time::timeout(
            Duration::from_secs(5),
            conn.exchange(&head(&Method::POST, &host, &headers), &mut body, None),
        )
        .await
        .expect("answered without waiting for the body")
        .unwrap();
        assert_eq!(answer.status, StatusCode::PAYLOAD_TOO_LARGE);
        assert!(!answer.reusable, "the request was not written whole");
    }

    #[tokio::test]
    async fn an_idle_connection_the_replica_closed_is_not_reusable() {
        let (mut conn, server) =
            replica(&[b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n"], true).await;
        let host = HeaderValue::from_static("r");
        let headers = HeaderMap::new();
        conn.exchange(&head(&Method::GET, &host, &headers), &mut json(""), None)
            .await
            .unwrap();
        assert!(conn.is_reusable(), "open, nothing unread");
        server.await.unwrap();
        // The server's task closed the socket after its answer.
        for _ in 0..100 {
            if !conn.is_reusable() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        panic!("a closed connection still looks reusable");
    }
}
