//! Property tests (proptest) of every parser of the data plane that sees outside input: the
//! JSON-RPC scanner, the SSE event splitter, the `endpoint` URL parser and the session-id
//! finder. Arbitrary input never panics, and never yields a routing decision the input did not
//! ask for: what the scanner reports is what a JSON parser reads, whatever the chunking; an
//! event is the same however the stream is split; an endpoint never leads off the replica.
//!
//! `PROPTEST_CASES` sets the number of cases (default 256 per property; CI runs more).

use proptest::prelude::*;
use serde_json::{Map, Value, json};

use mcp_gateway_routing::jsonrpc::{self, Scan};
use mcp_gateway_routing::sse;

// === JSON-RPC scanner ===

/// Any JSON value, a few levels deep, with strings that need escaping.
fn any_json() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(Value::from),
        any::<f64>()
            .prop_filter("finite", |f| f.is_finite())
            .prop_map(Value::from),
        ".{0,12}".prop_map(Value::String),
    ];
    leaf.prop_recursive(3, 24, 4, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
            prop::collection::btree_map("[a-z_\"\\\\]{0,6}", inner, 0..4)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

fn any_id() -> impl Strategy<Value = Value> {
    prop_oneof![
        any::<i64>().prop_map(Value::from),
        ".{0,10}".prop_map(Value::String),
        Just(Value::Null),
    ]
}

fn any_method() -> impl Strategy<Value = String> {
    prop_oneof![
        Just("initialize".to_owned()),
        Just("tools/call".to_owned()),
        Just("resources/read".to_owned()),
        Just("prompts/get".to_owned()),
        Just("tools/list".to_owned()),
        ".{0,16}",
    ]
}

/// A JSON-RPC message with no duplicate keys, its members in any order, and the text of it with
/// arbitrary whitespace between tokens.
fn message() -> impl Strategy<Value = (Value, String)> {
    (
        prop::option::of(any_method()),
        prop::option::of(any_id()),
        prop::option::of(".{0,12}"),
        prop::option::of(".{0,12}"),
        prop::collection::btree_map("x[a-z]{0,4}", any_json(), 0..3),
        prop::collection::btree_map("y[a-z]{0,4}", any_json(), 0..3),
        any::<u64>(),
        prop::sample::select(vec!["", " ", "\n", "\r\n\t "]),
    )
        .prop_map(|(method, id, name, uri, extra, params_extra, order, ws)| {
            let mut params: Vec<(String, Value)> = params_extra.into_iter().collect();
            if let Some(n) = name {
                params.push(("name".into(), Value::String(n)));
            }
            if let Some(u) = uri {
                params.push(("uri".into(), Value::String(u)));
            }
            params.push(("arguments".into(), json!({"text": "x".repeat(40)})));
            let mut top: Vec<(String, Value)> = extra.into_iter().collect();
            top.push(("jsonrpc".into(), json!("2.0")));
            if let Some(m) = method {
                top.push(("method".into(), Value::String(m)));
            }
            if let Some(id) = id {
                top.push(("id".into(), id));
            }
            top.push(("params".into(), Value::Object(Map::new())));
            rotate(&mut top, order);
            rotate(&mut params, order / 7);
            let text = render(&top, &params, ws);
            let params_value: Map<String, Value> = params.into_iter().collect();
            let mut value: Map<String, Value> = top.into_iter().collect();
            value.insert("params".into(), Value::Object(params_value));
            (Value::Object(value), text)
        })
}

fn rotate<T>(v: &mut [T], by: u64) {
    if !v.is_empty() {
        let n = (by % v.len() as u64) as usize;
        v.rotate_left(n);
    }
}

fn render(top: &[(String, Value)], params: &[(String, Value)], ws: &str) -> String {
    let member = |k: &str, v: String| format!("{ws}{}{ws}:{ws}{v}", Value::from(k));
    let params_text = format!(
        "{{{}{ws}}}",
        params
            .iter()
            .map(|(k, v)| member(k, v.to_string()))
            .collect::<Vec<_>>()
            .join(",")
    );
    format!(
        "{ws}{{{}{ws}}}{ws}",
        top.iter()
            .map(|(k, v)| if k == "params" {
                member(k, params_text.clone())
            } else {
                member(k, v.to_string())
            })
            .collect::<Vec<_>>()
            .join(",")
    )
}

/// What routing should learn from `msg`, read by a real JSON parser.
fn expected(msg: &Value) -> (Option<String>, Option<Value>, Option<String>) {
    let method = msg["method"].as_str().map(str::to_owned);
    let id = msg.get("id").cloned();
    let params = &msg["params"];
    let key = match &method {
        Some(m) if m.starts_with("resources/") => "uri",
        _ => "name",
    };
    let name = params[key].as_str().map(str::to_owned);
    (method, id, name)
}

proptest! {
    #[test]
    fn the_scanner_never_panics_on_arbitrary_bytes(bytes in prop::collection::vec(any::<u8>(), 0..512), complete in any::<bool>()) {
        let _ = jsonrpc::scan(&bytes, complete);
    }

    #[test]
    fn the_scanner_never_panics_on_json_like_text(text in "[\\[\\]{}\":,0-9a-z\\\\ .eE+-]{0,200}", complete in any::<bool>()) {
        let _ = jsonrpc::scan(text.as_bytes(), complete);
    }

    /// On a whole message, the scanner reads what a JSON parser reads (for the fields it
    /// reports at all), and on every prefix it either asks for more or reports the same.
    #[test]
    fn the_scanner_agrees_with_a_json_parser_on_every_prefix((msg, text) in message()) {
        let (method, id, name) = expected(&msg);
        let whole = jsonrpc::scan(text.as_bytes(), true);
        let Scan::Done(env) = whole else {
            return Err(TestCaseError::fail(format!("a valid message was not scanned: {whole:?}: {text}")));
        };
        prop_assert_eq!(&env.method, &method, "{}", text);
        if env.id.is_some() {
            prop_assert_eq!(&env.id, &id, "{}", text);
        }
        if let Some(n) = &env.name {
            prop_assert_eq!(Some(&**n), name.as_deref(), "{}", text);
        }
        prop_assert!(!env.batch);
        // Whatever the chunking: a prefix is never decided differently.
        for cut in 0..text.len() {
            if !text.is_char_boundary(cut) { continue; }
            match jsonrpc::scan(&text.as_bytes()[..cut], false) {
                Scan::NeedMore => {}
                Scan::Done(early) => {
                    prop_assert_eq!(&early.method, &env.method, "cut {} of {}", cut, text);
                    prop_assert_eq!(&early.id, &env.id, "cut {} of {}", cut, text);
                    prop_assert_eq!(&early.name, &env.name, "cut {} of {}", cut, text);
                }
                Scan::Invalid(why) => {
                    return Err(TestCaseError::fail(format!("prefix {cut} refused ({why}): {text}")));
                }
            }
        }
    }

    /// Bytes after a complete message do not change what the scanner reports.
    #[test]
    fn trailing_bytes_never_change_the_decision((_msg, text) in message(), tail in prop::collection::vec(any::<u8>(), 0..64)) {
        let Scan::Done(env) = jsonrpc::scan(text.as_bytes(), true) else { return Ok(()) };
        let mut longer = text.into_bytes();
        longer.extend_from_slice(&tail);
        if let Scan::Done(again) = jsonrpc::scan(&longer, false) {
            prop_assert_eq!(again, env);
        }
    }
}

// === SSE ===

fn sse_stream() -> impl Strategy<Value = Vec<u8>> {
    let line = prop_oneof![
        "(event|data|id|retry|:)?: ?[ -~]{0,20}",
        Just("event: endpoint".to_owned()),
        Just("data: /messages?sessionId=abc".to_owned()),
        Just(String::new()),
    ];
    let ending = prop::sample::select(vec!["\n", "\r\n", "\r"]);
    prop::collection::vec((line, ending), 0..16).prop_map(|lines| {
        lines
            .into_iter()
            .flat_map(|(l, e)| format!("{l}{e}").into_bytes())
            .collect()
    })
}

proptest! {
    #[test]
    fn the_event_splitter_never_panics(bytes in prop::collection::vec(any::<u8>(), 0..512)) {
        if let Some(ev) = sse::next_event(&bytes) {
            prop_assert!(bytes.starts_with(ev.raw));
            prop_assert!(!ev.raw.is_empty());
        }
    }

    /// An event is the same however the stream is split: a prefix holds no event, or the same.
    #[test]
    fn events_do_not_depend_on_chunk_boundaries(stream in sse_stream()) {
        let whole = sse::next_event(&stream);
        for cut in 0..=stream.len() {
            if let Some(early) = sse::next_event(&stream[..cut]) {
                let whole = whole.as_ref();
                prop_assert_eq!(Some(&early), whole, "cut {}", cut);
            }
        }
    }

    /// Whatever the replica announces, the POSTs of the session go to the replica itself:
    /// the upstream URL is the replica's base URL followed by the announced path.
    #[test]
    fn an_endpoint_never_leads_off_the_replica(data in prop_oneof![
        "[ -~]{0,60}",
        "(http|https)://[a-z@:.]{0,12}[/?#]{0,2}[ -~]{0,30}",
        "//?[a-z@:.]{0,12}[/?#]{0,2}[ -~]{0,30}",
    ]) {
        if let Some(ep) = sse::parse_endpoint(&data) {
            prop_assert!(ep.path_and_query.starts_with('/'), "{}", data);
            prop_assert!(data.trim().ends_with(ep.path_and_query));
            prop_assert!(ep.path_and_query.contains(ep.query));
            if let Ok(uri) = format!("http://127.0.0.1:9000{}", ep.path_and_query).parse::<http::Uri>() {
                prop_assert_eq!(uri.authority().map(|a| a.as_str()), Some("127.0.0.1:9000"), "{}", data);
            }
            let _ = sse::session_param(ep.query);
        }
    }

    /// The session parameter found is one the query holds.
    #[test]
    fn the_session_parameter_is_one_of_the_query(query in "[a-zA-Z_=&%0-9-]{0,40}") {
        if let Some((k, v)) = sse::session_param(&query) {
            let pairs: Vec<(String, String)> = form_urlencoded::parse(query.as_bytes())
                .map(|(k, v)| (k.into_owned(), v.into_owned()))
                .collect();
            prop_assert!(pairs.contains(&(k, v)));
        }
    }
}

/// H1 of the review, at the scanner: with a duplicate key, the scanner keeps the first value,
/// while `serde_json::Value` (as JavaScript's `JSON.parse` and Python's `json`) keeps the last.
/// What the gateway checks (`Mcp-Name`) can then differ from what such a replica executes.
#[test]
fn duplicate_keys_are_read_first_wins_by_the_scanner() {
    let body = br#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"safe","name":"rm_rf"}}"#;
    let Scan::Done(env) = jsonrpc::scan(body, true) else {
        panic!("scanned")
    };
    let last_wins: Value = serde_json::from_slice(body).unwrap();
    assert_eq!(env.name.as_deref(), Some("safe"));
    assert_eq!(last_wins["params"]["name"], "rm_rf");
}
