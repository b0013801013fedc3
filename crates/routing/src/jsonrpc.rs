//! Just enough JSON-RPC to route: the `method`, `id` and `params.name` / `params.uri` of a
//! request, read from the front of the body without parsing (or buffering) the rest.
//!
//! [`scan`] walks the top-level object of a byte prefix and stops as soon as it has what routing
//! needs, so a `tools/call` with megabytes of `arguments` after its `name` is routed after its
//! first few dozen bytes. Values it does not need are skipped, never decoded.

use std::borrow::Cow;
use std::sync::Arc;

use serde_json::Value;

/// What routing knows of a JSON-RPC message.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Envelope {
    pub method: Option<String>,
    /// The request id, when present (a notification or response has none / `method` none).
    pub id: Option<Value>,
    /// What the method names: `params.uri` for `resources/*`, else `params.name` (tools/call,
    /// prompts/get), whatever order the keys come in. Shared: the request's metrics and spans
    /// keep it too.
    pub name: Option<Arc<str>>,
    /// The body is a JSON array (a batch, allowed by 2025-03-26 only).
    pub batch: bool,
    /// W3C trace context in `params._meta` (SEP-414), when it comes before what routing needs
    /// (the SDKs write `_meta` first).
    pub traceparent: Option<String>,
    pub tracestate: Option<String>,
}

impl Envelope {
    pub fn is_initialize(&self) -> bool {
        self.method.as_deref() == Some("initialize")
    }
}

/// Outcome of scanning a prefix of a body.
#[derive(Debug, PartialEq)]
pub enum Scan {
    /// Everything routing needs is known.
    Done(Envelope),
    /// The prefix ends before that; read more (or call again with `complete`).
    NeedMore,
    /// Not a JSON-RPC message.
    Invalid(&'static str),
}

/// Methods whose target (tool, prompt or resource) is named in params.
pub fn names_target(method: &str) -> bool {
    matches!(
        method,
        "tools/call"
            | "prompts/get"
            | "resources/read"
            | "resources/subscribe"
            | "resources/unsubscribe"
    )
}

/// Scans `buf`, the first bytes of a body; `complete` says whether that is the whole body.
pub fn scan(buf: &[u8], complete: bool) -> Scan {
    let mut s = Scanner::new(buf);
    match s.message() {
        Ok(()) | Err(Stop::Early) => {
            let mut env = s.env;
            env.name = match env.method.as_deref() {
                Some(m) if m.starts_with("resources/") => s.uri,
                _ => s.name,
            };
            Scan::Done(env)
        }
        Err(Stop::Eof) if complete => Scan::Invalid("body ends inside the JSON-RPC message"),
        Err(Stop::Eof) => Scan::NeedMore,
        Err(Stop::Bad(why)) => Scan::Invalid(why),
    }
}

/// An id of the usual forms, a small non-negative integer or a string without escapes, read
/// without the JSON parser; `None` for any other (which the parser then reads or refuses).
fn plain_id(raw: &[u8]) -> Option<Value> {
    match raw {
        [b'0'] => Some(Value::from(0u64)),
        [b'1'..=b'9', rest @ ..] if rest.len() < 18 && rest.iter().all(u8::is_ascii_digit) => {
            let n = raw.iter().fold(0u64, |n, d| n * 10 + u64::from(d - b'0'));
            Some(Value::from(n))
        }
        [b'"', inner @ .., b'"'] if !inner.iter().any(|&b| b == b'\\' || b < 0x20) => {
            std::str::from_utf8(inner).ok().map(Value::from)
        }
        _ => None,
    }
}

/// How a JSON-RPC response says its operation ended, read from a buffer that holds the whole
/// message: what [`crate::observe`] learns of an answer that came in one piece (the usual
/// `application/json` answer is one frame), for a fraction of the incremental reader's cost.
#[derive(Debug, Default, PartialEq, Eq)]
pub(crate) struct Answer<'a> {
    /// It has a `result` or an `error` member: a response, not a request or a notification.
    pub responded: bool,
    /// `error.code` as written.
    pub code: Option<&'a [u8]>,
    /// `error.message` without its quotes, escapes as written.
    pub message: Option<&'a [u8]>,
    /// `result.isError`: whether it is `true` (`"true"` too, as the walker reads it).
    pub is_error: Option<bool>,
}

