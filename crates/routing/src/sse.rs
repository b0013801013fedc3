//! Server-sent events, as far as the gateway needs them: finding the legacy HTTP+SSE
//! `endpoint` event at the start of a stream and rewriting its URL to point back through the
//! gateway. Everything after that event passes through untouched and unparsed.

/// One complete event at the front of a buffer.
#[derive(Debug, PartialEq, Eq)]
pub struct RawEvent<'a> {
    /// The event's bytes including its terminating blank line.
    pub raw: &'a [u8],
    /// `event:` field (`message` when absent, per the SSE spec).
    pub event: Option<&'a str>,
    /// `data:` lines joined with `\n`.
    pub data: String,
    /// `id:` field.
    pub id: Option<&'a str>,
}

/// Splits the first complete event (ended by a blank line; `\n`, `\r\n` or `\r` line ends) off
/// `buf`. Returns `None` when `buf` holds no complete event yet.
pub fn next_event(buf: &[u8]) -> Option<RawEvent<'_>> {
    let mut lines: Vec<&[u8]> = Vec::new();
    let mut pos = 0;
    loop {
        let rest = &buf[pos..];
        let i = rest.iter().position(|&b| b == b'\n' || b == b'\r')?;
        let line = &rest[..i];
        let mut end = pos + i + 1;
        if rest[i] == b'\r' {
            // A lone `\r` at the very end might be the first half of `\r\n`: wait for more.
            match rest.get(i + 1) {
                Some(b'\n') => end += 1,
                Some(_) => {}
                None => return None,
            }
        }
        pos = end;
        if line.is_empty() {
            if lines.is_empty() {
                continue; // stray blank lines between events
            }
            return Some(build(&buf[..pos], &lines));
        }
        lines.push(line);
    }
}

fn build<'a>(raw: &'a [u8], lines: &[&'a [u8]]) -> RawEvent<'a> {
    let mut event = None;
    let mut id = None;
    let mut data: Vec<&str> = Vec::new();
    for line in lines {
        let Ok(line) = std::str::from_utf8(line) else {
            continue;
        };
        if line.starts_with(':') {
            continue; // comment
        }
        let (field, value) = match line.split_once(':') {
            Some((f, v)) => (f, v.strip_prefix(' ').unwrap_or(v)),
            None => (line, ""),
        };
        match field {
            "event" => event = Some(value),
            "data" => data.push(value),
            "id" => id = Some(value),
            _ => {}
        }
    }
    RawEvent {
        raw,
        event,
        data: data.join("\n"),
        id,
    }
}

/// The parts of the URL announced in a legacy `endpoint` event.
#[derive(Debug, PartialEq, Eq)]
pub struct Endpoint<'a> {
    /// Path and query to POST to on the replica (an absolute URL is reduced to these).
    pub path_and_query: &'a str,
    /// The query string, without `?` (may be empty).
    pub query: &'a str,
}

/// Parses the data of an `endpoint` event: a relative (`/messages/?session_id=x`) or absolute
/// (`http://host:port/messages?sessionId=x`) URL.
pub fn parse_endpoint(data: &str) -> Option<Endpoint<'_>> {
    let data = data.trim();
    let path_and_query = if let Some(rest) = data
        .strip_prefix("http://")
        .or_else(|| data.strip_prefix("https://"))
    {
        &rest[rest.find('/')?..]
    } else if data.starts_with('/') {
        data
    } else {
        return None;
    };
    let query = path_and_query
        .split_once('?')
        .map_or("", |(_, q)| q.split('#').next().unwrap_or(""));
    Some(Endpoint {
        path_and_query,
        query,
    })
}

