//! An incremental JSON reader for bodies that stream through the proxy: it is fed chunks as
//! they pass, keeps only the path of the value it is in (not the values), and reports the few
//! values a visitor asks for. Used to learn how an MCP response ended (`error.code`,
//! `result.isError`) and which tools an adapter has, and to hash a tool call's `arguments`,
//! without holding back or buffering a byte of the body.
//!
//! [`SseData`] feeds the `data:` lines of an SSE stream to a walker, one JSON message per event.

use smallvec::SmallVec;

/// Deepest nesting followed; deeper input stops the walk (nothing more is reported).
const MAX_DEPTH: usize = 64;
/// Longest key kept for path matching; longer keys never match (no visitor asks for one:
/// the MCP keys it follows are `result`, `isError`, `arguments`...). Kept inline in its frame,
/// so walking into an object allocates nothing.
const MAX_KEY: usize = 22;
/// Longest scalar reported; longer ones are cut (a tool name is at most 128 bytes).
pub(crate) const MAX_SCALAR: usize = 256;

/// One level of the path to the current value.
#[derive(Debug, Default)]
pub(crate) struct Frame {
    object: bool,
    key_too_long: bool,
    key_len: u8,
    key: [u8; MAX_KEY],
    index: usize,
}

impl Frame {
    /// The key (objects) under which the current value sits.
    pub fn key(&self) -> Option<&[u8]> {
        (self.object && !self.key_too_long).then_some(&self.key[..usize::from(self.key_len)])
    }
}

/// Whether `path` is `pattern`, where `*` stands for any array index.
pub(crate) fn path_is(path: &[Frame], pattern: &[&str]) -> bool {
    path.len() == pattern.len()
        && path.iter().zip(pattern).all(|(f, p)| {
            if *p == "*" {
                !f.object
            } else {
                f.key() == Some(p.as_bytes())
            }
        })
}

/// What a visitor wants of the value that starts at a path.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Interest {
    None,
    /// Its text (strings without quotes, escapes kept; numbers and literals as written).
    Scalar,
    /// Its raw bytes, in pieces, as they pass.
    Raw,
    /// Nothing in it, nor below it: an object or array is passed over at a byte scan's cost
    /// (strings and brackets only, no paths; its inside is not checked for being JSON). For a
    /// scalar, the same as `None`.
    Skip,
}

pub(crate) trait Visit {
    fn interest(&mut self, path: &[Frame]) -> Interest;
    fn scalar(&mut self, _path: &[Frame], _text: &[u8]) {}
    fn raw(&mut self, _bytes: &[u8]) {}
    fn raw_end(&mut self) {}
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Value,
    /// After `[`: a value or `]`.
    ArrayFirst,
    /// After `{`: a key or `}`.
    KeyFirst,
    /// After `,` in an object: a key.
    Key,
    Colon,
    After,
    Str {
        key: bool,
        escaped: bool,
    },
    Bare,
    /// Inside a skipped object or array, `depth` brackets deep.
    Skip {
        depth: u32,
        in_str: bool,
        escaped: bool,
    },
    Failed,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Capture {
    None,
    Scalar { level: usize },
    Raw { level: usize },
}

/// Levels kept inline: an MCP response's values of interest are at most four deep
/// (`result.tools[i].name`, five levels with the message), and skipped values push none, so a
/// response is read without allocating. Deeper input spills to the heap.
const INLINE_FRAMES: usize = 5;
/// Scalar bytes kept inline (codes, `isError`, short tool names).
const INLINE_SCALAR: usize = 32;

/// The walker's state between chunks.
pub(crate) struct Walker {
    frames: SmallVec<[Frame; INLINE_FRAMES]>,
    state: State,
    capture: Capture,
    scalar: SmallVec<[u8; INLINE_SCALAR]>,
}

impl Default for Walker {
    fn default() -> Self {
        Self {
            frames: SmallVec::new(),
            state: State::Value,
            capture: Capture::None,
            scalar: SmallVec::new(),
        }
    }
}

fn is_ws(b: u8) -> bool {
    matches!(b, b' ' | b'\t' | b'\r' | b'\n')
}

impl Walker {
    /// Forgets the message being read (the next byte starts a new one).
    pub fn reset(&mut self) {
        self.frames.clear();
        self.state = State::Value;
        self.capture = Capture::None;
    }

