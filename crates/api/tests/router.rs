//! The management API through its router, with `oneshot` over fake ports: an in-memory
//! adapter store, a provisioner that records its calls and fails on demand, and a session
//! store with fixed counts.

mod fakes;

use std::time::Duration;

use axum::Router;
use axum::body::Body;
use fakes::{Fakes, line};
use http::{Method, Request, StatusCode, header};
use http_body_util::BodyExt;
use mcp_gateway_api::{ApiOptions, PROBLEM_JSON, Problem};
use mcp_gateway_core::Principal;
use mcp_gateway_core::{AdapterError, AdapterStore, LogLine};
use serde_json::{Value, json};
use tower::ServiceExt;

// === helpers ===

struct Reply {
    status: StatusCode,
    headers: http::HeaderMap,
    body: Vec<u8>,
}

impl Reply {
    fn json(&self) -> Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {}", String::from_utf8_lossy(&self.body)))
    }

    fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    /// Asserts a problem+json error with this status, and returns it.
    fn problem(&self, status: u16) -> Problem {
        assert_eq!(self.status.as_u16(), status, "{}", self.text());
        assert_eq!(
            self.headers[header::CONTENT_TYPE],
            PROBLEM_JSON,
            "content type of {status}"
        );
        let p: Problem = serde_json::from_slice(&self.body).expect("a problem body");
        assert_eq!(p.status, status);
        assert!(p.kind.starts_with("urn:mcp-gateway:problem:"), "{}", p.kind);
        assert!(!p.title.is_empty() && !p.detail.is_empty());
        p
    }
}

async fn send(app: &Router, req: Request<Body>) -> Reply {
    let res = app.clone().oneshot(req).await.expect("infallible");
    let (parts, body) = res.into_parts();
    let body = body.collect().await.expect("body").to_bytes().to_vec();
    Reply {
        status: parts.status,
        headers: parts.headers,
        body,
    }
}

fn req(method: Method, uri: &str) -> Request<Body> {
    Request::builder()
        .method(method)
        .uri(uri)
        .body(Body::empty())
        .unwrap()
}

fn json_req(method: Method, uri: &str, body: impl Into<String>) -> Request<Body> {
    Request::builder()
        .method(method)
        .uri(uri)
        .header(header::CONTENT_TYPE, "application/json")
        .body(Body::from(body.into()))
        .unwrap()
}

async fn create(app: &Router, body: Value) -> Reply {
    send(app, json_req(Method::POST, "/adapters", body.to_string())).await
}

async fn put(app: &Router, uri: &str, body: Value) -> Reply {
    send(app, json_req(Method::PUT, uri, body.to_string())).await
}

/// A returned resource as the store keeps it: without the `id` the API adds.
fn record(mut resource: Value) -> Value {
    let id = resource.as_object_mut().unwrap().remove("id");
    assert_eq!(id.as_ref(), resource.get("name"), "id is the name");
    resource
}

// === POST /adapters ===

#[tokio::test]
async fn create_returns_201_with_the_resource_location_and_deploys_it() {
    let f = Fakes::new();
    let mut r = json_req(
        Method::POST,
        "/adapters",
        json!({"name": "everything", "command": "npx", "args": ["-y", "srv"], "transport": "stdio",
               "replicaCount": 2, "environmentVariables": {"LOG_LEVEL": "debug"},
               "requiredRoles": ["mcp.user"], "useWorkloadIdentity": true})
        .to_string(),
    );
    r.extensions_mut()
        .insert(Principal::new("alice", None, vec!["mcp.admin".into()]));
    let res = send(&f.app, r).await;
    assert_eq!(res.status, StatusCode::CREATED, "{}", res.text());
    assert_eq!(res.headers[header::LOCATION], "/adapters/everything");
    assert_eq!(res.headers[header::CONTENT_TYPE], "application/json");
    let body = res.json();
    assert_eq!(body["name"], "everything");
    assert_eq!(body["createdBy"], "alice");
    assert_eq!(body["replicaCount"], 2);
    assert_eq!(body["transport"], "stdio");
    assert_eq!(body["useWorkloadIdentity"], true);
    assert_eq!(body["createdAt"], body["lastUpdatedAt"]);
    assert!(body["createdAt"].as_str().unwrap().ends_with('Z'));
    assert_eq!(f.calls(), ["validate everything", "apply everything"]);
    let stored = f
        .store
        .get(&"everything".parse().unwrap())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(serde_json::to_value(&stored).unwrap(), record(body));
}

#[tokio::test]
async fn create_without_a_caller_records_anonymous() {
    let f = Fakes::new();
    let res = create(&f.app, json!({"name": "a"})).await;
    assert_eq!(res.status, StatusCode::CREATED);
    assert_eq!(res.json()["createdBy"], "anonymous");
}

