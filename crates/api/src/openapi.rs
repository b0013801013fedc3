//! The OpenAPI 3.1 document, generated from the handlers' `#[utoipa::path]` attributes and the
//! schemas of `mcp-gateway-core` (its `openapi` feature). `cargo xtask openapi` writes
//! [`json`] to `openapi/mcp-gateway.openapi.json`.

use std::sync::OnceLock;

use mcp_gateway_core::{
    Adapter, AdapterSpec, AdapterStatus, LogLine, ReplicaState, ReplicaStatus, Transport,
};
use serde_json::{Map, Value};
use utoipa::OpenApi;

use crate::TAG;
use crate::error::{FieldError, Problem};

/// Where the checked-in document lives, relative to the workspace root.
pub const CHECKED_IN_PATH: &str = "openapi/mcp-gateway.openapi.json";

/// The parts of the document that no handler names: title, tags, shared schemas.
#[derive(OpenApi)]
#[openapi(
    info(
        title = "MCP Gateway management API",
        description = "Deploy, update, inspect and delete the MCP servers (adapters) behind the gateway. \
Every error is `application/problem+json` (RFC 9457) with a `detail` that says what to change.",
        license(name = "Apache-2.0", identifier = "Apache-2.0"),
    ),
    tags((name = TAG, description = "Adapters: MCP servers run or fronted by the gateway")),
    components(schemas(
        Adapter, AdapterSpec, AdapterStatus, ReplicaStatus, ReplicaState, Transport, LogLine,
        Problem, FieldError,
    ))
)]
pub struct ApiDoc;

/// The document, built from the same routes that [`router`](crate::router) serves.
pub fn document() -> utoipa::openapi::OpenApi {
    crate::routes().split_for_parts().1
}

/// The document as pretty JSON with keys sorted (stable across builds), ending in a newline.
pub fn json() -> &'static str {
    static JSON: OnceLock<String> = OnceLock::new();
    JSON.get_or_init(|| {
        let value = serde_json::to_value(document()).unwrap_or_default();
        let mut out = serde_json::to_string_pretty(&sorted(value)).unwrap_or_default();
        out.push('\n');
        out
    })
}

fn sorted(value: Value) -> Value {
    match value {
        Value::Object(map) => {
            let mut entries: Vec<(String, Value)> = map.into_iter().collect();
            entries.sort_by(|a, b| a.0.cmp(&b.0));
            Value::Object(
                entries
                    .into_iter()
                    .map(|(k, v)| (k, sorted(v)))
                    .collect::<Map<_, _>>(),
            )
        }
        Value::Array(items) => Value::Array(items.into_iter().map(sorted).collect()),
        other => other,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `cargo test` fails when the checked-in document is stale, as `cargo xtask openapi
    /// --check` does in CI.
    #[test]
    fn checked_in_document_is_up_to_date() {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../..")
            .join(CHECKED_IN_PATH);
        let checked_in = std::fs::read_to_string(&path).unwrap_or_default();
        assert!(
            checked_in == json(),
            "{} is stale or missing: run `cargo xtask openapi`",
            path.display()
        );
    }

    #[test]
    fn document_describes_every_endpoint_and_the_problem_schema() {
        let doc: Value = serde_json::from_str(json()).unwrap();
        for (path, methods) in [
            ("/adapters", &["get", "post"][..]),
            ("/adapters/{name}", &["get", "put", "delete"]),
            ("/adapters/{name}/status", &["get"]),
            ("/adapters/{name}/logs", &["get"]),
            ("/openapi.json", &["get"]),
        ] {
            for m in methods {
                assert!(doc["paths"][path][m].is_object(), "{m} {path} missing");
            }
        }
        for schema in [
            "Adapter",
            "AdapterSpec",
            "AdapterStatus",
            "LogLine",
            "Problem",
            "FieldError",
        ] {
            assert!(
                doc["components"]["schemas"][schema].is_object(),
                "{schema} missing"
            );
        }
        let problem = &doc["paths"]["/adapters"]["post"]["responses"]["409"]["content"];
        assert!(problem["application/problem+json"].is_object(), "{problem}");
        let logs = &doc["paths"]["/adapters/{name}/logs"]["get"]["parameters"];
        let names: Vec<&str> = logs
            .as_array()
            .unwrap()
            .iter()
            .filter_map(|p| p["name"].as_str())
            .collect();
        assert_eq!(
            names,
            ["name", "replica", "instance", "tail", "since", "follow"]
        );
    }
}