/// Reads `buf` as one whole JSON-RPC message (an object, then nothing but whitespace). `None`
/// when it is not exactly that (a part of a message, a batch, two messages, or a `code`,
/// `message` or `isError` that is not a scalar): the caller reads it incrementally instead,
/// which decides those cases.
pub(crate) fn answer(buf: &[u8]) -> Option<Answer<'_>> {
    let mut s = Scanner::new(buf);
    let mut a = Answer::default();
    s.ws().ok()?;
    if s.next().ok()? != b'{' {
        return None;
    }
    s.object(|s, key| match key {
        b"result" | b"error" if s.peek()? == b'{' => {
            a.responded = true;
            s.pos += 1;
            let error = key == b"error";
            s.object(|s, key| match (error, key) {
                (true, b"code") => {
                    a.code = Some(s.scalar()?);
                    Ok(())
                }
                (true, b"message") => {
                    a.message = Some(s.scalar()?);
                    Ok(())
                }
                (false, b"isError") => {
                    a.is_error = Some(s.scalar()? == b"true");
                    Ok(())
                }
                _ => s.skip_value(),
            })
        }
        b"result" | b"error" => {
            a.responded = true;
            s.skip_value()
        }
        _ => s.skip_value(),
    })
    .ok()?;
    // Nothing but whitespace after it: skipping whitespace reaches the end.
    matches!(s.ws(), Err(Stop::Eof)).then_some(a)
}

enum Stop {
    /// Found everything; the rest need not be read.
    Early,
    /// Ran out of bytes.
    Eof,
    Bad(&'static str),
}

type Step<T = ()> = Result<T, Stop>;

struct Scanner<'a> {
    buf: &'a [u8],
    pos: usize,
    env: Envelope,
    id_seen: bool,
    name: Option<Arc<str>>,
    uri: Option<Arc<str>>,
}

impl<'a> Scanner<'a> {
    fn new(buf: &'a [u8]) -> Self {
        Scanner {
            buf,
            pos: 0,
            env: Envelope::default(),
            id_seen: false,
            name: None,
            uri: None,
        }
    }