/// Finds the session id in a legacy endpoint's query: the value of the first key that names a
/// session (`sessionId`, `session_id`, `session-id`, any case), else of the only key.
/// Returns (key, value).
pub fn session_param(query: &str) -> Option<(String, String)> {
    let pairs: Vec<(String, String)> = form_urlencoded::parse(query.as_bytes())
        .map(|(k, v)| (k.into_owned(), v.into_owned()))
        .collect();
    let names_session = |k: &str| {
        let k: String = k
            .chars()
            .filter(|c| c.is_ascii_alphanumeric())
            .collect::<String>()
            .to_ascii_lowercase();
        k == "sessionid" || k == "session"
    };
    if let Some(p) = pairs.iter().find(|(k, _)| names_session(k)) {
        return Some(p.clone());
    }
    match pairs.as_slice() {
        [only] => Some(only.clone()),
        _ => None,
    }
}

/// The `endpoint` event, re-emitted with a new URL (and the original `id:` if any).
pub fn endpoint_event(url: &str, id: Option<&str>) -> Vec<u8> {
    let mut out = Vec::with_capacity(url.len() + 32);
    if let Some(id) = id {
        out.extend_from_slice(b"id: ");
        out.extend_from_slice(id.as_bytes());
        out.push(b'\n');
    }
    out.extend_from_slice(b"event: endpoint\ndata: ");
    out.extend_from_slice(url.as_bytes());
    out.extend_from_slice(b"\n\n");
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splits_events_with_any_line_ending() {
        for sep in ["\n", "\r\n", "\r"] {
            let text = format!(
                ": ping{sep}{sep}event: endpoint{sep}data: /messages/?session_id=abc{sep}{sep}event: message{sep}"
            );
            let e = next_event(text.as_bytes()).unwrap();
            assert_eq!(e.event, None, "a comment-only block is an (empty) event");
            let rest = &text.as_bytes()[e.raw.len()..];
            let e = next_event(rest).unwrap();
            assert_eq!(e.event, Some("endpoint"));
            assert_eq!(e.data, "/messages/?session_id=abc");
            let rest = &rest[e.raw.len()..];
            assert_eq!(next_event(rest), None, "incomplete event");
        }
    }

    #[test]
    fn waits_for_the_rest_of_a_split_crlf() {
        assert_eq!(next_event(b"event: endpoint\r\ndata: /m\r\n\r"), None);
        assert!(next_event(b"event: endpoint\r\ndata: /m\r\n\r\n").is_some());
    }

    #[test]
    fn joins_multi_line_data_and_keeps_id() {
        let e = next_event(b"id: 7\ndata:a\ndata: b\n\n").unwrap();
        assert_eq!(e.data, "a\nb");
        assert_eq!(e.id, Some("7"));
    }

    #[test]
    fn parses_relative_and_absolute_endpoints() {
        let e = parse_endpoint("/messages/?session_id=abc").unwrap();
        assert_eq!(e.path_and_query, "/messages/?session_id=abc");
        assert_eq!(e.query, "session_id=abc");
        let e = parse_endpoint("http://127.0.0.1:9/message?sessionId=x&y=1").unwrap();
        assert_eq!(e.path_and_query, "/message?sessionId=x&y=1");
        assert_eq!(e.query, "sessionId=x&y=1");
        assert!(parse_endpoint("messages").is_none());
        assert!(parse_endpoint("http://host-without-path").is_none());
    }

    #[test]
    fn finds_the_session_key_whatever_its_name() {
        let p = |q| session_param(q).map(|(k, v)| format!("{k}={v}"));
        assert_eq!(p("session_id=a").as_deref(), Some("session_id=a"));
        assert_eq!(p("x=1&sessionId=b").as_deref(), Some("sessionId=b"));
        assert_eq!(p("SESSION-ID=c&y=2").as_deref(), Some("SESSION-ID=c"));
        assert_eq!(p("token=d").as_deref(), Some("token=d"));
        assert_eq!(p("a=1&b=2"), None);
        assert_eq!(p(""), None);
    }

    #[test]
    fn rewrites_the_endpoint_event() {
        let out = endpoint_event("/adapters/x/messages?session_id=a", Some("1"));
        assert_eq!(
            out,
            b"id: 1\nevent: endpoint\ndata: /adapters/x/messages?session_id=a\n\n"
        );
    }
}
