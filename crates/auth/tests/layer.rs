//! The tower layer: a principal for the inner service, or the rejecter's response.

mod common;

use std::convert::Infallible;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use common::{AUD, bearer, config, issuer};
use http::{Request, Response, StatusCode};
use mcp_gateway_auth::{AuthError, AuthLayer, Authenticator};
use mcp_gateway_core::Principal;
use mcp_gateway_testkit::oidc::OidcServer;
use tower::{Layer as _, ServiceExt as _, service_fn};

fn reject(_: &http::request::Parts, err: &AuthError) -> Response<String> {
    let status = match err {
        AuthError::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
        _ => StatusCode::UNAUTHORIZED,
    };
    Response::builder()
        .status(status)
        .body(format!("{}: {err}", err.reason()))
        .unwrap()
}

#[tokio::test]
async fn layer_hands_the_principal_to_the_inner_service_or_rejects() {
    let idp = OidcServer::start().await.unwrap();
    let auth = Authenticator::new(config(vec![issuer(&idp)])).unwrap();
    let calls = Arc::new(AtomicUsize::new(0));
    let inner = {
        let calls = calls.clone();
        service_fn(move |req: Request<()>| {
            calls.fetch_add(1, Ordering::SeqCst);
            let who = req.extensions().get::<Principal>().cloned();
            async move { Ok::<_, Infallible>(Response::new(format!("hello {}", who.unwrap().subject))) }
        })
    };
    let svc = AuthLayer::new(auth, reject).layer(inner);

    let token = idp.token(idp.claims("alice", &[], AUD));
    let mut req = Request::new(());
    *req.headers_mut() = bearer(&token);
    let resp = svc.clone().oneshot(req).await.unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(resp.body(), "hello alice");
    assert_eq!(calls.load(Ordering::SeqCst), 1);

    let resp = svc.clone().oneshot(Request::new(())).await.unwrap();
    assert_eq!(resp.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(resp.body(), "missing: no Authorization header");
    let mut req = Request::new(());
    *req.headers_mut() = bearer("mcpgw_nope");
    let resp = svc.oneshot(req).await.unwrap();
    assert_eq!(resp.body(), "unknown_key: unknown API key");
    assert_eq!(
        calls.load(Ordering::SeqCst),
        1,
        "inner not called on failure"
    );
}
