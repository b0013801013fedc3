//! Authentication and authorization on both planes, end to end: a real OIDC issuer (JWKS over
//! HTTP) and static API keys in front of a standalone gateway (management API + data plane) that
//! runs real MCP servers.
//!
//! Principals of the matrix: `admin` (API key, `mcp.admin`), `alice` (JWT, no roles; creates
//! the adapter), `bob` (JWT, role `team-a`, which the adapter requires), `carol` (API key, role
//! `team-b`), and anonymous (no token).

use std::convert::Infallible;
use std::time::Duration;

use bytes::Bytes;
use gateway_service::{Config, Handle};
use http::{Method, Request, Response, StatusCode};
use http_body_util::Full;
use mcp_gateway_auth::{ApiKeyConfig, AuthConfig, IssuerConfig, hash_api_key};
use mcp_gateway_core::SecretRef;
use mcp_gateway_testkit::oidc::OidcServer;
use mcp_gateway_testkit::{Http, McpSession, Reply, initialize_request};
use serde_json::{Value, json};

const AUDIENCE: &str = "mcp-gateway";
const ADMIN_KEY: &str = "mcpgw_test-admin-key-0123456789";
const CAROL_KEY: &str = "mcpgw_test-carol-key-0123456789";

/// The example server binary, as a command.
fn example_server() -> String {
    mcp_gateway_testkit::example_server().display().to_string()
}