    /// Consumes a string or a bare token (number, literal) and returns its text: a string's
    /// without quotes, escapes as written. An object or array is refused.
    fn scalar(&mut self) -> Step<&'a [u8]> {
        let start = self.pos;
        let quoted = match self.peek()? {
            b'{' | b'[' => return Err(Stop::Bad("expected a scalar")),
            b => b == b'"',
        };
        self.skip_value()?;
        let buf: &'a [u8] = self.buf;
        Ok(if quoted {
            &buf[start + 1..self.pos - 1]
        } else {
            &buf[start..self.pos]
        })
    }

    fn message(&mut self) -> Step {
        self.ws()?;
        match self.peek()? {
            b'[' => {
                self.env.batch = true;
                Err(Stop::Early)
            }
            b'{' => {
                self.pos += 1;
                self.object(|s, key| s.top_level_member(key))
            }
            _ => Err(Stop::Bad("a JSON-RPC message must be a JSON object")),
        }
    }

    fn top_level_member(&mut self, key: &[u8]) -> Step {
        match key {
            b"method" => {
                let method = self.string()?;
                self.env.method = Some(method);
            }
            b"id" => {
                let start = self.pos;
                self.skip_value()?;
                let raw = &self.buf[start..self.pos];
                let id = match plain_id(raw) {
                    Some(id) => id,
                    None => {
                        serde_json::from_slice(raw).map_err(|_| Stop::Bad("invalid JSON-RPC id"))?
                    }
                };
                self.env.id = Some(id);
                self.id_seen = true;
            }
            b"params" if self.peek()? == b'{' => {
                self.pos += 1;
                self.object(|s, key| match key {
                    b"_meta" if s.peek()? == b'{' => {
                        s.pos += 1;
                        s.object(|s, key| match key {
                            b"traceparent" | b"tracestate" if s.peek()? == b'"' => {
                                let v = s.string()?;
                                if key == b"traceparent" {
                                    s.env.traceparent = Some(v);
                                } else {
                                    s.env.tracestate = Some(v);
                                }
                                Ok(())
                            }
                            _ => s.skip_value(),
                        })
                    }
                    b"name" | b"uri" if s.peek()? == b'"' => {
                        let v = Arc::from(s.text()?);
                        if key == b"name" {
                            s.name = Some(v);
                        } else {
                            s.uri = Some(v);
                        }
                        // Stop here rather than read (say) megabytes of `arguments`.
                        if s.have_enough() {
                            return Err(Stop::Early);
                        }
                        Ok(())
                    }
                    _ => s.skip_value(),
                })?;
            }
            _ => self.skip_value()?,
        }
        if self.have_enough() {
            return Err(Stop::Early);
        }
        Ok(())
    }

    /// Whether the method, the id and (for methods that name a target) the key naming the
    /// target are known. Until the method is, neither `name` nor `uri` is enough: which one
    /// counts depends on it.
    fn have_enough(&self) -> bool {
        match &self.env.method {
            Some(m) if m.starts_with("resources/") => {
                self.id_seen && (self.uri.is_some() || !names_target(m))
            }
            Some(m) => self.id_seen && (self.name.is_some() || !names_target(m)),
            None => false,
        }
    }

    /// Reads members of an object whose `{` was consumed, through its `}`.
    fn object(&mut self, mut member: impl FnMut(&mut Self, &[u8]) -> Step) -> Step {
        self.ws()?;
        if self.peek()? == b'}' {
            self.pos += 1;
            return Ok(());
        }
        loop {
            self.ws()?;
            if self.peek()? != b'"' {
                return Err(Stop::Bad("expected a string key"));
            }
            let key = self.key()?;
            self.ws()?;
            if self.next()? != b':' {
                return Err(Stop::Bad("expected ':' after a key"));
            }
            self.ws()?;
            member(self, &key)?;
            self.ws()?;
            match self.next()? {
                b',' => continue,
                b'}' => return Ok(()),
                _ => return Err(Stop::Bad("expected ',' or '}' in an object")),
            }
        }
    }

    #[inline(always)]
    fn peek(&self) -> Step<u8> {
        self.buf.get(self.pos).copied().ok_or(Stop::Eof)
    }

    #[inline(always)]
    fn next(&mut self) -> Step<u8> {
        let b = self.peek()?;
        self.pos += 1;
        Ok(b)
    }

    /// Skips whitespace (compact JSON, the SDKs' own, has none: one test).
    #[inline(always)]
    fn ws(&mut self) -> Step {
        loop {
            match self.peek()? {
                b' ' | b'\t' | b'\r' | b'\n' => self.pos += 1,
                _ => return Ok(()),
            }
        }
    }

    /// Consumes a string literal and decodes it.
    fn string(&mut self) -> Step<String> {
        self.text().map(Cow::into_owned)
    }

    /// A string value, borrowed from the message unless it holds escapes.
    fn text(&mut self) -> Step<Cow<'a, str>> {
        let start = self.pos;
        let escaped = self.skip_string()?;
        let buf: &'a [u8] = self.buf;
        let raw = &buf[start..self.pos];
        if escaped {
            serde_json::from_slice::<String>(raw)
                .map(Cow::Owned)
                .map_err(|_| Stop::Bad("invalid string"))
        } else {
            std::str::from_utf8(&raw[1..raw.len() - 1])
                .map(Cow::Borrowed)
                .map_err(|_| Stop::Bad("invalid UTF-8 in a string"))
        }
    }

    /// Consumes an object's key: borrowed from the message unless it holds escapes (keys are
    /// read for every member; copying each cost an allocation). Its bytes are only compared
    /// with the keys the scanner looks for, so they are not checked for being UTF-8 (no more
    /// than a skipped value's are: the replica reads the message).
    #[inline(always)]
    fn key(&mut self) -> Step<Cow<'a, [u8]>> {
        let start = self.pos;
        let escaped = self.skip_string()?;
        let buf: &'a [u8] = self.buf;
        let raw = &buf[start..self.pos];
        if escaped {
            serde_json::from_slice::<String>(raw)
                .map(|k| Cow::Owned(k.into_bytes()))
                .map_err(|_| Stop::Bad("invalid string"))
        } else {
            Ok(Cow::Borrowed(&raw[1..raw.len() - 1]))
        }
    }

    /// Consumes a string literal (at its opening quote); returns whether it holds escapes.
    /// Eight bytes at a time while eight remain in the buffer (a message's strings are short,
    /// and most end in their first word). The same search as `wire::find_quote_or_backslash`,
    /// written out here over the whole body: a shared search called on the rest of the body
    /// measured about 120 instructions more per scan, even inlined.
    #[inline(always)]
    fn skip_string(&mut self) -> Step<bool> {
        if self.next()? != b'"' {
            return Err(Stop::Bad("expected a string"));
        }
        let buf = self.buf;
        let mut i = self.pos;
        let mut escaped = false;
        loop {
            let at = match buf.get(i..i + 8) {
                Some(word) => {
                    let x = u64::from_le_bytes(word.try_into().unwrap_or_default());
                    let found = crate::wire::quote_or_backslash_in(x);
                    if found == 0 {
                        i += 8;
                        continue;
                    }
                    i + (found.trailing_zeros() / 8) as usize
                }
                None => match buf[i..].iter().position(|&b| b == b'"' || b == b'\\') {
                    Some(n) => i + n,
                    None => {
                        self.pos = buf.len();
                        return Err(Stop::Eof);
                    }
                },
            };
            if buf[at] == b'"' {
                self.pos = at + 1;
                return Ok(escaped);
            }
            escaped = true;
            // The escaped character is skipped, whatever it is.
            i = at + 2;
            if i > buf.len() {
                self.pos = buf.len();
                return Err(Stop::Eof);
            }
        }
    }

    /// Consumes any JSON value without decoding it.
    fn skip_value(&mut self) -> Step {
        match self.peek()? {
            b'"' => self.skip_string().map(drop),
            b'{' | b'[' => {
                let mut depth = 0usize;
                loop {
                    match self.peek()? {
                        b'"' => {
                            self.skip_string()?;
                            continue;
                        }
                        b'{' | b'[' => depth += 1,
                        b'}' | b']' => {
                            depth -= 1;
                            if depth == 0 {
                                self.pos += 1;
                                return Ok(());
                            }
                        }
                        _ => {}
                    }
                    self.pos += 1;
                }
            }
            b'-' | b'0'..=b'9' | b't' | b'f' | b'n' => {
                let rest = &self.buf[self.pos..];
                match rest
                    .iter()
                    .position(|b| matches!(b, b',' | b'}' | b']' | b' ' | b'\t' | b'\r' | b'\n'))
                {
                    Some(i) => {
                        self.pos += i;
                        Ok(())
                    }
                    None => {
                        self.pos = self.buf.len();
                        Err(Stop::Eof)
                    }
                }
            }
            _ => Err(Stop::Bad("invalid JSON value")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn done(body: &str) -> Envelope {
        match scan(body.as_bytes(), true) {
            Scan::Done(e) => e,
            other => panic!("{body}: {other:?}"),
        }
    }

    #[test]
    fn an_answer_is_read_past_content_of_any_depth_without_recursing() {
        let deep = format!(
            r#"{{"result":{{"content":{}{},"isError":true}},"id":1}}"#,
            "[".repeat(100_000),
            "]".repeat(100_000)
        );
        let a = answer(deep.as_bytes()).expect("a whole answer");
        assert!(a.responded);
        assert_eq!(a.is_error, Some(true));
        // Cut anywhere, it is not a whole message.
        assert_eq!(answer(&deep.as_bytes()[..deep.len() - 1]), None);
        assert_eq!(answer(&deep.as_bytes()[..50_000]), None);
    }

    #[test]
    fn reads_method_id_and_name() {
        let e = done(
            r#"{"jsonrpc":"2.0","id":7,"method":"tools/call","params":{"name":"echo","arguments":{"text":"hi"}}}"#,
        );
        assert_eq!(e.method.as_deref(), Some("tools/call"));
        assert_eq!(e.id, Some(json!(7)));
        assert_eq!(e.name.as_deref(), Some("echo"));
        assert!(!e.batch);
    }

    #[test]
    fn plain_ids_read_as_the_json_parser_reads_them() {
        let raws = [
            "0",
            "1",
            "42",
            "123456789012345678",
            "1234567890123456789",
            "01",
            "-1",
            "1.5",
            "1e3",
            r#""""#,
            r#""abc""#,
            r#""a\"b""#,
            "\"\u{1}\"",
            r#""é""#,
            "null",
            "true",
        ];
        for raw in raws {
            if let Some(id) = plain_id(raw.as_bytes()) {
                assert_eq!(Some(id), serde_json::from_str::<Value>(raw).ok(), "{raw}");
            }
        }
        assert_eq!(plain_id(b"7"), Some(Value::from(7)));
        assert_eq!(plain_id(br#""req-1""#), Some(Value::from("req-1")));
        assert_eq!(plain_id(b"01"), None);
        assert_eq!(plain_id(b"\"\x01\""), None);
    }

    #[test]
    fn keys_with_escapes_are_decoded() {
        // Keys are borrowed from the body unless they hold escapes, which are decoded.
        let e = done(
            r#"{"jsonrpc":"2.0","\u0069d":3,"me\u0074hod":"tools/call","params":{"n\u0061me":"echo"}}"#,
        );
        assert_eq!(e.method.as_deref(), Some("tools/call"));
        assert_eq!(e.id, Some(json!(3)));
        assert_eq!(e.name.as_deref(), Some("echo"));
    }

    #[test]
    fn key_order_and_whitespace_do_not_matter() {
        let e = done(
            "{ \"params\" : { \"arguments\": {\"a\": [1, {\"b\": \"}\"}]}, \"name\" : \"x\\\"y\" },\n \"method\":\"tools/call\", \"id\": \"abc\", \"jsonrpc\": \"2.0\" }",
        );
        assert_eq!(e.method.as_deref(), Some("tools/call"));
        assert_eq!(e.id, Some(json!("abc")));
        assert_eq!(e.name.as_deref(), Some("x\"y"));
    }

    /// Found by the property tests: with `uri` before `name`, the scanner stopped at `uri` and
    /// reported it for a tools/call, although its target is `name`.
    #[test]
    fn the_named_target_does_not_depend_on_key_order() {
        for body in [
            r#"{"id":0,"method":"tools/call","params":{"uri":" ","name":"echo"}}"#,
            r#"{"id":0,"method":"tools/call","params":{"name":"echo","uri":" "}}"#,
            r#"{"params":{"uri":" ","name":"echo"},"id":0,"method":"tools/call"}"#,
        ] {
            let Scan::Done(e) = scan(body.as_bytes(), true) else {
                panic!("{body}")
            };
            assert_eq!(e.name.as_deref(), Some("echo"), "{body}");
        }
        let body = r#"{"id":0,"method":"resources/read","params":{"name":"x","uri":"file:///a"}}"#;
        let Scan::Done(e) = scan(body.as_bytes(), true) else {
            panic!()
        };
        assert_eq!(e.name.as_deref(), Some("file:///a"));
    }

    #[test]
    fn resource_methods_name_their_uri() {
        let e = done(
            r#"{"jsonrpc":"2.0","id":1,"method":"resources/read","params":{"uri":"file:///a"}}"#,
        );
        assert_eq!(e.name.as_deref(), Some("file:///a"));
    }

    #[test]
    fn stops_before_large_arguments() {
        let head = r#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"big","arguments":{"blob":""#;
        // The prefix ends inside the (huge) arguments: routing already has what it needs.
        match scan(head.as_bytes(), false) {
            Scan::Done(e) => assert_eq!(e.name.as_deref(), Some("big")),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn asks_for_more_when_the_prefix_is_short() {
        assert_eq!(
            scan(br#"{"jsonrpc":"2.0","id":1,"met"#, false),
            Scan::NeedMore
        );
        assert_eq!(scan(br#"{"jsonrpc":"2.0","id":12"#, false), Scan::NeedMore);
        assert!(matches!(
            scan(br#"{"jsonrpc":"2.0","id":1,"met"#, true),
            Scan::Invalid(_)
        ));
    }

    #[test]
    fn notifications_and_responses_are_read_to_the_end() {
        let e = done(r#"{"jsonrpc":"2.0","method":"notifications/initialized"}"#);
        assert_eq!(e.method.as_deref(), Some("notifications/initialized"));
        assert_eq!(e.id, None);
        let e = done(r#"{"jsonrpc":"2.0","id":3,"result":{}}"#);
        assert_eq!(e.method, None);
        assert_eq!(e.id, Some(json!(3)));
    }

    #[test]
    fn batches_and_garbage() {
        assert!(done(r#"[{"jsonrpc":"2.0","id":1,"method":"ping"}]"#).batch);
        assert!(matches!(scan(b"hello", true), Scan::Invalid(_)));
        assert!(matches!(scan(b"{\"a\" 1}", true), Scan::Invalid(_)));
        assert!(matches!(scan(b"{1:2}", true), Scan::Invalid(_)));
        assert!(matches!(scan(b"", true), Scan::Invalid(_)));
    }

    #[test]
    fn trace_context_is_read_from_meta() {
        let e = done(
            r#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"_meta":{"progressToken":1,"traceparent":"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01","tracestate":"rojo=1"},"name":"echo","arguments":{}}}"#,
        );
        assert_eq!(
            e.traceparent.as_deref(),
            Some("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01")
        );
        assert_eq!(e.tracestate.as_deref(), Some("rojo=1"));
        assert_eq!(e.name.as_deref(), Some("echo"));
    }

    #[test]
    fn initialize_is_recognised() {
        let e = done(
            r#"{"jsonrpc":"2.0","id":0,"method":"initialize","params":{"protocolVersion":"2025-06-18","capabilities":{},"clientInfo":{"name":"c","version":"1"}}}"#,
        );
        assert!(e.is_initialize());
    }
}