    /// Whether the input so far was not JSON (the rest is ignored until [`reset`](Self::reset)).
    #[cfg(test)]
    pub fn failed(&self) -> bool {
        self.state == State::Failed
    }

    /// A value starts at `at`; returns whether the visitor wants it skipped.
    fn begin(&mut self, at: usize, raw_start: &mut Option<usize>, v: &mut impl Visit) -> bool {
        if self.capture != Capture::None {
            return false;
        }
        let level = self.frames.len();
        match v.interest(&self.frames) {
            Interest::None => {}
            Interest::Skip => return true,
            Interest::Scalar => {
                self.capture = Capture::Scalar { level };
                self.scalar.clear();
            }
            Interest::Raw => {
                self.capture = Capture::Raw { level };
                *raw_start = Some(at);
            }
        }
        false
    }

    /// A value ended just before `end`, at the current level.
    fn end(&mut self, chunk: &[u8], end: usize, raw_start: &mut Option<usize>, v: &mut impl Visit) {
        let level = self.frames.len();
        match self.capture {
            Capture::Scalar { level: l } if l == level => {
                v.scalar(&self.frames, &self.scalar);
                self.capture = Capture::None;
            }
            Capture::Raw { level: l } if l == level => {
                if let Some(start) = raw_start.take() {
                    v.raw(&chunk[start..end]);
                }
                v.raw_end();
                self.capture = Capture::None;
            }
            _ => {}
        }
    }

    fn keep_scalar(&mut self, bytes: &[u8]) {
        if matches!(self.capture, Capture::Scalar { level } if level == self.frames.len()) {
            let room = MAX_SCALAR.saturating_sub(self.scalar.len());
            self.scalar
                .extend_from_slice(&bytes[..bytes.len().min(room)]);
        }
    }

    fn push(&mut self, object: bool) -> bool {
        if self.frames.len() >= MAX_DEPTH {
            self.state = State::Failed;
            return false;
        }
        self.frames.push(Frame {
            object,
            ..Frame::default()
        });
        true
    }

