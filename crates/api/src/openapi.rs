//! The OpenAPI 3.1 document, generated from the handlers' `#[utoipa::path]` attributes and the
//! schemas of `mcp-gateway-core` (its `openapi` feature). `cargo xtask openapi` writes
//! [`json`] to `openapi/mcp-gateway.openapi.json`.

use std::sync::OnceLock;

use mcp_gateway_core::{
    Adapter, AdapterSpec, AdapterStatus, LogLine, ReplicaState, ReplicaStatus, SecretRef, Transport,
};
use serde_json::{Map, Value};
use utoipa::openapi::path::ParameterIn;
use utoipa::openapi::schema::{ArrayItems, Object, ObjectBuilder, Schema, Type};
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityRequirement, SecurityScheme};
use utoipa::openapi::{ContentBuilder, OpenApi as Document, Ref, RefOr, ResponseBuilder};
use utoipa::{Modify, OpenApi};

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
Every error is `application/problem+json` (RFC 9457) with a `detail` that says what to change. \
Requests carry `Authorization: Bearer` with a JWT of a configured issuer or an API key; a missing or \
invalid token gets 401 with `WWW-Authenticate`, a known caller without the right gets 403.",
        license(name = "Apache-2.0", identifier = "Apache-2.0"),
    ),
    tags((name = TAG, description = "Adapters: MCP servers run or fronted by the gateway")),
    components(schemas(
        Adapter, AdapterSpec, AdapterStatus, ReplicaStatus, ReplicaState, Transport, LogLine,
        Problem, FieldError, SecretRef,
    ))
)]
pub struct ApiDoc;

/// The name of the bearer-token security scheme.
const BEARER: &str = "bearer";

/// Environment variable names the API accepts.
const ENV_NAME_PATTERN: &str = "^[A-Za-z_][A-Za-z0-9_]*$";
/// `http://host[:port]` with no path.
const UPSTREAM_PATTERN: &str = r"^http://([A-Za-z0-9._~%-]+|\[[0-9A-Fa-f:.]+\])(:([1-9][0-9]{0,3}|[1-5][0-9]{4}|6[0-4][0-9]{3}|65[0-4][0-9]{2}|655[0-2][0-9]|6553[0-5]))?/?$";
/// No NUL character (it cannot reach a process's environment or arguments).
const NO_NUL_PATTERN: &str = "^[^\\u0000]*$";
/// At least one character that is not white space.
const NOT_BLANK_PATTERN: &str = "\\S";
/// Not blank, no NUL.
const COMMAND_PATTERN: &str = "^[^\\u0000]*[^\\s\\u0000][^\\u0000]*$";
/// A DNS-1123 label, as in the `name` of `AdapterSpec`.
const NAME_PATTERN: &str = "^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$";

/// What the derives cannot say: the `Adapter` schema as one object (the spec's properties plus
/// the server-set ones; an `allOf` with the spec's `additionalProperties: false` would refuse
/// them), patterns for environment variable names and upstream URLs, and the pattern of the
/// `{name}` path parameter.
struct Refinements;

