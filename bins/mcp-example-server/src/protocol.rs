//! JSON-RPC 2.0 messages, MCP protocol revisions, and the transport-independent dispatcher.
//!
//! Two eras share the dispatcher. In the session era a request runs in a [`Session`]
//! (`initialize` negotiates its version). In the stateless revision 2026-07-28 each request
//! carries its envelope in `params._meta` ([`check_envelope`]); results then carry
//! `resultType`, list results `cacheScope`/`ttlMs`, and every result names the server in
//! `_meta`, as the Python SDK sends them.

use std::sync::Arc;
use std::sync::atomic::AtomicU64;

use serde_json::{Value, json};

use crate::error::Error;
use crate::session::{Outbound, Session, Sessions};
use crate::tools::{self, Env, Progress};

/// Revisions reachable with the `initialize` handshake, newest first.
pub const HANDSHAKE_VERSIONS: &[&str] = &["2025-11-25", "2025-06-18", "2025-03-26", "2024-11-05"];
/// Stateless revisions (per-request envelope, no `initialize`).
pub const MODERN_VERSIONS: &[&str] = &["2026-07-28"];

pub const SERVER_NAME: &str = "mcp-example-server";
pub const SERVER_VERSION: &str = env!("CARGO_PKG_VERSION");

/// `params._meta` keys of the 2026-07-28 envelope.
pub const META_PROTOCOL_VERSION: &str = "io.modelcontextprotocol/protocolVersion";
pub const META_CLIENT_CAPABILITIES: &str = "io.modelcontextprotocol/clientCapabilities";
pub const META_SERVER_INFO: &str = "io.modelcontextprotocol/serverInfo";

/// One incoming JSON-RPC message.
#[derive(Debug, Clone, PartialEq)]
pub enum Message {
    Request(Request),
    Notification {
        method: String,
    },
    /// A response from the client (to a server request; this server sends none).
    Response,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Request {
    pub id: Value,
    pub method: String,
    /// `Value::Null` when absent.
    pub params: Value,
}

impl Message {
    /// Parses one JSON-RPC message; batches are refused (no MCP revision since 2025-06-18 has them).
    pub fn parse(bytes: &[u8]) -> Result<Self, Error> {
        let value: Value = serde_json::from_slice(bytes).map_err(|_| Error::Parse)?;
        let Value::Object(mut obj) = value else {
            return Err(Error::InvalidRequest(
                "Body must be a single JSON-RPC message object".into(),
            ));
        };
        if obj.get("jsonrpc").and_then(Value::as_str) != Some("2.0") {
            return Err(Error::InvalidRequest("jsonrpc must be \"2.0\"".into()));
        }
        let id = obj.remove("id");
        if let Some(id) = &id
            && !(id.is_string() || id.is_number())
        {
            return Err(Error::InvalidRequest(
                "id must be a string or a number".into(),
            ));
        }
        match (obj.remove("method"), id) {
            (Some(Value::String(method)), Some(id)) => {
                let params = obj.remove("params").unwrap_or(Value::Null);
                Ok(Self::Request(Request { id, method, params }))
            }
            (Some(Value::String(method)), None) => Ok(Self::Notification { method }),
            (Some(_), _) => Err(Error::InvalidRequest("method must be a string".into())),
            (None, Some(_)) if obj.contains_key("result") || obj.contains_key("error") => {
                Ok(Self::Response)
            }
            (None, _) => Err(Error::InvalidRequest(
                "not a JSON-RPC request, notification or response".into(),
            )),
        }
    }
}

impl Request {
    /// `params._meta.progressToken`, if the client asked for progress.
    pub fn progress_token(&self) -> Option<&Value> {
        self.params
            .get("_meta")?
            .get("progressToken")
            .filter(|t| t.is_string() || t.is_number())
    }

    /// Whether the request carries a stateless (2026-07-28) envelope: how stdio tells the eras apart.
    pub fn has_envelope(&self) -> bool {
        self.params
            .get("_meta")
            .is_some_and(|meta| meta.get(META_PROTOCOL_VERSION).is_some())
    }

    /// The param mirrored by the `Mcp-Name` header: `name` of a tool or prompt, `uri` of a resource.
    pub fn name_param(&self) -> Option<&Value> {
        let key = match self.method.as_str() {
            "tools/call" | "prompts/get" => "name",
            "resources/read" => "uri",
            _ => return None,
        };
        self.params.get(key).filter(|v| !v.is_null())
    }
}

/// A successful JSON-RPC response.
pub fn response(id: &Value, result: Value) -> Value {
    json!({ "jsonrpc": "2.0", "id": id, "result": result })
}

/// The protocol version an `initialize` settles on: the client's if we speak it, else our latest.
pub fn negotiate(requested: Option<&str>) -> &'static str {
    requested
        .and_then(|r| HANDSHAKE_VERSIONS.iter().find(|v| **v == r))
        .copied()
        .unwrap_or(HANDSHAKE_VERSIONS[0])
}

