//! A tower layer that authenticates each request and hands the [`Principal`] to the inner
//! service as a request extension.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use http::{Request, Response};
use mcp_gateway_core::Principal;
use tower::{Layer, Service};

use crate::{AuthError, Authenticator};

/// Builds the response to a request that failed authentication (typically 401 with a
/// `WWW-Authenticate: Bearer error="invalid_token", error_description="…"` header, 503 for
/// [`AuthError::Unavailable`]).
pub trait Reject<B>: Clone + Send + Sync + 'static {
    fn reject(&self, req: &http::request::Parts, err: &AuthError) -> Response<B>;
}

impl<B, F> Reject<B> for F
where
    F: Fn(&http::request::Parts, &AuthError) -> Response<B> + Clone + Send + Sync + 'static,
{
    fn reject(&self, req: &http::request::Parts, err: &AuthError) -> Response<B> {
        self(req, err)
    }
}

/// Wraps a service in [`AuthService`].
#[derive(Clone)]
pub struct AuthLayer<R> {
    auth: Authenticator,
    reject: R,
}

impl<R> AuthLayer<R> {
    pub fn new(auth: Authenticator, reject: R) -> Self {
        Self { auth, reject }
    }
}

impl<S, R: Clone> Layer<S> for AuthLayer<R> {
    type Service = AuthService<S, R>;

    fn layer(&self, inner: S) -> Self::Service {
        AuthService {
            inner,
            auth: self.auth.clone(),
            reject: self.reject.clone(),
        }
    }
}

/// Authenticates each request: on success inserts the [`Principal`] into the request's
/// extensions and calls the inner service; on failure answers with the [`Reject`]er's
/// response without calling it. Headers are passed on unchanged.
#[derive(Clone)]
pub struct AuthService<S, R> {
    inner: S,
    auth: Authenticator,
    reject: R,
}

impl<S, R> AuthService<S, R> {
    pub fn new(inner: S, auth: Authenticator, reject: R) -> Self {
        Self {
            inner,
            auth,
            reject,
        }
    }
}

type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send + 'static>>;

impl<S, R, ReqB, B> Service<Request<ReqB>> for AuthService<S, R>
where
    S: Service<Request<ReqB>, Response = Response<B>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    R: Reject<B>,
    ReqB: Send + 'static,
    B: 'static,
{
    type Response = Response<B>;
    type Error = S::Error;
    type Future = BoxFuture<Result<Response<B>, S::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<ReqB>) -> Self::Future {
        // The clone is not ready; keep the ready one for this request.
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        let auth = self.auth.clone();
        let reject = self.reject.clone();
        Box::pin(async move {
            let (mut parts, body) = req.into_parts();
            match auth.authenticate(&parts.headers).await {
                Ok(principal) => {
                    parts.extensions.insert::<Principal>(principal);
                    inner.call(Request::from_parts(parts, body)).await
                }
                Err(err) => Ok(reject.reject(&parts, &err)),
            }
        })
    }
}