impl Modify for Refinements {
    fn modify(&self, doc: &mut Document) {
        if let Some(components) = doc.components.as_mut()
            && let Some(RefOr::T(Schema::Object(spec))) = components.schemas.get_mut("AdapterSpec")
        {
            if let Some(RefOr::T(Schema::Object(env))) =
                spec.properties.get_mut("environmentVariables")
            {
                env.property_names = Some(Box::new(string_matching(ENV_NAME_PATTERN).into()));
            }
            if let Some(RefOr::T(Schema::Array(upstreams))) = spec.properties.get_mut("upstreams") {
                upstreams.items = ArrayItems::RefOrSchema(Box::new(
                    Schema::Object(string_matching(UPSTREAM_PATTERN)).into(),
                ));
            }
            if let Some(RefOr::T(Schema::Object(env))) =
                spec.properties.get_mut("environmentVariables")
            {
                env.additional_properties = Some(Box::new(
                    Schema::Object(string_matching(NO_NUL_PATTERN)).into(),
                ));
            }
            for (field, pattern) in [
                ("args", NO_NUL_PATTERN),
                ("requiredRoles", NOT_BLANK_PATTERN),
            ] {
                if let Some(RefOr::T(Schema::Array(array))) = spec.properties.get_mut(field) {
                    array.items = ArrayItems::RefOrSchema(Box::new(
                        Schema::Object(string_matching(pattern)).into(),
                    ));
                }
            }
            if let Some(RefOr::T(Schema::Object(command))) = spec.properties.get_mut("command") {
                command.pattern = Some(COMMAND_PATTERN.to_owned());
            }
            let adapter = adapter_schema(spec.clone());
            components
                .schemas
                .insert("Adapter".to_owned(), Schema::Object(adapter).into());
        }
        let components = doc.components.get_or_insert_with(Default::default);
        components.security_schemes.insert(
            BEARER.to_owned(),
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .description(Some(
                        "A JWT of a configured issuer (OIDC), or a static API key of the gateway",
                    ))
                    .build(),
            ),
        );
        doc.security = Some(vec![SecurityRequirement::new(BEARER, Vec::<String>::new())]);
        let unauthorized = ResponseBuilder::new()
            .description("No valid bearer token; `WWW-Authenticate` says why")
            .content(
                crate::PROBLEM_JSON,
                ContentBuilder::new()
                    .schema(Some(RefOr::Ref(Ref::from_schema_name("Problem"))))
                    .build(),
            )
            .build();
        for (path, item) in doc.paths.paths.iter_mut() {
            let public = path == "/openapi.json";
            for op in [
                &mut item.get,
                &mut item.put,
                &mut item.post,
                &mut item.delete,
            ]
            .into_iter()
            .flatten()
            {
                if public {
                    // Served without a token: it describes the API, nothing deployed.
                    op.security = Some(vec![SecurityRequirement::default()]);
                } else {
                    op.responses
                        .responses
                        .insert("401".to_owned(), unauthorized.clone().into());
                }
            }
        }
        for item in doc.paths.paths.values_mut() {
            let operations = [
                &mut item.get,
                &mut item.put,
                &mut item.post,
                &mut item.delete,
            ];
            for op in operations.into_iter().flatten() {
                for p in op.parameters.iter_mut().flatten() {
                    if p.name == "name" && matches!(p.parameter_in, ParameterIn::Path) {
                        p.schema = Some(Schema::Object(string_matching(NAME_PATTERN)).into());
                    }
                }
            }
        }
    }
}

fn string_matching(pattern: &str) -> Object {
    ObjectBuilder::new()
        .schema_type(Type::String)
        .pattern(Some(pattern))
        .build()
}

/// `Adapter`: the spec's properties and the server-set fields, all required in responses.
fn adapter_schema(mut spec: Object) -> Object {
    spec.description = Some(
        "An adapter as stored and returned by the API: the spec plus server-set fields.".into(),
    );
    for (field, description) in [
        (
            "id",
            "The adapter's name again (microsoft/mcp-gateway's resources carry an `id`). Sent \
             back on `PUT` it must equal `name`.",
        ),
        ("createdBy", "Subject of the principal that created it."),
        ("createdAt", "When it was created (RFC 3339, UTC)."),
        (
            "lastUpdatedAt",
            "When it was last created or replaced (RFC 3339, UTC).",
        ),
        (
            "revision",
            "Changes whenever the adapter is changed; also the response's `ETag`. Send it back \
             as `If-Match` on `PUT` or `DELETE` to change the adapter only if nobody did since.",
        ),
    ] {
        let schema = ObjectBuilder::new()
            .schema_type(Type::String)
            .description(Some(description))
            .build();
        spec.properties
            .insert(field.to_owned(), Schema::Object(schema).into());
        spec.required.push(field.to_owned());
    }
    let issuer = ObjectBuilder::new()
        .schema_type(Type::String)
        .description(Some(
            "Issuer of the creator's token (`api-key` for API keys); with `createdBy`, who may \
             change the adapter.",
        ))
        .build();
    spec.properties
        .insert("createdByIssuer".to_owned(), Schema::Object(issuer).into());
    for field in [
        "replicaCount",
        "transport",
        "environmentVariables",
        "description",
        "useWorkloadIdentity",
        "requiredRoles",
        "args",
        "upstreams",
    ] {
        if !spec.required.iter().any(|r| r == field) {
            spec.required.push(field.to_owned());
        }
    }
    spec
}

/// The document, built from the same routes that [`router`](crate::router) serves.
pub fn document() -> Document {
    let mut doc = crate::routes().split_for_parts().1;
    // After the routes have added their paths and schemas, so nothing overwrites these.
    Refinements.modify(&mut doc);
    doc
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
            [
                "name", "replica", "instance", "tail", "since", "follow", "previous"
            ]
        );
    }
}