/// Whether a `MCP-Protocol-Version` value belongs to the stateless era: anything that is not a
/// handshake revision goes there, so that unknown versions get the stateless `-32022` answer.
pub fn is_stateless_version(version: &str) -> bool {
    !HANDSHAKE_VERSIONS.contains(&version)
}

/// Checks the per-request envelope of a stateless request: the SDK's validation ladder without
/// its header rung, which HTTP runs between the two steps (see `streamable::check_headers`).
pub fn check_envelope(request: &Request) -> Result<(), Error> {
    envelope_version(request).and_then(check_version)
}

/// Ladder rung 1: `params._meta` carries the protocol version and client capabilities.
pub fn envelope_version(request: &Request) -> Result<&Value, Error> {
    let Some(meta) = request.params.get("_meta").and_then(Value::as_object) else {
        return Err(Error::InvalidParams(format!(
            "params._meta must be an object carrying the required '{META_PROTOCOL_VERSION}' and \
             '{META_CLIENT_CAPABILITIES}' envelope keys"
        )));
    };
    match (
        meta.get(META_PROTOCOL_VERSION),
        meta.contains_key(META_CLIENT_CAPABILITIES),
    ) {
        (Some(version), true) => Ok(version),
        (version, capabilities) => {
            let missing: Vec<_> = [
                (META_PROTOCOL_VERSION, version.is_some()),
                (META_CLIENT_CAPABILITIES, capabilities),
            ]
            .into_iter()
            .filter_map(|(key, present)| (!present).then_some(key))
            .collect();
            Err(Error::InvalidParams(format!(
                "params._meta is missing the required envelope key(s): {}",
                missing.join(", ")
            )))
        }
    }
}

/// Ladder rung 3: the envelope names a stateless revision this server serves.
pub fn check_version(version: &Value) -> Result<(), Error> {
    match version {
        Value::String(v) if MODERN_VERSIONS.contains(&v.as_str()) => Ok(()),
        Value::String(v) => Err(Error::UnsupportedVersion {
            requested: v.clone(),
            supported: MODERN_VERSIONS,
        }),
        _ => Err(Error::InvalidParams(
            "the protocol-version envelope value must be a string".into(),
        )),
    }
}

/// Where a request runs.
#[derive(Debug, Clone)]
pub enum Scope {
    Session(Arc<Session>),
    /// Revision 2026-07-28: no session.
    Stateless,
}

/// The scope of a request on a transport bound to one session (stdio, legacy HTTP+SSE): a
/// request carrying a 2026-07-28 envelope is served statelessly, anything else in the session.
pub fn scope_for(request: &Request, session: &Arc<Session>) -> Result<Scope, Error> {
    if request.has_envelope() && request.method != "initialize" {
        check_envelope(request).map(|()| Scope::Stateless)
    } else {
        Ok(Scope::Session(session.clone()))
    }
}

/// The MCP server proper: tools and sessions, no transport.
#[derive(Debug)]
pub struct Server {
    replica: String,
    sessions: Sessions,
    /// `counter_increment` of stateless requests: one per process (there is no session to key on).
    stateless_counter: AtomicU64,
}

impl Server {
    pub fn new(replica: String) -> Self {
        Self {
            replica,
            sessions: Sessions::default(),
            stateless_counter: AtomicU64::new(0),
        }
    }

    pub fn replica(&self) -> &str {
        &self.replica
    }

    pub fn sessions(&self) -> &Sessions {
        &self.sessions
    }

    /// Answers one request. `out`, when given, receives notifications (progress) the request
    /// produces; the response itself is returned.
    pub async fn handle(&self, request: &Request, scope: &Scope, out: Option<Outbound>) -> Value {
        let result = self.dispatch(request, scope, out).await;
        match result {
            Ok(result) if matches!(scope, Scope::Stateless) => {
                response(&request.id, self.stamp(request, result))
            }
            Ok(result) => response(&request.id, result),
            Err(err) => err.to_response(Some(&request.id)),
        }
    }