#[tokio::test]
async fn create_of_an_existing_name_is_409_and_changes_nothing() {
    let f = Fakes::new();
    create(&f.app, json!({"name": "a", "description": "first"})).await;
    let res = create(&f.app, json!({"name": "a", "description": "second"})).await;
    let p = res.problem(409);
    assert!(p.detail.contains("\"a\" already exists"), "{}", p.detail);
    assert_eq!(f.stored("a").await["description"], "first");
    assert_eq!(
        f.calls().iter().filter(|c| c.starts_with("apply")).count(),
        1
    );
}

#[tokio::test]
async fn a_failed_deployment_leaves_nothing_stored_and_is_503() {
    let f = Fakes::new();
    f.fail_apply(AdapterError::Unavailable("port exhausted".into()));
    let res = create(&f.app, json!({"name": "a"})).await;
    let p = res.problem(503);
    assert!(
        p.detail.contains("port exhausted") && p.detail.contains("nothing was changed"),
        "{}",
        p.detail
    );
    assert!(f.store.list().await.unwrap().is_empty());
    assert_eq!(f.calls(), ["validate a", "apply a", "remove a"]);
}

#[tokio::test]
async fn a_deployment_refused_as_invalid_is_400_and_leaves_nothing() {
    let f = Fakes::new();
    f.fail_apply(AdapterError::Invalid("image pull failed".into()));
    create(&f.app, json!({"name": "a"})).await.problem(400);
    assert!(f.store.list().await.unwrap().is_empty());
}

#[tokio::test]
async fn the_runtimes_own_validation_refuses_before_anything_is_stored() {
    let f = Fakes::new();
    let p = create(&f.app, json!({"name": "a", "command": "no-such-program"}))
        .await
        .problem(400);
    assert!(p.detail.contains("no-such-program"), "{}", p.detail);
    assert!(f.store.list().await.unwrap().is_empty());
    assert_eq!(f.calls(), ["validate a"]);
}

#[tokio::test]
async fn a_store_failure_is_503_with_detail() {
    let f = Fakes::new();
    f.store.fail(true);
    let p = create(&f.app, json!({"name": "a"})).await.problem(503);
    assert!(p.detail.contains("disk full"), "{}", p.detail);
    send(&f.app, req(Method::GET, "/adapters"))
        .await
        .problem(503);
    assert!(!f.calls().iter().any(|c| c.starts_with("apply")));
}

#[tokio::test]
async fn invalid_names_are_400_naming_the_rule() {
    let f = Fakes::new();
    let p = create(&f.app, json!({"name": "Bad_Name"}))
        .await
        .problem(400);
    assert_eq!(
        p.detail,
        "name \"Bad_Name\" is invalid: may contain only lowercase letters, digits and '-' (a DNS-1123 label)"
    );
    assert_eq!(p.field.as_deref(), Some("name"));
    for bad in ["", "-a", "a-", &"a".repeat(64)] {
        create(&f.app, json!({ "name": bad })).await.problem(400);
    }
    let p = create(&f.app, json!({"name": 5})).await.problem(400);
    assert_eq!(p.field.as_deref(), Some("name"));
    let p = create(&f.app, json!({"description": "no name"}))
        .await
        .problem(400);
    assert!(p.detail.contains("missing field `name`"), "{}", p.detail);
    assert!(f.calls().is_empty());
}

#[tokio::test]
async fn unknown_fields_are_400_naming_the_field() {
    let f = Fakes::new();
    let p = create(&f.app, json!({"name": "a", "replicas": 2}))
        .await
        .problem(400);
    assert!(
        p.detail.contains("unknown field `replicas`"),
        "{}",
        p.detail
    );
    // `createdBy` is a server-set field: accepted and ignored (see the anchor-client tests).
    let p = create(&f.app, json!({"name": "a", "creator": "mallory"}))
        .await
        .problem(400);
    assert!(p.detail.contains("unknown field `creator`"), "{}", p.detail);
    assert!(f.calls().is_empty());
}

