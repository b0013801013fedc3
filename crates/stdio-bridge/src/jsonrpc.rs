//! The little of JSON-RPC the bridge must understand: what kind a message is, its `id`, and
//! the progress token that ties a notification to a request.

use serde_json::Value;

use crate::error::BridgeError;

/// A message from the client.
#[derive(Debug)]
pub(crate) enum ClientMessage {
    Request {
        id: Value,
        method: String,
        progress_token: Option<String>,
    },
    Notification,
    Response,
}

/// A message from the process.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum ChildMessage {
    /// The answer to the client request whose [`id_key`] this is.
    Response { id_key: String },
    /// A notification or a server-to-client request; `progress_token` (as [`id_key`]) when it
    /// is a `notifications/progress`.
    Other { progress_token: Option<String> },
}

/// A key that tells `1` from `"1"`, as JSON-RPC ids do.
pub(crate) fn id_key(id: &Value) -> String {
    id.to_string()
}

/// Parses one message of a POST body. Batches (removed in MCP 2025-06-18) are refused.
pub(crate) fn parse_client(body: &[u8]) -> Result<(Value, ClientMessage), BridgeError> {
    let value: Value =
        serde_json::from_slice(body).map_err(|err| BridgeError::Parse(err.to_string()))?;
    let kind = classify_client(&value)?;
    Ok((value, kind))
}

fn classify_client(value: &Value) -> Result<ClientMessage, BridgeError> {
    let obj = match value {
        Value::Object(obj) => obj,
        Value::Array(_) => {
            return Err(BridgeError::InvalidMessage(
                "JSON-RPC batches are not supported (removed in MCP 2025-06-18)",
            ));
        }
        _ => return Err(BridgeError::InvalidMessage("expected a JSON object")),
    };
    if obj.get("jsonrpc").and_then(Value::as_str) != Some("2.0") {
        return Err(BridgeError::InvalidMessage("jsonrpc must be \"2.0\""));
    }
    match (obj.get("method"), obj.get("id")) {
        (Some(Value::String(_)), None) => Ok(ClientMessage::Notification),
        (Some(Value::String(method)), Some(id @ (Value::String(_) | Value::Number(_)))) => {
            let progress_token = value
                .pointer("/params/_meta/progressToken")
                .filter(|t| t.is_string() || t.is_number())
                .map(id_key);
            Ok(ClientMessage::Request {
                id: id.clone(),
                method: method.clone(),
                progress_token,
            })
        }
        (Some(Value::String(_)), Some(_)) => Err(BridgeError::InvalidMessage(
            "a request id must be a string or a number",
        )),
        (Some(_), _) => Err(BridgeError::InvalidMessage("method must be a string")),
        (None, Some(_)) if obj.contains_key("result") || obj.contains_key("error") => {
            Ok(ClientMessage::Response)
        }
        (None, _) => Err(BridgeError::InvalidMessage(
            "neither a request, a notification nor a response",
        )),
    }
}

/// Classifies a JSON value the process wrote; `None` when it is no JSON-RPC message at all.
pub(crate) fn classify_child(value: &Value) -> Option<ChildMessage> {
    let obj = value.as_object()?;
    if obj.get("method").is_some_and(Value::is_string) {
        let progress_token = (obj.get("method").and_then(Value::as_str)
            == Some("notifications/progress"))
        .then(|| value.pointer("/params/progressToken").map(id_key))
        .flatten();
        return Some(ChildMessage::Other { progress_token });
    }
    let id = obj.get("id")?;
    (obj.contains_key("result") || obj.contains_key("error"))
        .then(|| ChildMessage::Response { id_key: id_key(id) })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn client_messages_are_told_apart() {
        let (_, m) = parse_client(
            br#"{"jsonrpc":"2.0","id":"a","method":"tools/call","params":{"_meta":{"progressToken":5}}}"#,
        )
        .unwrap();
        match m {
            ClientMessage::Request {
                id,
                method,
                progress_token,
            } => {
                assert_eq!(id, json!("a"));
                assert_eq!(method, "tools/call");
                assert_eq!(progress_token.as_deref(), Some("5"));
            }
            other => panic!("{other:?}"),
        }
        assert!(matches!(
            parse_client(br#"{"jsonrpc":"2.0","method":"notifications/initialized"}"#)
                .unwrap()
                .1,
            ClientMessage::Notification
        ));
        assert!(matches!(
            parse_client(br#"{"jsonrpc":"2.0","id":3,"result":{}}"#)
                .unwrap()
                .1,
            ClientMessage::Response
        ));
    }

    #[test]
    fn bad_input_is_an_error_not_a_panic() {
        for body in [
            &b"not json"[..],
            b"[]",
            b"3",
            br#"{"jsonrpc":"1.0","method":"x"}"#,
            br#"{"jsonrpc":"2.0","id":null,"method":"x"}"#,
            br#"{"jsonrpc":"2.0","method":7}"#,
            br#"{"jsonrpc":"2.0","id":1}"#,
        ] {
            assert!(
                parse_client(body).is_err(),
                "{}",
                String::from_utf8_lossy(body)
            );
        }
    }

    #[test]
    fn child_messages_are_told_apart() {
        assert_eq!(
            classify_child(&json!({"jsonrpc":"2.0","id":1,"result":{}})),
            Some(ChildMessage::Response { id_key: "1".into() })
        );
        assert_eq!(
            classify_child(&json!({"jsonrpc":"2.0","id":"1","error":{}})),
            Some(ChildMessage::Response {
                id_key: "\"1\"".into()
            })
        );
        assert_eq!(
            classify_child(
                &json!({"jsonrpc":"2.0","method":"notifications/progress","params":{"progressToken":"t"}})
            ),
            Some(ChildMessage::Other {
                progress_token: Some("\"t\"".into())
            })
        );
        assert_eq!(
            classify_child(&json!({"jsonrpc":"2.0","id":9,"method":"sampling/createMessage"})),
            Some(ChildMessage::Other {
                progress_token: None
            })
        );
        assert_eq!(classify_child(&json!("hello")), None);
        assert_eq!(classify_child(&json!({"id": 1})), None);
    }
}