    async fn dispatch(
        &self,
        request: &Request,
        scope: &Scope,
        out: Option<Outbound>,
    ) -> Result<Value, Error> {
        match (request.method.as_str(), scope) {
            ("initialize", Scope::Session(session)) => Ok(self.initialize(request, session)),
            ("ping", _) => Ok(json!({})),
            ("server/discover", _) => Ok(json!({
                "supportedVersions": MODERN_VERSIONS,
                "capabilities": capabilities(),
                "instructions": instructions(),
            })),
            ("tools/list", _) => Ok(json!({ "tools": tools::list() })),
            ("tools/call", _) => {
                let Some(name) = request.params.get("name").and_then(Value::as_str) else {
                    return Err(Error::InvalidParams(
                        "tools/call needs a string `name`".into(),
                    ));
                };
                let arguments = request.params.get("arguments").unwrap_or(&Value::Null);
                let counter = match scope {
                    Scope::Session(session) => session.counter(),
                    Scope::Stateless => &self.stateless_counter,
                };
                let progress = out
                    .zip(request.progress_token())
                    .map(|(out, token)| Progress {
                        token: token.clone(),
                        out,
                    });
                tools::call(
                    name,
                    arguments,
                    Env {
                        replica: &self.replica,
                        counter,
                        progress,
                    },
                )
                .await
            }
            (method, _) => Err(Error::MethodNotFound(method.to_owned())),
        }
    }

    fn initialize(&self, request: &Request, session: &Session) -> Value {
        let requested = request
            .params
            .get("protocolVersion")
            .and_then(Value::as_str);
        let version = negotiate(requested);
        session.set_protocol_version(version);
        tracing::debug!(session = session.id(), version, "initialized");
        json!({
            "protocolVersion": version,
            "capabilities": capabilities(),
            "serverInfo": server_info(),
            "instructions": instructions(),
        })
    }

    /// Adds the fields revision 2026-07-28 requires on results.
    fn stamp(&self, request: &Request, mut result: Value) -> Value {
        if let Value::Object(obj) = &mut result {
            obj.insert("resultType".into(), json!("complete"));
            if matches!(request.method.as_str(), "server/discover" | "tools/list") {
                obj.insert("cacheScope".into(), json!("public"));
                obj.insert("ttlMs".into(), json!(0));
            }
            obj.insert("_meta".into(), json!({ META_SERVER_INFO: server_info() }));
        }
        result
    }
}

fn capabilities() -> Value {
    json!({ "tools": { "listChanged": false } })
}

fn server_info() -> Value {
    json!({ "name": SERVER_NAME, "version": SERVER_VERSION })
}