#[tokio::test]
async fn each_field_rule_is_a_400_with_the_field() {
    let f = Fakes::new();
    for (body, field, words) in [
        (
            json!({"name": "a", "replicaCount": 0}),
            "replicaCount",
            "between 1 and 50",
        ),
        (
            json!({"name": "a", "replicaCount": 51}),
            "replicaCount",
            "between 1 and 50",
        ),
        (
            json!({"name": "a", "replicaCount": -1}),
            "replicaCount",
            "invalid value",
        ),
        (
            json!({"name": "a", "replicaCount": "2"}),
            "replicaCount",
            "invalid type",
        ),
        (
            json!({"name": "a", "environmentVariables": {"1BAD": "x"}}),
            "environmentVariables.1BAD",
            "environment variable name",
        ),
        (
            json!({"name": "a", "environmentVariables": {"A": 1}}),
            "environmentVariables.A",
            "invalid type",
        ),
        (
            json!({"name": "a", "upstreams": ["http://h:1/mcp"]}),
            "upstreams[0]",
            "no path",
        ),
        (
            json!({"name": "a", "upstreams": ["ftp://h:1"]}),
            "upstreams[0]",
            "http://",
        ),
        (
            json!({"name": "a", "upstreams": ["not a url"]}),
            "upstreams[0]",
            "not a URL",
        ),
        (
            json!({"name": "a", "path": "mcp"}),
            "path",
            "start with '/'",
        ),
        (json!({"name": "a", "port": 0}), "port", "port 0"),
        (json!({"name": "a", "port": 70000}), "port", "invalid value"),
        (
            json!({"name": "a", "transport": "websocket"}),
            "transport",
            "unknown variant",
        ),
    ] {
        let p = create(&f.app, body.clone()).await.problem(400);
        assert_eq!(p.field.as_deref(), Some(field), "{body}: {}", p.detail);
        assert!(p.detail.contains(words), "{body}: {}", p.detail);
    }
    assert!(f.calls().is_empty());
    assert!(f.store.list().await.unwrap().is_empty());
}

#[tokio::test]
async fn several_problems_are_listed_together() {
    let f = Fakes::new();
    let p = create(&f.app, json!({"name": "a", "replicaCount": 0, "path": "x"}))
        .await
        .problem(400);
    let fields: Vec<_> = p.errors.iter().map(|e| e.field.as_str()).collect();
    assert_eq!(fields, ["replicaCount", "path"]);
    assert!(
        p.detail.contains("replicaCount") && p.detail.contains("path"),
        "{}",
        p.detail
    );
}