    /// Reads one chunk; values of interest are reported to `v` as they complete.
    pub fn feed(&mut self, chunk: &[u8], v: &mut impl Visit) {
        let mut raw_start = matches!(self.capture, Capture::Raw { .. }).then_some(0);
        let mut i = 0;
        while i < chunk.len() {
            let b = chunk[i];
            match self.state {
                State::Failed => return,
                State::Value => {
                    if is_ws(b) {
                        i += 1;
                        continue;
                    }
                    match b {
                        b'{' | b'[' => {
                            if self.begin(i, &mut raw_start, v) {
                                self.state = State::Skip {
                                    depth: 1,
                                    in_str: false,
                                    escaped: false,
                                };
                                i += 1;
                                continue;
                            }
                            if !self.push(b == b'{') {
                                return;
                            }
                            self.state = if b == b'{' {
                                State::KeyFirst
                            } else {
                                State::ArrayFirst
                            };
                        }
                        b'"' => {
                            let _ = self.begin(i, &mut raw_start, v);
                            self.state = State::Str {
                                key: false,
                                escaped: false,
                            };
                        }
                        b'-' | b'0'..=b'9' | b't' | b'f' | b'n' => {
                            let _ = self.begin(i, &mut raw_start, v);
                            self.state = State::Bare;
                            continue; // the byte is part of the scalar
                        }
                        _ => {
                            self.state = State::Failed;
                            return;
                        }
                    }
                    i += 1;
                }
                State::ArrayFirst => {
                    if is_ws(b) {
                        i += 1;
                    } else if b == b']' {
                        self.frames.pop();
                        i += 1;
                        self.end(chunk, i, &mut raw_start, v);
                        self.state = State::After;
                    } else {
                        self.state = State::Value;
                    }
                }
                State::KeyFirst | State::Key => {
                    if is_ws(b) {
                        i += 1;
                        continue;
                    }
                    if b == b'}' && self.state == State::KeyFirst {
                        self.frames.pop();
                        i += 1;
                        self.end(chunk, i, &mut raw_start, v);
                        self.state = State::After;
                    } else if b == b'"' {
                        if let Some(top) = self.frames.last_mut() {
                            top.key_len = 0;
                            top.key_too_long = false;
                        }
                        self.state = State::Str {
                            key: true,
                            escaped: false,
                        };
                        i += 1;
                    } else {
                        self.state = State::Failed;
                        return;
                    }
                }
                State::Colon => {
                    if is_ws(b) {
                        i += 1;
                    } else if b == b':' {
                        self.state = State::Value;
                        i += 1;
                    } else {
                        self.state = State::Failed;
                        return;
                    }
                }
                State::Str { key, escaped } => {
                    if escaped {
                        self.state = State::Str {
                            key,
                            escaped: false,
                        };
                        self.string_bytes(key, &chunk[i..=i]);
                        i += 1;
                        continue;
                    }
                    let rest = &chunk[i..];
                    match crate::wire::find_quote_or_backslash(rest) {
                        None => {
                            self.string_bytes(key, rest);
                            i = chunk.len();
                        }
                        Some(n) => {
                            self.string_bytes(key, &rest[..n]);
                            i += n + 1;
                            if rest[n] == b'\\' {
                                self.string_bytes(key, b"\\");
                                self.state = State::Str { key, escaped: true };
                            } else if key {
                                self.state = State::Colon;
                            } else {
                                self.end(chunk, i, &mut raw_start, v);
                                self.state = State::After;
                            }
                        }
                    }
                }
                State::Skip {
                    mut depth,
                    mut in_str,
                    mut escaped,
                } => {
                    while i < chunk.len() && depth > 0 {
                        if in_str {
                            if escaped {
                                escaped = false;
                                i += 1;
                                continue;
                            }
                            match crate::wire::find_quote_or_backslash(&chunk[i..]) {
                                None => i = chunk.len(),
                                Some(n) => {
                                    escaped = chunk[i + n] == b'\\';
                                    in_str = escaped;
                                    i += n + 1;
                                }
                            }
                            continue;
                        }
                        match chunk[i] {
                            b'"' => in_str = true,
                            b'{' | b'[' => depth += 1,
                            b'}' | b']' => depth -= 1,
                            _ => {}
                        }
                        i += 1;
                    }
                    self.state = if depth == 0 {
                        State::After
                    } else {
                        State::Skip {
                            depth,
                            in_str,
                            escaped,
                        }
                    };
                }
                State::Bare => {
                    // The token's bytes in this chunk are kept at once, not byte by byte.
                    let ends = |b: u8| is_ws(b) || matches!(b, b',' | b'}' | b']');
                    let n = chunk[i..].iter().position(|&b| ends(b));
                    let token = &chunk[i..n.map_or(chunk.len(), |n| i + n)];
                    self.keep_scalar(token);
                    i += token.len();
                    if n.is_some() {
                        self.end(chunk, i, &mut raw_start, v);
                        self.state = State::After;
                    }
                }
                State::After => {
                    if is_ws(b) {
                        i += 1;
                        continue;
                    }
                    let Some(top) = self.frames.last_mut() else {
                        // A second top-level value (another message): start over.
                        self.state = State::Value;
                        continue;
                    };
                    match (top.object, b) {
                        (true, b',') => self.state = State::Key,
                        (false, b',') => {
                            top.index += 1;
                            self.state = State::Value;
                        }
                        (true, b'}') | (false, b']') => {
                            self.frames.pop();
                            self.end(chunk, i + 1, &mut raw_start, v);
                        }
                        _ => {
                            self.state = State::Failed;
                            return;
                        }
                    }
                    i += 1;
                }
            }
        }
        if let (Some(start), Capture::Raw { .. }) = (raw_start, self.capture) {
            v.raw(&chunk[start..]);
        }
    }