fn instructions() -> &'static str {
    "Example server for the MCP gateway: whoami and counter_increment show which replica and \
     session served a call; slow streams progress; big returns large results."
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::code;
    use tokio::sync::mpsc;

    fn request(method: &str, params: Value) -> Request {
        Request {
            id: json!(1),
            method: method.into(),
            params,
        }
    }

    fn envelope() -> Value {
        json!({ META_PROTOCOL_VERSION: "2026-07-28", META_CLIENT_CAPABILITIES: {} })
    }

    #[test]
    fn parses_requests_notifications_and_responses() {
        let m = Message::parse(br#"{"jsonrpc":"2.0","id":"a","method":"ping"}"#).unwrap();
        assert_eq!(
            m,
            Message::Request(Request {
                id: json!("a"),
                method: "ping".into(),
                params: Value::Null
            })
        );
        let m =
            Message::parse(br#"{"jsonrpc":"2.0","method":"notifications/initialized"}"#).unwrap();
        assert_eq!(
            m,
            Message::Notification {
                method: "notifications/initialized".into()
            }
        );
        let m = Message::parse(br#"{"jsonrpc":"2.0","id":4,"result":{}}"#).unwrap();
        assert_eq!(m, Message::Response);
    }

    #[test]
    fn refuses_malformed_messages() {
        assert!(matches!(Message::parse(b"{nope"), Err(Error::Parse)));
        assert!(matches!(
            Message::parse(b"[]"),
            Err(Error::InvalidRequest(_))
        ));
        assert!(matches!(
            Message::parse(br#"{"id":1,"method":"ping"}"#),
            Err(Error::InvalidRequest(_))
        ));
        assert!(matches!(
            Message::parse(br#"{"jsonrpc":"2.0","id":{},"method":"x"}"#),
            Err(Error::InvalidRequest(_))
        ));
        assert!(matches!(
            Message::parse(br#"{"jsonrpc":"2.0","method":7}"#),
            Err(Error::InvalidRequest(_))
        ));
    }

    #[test]
    fn negotiation_echoes_known_versions_and_falls_back_to_the_latest() {
        assert_eq!(negotiate(Some("2025-03-26")), "2025-03-26");
        assert_eq!(negotiate(Some("2024-11-05")), "2024-11-05");
        assert_eq!(negotiate(Some("2099-01-01")), "2025-11-25");
        assert_eq!(negotiate(None), "2025-11-25");
    }

    #[test]
    fn the_envelope_ladder_matches_the_sdk() {
        let bad = check_envelope(&request("tools/list", Value::Null)).unwrap_err();
        assert_eq!(bad.code(), code::INVALID_PARAMS);
        let partial = json!({ "_meta": { META_PROTOCOL_VERSION: "2026-07-28" } });
        assert_eq!(
            check_envelope(&request("tools/list", partial))
                .unwrap_err()
                .code(),
            code::INVALID_PARAMS
        );
        let old = json!({ "_meta": { META_PROTOCOL_VERSION: "2025-11-25", META_CLIENT_CAPABILITIES: {} } });
        assert_eq!(
            check_envelope(&request("tools/list", old))
                .unwrap_err()
                .code(),
            code::UNSUPPORTED_PROTOCOL_VERSION
        );
        assert!(check_envelope(&request("tools/list", json!({ "_meta": envelope() }))).is_ok());
    }

    #[tokio::test]
    async fn initialize_negotiates_and_records_the_version() {
        let server = Server::new("r".into());
        let session = server.sessions().create(None);
        let init = request(
            "initialize",
            json!({ "protocolVersion": "2025-06-18", "capabilities": {} }),
        );
        let out = server
            .handle(&init, &Scope::Session(session.clone()), None)
            .await;
        assert_eq!(out["result"]["protocolVersion"], "2025-06-18");
        assert_eq!(out["result"]["serverInfo"]["name"], SERVER_NAME);
        assert_eq!(session.protocol_version().as_deref(), Some("2025-06-18"));
    }

    #[tokio::test]
    async fn counters_are_per_session() {
        let server = Server::new("r".into());
        let (a, b) = (
            Scope::Session(server.sessions().create(None)),
            Scope::Session(server.sessions().create(None)),
        );
        let call = request("tools/call", json!({ "name": "counter_increment" }));
        let text = |v: Value| {
            v["result"]["content"][0]["text"]
                .as_str()
                .unwrap_or_default()
                .to_owned()
        };
        assert_eq!(text(server.handle(&call, &a, None).await), "r:1");
        assert_eq!(text(server.handle(&call, &a, None).await), "r:2");
        assert_eq!(text(server.handle(&call, &b, None).await), "r:1");
        assert_eq!(
            text(server.handle(&call, &Scope::Stateless, None).await),
            "r:1"
        );
    }

    #[tokio::test]
    async fn unknown_methods_get_method_not_found() {
        let server = Server::new("r".into());
        let out = server
            .handle(&request("nope/nope", Value::Null), &Scope::Stateless, None)
            .await;
        assert_eq!(out["error"]["code"], code::METHOD_NOT_FOUND);
        assert_eq!(out["id"], 1);
        let out = server
            .handle(&request("initialize", Value::Null), &Scope::Stateless, None)
            .await;
        assert_eq!(out["error"]["code"], code::METHOD_NOT_FOUND);
    }

    #[tokio::test]
    async fn stateless_results_carry_the_2026_fields() {
        let server = Server::new("r".into());
        let out = server
            .handle(
                &request("server/discover", json!({ "_meta": envelope() })),
                &Scope::Stateless,
                None,
            )
            .await;
        let result = &out["result"];
        assert_eq!(result["supportedVersions"], json!(["2026-07-28"]));
        assert_eq!(result["resultType"], "complete");
        assert_eq!(result["cacheScope"], "public");
        assert_eq!(result["ttlMs"], 0);
        assert_eq!(result["_meta"][META_SERVER_INFO]["name"], SERVER_NAME);
        let call = request(
            "tools/call",
            json!({ "name": "echo", "arguments": { "text": "x" } }),
        );
        let out = server.handle(&call, &Scope::Stateless, None).await;
        assert_eq!(out["result"]["resultType"], "complete");
        assert!(out["result"].get("cacheScope").is_none());
    }

    #[tokio::test]
    async fn progress_goes_to_the_outbound_stream_only_when_asked_for() {
        let server = Server::new("r".into());
        let (tx, mut rx) = mpsc::channel(8);
        let plain = request(
            "tools/call",
            json!({ "name": "slow", "arguments": { "ms": 1, "steps": 2 } }),
        );
        server
            .handle(&plain, &Scope::Stateless, Some(tx.clone()))
            .await;
        assert!(rx.try_recv().is_err());
        let mut asked = plain.clone();
        asked.params["_meta"] = json!({ "progressToken": 7 });
        let out = server.handle(&asked, &Scope::Stateless, Some(tx)).await;
        assert_eq!(rx.recv().await.unwrap()["params"]["progressToken"], 7);
        assert_eq!(out["result"]["content"][0]["text"], "done");
    }
}