#[tokio::test]
async fn malformed_bodies_are_problems() {
    let f = Fakes::new();
    let p = send(&f.app, json_req(Method::POST, "/adapters", "{\"name\": "))
        .await
        .problem(400);
    assert!(p.detail.contains("not valid JSON"), "{}", p.detail);
    let p = send(&f.app, json_req(Method::POST, "/adapters", ""))
        .await
        .problem(400);
    assert!(p.detail.contains("no body"), "{}", p.detail);
    send(&f.app, json_req(Method::POST, "/adapters", "[1,2]"))
        .await
        .problem(400);
    send(&f.app, json_req(Method::POST, "/adapters", "null"))
        .await
        .problem(400);
    let no_type = Request::builder()
        .method(Method::POST)
        .uri("/adapters")
        .body(Body::from(r#"{"name":"a"}"#))
        .unwrap();
    let p = send(&f.app, no_type).await.problem(415);
    assert!(p.detail.contains("application/json"), "{}", p.detail);
    let form = Request::builder()
        .method(Method::POST)
        .uri("/adapters")
        .header(header::CONTENT_TYPE, "application/x-www-form-urlencoded")
        .body(Body::from("name=a"))
        .unwrap();
    send(&f.app, form).await.problem(415);
    assert!(f.calls().is_empty());
}

#[tokio::test]
async fn bodies_over_the_limit_are_413() {
    let f = Fakes::with_options(ApiOptions {
        max_body_bytes: 1024,
        ..ApiOptions::default()
    });
    let big = json!({"name": "a", "description": "x".repeat(2000)}).to_string();
    let p = send(&f.app, json_req(Method::POST, "/adapters", big.clone()))
        .await
        .problem(413);
    assert!(p.detail.contains("1024"), "{}", p.detail);
    // Also without Content-Length (chunked): the limit applies while reading.
    let stream = futures_util::stream::iter(
        big.into_bytes()
            .chunks(100)
            .map(|c| Ok::<_, std::io::Error>(c.to_vec()))
            .collect::<Vec<_>>(),
    );
    let chunked = Request::builder()
        .method(Method::POST)
        .uri("/adapters")
        .header(header::CONTENT_TYPE, "application/json")
        .body(Body::from_stream(stream))
        .unwrap();
    send(&f.app, chunked).await.problem(413);
    let ok = json!({"name": "a", "description": "x".repeat(900)}).to_string();
    assert_eq!(
        send(&f.app, json_req(Method::POST, "/adapters", ok))
            .await
            .status,
        201
    );
}

#[tokio::test]
async fn the_default_body_limit_is_one_mebibyte() {
    let f = Fakes::new();
    let big = json!({"name": "a", "description": "x".repeat(1 << 20)}).to_string();
    send(&f.app, json_req(Method::POST, "/adapters", big))
        .await
        .problem(413);
}

// === GET /adapters, GET /adapters/{name} ===

#[tokio::test]
async fn list_and_get_return_stored_adapters() {
    let f = Fakes::new();
    let res = send(&f.app, req(Method::GET, "/adapters")).await;
    assert_eq!(res.status, 200);
    assert_eq!(res.json(), json!([]));
    create(&f.app, json!({"name": "b"})).await;
    create(
        &f.app,
        json!({"name": "a", "upstreams": ["http://127.0.0.1:9001"]}),
    )
    .await;
    let list = send(&f.app, req(Method::GET, "/adapters")).await.json();
    let names: Vec<_> = list
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["a", "b"]);
    let res = send(&f.app, req(Method::GET, "/adapters/a")).await;
    assert_eq!(res.status, 200);
    assert_eq!(res.json()["upstreams"], json!(["http://127.0.0.1:9001"]));
}

#[tokio::test]
async fn unknown_adapters_are_404_on_every_endpoint() {
    let f = Fakes::new();
    for (method, uri) in [
        (Method::GET, "/adapters/nope"),
        (Method::DELETE, "/adapters/nope"),
        (Method::GET, "/adapters/nope/status"),
        (Method::GET, "/adapters/nope/logs"),
    ] {
        let p = send(&f.app, req(method.clone(), uri)).await.problem(404);
        assert_eq!(
            p.detail, "adapter \"nope\" does not exist",
            "{method} {uri}"
        );
    }
    let p = put(&f.app, "/adapters/nope", json!({"name": "nope"}))
        .await
        .problem(404);
    assert!(p.detail.contains("does not exist"));
    assert!(
        !f.calls()
            .iter()
            .any(|c| c.starts_with("apply") || c.starts_with("remove"))
    );
}

#[tokio::test]
async fn invalid_names_in_the_path_are_400() {
    let f = Fakes::new();
    for uri in [
        "/adapters/Bad_Name",
        "/adapters/Bad_Name/status",
        "/adapters/-x/logs",
    ] {
        let p = send(&f.app, req(Method::GET, uri)).await.problem(400);
        assert!(p.detail.contains("is invalid"), "{uri}: {}", p.detail);
    }
}

#[tokio::test]
async fn unknown_routes_are_404_and_wrong_methods_405_as_problems() {
    let f = Fakes::new();
    send(&f.app, req(Method::GET, "/nothing"))
        .await
        .problem(404);
    send(&f.app, req(Method::GET, "/adapters/a/b/c"))
        .await
        .problem(404);
    for (method, uri) in [
        (Method::DELETE, "/adapters"),
        (Method::PATCH, "/adapters/a"),
        (Method::POST, "/adapters/a"),
        (Method::POST, "/adapters/a/status"),
        (Method::PUT, "/adapters/a/logs"),
        (Method::POST, "/openapi.json"),
    ] {
        let p = send(&f.app, req(method.clone(), uri)).await.problem(405);
        assert!(p.detail.contains(method.as_str()), "{}", p.detail);
    }
}

// === PUT /adapters/{name} ===

#[tokio::test]
async fn update_replaces_the_spec_and_keeps_the_creation_fields() {
    let f = Fakes::new();
    let mut r = json_req(
        Method::POST,
        "/adapters",
        json!({"name": "a", "replicaCount": 1, "description": "old"}).to_string(),
    );
    r.extensions_mut()
        .insert(Principal::new("alice", None, vec![]));
    let created = send(&f.app, r).await.json();
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let mut r = json_req(
        Method::PUT,
        "/adapters/a",
        json!({"name": "a", "replicaCount": 3}).to_string(),
    );
    r.extensions_mut()
        .insert(Principal::new("bob", None, vec![]));
    let res = send(&f.app, r).await;
    assert_eq!(res.status, 200, "{}", res.text());
    let body = res.json();
    assert_eq!(body["replicaCount"], 3);
    assert_eq!(body["description"], "", "the spec is replaced, not merged");
    assert_eq!(body["createdBy"], "alice");
    assert_eq!(body["createdAt"], created["createdAt"]);
    assert_ne!(body["lastUpdatedAt"], created["lastUpdatedAt"]);
    assert_eq!(f.stored("a").await, record(body));
    assert_eq!(
        f.calls(),
        ["validate a", "apply a", "validate a", "apply a"]
    );
}

#[tokio::test]
async fn update_with_another_name_in_the_body_is_400() {
    let f = Fakes::new();
    create(&f.app, json!({"name": "a"})).await;
    let p = put(&f.app, "/adapters/a", json!({"name": "b"}))
        .await
        .problem(400);
    assert!(p.detail.contains("differs from the path"), "{}", p.detail);
    assert!(p.kind.ends_with("name-mismatch"));
    assert_eq!(f.stored("a").await["name"], "a");
    assert!(f.store.get(&"b".parse().unwrap()).await.unwrap().is_none());
}

#[tokio::test]
async fn update_validates_like_create_and_changes_nothing_when_refused() {
    let f = Fakes::new();
    create(&f.app, json!({"name": "a", "replicaCount": 2})).await;
    for body in [
        json!({"name": "a", "replicaCount": 0}),
        json!({"name": "a", "unknown": 1}),
        json!({"name": "a", "command": "no-such-program"}),
    ] {
        put(&f.app, "/adapters/a", body).await.problem(400);
    }
    send(&f.app, req(Method::PUT, "/adapters/a"))
        .await
        .problem(415);
    assert_eq!(f.stored("a").await["replicaCount"], 2);
}

#[tokio::test]
async fn a_failed_roll_out_restores_the_previous_spec() {
    let f = Fakes::new();
    let before = create(&f.app, json!({"name": "a", "replicaCount": 2}))
        .await
        .json();
    f.fail_apply(AdapterError::Unavailable("replica 1 did not start".into()));
    let p = put(
        &f.app,
        "/adapters/a",
        json!({"name": "a", "replicaCount": 4}),
    )
    .await
    .problem(503);
    assert!(p.detail.contains("replica 1 did not start"), "{}", p.detail);
    // The same record again, at a new revision: the update and its undo were two writes.
    let mut restored = record(before);
    restored["revision"] = json!("3");
    assert_eq!(f.stored("a").await, restored);
    let applied = f.provisioner.applied("a").unwrap();
    assert_eq!(
        applied.spec.replica_count, 2,
        "the previous spec is applied again"
    );
}

// === microsoft/mcp-gateway clients ===

#[tokio::test]
async fn the_resource_carries_its_name_as_id_everywhere_it_is_returned() {
    let f = Fakes::new();
    let created = create(&f.app, json!({"name": "a"})).await.json();
    assert_eq!(created["id"], "a");
    let got = send(&f.app, req(Method::GET, "/adapters/a")).await.json();
    assert_eq!(got["id"], "a");
    let listed = send(&f.app, req(Method::GET, "/adapters")).await.json();
    assert_eq!(listed[0]["id"], "a");
    let updated = put(&f.app, "/adapters/a", json!({"name": "a"}))
        .await
        .json();
    assert_eq!(updated["id"], "a");
}

#[tokio::test]
async fn a_get_then_a_put_of_the_same_object_with_one_change_succeeds() {
    let f = Fakes::new();
    let mut r = json_req(
        Method::POST,
        "/adapters",
        json!({"name": "a", "replicaCount": 1, "description": "d"}).to_string(),
    );
    r.extensions_mut()
        .insert(Principal::new("alice", Some("https://idp".into()), vec![]));
    send(&f.app, r).await;
    let mut object = send(&f.app, req(Method::GET, "/adapters/a")).await.json();
    for field in [
        "id",
        "createdBy",
        "createdByIssuer",
        "createdAt",
        "lastUpdatedAt",
    ] {
        assert!(object.get(field).is_some(), "{field} in {object}");
    }
    object["replicaCount"] = json!(3);
    // A client may send the server-set fields back with other values: they are the server's.
    object["createdBy"] = json!("mallory");
    object["createdAt"] = json!("1999-01-01T00:00:00Z");
    let res = put(&f.app, "/adapters/a", object).await;
    assert_eq!(res.status, 200, "{}", res.text());
    let body = res.json();
    assert_eq!(body["replicaCount"], 3);
    assert_eq!(body["description"], "d");
    assert_eq!(body["createdBy"], "alice");
    assert_eq!(body["createdByIssuer"], "https://idp");
    assert_ne!(body["createdAt"], "1999-01-01T00:00:00Z");
    // The same object may also create an adapter of its own name.
    let mut copy = body.clone();
    copy["id"] = json!("b");
    copy["name"] = json!("b");
    let res = create(&f.app, copy).await;
    assert_eq!(res.status, StatusCode::CREATED, "{}", res.text());
    assert_eq!(res.json()["createdBy"], "anonymous");
}

fn with_if_match(mut r: Request<Body>, tag: &str) -> Request<Body> {
    r.headers_mut()
        .insert(header::IF_MATCH, tag.parse().unwrap());
    r
}

async fn put_if_match(app: &Router, uri: &str, body: Value, tag: &str) -> Reply {
    send(
        app,
        with_if_match(json_req(Method::PUT, uri, body.to_string()), tag),
    )
    .await
}

#[tokio::test]
async fn every_returned_adapter_carries_its_revision_as_etag_and_a_change_moves_it() {
    let f = Fakes::new();
    let created = create(&f.app, json!({"name": "a"})).await;
    assert_eq!(created.status, StatusCode::CREATED);
    assert_eq!(created.headers[header::ETAG], "\"1\"");
    assert_eq!(created.json()["revision"], "1");
    let got = send(&f.app, req(Method::GET, "/adapters/a")).await;
    assert_eq!(got.headers[header::ETAG], "\"1\"");
    let updated = put(
        &f.app,
        "/adapters/a",
        json!({"name": "a", "replicaCount": 2}),
    )
    .await;
    assert_eq!(updated.status, 200, "{}", updated.text());
    assert_eq!(updated.headers[header::ETAG], "\"2\"");
    let got = send(&f.app, req(Method::GET, "/adapters/a")).await;
    assert_eq!(got.headers[header::ETAG], "\"2\"");
    assert_eq!(got.json()["revision"], "2");
}

#[tokio::test]
async fn a_put_with_a_stale_if_match_is_412_and_changes_nothing() {
    let f = Fakes::new();
    create(&f.app, json!({"name": "a"})).await;
    let body = json!({"name": "a", "replicaCount": 2});
    // Two clients read revision 1; the first PUT wins.
    let first = put_if_match(&f.app, "/adapters/a", body.clone(), "\"1\"").await;
    assert_eq!(first.status, 200, "{}", first.text());
    let applies = |f: &Fakes| f.calls().iter().filter(|c| c.starts_with("apply")).count();
    let applied = applies(&f);
    let second = put_if_match(
        &f.app,
        "/adapters/a",
        json!({"name": "a", "replicaCount": 5}),
        "\"1\"",
    )
    .await
    .problem(412);
    assert!(
        second.detail.contains("revision \"2\", not \"1\""),
        "{}",
        second.detail
    );
    assert_eq!(f.stored("a").await["replicaCount"], 2);
    assert_eq!(applies(&f), applied, "nothing deployed");
    // A list of tags matches any of them; `*` matches whatever exists; weak tags never do.
    for (tag, status) in [("\"7\", \"2\"", 200), ("*", 200), ("W/\"4\"", 412)] {
        let res = put_if_match(&f.app, "/adapters/a", body.clone(), tag).await;
        assert_eq!(res.status, status, "If-Match {tag}: {}", res.text());
    }
    // A value that is not an entity tag is a 400 saying what to send.
    let p = put_if_match(&f.app, "/adapters/a", body, "4")
        .await
        .problem(400);
    assert!(p.detail.contains("with its quotes"), "{}", p.detail);
}

#[tokio::test]
async fn a_delete_with_a_stale_if_match_is_412_and_deletes_nothing() {
    let f = Fakes::new();
    create(&f.app, json!({"name": "a"})).await;
    put(
        &f.app,
        "/adapters/a",
        json!({"name": "a", "replicaCount": 2}),
    )
    .await;
    send(
        &f.app,
        with_if_match(req(Method::DELETE, "/adapters/a"), "\"1\""),
    )
    .await
    .problem(412);
    assert_eq!(f.stored("a").await["replicaCount"], 2);
    let res = send(
        &f.app,
        with_if_match(req(Method::DELETE, "/adapters/a"), "\"2\""),
    )
    .await;
    assert_eq!(res.status, StatusCode::NO_CONTENT, "{}", res.text());
}

#[tokio::test]
async fn put_still_refuses_unknown_fields_and_an_id_that_is_not_the_name() {
    let f = Fakes::new();
    create(&f.app, json!({"name": "a"})).await;
    let mut object = send(&f.app, req(Method::GET, "/adapters/a")).await.json();
    object["replicas"] = json!(2);
    let p = put(&f.app, "/adapters/a", object).await.problem(400);
    assert!(
        p.detail.contains("unknown field `replicas`"),
        "{}",
        p.detail
    );
    let p = put(&f.app, "/adapters/a", json!({"name": "a", "id": "b"}))
        .await
        .problem(400);
    assert!(
        p.detail.contains("id \"b\" differs from name \"a\""),
        "{}",
        p.detail
    );
    assert_eq!(p.errors[0].field, "id");
}

#[tokio::test]
async fn status_answers_in_microsoft_mcp_gateways_shape_too() {
    let f = Fakes::new();
    create(&f.app, json!({"name": "a", "replicaCount": 2})).await;
    let status = send(&f.app, req(Method::GET, "/adapters/a/status"))
        .await
        .json();
    for field in [
        "readyReplicas",
        "updatedReplicas",
        "availableReplicas",
        "image",
        "replicaStatus",
        "replicaCount",
        "replicas",
    ] {
        assert!(status.get(field).is_some(), "{field} in {status}");
    }
    assert_eq!(status["replicaStatus"], "Healthy");
}

// === DELETE /adapters/{name} ===

#[tokio::test]
async fn delete_removes_the_deployment_and_the_record() {
    let f = Fakes::new();
    create(&f.app, json!({"name": "a"})).await;
    let res = send(&f.app, req(Method::DELETE, "/adapters/a")).await;
    assert_eq!(res.status, StatusCode::NO_CONTENT);
    assert!(res.body.is_empty());
    assert!(f.calls().ends_with(&["remove a".to_owned()]));
    send(&f.app, req(Method::GET, "/adapters/a"))
        .await
        .problem(404);
    send(&f.app, req(Method::DELETE, "/adapters/a"))
        .await
        .problem(404);
}

#[tokio::test]
async fn a_failed_removal_keeps_the_record_for_a_retry() {
    let f = Fakes::new();
    create(&f.app, json!({"name": "a"})).await;
    f.fail_remove(true);
    send(&f.app, req(Method::DELETE, "/adapters/a"))
        .await
        .problem(503);
    assert_eq!(f.stored("a").await["name"], "a");
    f.fail_remove(false);
    assert_eq!(
        send(&f.app, req(Method::DELETE, "/adapters/a"))
            .await
            .status,
        204
    );
}

// === GET /adapters/{name}/status ===

#[tokio::test]
async fn status_fills_live_sessions_per_replica_from_the_session_store() {
    let f = Fakes::new();
    create(&f.app, json!({"name": "a", "replicaCount": 3})).await;
    f.sessions.set("a", &[("0", 4), ("2", 1)]);
    let res = send(&f.app, req(Method::GET, "/adapters/a/status")).await;
    assert_eq!(res.status, 200, "{}", res.text());
    let body = res.json();
    assert_eq!(body["name"], "a");
    assert_eq!(body["replicaCount"], 3);
    assert_eq!(body["readyReplicas"], 3);
    let live: Vec<_> = body["replicas"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["liveSessions"].as_u64().unwrap())
        .collect();
    assert_eq!(live, [4, 0, 1]);
    assert_eq!(body["replicas"][0]["state"], "ready");
}

#[tokio::test]
async fn status_survives_a_failing_session_store() {
    let f = Fakes::new();
    create(&f.app, json!({"name": "a"})).await;
    f.sessions.fail(true);
    let res = send(&f.app, req(Method::GET, "/adapters/a/status")).await;
    assert_eq!(res.status, 200);
    assert_eq!(
        res.json()["replicas"][0]["liveSessions"],
        99,
        "the runtime's count is kept"
    );
}

#[tokio::test]
async fn status_is_503_when_the_runtime_fails() {
    let f = Fakes::new();
    create(&f.app, json!({"name": "a"})).await;
    f.fail_status(true);
    send(&f.app, req(Method::GET, "/adapters/a/status"))
        .await
        .problem(503);
}

// === GET /adapters/{name}/logs ===

async fn with_logs() -> Fakes {
    let f = Fakes::new();
    create(&f.app, json!({"name": "a", "replicaCount": 2})).await;
    f.provisioner.set_logs(vec![
        line(0, "2025-11-24T16:00:00Z", "first"),
        line(1, "2025-11-24T16:00:01Z", "second"),
        line(0, "2025-11-24T16:00:02Z", "third"),
    ]);
    f
}

#[tokio::test]
async fn logs_are_text_lines_prefixed_by_replica() {
    let f = with_logs().await;
    let res = send(&f.app, req(Method::GET, "/adapters/a/logs")).await;
    assert_eq!(res.status, 200);
    assert_eq!(
        res.headers[header::CONTENT_TYPE],
        "text/plain; charset=utf-8"
    );
    assert_eq!(res.text(), "[0] first\n[1] second\n[0] third\n");
    let res = send(&f.app, req(Method::GET, "/adapters/a/logs?replica=0")).await;
    assert_eq!(res.text(), "first\nthird\n");
    let res = send(&f.app, req(Method::GET, "/adapters/a/logs?instance=1")).await;
    assert_eq!(res.text(), "second\n");
}

#[tokio::test]
async fn logs_tail_and_since_are_passed_to_the_runtime() {
    let f = with_logs().await;
    let res = send(&f.app, req(Method::GET, "/adapters/a/logs?tail=2")).await;
    assert_eq!(res.text(), "[1] second\n[0] third\n");
    let res = send(
        &f.app,
        req(Method::GET, "/adapters/a/logs?since=2025-11-24T16:00:01Z"),
    )
    .await;
    assert_eq!(res.text(), "[1] second\n[0] third\n");
    let res = send(
        &f.app,
        req(
            Method::GET,
            "/adapters/a/logs?since=5m&tail=10&replica=1&follow=false",
        ),
    )
    .await;
    assert_eq!(res.status, 200);
    let q = f.provisioner.last_log_query().unwrap();
    assert_eq!((q.replica, q.tail, q.follow), (Some(1), Some(10), false));
    let ago = std::time::SystemTime::now()
        .duration_since(q.since.unwrap())
        .unwrap();
    assert!(
        ago >= Duration::from_secs(299) && ago <= Duration::from_secs(310),
        "{ago:?}"
    );
}

#[tokio::test]
async fn logs_as_ndjson_when_asked() {
    let f = with_logs().await;
    let r = Request::builder()
        .uri("/adapters/a/logs?tail=1")
        .header(header::ACCEPT, "application/x-ndjson")
        .body(Body::empty())
        .unwrap();
    let res = send(&f.app, r).await;
    assert_eq!(res.headers[header::CONTENT_TYPE], "application/x-ndjson");
    let lines: Vec<LogLine> = res
        .text()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines, [line(0, "2025-11-24T16:00:02Z", "third")]);
}