    fn string_bytes(&mut self, key: bool, bytes: &[u8]) {
        if key {
            if let Some(top) = self.frames.last_mut() {
                let len = usize::from(top.key_len);
                match top.key.get_mut(len..len + bytes.len()) {
                    Some(room) if !top.key_too_long => {
                        room.copy_from_slice(bytes);
                        top.key_len += bytes.len() as u8; // at most MAX_KEY
                    }
                    _ => top.key_too_long = true,
                }
            }
        } else {
            self.keep_scalar(bytes);
        }
    }
}

// === impl SseData ===

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Line {
    Start,
    Field,
    /// In a `data:` line; `fresh` until the optional space after the colon is passed.
    Data {
        fresh: bool,
    },
    Skip,
}

/// Feeds the `data:` lines of an SSE stream to a [`Walker`]; each event is one message.
pub(crate) struct SseData {
    line: Line,
    field: [u8; 5],
    field_len: usize,
}

impl Default for SseData {
    fn default() -> Self {
        Self {
            line: Line::Start,
            field: [0; 5],
            field_len: 0,
        }
    }
}

impl SseData {
    pub fn feed(&mut self, chunk: &[u8], walker: &mut Walker, v: &mut impl Visit) {
        let mut i = 0;
        while i < chunk.len() {
            let b = chunk[i];
            match self.line {
                Line::Start => {
                    match b {
                        b'\n' => walker.reset(), // blank line: the event ends
                        b'\r' => {}
                        b':' => self.line = Line::Skip,
                        _ => {
                            self.field[0] = b;
                            self.field_len = 1;
                            self.line = Line::Field;
                        }
                    }
                    i += 1;
                }
                Line::Field => {
                    match b {
                        b':' => {
                            self.line = if &self.field[..self.field_len] == b"data" {
                                Line::Data { fresh: true }
                            } else {
                                Line::Skip
                            };
                        }
                        b'\n' => self.line = Line::Start,
                        _ if self.field_len < self.field.len() => {
                            self.field[self.field_len] = b;
                            self.field_len += 1;
                        }
                        _ => self.line = Line::Skip,
                    }
                    i += 1;
                }
                Line::Data { fresh } => {
                    if fresh && b == b' ' {
                        i += 1;
                    }
                    self.line = Line::Data { fresh: false };
                    let rest = &chunk[i..];
                    match rest.iter().position(|&c| c == b'\n') {
                        None => {
                            walker.feed(rest, v);
                            i = chunk.len();
                        }
                        Some(n) => {
                            // Lines of one event's data join with a newline: JSON whitespace.
                            walker.feed(&rest[..=n], v);
                            i += n + 1;
                            self.line = Line::Start;
                        }
                    }
                }
                Line::Skip => match chunk[i..].iter().position(|&c| c == b'\n') {
                    None => i = chunk.len(),
                    Some(n) => {
                        i += n + 1;
                        self.line = Line::Start;
                    }
                },
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Records scalars at the given paths and the raw bytes of `params.arguments`; with `skip`,
    /// passes over every value no pattern lies under.
    #[derive(Default)]
    struct Rec {
        skip: bool,
        scalars: Vec<(String, String)>,
        raw: Vec<u8>,
        raw_done: usize,
    }

    impl Rec {
        const PATTERNS: [&[&str]; 4] = [
            &["params", "arguments"],
            &["error", "code"],
            &["result", "isError"],
            &["result", "tools", "*", "name"],
        ];
        fn skipping() -> Self {
            Self {
                skip: true,
                ..Self::default()
            }
        }
    }

    /// Whether `pattern` starts with `path`.
    fn leads_to(path: &[Frame], pattern: &[&str]) -> bool {
        path.len() <= pattern.len() && path_is(path, &pattern[..path.len()])
    }

    impl Visit for Rec {
        fn interest(&mut self, path: &[Frame]) -> Interest {
            if path_is(path, &["params", "arguments"]) {
                Interest::Raw
            } else if path_is(path, &["error", "code"])
                || path_is(path, &["result", "isError"])
                || path_is(path, &["result", "tools", "*", "name"])
            {
                Interest::Scalar
            } else if self.skip && !Self::PATTERNS.iter().any(|p| leads_to(path, p)) {
                Interest::Skip
            } else {
                Interest::None
            }
        }
        fn scalar(&mut self, path: &[Frame], text: &[u8]) {
            let p: Vec<String> = path
                .iter()
                .map(|f| match f.key() {
                    Some(k) => String::from_utf8_lossy(k).into_owned(),
                    None => f.index.to_string(),
                })
                .collect();
            self.scalars
                .push((p.join("."), String::from_utf8_lossy(text).into_owned()));
        }
        fn raw(&mut self, bytes: &[u8]) {
            self.raw.extend_from_slice(bytes);
        }
        fn raw_end(&mut self) {
            self.raw_done += 1;
        }
    }

    /// Feeds `body` whole, in every split into two chunks, and byte by byte, each with and
    /// without skipping what no pattern needs: the result never changes.
    fn walk(body: &str) -> Rec {
        let whole = {
            let mut r = Rec::default();
            Walker::default().feed(body.as_bytes(), &mut r);
            r
        };
        let b = body.as_bytes();
        for (cut, skip) in (0..=b.len()).flat_map(|cut| [(cut, false), (cut, true)]) {
            let mut r = Rec {
                skip,
                ..Rec::default()
            };
            let mut w = Walker::default();
            w.feed(&b[..cut], &mut r);
            w.feed(&b[cut..], &mut r);
            assert_eq!(r.scalars, whole.scalars, "split at {cut}, skip {skip}");
            assert_eq!(r.raw, whole.raw, "split at {cut}, skip {skip}");
        }
        for mut r in [Rec::default(), Rec::skipping()] {
            let mut w = Walker::default();
            for byte in b.chunks(1) {
                w.feed(byte, &mut r);
            }
            assert_eq!(r.scalars, whole.scalars, "byte by byte, skip {}", r.skip);
            assert_eq!(r.raw, whole.raw, "byte by byte, skip {}", r.skip);
        }
        whole
    }

    #[test]
    fn finds_the_outcome_of_a_tool_call_after_its_content() {
        let r = walk(
            r#"{"jsonrpc":"2.0","id":3,"result":{"content":[{"type":"text","text":"a \"quoted\" } ]"}],"isError":true}}"#,
        );
        assert_eq!(r.scalars, [("result.isError".into(), "true".into())]);
        let r =
            walk(r#"{"jsonrpc":"2.0","id":3,"error":{"message":"Unknown tool: x","code":-32602}}"#);
        assert_eq!(r.scalars, [("error.code".into(), "-32602".into())]);
    }

    #[test]
    fn reads_tool_names_of_a_listing_but_not_nested_names() {
        let r = walk(
            r#"{"result":{"tools":[{"name":"echo","inputSchema":{"properties":{"name":{"type":"string"}}}},{"inputSchema":{},"name":"whoami"}]},"id":1}"#,
        );
        assert_eq!(
            r.scalars,
            [
                ("result.tools.0.name".into(), "echo".into()),
                ("result.tools.1.name".into(), "whoami".into())
            ]
        );
    }

    #[test]
    fn hands_over_the_raw_arguments_exactly() {
        let args = r#"{ "text" : "hi \\ \" there", "n": [1, 2.5e3, {"x": null}], "b": true }"#;
        let body = format!(
            r#"{{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{{"name":"echo","arguments":{args},"_meta":{{}}}}}}"#
        );
        let r = walk(&body);
        assert_eq!(String::from_utf8(r.raw).unwrap(), args);
        assert_eq!(r.raw_done, 1);
        let scalar_args = r#"{"params":{"arguments":42}}"#;
        assert_eq!(walk(scalar_args).raw, b"42");
    }

    #[test]
    fn a_skipped_value_ends_at_its_own_bracket_whatever_its_strings_hold() {
        // Brackets, quotes and backslashes inside the skipped strings must not end the skip.
        let body = r#"{"jsonrpc":"2.0","_meta":{"a":["}",{"b":"\\"},"\"]{["],"c":[[[]]]},"id":1,"result":{"content":[{"text":"] } \" ["}],"structured":{"isError":true},"isError":false}}"#;
        let r = walk(body);
        assert_eq!(r.scalars, [("result.isError".into(), "false".into())]);
        // Deep nesting inside a skipped value costs no frames: it is not refused.
        let deep = format!(
            r#"{{"_meta":{}{},"error":{{"code":-1}}}}"#,
            "[".repeat(200),
            "]".repeat(200)
        );
        let mut r = Rec::skipping();
        Walker::default().feed(deep.as_bytes(), &mut r);
        assert_eq!(r.scalars, [("error.code".into(), "-1".into())]);
    }

    #[test]
    fn garbage_stops_the_walk() {
        let mut w = Walker::default();
        w.feed(b"{\"a\" 1}", &mut Rec::default());
        assert!(w.failed());
        let mut w = Walker::default();
        w.feed(&b"[".repeat(100), &mut Rec::default());
        assert!(w.failed());
    }

    #[test]
    fn sse_events_are_read_as_separate_messages() {
        let stream = "id: 1\nevent: message\ndata: {\"method\":\"notifications/progress\",\"params\":{}}\n\n\
                      : ping\n\ndata: {\"result\":{\"isError\":\ndata: false},\"id\":2}\n\n";
        for cut in 0..=stream.len() {
            let mut r = Rec::default();
            let (mut sse, mut w) = (SseData::default(), Walker::default());
            sse.feed(&stream.as_bytes()[..cut], &mut w, &mut r);
            sse.feed(&stream.as_bytes()[cut..], &mut w, &mut r);
            assert_eq!(
                r.scalars,
                [("result.isError".into(), "false".into())],
                "split at {cut}"
            );
        }
    }
}