/// An upstream that answers every POST with the request headers it received, as a JSON-RPC
/// result: what a replica learns about the caller.
async fn header_echo() -> std::net::SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                return;
            };
            tokio::spawn(async move {
                let service = hyper::service::service_fn(|req: Request<hyper::body::Incoming>| {
                    let headers: serde_json::Map<String, Value> = req
                        .headers()
                        .iter()
                        .map(|(k, v)| {
                            (k.to_string(), Value::from(v.to_str().unwrap_or("<binary>")))
                        })
                        .collect();
                    let body = json!({"jsonrpc": "2.0", "id": 1, "result": {"headers": headers}});
                    async move {
                        Ok::<_, Infallible>(
                            Response::builder()
                                .header("content-type", "application/json")
                                .body(Full::new(Bytes::from(body.to_string())))
                                .unwrap(),
                        )
                    }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(hyper_util::rt::TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    addr
}

struct Env {
    gw: Handle,
    oidc: OidcServer,
    _dir: tempfile::TempDir,
}

impl Env {
    async fn start() -> Self {
        let oidc = OidcServer::start().await.unwrap();
        let dir = tempfile::tempdir().unwrap();
        let echo = header_echo().await;
        let secret = dir.path().join("upstream-key");
        std::fs::write(&secret, "s3cret-for-upstream\n").unwrap();

        let mut config = Config::for_tests();
        config.management = true;
        config.data_dir = dir.path().join("data");
        config.auth.tokens = Some(AuthConfig {
            issuers: vec![IssuerConfig::new(oidc.issuer(), vec![AUDIENCE.into()])],
            api_keys: vec![
                ApiKeyConfig {
                    subject: "admin".into(),
                    roles: vec!["mcp.admin".into()],
                    sha256: hash_api_key(ADMIN_KEY),
                },
                ApiKeyConfig {
                    subject: "carol".into(),
                    roles: vec!["team-b".into()],
                    sha256: hash_api_key(CAROL_KEY),
                },
            ],
            ..AuthConfig::default()
        });
        config.auth.allowed_commands = vec![
            mcp_gateway_api::AllowedCommand::new(example_server())
                .with_env(["API_TOKEN", "LOG_LEVEL"]),
        ];
        config.auth.allowed_images = vec!["ghcr.io/acme/*".into(), "docker.io/mcp/time".into()];
        // An adapter of the configuration: fronts the header echo, open to every principal,
        // with a credential the gateway adds from a secret file.
        config.adapters = vec![gateway_service::AdapterConfig {
            name: mcp_gateway_core::AdapterName::new("echo").unwrap(),
            upstreams: vec![format!("http://{echo}")],
            mcp_path: "/mcp".into(),
            sse_path: "/sse".into(),
            required_roles: Vec::new(),
            upstream_headers: [(
                "X-Upstream-Key".to_owned(),
                SecretRef::File(secret.display().to_string()),
            )]
            .into(),
        }];
        let gw = gateway_service::run(config).await.expect("gateway starts");
        Self {
            gw,
            oidc,
            _dir: dir,
        }
    }

    fn jwt(&self, sub: &str, roles: &[&str]) -> String {
        self.oidc.token(self.oidc.claims(sub, roles, AUDIENCE))
    }

    /// The bearer header value of each principal of the matrix.
    fn who(&self, name: &str) -> Option<String> {
        match name {
            "admin" => Some(format!("Bearer {ADMIN_KEY}")),
            "alice" => Some(format!("Bearer {}", self.jwt("alice", &[]))),
            "bob" => Some(format!("Bearer {}", self.jwt("bob", &["team-a"]))),
            "carol" => Some(format!("Bearer {CAROL_KEY}")),
            "anonymous" => None,
            other => panic!("no principal {other}"),
        }
    }

    fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.gw.data_addr)
    }

    async fn api(&self, who: &str, method: Method, path: &str, body: Option<Value>) -> Reply {
        let auth = self.who(who);
        let mut headers = vec![("content-type", "application/json")];
        if let Some(a) = &auth {
            headers.push(("authorization", a));
        }
        let body = body.map_or_else(Bytes::new, |b| Bytes::from(b.to_string()));
        Http::default()
            .send(method, &self.url(path), &headers, body)
            .await
            .unwrap()
    }

    async fn open(&self, who: &str, adapter: &str) -> Result<McpSession, Reply> {
        let url = self.url(&format!("/adapters/{adapter}/mcp"));
        let auth = self.who(who);
        let headers: Vec<(&str, &str)> =
            auth.iter().map(|a| ("authorization", a.as_str())).collect();
        match McpSession::open_with(&url, &headers).await {
            Ok(s) => Ok(s),
            Err(_) => Err(Http::default()
                .post_json(&url, &headers, &initialize_request(0))
                .await
                .unwrap()),
        }
    }
}

fn json_of(reply: &Reply) -> Value {
    serde_json::from_slice(&reply.body).unwrap_or_else(|_| panic!("not JSON: {}", reply.text()))
}

fn spec(name: &str, roles: &[&str]) -> Value {
    json!({
        "name": name,
        "command": example_server(),
        "args": ["--transport", "all", "--port", "{port}"],
        "requiredRoles": roles,
    })
}

async fn wait_ready(env: &Env, name: &str) {
    for _ in 0..100 {
        let s = env
            .api(
                "admin",
                Method::GET,
                &format!("/adapters/{name}/status"),
                None,
            )
            .await;
        if json_of(&s)["readyReplicas"].as_u64() == Some(1) {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("{name} never became ready");
}

/// An operation of the matrix: name, method, path, body, expected status per principal.
type Row = (
    &'static str,
    Method,
    &'static str,
    Option<Value>,
    [StatusCode; 5],
);

#[tokio::test]
async fn the_permission_matrix_holds_on_both_planes() {
    let env = Env::start().await;
    let created = env
        .api(
            "alice",
            Method::POST,
            "/adapters",
            Some(spec("guarded", &["team-a"])),
        )
        .await;
    assert_eq!(created.status, StatusCode::CREATED, "{}", created.text());
    assert_eq!(json_of(&created)["createdBy"], "alice");
    wait_ready(&env, "guarded").await;

    use StatusCode as S;
    let principals = ["admin", "alice", "bob", "carol", "anonymous"];
    // Expected status per principal, in the order of `principals`.
    let matrix: &[Row] = &[
        (
            "get",
            Method::GET,
            "/adapters/guarded",
            None,
            [S::OK, S::OK, S::OK, S::FORBIDDEN, S::UNAUTHORIZED],
        ),
        (
            "status",
            Method::GET,
            "/adapters/guarded/status",
            None,
            [S::OK, S::OK, S::OK, S::FORBIDDEN, S::UNAUTHORIZED],
        ),
        (
            "logs",
            Method::GET,
            "/adapters/guarded/logs?tail=5",
            None,
            [S::OK, S::OK, S::FORBIDDEN, S::FORBIDDEN, S::UNAUTHORIZED],
        ),
        (
            "update",
            Method::PUT,
            "/adapters/guarded",
            Some(spec("guarded", &["team-a"])),
            [S::OK, S::OK, S::FORBIDDEN, S::FORBIDDEN, S::UNAUTHORIZED],
        ),
        (
            "create",
            Method::POST,
            "/adapters",
            Some(spec("guarded", &[])),
            // The name is taken: whoever may create learns 409, the others never get that far.
            [
                S::CONFLICT,
                S::CONFLICT,
                S::CONFLICT,
                S::CONFLICT,
                S::UNAUTHORIZED,
            ],
        ),
        (
            "get missing",
            Method::GET,
            "/adapters/nope",
            None,
            [
                S::NOT_FOUND,
                S::NOT_FOUND,
                S::NOT_FOUND,
                S::NOT_FOUND,
                S::UNAUTHORIZED,
            ],
        ),
    ];
    for (op, method, path, body, expected) in matrix {
        for (who, want) in principals.iter().zip(expected) {
            let reply = env.api(who, method.clone(), path, body.clone()).await;
            assert_eq!(reply.status, *want, "{op} by {who}: {}", reply.text());
            if reply.status.is_client_error() {
                assert_eq!(
                    reply.header("content-type"),
                    Some("application/problem+json"),
                    "{op} by {who}"
                );
            }
        }
    }

    // The list shows each caller what it may read, nothing more.
    for (who, sees) in [
        ("admin", true),
        ("alice", true),
        ("bob", true),
        ("carol", false),
    ] {
        let list = json_of(&env.api(who, Method::GET, "/adapters", None).await);
        let names: Vec<&str> = list
            .as_array()
            .unwrap()
            .iter()
            .filter_map(|a| a["name"].as_str())
            .collect();
        assert_eq!(names.contains(&"guarded"), sees, "{who} sees {names:?}");
        assert!(
            names.iter().all(|n| *n == "guarded"),
            "{who} sees {names:?}"
        );
    }
    assert_eq!(
        env.api("anonymous", Method::GET, "/adapters", None)
            .await
            .status,
        S::UNAUTHORIZED
    );

    // Data plane: who may open sessions on the adapter.
    for (who, want) in principals
        .iter()
        .zip([S::OK, S::OK, S::OK, S::FORBIDDEN, S::UNAUTHORIZED])
    {
        match env.open(who, "guarded").await {
            Ok(mut s) => {
                assert_eq!(want, S::OK, "{who} opened a session");
                assert!(
                    s.call_text("counter_increment", json!({}))
                        .await
                        .unwrap()
                        .ends_with(":1")
                );
                assert_eq!(s.delete().await.unwrap().status, S::OK);
            }
            Err(reply) => {
                assert_eq!(reply.status, want, "{who}: {}", reply.text());
                let body = json_of(&reply);
                assert!(
                    body["error"]["message"].is_string(),
                    "JSON-RPC error body: {body}"
                );
            }
        }
    }

    // A token without any roles claim: a principal with no roles, refused like carol.
    let mut claims = env.oidc.claims("dave", &[], AUDIENCE);
    claims.as_object_mut().unwrap().remove("roles");
    let no_roles = format!("Bearer {}", env.oidc.token(claims));
    let url = env.url("/adapters/guarded/mcp");
    let reply = Http::default()
        .post_json(
            &url,
            &[("authorization", &no_roles)],
            &initialize_request(0),
        )
        .await
        .unwrap();
    assert_eq!(reply.status, S::FORBIDDEN, "{}", reply.text());
    let reply = Http::default()
        .send(
            Method::GET,
            &env.url("/adapters/guarded"),
            &[("authorization", &no_roles)],
            Bytes::new(),
        )
        .await
        .unwrap();
    assert_eq!(reply.status, S::FORBIDDEN, "{}", reply.text());

    // Privileged fields: alice may run the allowed program, but not anything else, nor point
    // the gateway at arbitrary addresses or its secrets.
    let mut other_command = spec("mine", &[]);
    other_command["command"] = json!("/bin/sh");
    let mut upstreams = json!({"name": "mine", "upstreams": ["http://169.254.169.254"]});
    let mut secrets = spec("mine", &[]);
    secrets["upstreamHeaders"] = json!({"X-Key": {"env": "HOME"}});
    for body in [other_command, upstreams.clone(), secrets] {
        let reply = env
            .api("alice", Method::POST, "/adapters", Some(body.clone()))
            .await;
        assert_eq!(reply.status, S::FORBIDDEN, "{body}: {}", reply.text());
    }
    // With an allowed command, only the variables the operator listed for it: any other may
    // make the program load other code, and no denylist of such names is complete.
    for (var, value) in [
        ("LD_PRELOAD", "/tmp/evil.so"),
        ("JDK_JAVA_OPTIONS", "-XX:OnOutOfMemoryError=/bin/sh"),
        ("GIT_CONFIG_COUNT", "1"),
        ("LUA_INIT", "os.execute('id')"),
        ("HOME", "/tmp"),
        ("api_token", "lowercase is another name"),
    ] {
        let mut loader = spec("mine", &[]);
        loader["environmentVariables"] = json!({ var: value });
        let reply = env
            .api("alice", Method::POST, "/adapters", Some(loader))
            .await;
        assert_eq!(reply.status, S::FORBIDDEN, "{var}: {}", reply.text());
        assert!(
            reply.text().contains("API_TOKEN, LOG_LEVEL"),
            "names what is allowed: {}",
            reply.text()
        );
    }
    // Nobody takes over an adapter of the configuration file by creating a namesake, admins
    // included: the name is taken (409) and the configured adapter keeps serving.
    for who in ["alice", "admin"] {
        let reply = env
            .api(who, Method::POST, "/adapters", Some(spec("echo", &[])))
            .await;
        assert_eq!(reply.status, S::CONFLICT, "{who}: {}", reply.text());
        assert!(
            reply.text().contains("configuration file"),
            "{}",
            reply.text()
        );
    }
    upstreams["upstreams"] = json!(["http://127.0.0.1:9"]);
    let reply = env
        .api("admin", Method::POST, "/adapters", Some(upstreams))
        .await;
    assert_eq!(reply.status, S::CREATED, "admin may: {}", reply.text());
    let listed = json_of(&env.api("admin", Method::GET, "/adapters", None).await);
    assert_eq!(
        listed.as_array().unwrap().len(),
        2,
        "refused creates left nothing: {listed}"
    );
    // A creator may not escalate its own adapter either.
    let mut escalate = spec("guarded", &["team-a"]);
    escalate["useWorkloadIdentity"] = json!(true);
    let reply = env
        .api("alice", Method::PUT, "/adapters/guarded", Some(escalate))
        .await;
    assert_eq!(reply.status, S::FORBIDDEN, "{}", reply.text());

    // Deletion: refused to the role holder and the other user, allowed to the creator.
    for who in ["bob", "carol"] {
        let reply = env
            .api(who, Method::DELETE, "/adapters/guarded", None)
            .await;
        assert_eq!(reply.status, S::FORBIDDEN, "{who}");
    }
    assert_eq!(
        env.api("anonymous", Method::DELETE, "/adapters/guarded", None)
            .await
            .status,
        S::UNAUTHORIZED
    );
    assert_eq!(
        env.api("alice", Method::DELETE, "/adapters/guarded", None)
            .await
            .status,
        S::NO_CONTENT
    );
    assert_eq!(
        env.api("admin", Method::DELETE, "/adapters/mine", None)
            .await
            .status,
        S::NO_CONTENT
    );
    env.gw.shutdown().await;
}

#[tokio::test]
async fn non_admins_may_run_only_the_images_the_operator_allows() {
    let env = Env::start().await;
    let with_image = |name: &str, image: &str| {
        let mut s = spec(name, &[]);
        s["imageName"] = json!(image);
        s
    };
    for image in [
        "docker.io/evil/miner",
        "ghcr.io/acmecorp/x",
        "docker.io/mcp/time-extra",
    ] {
        let r = env
            .api(
                "alice",
                Method::POST,
                "/adapters",
                Some(with_image("img", image)),
            )
            .await;
        assert_eq!(r.status, 403, "{image}: {}", r.text());
        assert!(r.text().contains("allowed_images"), "{}", r.text());
        assert!(r.text().contains("ghcr.io/acme/*"), "{}", r.text());
    }
    // Nothing was created by the refusals.
    let r = env.api("admin", Method::GET, "/adapters/img", None).await;
    assert_eq!(r.status, 404, "{}", r.text());
    // A listed name or prefix passes (the local runtime then runs the allowed command).
    for (name, image) in [
        ("img-a", "ghcr.io/acme/server"),
        ("img-b", "docker.io/mcp/time"),
    ] {
        let r = env
            .api(
                "alice",
                Method::POST,
                "/adapters",
                Some(with_image(name, image)),
            )
            .await;
        assert_eq!(r.status, 201, "{image}: {}", r.text());
    }
    // Not on a PUT either.
    let r = env
        .api(
            "alice",
            Method::PUT,
            "/adapters/img-a",
            Some(with_image("img-a", "quay.io/x/y")),
        )
        .await;
    assert_eq!(r.status, 403, "{}", r.text());
    // Admins run any image.
    let r = env
        .api(
            "admin",
            Method::POST,
            "/adapters",
            Some(with_image("img-c", "quay.io/x/y")),
        )
        .await;
    assert_eq!(r.status, 201, "{}", r.text());
}

#[tokio::test]
async fn a_session_belongs_to_the_principal_that_opened_it() {
    let env = Env::start().await;
    let reply = env
        .api(
            "admin",
            Method::POST,
            "/adapters",
            Some(spec("shared", &["team-a", "team-b"])),
        )
        .await;
    assert_eq!(reply.status, StatusCode::CREATED, "{}", reply.text());
    wait_ready(&env, "shared").await;

    let mut bob = env.open("bob", "shared").await.unwrap();
    assert!(
        bob.call_text("counter_increment", json!({}))
            .await
            .unwrap()
            .ends_with(":1")
    );

    // Every other principal presenting bob's session id: may use the adapter, but not bob's
    // session (404, as for a session that does not exist), whatever the method.
    for who in ["carol", "admin", "alice-with-role"] {
        let auth = match who {
            "alice-with-role" => format!("Bearer {}", env.jwt("alice", &["team-a"])),
            w => env.who(w).unwrap(),
        };
        let mut thief = McpSession::resume(&bob.url, &bob.id);
        thief.headers = vec![("authorization".into(), auth)];
        let reply = thief.call("counter_increment", json!({})).await.unwrap();
        assert_eq!(
            reply.status,
            StatusCode::NOT_FOUND,
            "{who}: {}",
            reply.text()
        );
        assert_eq!(json_of(&reply)["error"]["code"], -32001);
        let reply = thief.delete().await.unwrap();
        assert_eq!(reply.status, StatusCode::NOT_FOUND, "{who} deleting");
    }
    // Without a token: 401 before any session lookup.
    let anonymous = McpSession::resume(&bob.url, &bob.id);
    let reply = anonymous.delete().await.unwrap();
    assert_eq!(reply.status, StatusCode::UNAUTHORIZED);

    // Bob's session is untouched, with a fresh token of bob's (tokens are renewed; the
    // principal is what counts).
    bob.headers = vec![(
        "authorization".into(),
        format!("Bearer {}", env.jwt("bob", &["team-a"])),
    )];
    assert!(
        bob.call_text("counter_increment", json!({}))
            .await
            .unwrap()
            .ends_with(":2")
    );
    // Losing the role loses the session too.
    bob.headers = vec![(
        "authorization".into(),
        format!("Bearer {}", env.jwt("bob", &[])),
    )];
    assert_eq!(
        bob.call("counter_increment", json!({}))
            .await
            .unwrap()
            .status,
        StatusCode::FORBIDDEN
    );
    env.gw.shutdown().await;
}

#[tokio::test]
async fn readers_who_may_not_write_see_environment_names_but_not_values() {
    let env = Env::start().await;
    let mut body = spec("secretive", &["team-a"]);
    body["environmentVariables"] =
        json!({"API_TOKEN": "tok-123-secret", "LOG_LEVEL": "chatty-level"});
    let created = env
        .api("alice", Method::POST, "/adapters", Some(body))
        .await;
    assert_eq!(created.status, StatusCode::CREATED, "{}", created.text());
    assert_eq!(
        json_of(&created)["environmentVariables"]["API_TOKEN"],
        "tok-123-secret"
    );
    // The creator and admins may change it, so they read it whole.
    for who in ["alice", "admin"] {
        let got = json_of(&env.api(who, Method::GET, "/adapters/secretive", None).await);
        assert_eq!(
            got["environmentVariables"]["API_TOKEN"], "tok-123-secret",
            "{who}"
        );
    }
    // bob holds the adapter's role: he may read and use it, not see its secrets.
    let got = env
        .api("bob", Method::GET, "/adapters/secretive", None)
        .await;
    assert_eq!(got.status, StatusCode::OK);
    let listed = env.api("bob", Method::GET, "/adapters", None).await;
    for text in [got.text(), listed.text()] {
        assert!(!text.contains("tok-123-secret"), "{text}");
        assert!(!text.contains("chatty-level"), "{text}");
    }
    let got = json_of(&got);
    assert_eq!(
        got["environmentVariables"],
        json!({"API_TOKEN": "***", "LOG_LEVEL": "***"})
    );
    assert_eq!(
        json_of(&listed)[0]["environmentVariables"],
        got["environmentVariables"]
    );
    // Only the answer is redacted: the adapter runs (with its values).
    wait_ready(&env, "secretive").await;
    env.gw.shutdown().await;
}

#[tokio::test]
async fn replicas_see_the_identity_never_the_token() {
    let env = Env::start().await;
    let token = format!("Bearer {}", env.jwt("bob", &["team-a", "ops"]));
    let reply = Http::default()
        .post_json(
            &env.url("/adapters/echo/mcp"),
            &[
                ("authorization", &token),
                // Forged identity: dropped.
                ("x-mcp-userid", "admin"),
                ("x-mcp-roles", "mcp.admin"),
                ("cookie", "kept=1"),
            ],
            &json!({"jsonrpc": "2.0", "id": 1, "method": "tools/list"}),
        )
        .await
        .unwrap();
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.text());
    let seen = &json_of(&reply)["result"]["headers"];
    assert_eq!(seen["x-mcp-userid"], "bob");
    assert_eq!(seen["x-mcp-roles"], "team-a,ops");
    assert_eq!(seen["x-upstream-key"], "s3cret-for-upstream");
    assert!(seen.get("authorization").is_none(), "token leaked: {seen}");
    let leaked = seen.to_string();
    assert!(
        !leaked.contains(token.trim_start_matches("Bearer ")),
        "token leaked: {seen}"
    );
    env.gw.shutdown().await;
}

#[tokio::test]
async fn unauthenticated_requests_are_told_where_to_get_a_token() {
    let env = Env::start().await;
    let http = Http::default();
    for (path, resource) in [
        ("/adapters/echo/mcp", "/adapters/echo/mcp"),
        ("/adapters/echo/messages?sessionId=x", "/adapters/echo/mcp"),
        ("/adapters", ""),
    ] {
        let reply = http
            .post_json(
                &env.url(path),
                &[],
                &json!({"jsonrpc": "2.0", "id": 1, "method": "ping"}),
            )
            .await
            .unwrap();
        assert_eq!(reply.status, StatusCode::UNAUTHORIZED, "{path}");
        let challenge = reply.header("www-authenticate").unwrap().to_owned();
        let metadata_url = format!(
            "http://{}/.well-known/oauth-protected-resource{resource}",
            env.gw.data_addr
        );
        assert_eq!(
            challenge,
            format!("Bearer resource_metadata=\"{metadata_url}\""),
            "{path}"
        );
        let doc = http
            .send(Method::GET, &metadata_url, &[], Bytes::new())
            .await
            .unwrap();
        assert_eq!(doc.status, StatusCode::OK, "{metadata_url}");
        let doc = json_of(&doc);
        assert_eq!(
            doc["resource"],
            format!("http://{}{resource}", env.gw.data_addr)
        );
        assert_eq!(doc["authorization_servers"], json!([env.oidc.issuer()]));
    }

    // Bad tokens say why, in RFC 6750 terms.
    let expired = {
        let mut claims = env.oidc.claims("bob", &[], AUDIENCE);
        claims["exp"] = json!(1_000_000);
        env.oidc.token(claims)
    };
    let bad = [
        (format!("Bearer {expired}"), "invalid_token"),
        (
            format!(
                "Bearer {}",
                env.oidc.token(env.oidc.claims("bob", &[], "other-api"))
            ),
            "invalid_token",
        ),
        ("Bearer mcpgw_not-a-key".to_owned(), "invalid_token"),
        ("Basic YWxpY2U6cHc=".to_owned(), "invalid_request"),
    ];
    for (auth, error) in bad {
        let reply = http
            .post_json(
                &env.url("/adapters/echo/mcp"),
                &[("authorization", &auth)],
                &initialize_request(0),
            )
            .await
            .unwrap();
        assert_eq!(reply.status, StatusCode::UNAUTHORIZED, "{auth}");
        let challenge = reply.header("www-authenticate").unwrap();
        assert!(
            challenge.contains(&format!("error=\"{error}\"")),
            "{auth}: {challenge}"
        );
    }
    // The OpenAPI document is public; the metadata is read-only.
    let doc = http
        .send(Method::GET, &env.url("/openapi.json"), &[], Bytes::new())
        .await
        .unwrap();
    assert_eq!(doc.status, StatusCode::OK);
    let post = http
        .send(
            Method::POST,
            &env.url("/.well-known/oauth-protected-resource"),
            &[],
            Bytes::new(),
        )
        .await
        .unwrap();
    assert_eq!(post.status, StatusCode::METHOD_NOT_ALLOWED);
    env.gw.shutdown().await;
}

#[tokio::test]
async fn with_no_auth_configured_an_admin_key_is_created_once() {
    let dir = tempfile::tempdir().unwrap();
    let start = || async {
        let mut config = Config::for_tests();
        config.management = true;
        config.data_dir = dir.path().to_path_buf();
        config.auth.tokens = Some(AuthConfig::default());
        gateway_service::run(config).await.expect("gateway starts")
    };
    let gw = start().await;
    let key_path = dir.path().join(gateway_service::ADMIN_KEY_FILE);
    let key = std::fs::read_to_string(&key_path)
        .unwrap()
        .trim()
        .to_owned();
    {
        use std::os::unix::fs::PermissionsExt as _;
        let mode = std::fs::metadata(&key_path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
    }
    let url = format!("http://{}/adapters", gw.data_addr);
    let http = Http::default();
    let anonymous = http
        .send(Method::GET, &url, &[], Bytes::new())
        .await
        .unwrap();
    assert_eq!(anonymous.status, StatusCode::UNAUTHORIZED);
    let bearer = format!("Bearer {key}");
    let ok = http
        .send(
            Method::GET,
            &url,
            &[("authorization", &bearer)],
            Bytes::new(),
        )
        .await
        .unwrap();
    assert_eq!(ok.status, StatusCode::OK, "{}", ok.text());
    gw.shutdown().await;

    // Restarted: the same key, not a new one.
    let gw = start().await;
    assert_eq!(std::fs::read_to_string(&key_path).unwrap().trim(), key);
    let url = format!("http://{}/adapters", gw.data_addr);
    let ok = http
        .send(
            Method::GET,
            &url,
            &[("authorization", &bearer)],
            Bytes::new(),
        )
        .await
        .unwrap();
    assert_eq!(ok.status, StatusCode::OK);
    gw.shutdown().await;

    // Keys configured for others later: the admin key still works until its file is deleted.
    let with_keys = |dir: &std::path::Path| {
        let mut config = Config::for_tests();
        config.management = true;
        config.data_dir = dir.to_path_buf();
        config.auth.tokens = Some(AuthConfig {
            api_keys: vec![ApiKeyConfig {
                subject: "carol".into(),
                roles: vec![],
                sha256: hash_api_key(CAROL_KEY),
            }],
            ..AuthConfig::default()
        });
        config
    };
    let get = |url: String, token: String| async move {
        Http::default()
            .send(
                Method::GET,
                &url,
                &[("authorization", &token)],
                Bytes::new(),
            )
            .await
            .unwrap()
            .status
    };
    let gw = gateway_service::run(with_keys(dir.path())).await.unwrap();
    let url = format!("http://{}/adapters", gw.data_addr);
    assert_eq!(get(url.clone(), bearer.clone()).await, StatusCode::OK);
    assert_eq!(
        get(url, format!("Bearer {CAROL_KEY}")).await,
        StatusCode::OK
    );
    gw.shutdown().await;
    std::fs::remove_file(&key_path).unwrap();
    let gw = gateway_service::run(with_keys(dir.path())).await.unwrap();
    let url = format!("http://{}/adapters", gw.data_addr);
    assert_eq!(
        get(url, bearer).await,
        StatusCode::UNAUTHORIZED,
        "deleting admin.key revokes it"
    );
    assert!(
        !key_path.exists(),
        "not recreated while keys are configured"
    );
    gw.shutdown().await;
}

#[tokio::test]
async fn deleting_admin_key_revokes_it_at_once_and_a_new_file_holds_a_new_key() {
    use std::os::unix::fs::PermissionsExt as _;
    let dir = tempfile::tempdir().unwrap();
    let mut config = Config::for_tests();
    config.management = true;
    config.data_dir = dir.path().join("data");
    config.auth.tokens = Some(AuthConfig::default());
    let gw = gateway_service::run(config).await.expect("gateway starts");
    let data = dir.path().join("data");
    assert_eq!(
        std::fs::metadata(&data).unwrap().permissions().mode() & 0o777,
        0o700,
        "the data directory is private"
    );
    let key_path = data.join(gateway_service::ADMIN_KEY_FILE);
    let key = std::fs::read_to_string(&key_path)
        .unwrap()
        .trim()
        .to_owned();
    let url = format!("http://{}/adapters", gw.data_addr);
    let status = |key: String| {
        let url = url.clone();
        async move {
            Http::default()
                .send(
                    Method::GET,
                    &url,
                    &[("authorization", &format!("Bearer {key}"))],
                    Bytes::new(),
                )
                .await
                .unwrap()
                .status
        }
    };
    assert_eq!(status(key.clone()).await, StatusCode::OK);
    std::fs::remove_file(&key_path).unwrap();
    assert_eq!(
        status(key.clone()).await,
        StatusCode::UNAUTHORIZED,
        "revoked without a restart"
    );
    // The operator puts a new key in place: it works, the old one stays revoked.
    let new_key = mcp_gateway_auth::generate_api_key();
    std::fs::write(&key_path, format!("{new_key}\n")).unwrap();
    std::fs::set_permissions(&key_path, std::fs::Permissions::from_mode(0o600)).unwrap();
    assert_eq!(status(new_key.clone()).await, StatusCode::OK);
    assert_eq!(status(key).await, StatusCode::UNAUTHORIZED);
    // A key file others may read is refused, as at start.
    std::fs::set_permissions(&key_path, std::fs::Permissions::from_mode(0o644)).unwrap();
    assert_eq!(status(new_key).await, StatusCode::UNAUTHORIZED);
    gw.shutdown().await;
}

#[tokio::test]
async fn running_without_auth_is_refused_off_loopback() {
    let parse = |argv: &[&str]| {
        let mut all = vec!["gateway-service"];
        all.extend_from_slice(argv);
        Config::resolve(<gateway_service::Args as clap::Parser>::try_parse_from(all).unwrap())
    };
    let err = parse(&["--listen", "0.0.0.0:0", "--insecure-no-auth"]).unwrap_err();
    assert!(format!("{err:#}").contains("loopback"), "{err:#}");
    assert!(parse(&["--listen", "127.0.0.1:0", "--insecure-no-auth"]).is_ok());
    assert!(
        parse(&["--listen", "0.0.0.0:0"]).is_ok(),
        "with auth, any address"
    );
}

#[tokio::test]
async fn a_resource_bound_token_opens_its_adapter_only() {
    let oidc = OidcServer::start().await.unwrap();
    let echo = header_echo().await;
    let dir = tempfile::tempdir().unwrap();
    let mut config = Config::for_tests();
    config.data_dir = dir.path().to_path_buf();
    config.auth.public_url = Some("https://mcp.example.com".into());
    let mut issuer = IssuerConfig::new(oidc.issuer(), vec![AUDIENCE.into()]);
    issuer.resource_audiences = true;
    config.auth.tokens = Some(AuthConfig {
        issuers: vec![issuer],
        ..AuthConfig::default()
    });
    let adapter = |name: &str| gateway_service::AdapterConfig {
        name: mcp_gateway_core::AdapterName::new(name).unwrap(),
        upstreams: vec![format!("http://{echo}")],
        mcp_path: "/mcp".into(),
        sse_path: "/sse".into(),
        required_roles: Vec::new(),
        upstream_headers: Default::default(),
    };
    config.adapters = vec![adapter("gh"), adapter("jira")];
    let gw = gateway_service::run(config).await.unwrap();
    let call = |adapter: &'static str, token: String| {
        let url = format!("http://{}/adapters/{adapter}/mcp", gw.data_addr);
        async move {
            Http::default()
                .post_json(
                    &url,
                    &[("authorization", &format!("Bearer {token}"))],
                    &json!({"jsonrpc": "2.0", "id": 1, "method": "tools/list"}),
                )
                .await
                .unwrap()
                .status
        }
    };
    // Asked for with resource=https://mcp.example.com/adapters/gh/mcp (RFC 8707).
    let bound = oidc.token(oidc.claims("bob", &[], "https://mcp.example.com/adapters/gh/mcp"));
    assert_eq!(call("gh", bound.clone()).await, StatusCode::OK);
    assert_eq!(call("jira", bound).await, StatusCode::UNAUTHORIZED);
    // A token for the gateway as a whole opens both.
    let whole = oidc.token(oidc.claims("bob", &[], AUDIENCE));
    assert_eq!(call("gh", whole.clone()).await, StatusCode::OK);
    assert_eq!(call("jira", whole).await, StatusCode::OK);
    gw.shutdown().await;
}

#[tokio::test]
async fn one_caller_cannot_take_every_session_quota_429_with_retry_after() {
    const ALICE: &str = "mcpgw_test-alice-key-0123456789";
    const BOB: &str = "mcpgw_test-bob-key-012345678901";
    let replicas = mcp_gateway_testkit::Replicas::start(1).await.unwrap();
    let mut config = Config::for_tests();
    config.routing.max_sessions = 6;
    config.routing.max_sessions_per_principal = 3;
    config.auth.tokens = Some(AuthConfig {
        api_keys: [("alice", ALICE), ("bob", BOB)]
            .into_iter()
            .map(|(subject, key)| ApiKeyConfig {
                subject: subject.into(),
                roles: Vec::new(),
                sha256: hash_api_key(key),
            })
            .collect(),
        ..AuthConfig::default()
    });
    config.adapters = vec![gateway_service::AdapterConfig {
        name: mcp_gateway_core::AdapterName::new("demo").unwrap(),
        upstreams: replicas.urls(),
        mcp_path: "/mcp".into(),
        sse_path: "/sse".into(),
        required_roles: Vec::new(),
        upstream_headers: Default::default(),
    }];
    let gw = gateway_service::run(config).await.expect("gateway starts");
    let url = format!("http://{}/adapters/demo/mcp", gw.data_addr);
    let (alice, bob) = (format!("Bearer {ALICE}"), format!("Bearer {BOB}"));
    let as_alice = [("authorization", alice.as_str())];

    let mut held = Vec::new();
    for _ in 0..3 {
        held.push(McpSession::open_with(&url, &as_alice).await.unwrap());
    }
    let refused = Http::default()
        .post_json(&url, &as_alice, &initialize_request(7))
        .await
        .unwrap();
    assert_eq!(
        refused.status,
        StatusCode::TOO_MANY_REQUESTS,
        "{}",
        refused.text()
    );
    let retry: u64 = refused.header("retry-after").unwrap().parse().unwrap();
    assert!(
        (3000..=3600).contains(&retry),
        "until the oldest idle session expires: {retry}"
    );
    let body = json_of(&refused);
    assert_eq!(body["id"], 7);
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("alice holds 3 live sessions"),
        "{body}"
    );
    // The legacy transport counts against the same quota.
    let sse = Http::default()
        .send(
            Method::GET,
            &format!("http://{}/adapters/demo/sse", gw.data_addr),
            &[("authorization", alice.as_str())],
            Bytes::new(),
        )
        .await
        .unwrap();
    assert_eq!(sse.status, StatusCode::TOO_MANY_REQUESTS);

    // Everyone else still gets sessions.
    let mut bobs = McpSession::open_with(&url, &[("authorization", bob.as_str())])
        .await
        .expect("another caller is not affected");
    assert_eq!(bobs.call_text("whoami", json!({})).await.unwrap(), "r0");
    // Ending one of alice's sessions frees a place.
    assert!(
        held.pop()
            .unwrap()
            .delete()
            .await
            .unwrap()
            .status
            .is_success()
    );
    McpSession::open_with(&url, &as_alice)
        .await
        .expect("back under the quota");
    gw.shutdown().await;
}