#[tokio::test]
async fn bad_log_queries_are_400_naming_the_parameter() {
    let f = with_logs().await;
    for (query, field) in [
        ("tail=-1", "tail"),
        ("tail=many", "tail"),
        ("replica=x", "replica"),
        ("follow=maybe", "follow"),
        ("since=yesterday", "since"),
        ("since=2025-13-01T00:00:00Z", "since"),
        ("replica=0&instance=1", "instance"),
        ("colour=red", "colour"),
    ] {
        let p = send(
            &f.app,
            req(Method::GET, &format!("/adapters/a/logs?{query}")),
        )
        .await
        .problem(400);
        assert_eq!(p.field.as_deref(), Some(field), "{query}: {}", p.detail);
    }
}

#[tokio::test]
async fn logs_of_a_replica_the_runtime_does_not_know_are_400() {
    let f = with_logs().await;
    let p = send(&f.app, req(Method::GET, "/adapters/a/logs?replica=7"))
        .await
        .problem(400);
    assert!(p.detail.contains("replica 7"), "{}", p.detail);
}

#[tokio::test]
async fn followed_logs_stream_lines_as_they_are_written() {
    let f = with_logs().await;
    let res = f
        .app
        .clone()
        .oneshot(req(Method::GET, "/adapters/a/logs?follow=true&tail=1"))
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    assert_eq!(res.headers()["x-accel-buffering"], "no");
    let mut body = res.into_body();
    assert_eq!(next(&mut body).await, "[0] third\n");
    // Nothing more until a replica writes.
    assert!(
        tokio::time::timeout(Duration::from_millis(50), body.frame())
            .await
            .is_err()
    );
    f.provisioner.write(line(1, "2025-11-24T16:00:03Z", "live"));
    assert_eq!(next(&mut body).await, "[1] live\n");
    f.provisioner
        .write(line(0, "2025-11-24T16:00:04Z", "again"));
    assert_eq!(next(&mut body).await, "[0] again\n");
    f.provisioner.end_follow();
    let end = tokio::time::timeout(Duration::from_secs(5), body.frame())
        .await
        .unwrap();
    assert!(end.is_none(), "the stream ends when the runtime ends it");
}

