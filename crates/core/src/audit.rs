//! The audit port: one record per management change and per MCP operation on a tool, resource
//! or prompt, written wherever the binary decides (a JSON-lines file, stdout).
//!
//! Records hold who, what, where and how it ended, never secrets: no tokens, no environment
//! values, no tool arguments (only their SHA-256, unless the operator opts in).

use serde::Serialize;

/// One audit record. Field names are the JSON keys of the audit line.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct AuditEvent {
    /// RFC 3339 UTC time the operation ended.
    pub time: String,
    /// `mcp` (an MCP operation through the data plane) or `management` (an API change).
    pub kind: &'static str,
    /// The caller; `None` when it could not be authenticated.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub principal: Option<AuditPrincipal>,
    /// The adapter concerned, when known.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub adapter: Option<String>,
    /// The replica that served the operation, when it reached one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub replica: Option<String>,
    /// The MCP method (`tools/call`, `resources/read`, `prompts/get`) or the management action
    /// (`create`, `update`, `delete`).
    pub method: String,
    /// The tool or prompt name, or the resource URI.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub target: Option<String>,
    /// The JSON-RPC request id (MCP operations).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub request_id: Option<String>,
    /// `allowed`, or `refused` when the gateway turned the request away itself.
    pub decision: &'static str,
    /// Why it was refused (the error the caller received).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// `ok`, or the error type: a JSON-RPC error code, `tool_error` for a tool result with
    /// `isError: true`, an HTTP status for a failed management change.
    pub outcome: String,
    /// HTTP status answered to the caller.
    pub status: u16,
    /// Milliseconds from receiving the request to the end of its response.
    pub latency_ms: f64,
    /// Hex SHA-256 of the tool call's `arguments` (or prompt's) exactly as the client sent them.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub arguments_sha256: Option<String>,
    /// The arguments themselves, only when the operator configured it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub arguments: Option<String>,
}

/// The authenticated caller of an audited operation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct AuditPrincipal {
    pub subject: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub issuer: Option<String>,
}

impl From<&crate::Principal> for AuditPrincipal {
    fn from(p: &crate::Principal) -> Self {
        Self {
            subject: p.subject.clone(),
            issuer: p.issuer.clone(),
        }
    }
}

/// Where audit records go. `record` must not block the caller on I/O: implementations queue
/// the record and write it elsewhere, and write every queued record before the process exits.
pub trait AuditSink: Send + Sync {
    fn record(&self, event: AuditEvent);
}