async fn next(body: &mut Body) -> String {
    let frame = tokio::time::timeout(Duration::from_secs(5), body.frame())
        .await
        .expect("a line in time");
    String::from_utf8(frame.unwrap().unwrap().into_data().unwrap().to_vec()).unwrap()
}

// === GET /openapi.json ===

#[tokio::test]
async fn the_openapi_document_is_served() {
    let f = Fakes::new();
    let res = send(&f.app, req(Method::GET, "/openapi.json")).await;
    assert_eq!(res.status, 200);
    assert_eq!(res.headers[header::CONTENT_TYPE], "application/json");
    let doc = res.json();
    assert!(doc["openapi"].as_str().unwrap().starts_with("3."));
    assert_eq!(res.text(), mcp_gateway_api::openapi::json());
}

// === problems of store and provisioner ===

#[tokio::test]
async fn store_failures_on_reads_are_503() {
    let f = Fakes::new();
    create(&f.app, json!({"name": "a"})).await;
    f.store.fail(true);
    for (method, uri) in [
        (Method::GET, "/adapters"),
        (Method::GET, "/adapters/a"),
        (Method::DELETE, "/adapters/a"),
        (Method::GET, "/adapters/a/status"),
        (Method::GET, "/adapters/a/logs"),
    ] {
        send(&f.app, req(method, uri)).await.problem(503);
    }
}

#[tokio::test]
async fn the_fake_store_refuses_duplicates_itself() {
    // The 409 comes from the store's answer, not a read-then-write race in the handler.
    let f = Fakes::new();
    let (a, b) = tokio::join!(
        create(&f.app, json!({"name": "a"})),
        create(&f.app, json!({"name": "a"}))
    );
    let mut statuses = [a.status.as_u16(), b.status.as_u16()];
    statuses.sort();
    assert_eq!(statuses, [201, 409]);
}

#[tokio::test]
async fn method_not_allowed_names_the_allowed_methods() {
    let f = Fakes::new();
    let res = send(&f.app, req(Method::PATCH, "/adapters/a")).await;
    res.problem(405);
    assert_eq!(res.headers[header::ALLOW], "GET,HEAD,PUT,DELETE");
    let res = send(&f.app, req(Method::DELETE, "/adapters")).await;
    res.problem(405);
    assert_eq!(res.headers[header::ALLOW], "POST,GET,HEAD");
}
