//! A tower layer that authenticates each request and hands the [`Principal`] to the inner
//! service as a request extension.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
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
    resources: Option<Resources>,
}

/// The protected resource URLs a request is for (see [`AuthLayer::with_resources`]).
pub type Resources = Arc<dyn Fn(&http::request::Parts) -> Vec<String> + Send + Sync>;

impl<R> AuthLayer<R> {
    pub fn new(auth: Authenticator, reject: R) -> Self {
        Self {
            auth,
            reject,
            resources: None,
        }
    }

    /// What refuses the requests that fail authentication.
    pub fn refusal(&self) -> &R {
        &self.reject
    }

    /// Names the protected resource of each request (its URLs), so that tokens bound to it
    /// (`aud` = its URL, RFC 8707) are accepted where the issuer allows it
    /// ([`IssuerConfig::resource_audiences`](crate::IssuerConfig::resource_audiences)).
    pub fn with_resources(mut self, resources: Resources) -> Self {
        self.resources = Some(resources);
        self
    }
}

impl<S, R: Clone> Layer<S> for AuthLayer<R> {
    type Service = AuthService<S, R>;

    fn layer(&self, inner: S) -> Self::Service {
        AuthService {
            inner,
            auth: self.auth.clone(),
            reject: self.reject.clone(),
            resources: self.resources.clone(),
        }
    }
}

/// Authenticates each request: on success inserts the [`Principal`] into the request's
/// extensions and calls the inner service; on failure answers with the [`Reject`]er's
/// response without calling it. Headers are passed on unchanged.
///
/// `gateway-service`'s front (`Front::serve`) takes the same decision itself for what
/// [`Authenticator::authenticate_now`] decides, before this layer: what this service does to
/// a request must be done there too.
///
/// Spawning its future where the response body holds a boxed error (`hyper` style bodies):
/// box it where the types are concrete, outside an `async` block
/// (`let f: BoxFuture<_> = Box::pin(svc.oneshot(req));`); awaited inside an `async` block that
/// must be `Send`, the compiler cannot prove it for every lifetime (rust-lang/rust#102211).
#[derive(Clone)]
pub struct AuthService<S, R> {
    inner: S,
    auth: Authenticator,
    reject: R,
    resources: Option<Resources>,
}

impl<S, R> AuthService<S, R> {
    pub fn new(inner: S, auth: Authenticator, reject: R) -> Self {
        Self {
            inner,
            auth,
            reject,
            resources: None,
        }
    }
}

/// What authenticating a request resolves to (no response type inside, so the future of
/// [`AuthService`] stays `Send` whatever body the inner service answers with).
type Waiting = Pin<Box<dyn Future<Output = Result<Principal, AuthError>> + Send>>;

impl<S, R, ReqB, B> Service<Request<ReqB>> for AuthService<S, R>
where
    S: Service<Request<ReqB>, Response = Response<B>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    R: Reject<B>,
    ReqB: Send + 'static,
{
    type Response = Response<B>;
    type Error = S::Error;
    type Future = AuthFuture<S, R, ReqB>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<ReqB>) -> Self::Future {
        // The clone is not ready; keep the ready one for this request.
        let clone = self.inner.clone();
        let inner = std::mem::replace(&mut self.inner, clone);
        let (parts, body) = req.into_parts();
        // An API key (or a missing or malformed header) is decided here, with nothing to box
        // or copy; only a JWT may have to wait for its issuer's keys.
        let authenticating = match self.auth.authenticate_now(&parts.headers) {
            Some(outcome) => Authenticating::Decided(Some(outcome)),
            None => {
                let auth = self.auth.clone();
                let resources = self
                    .resources
                    .as_ref()
                    .map(|f| f(&parts))
                    .unwrap_or_default();
                // Only what authentication reads, so the request's headers need not be copied.
                let mut headers = http::HeaderMap::new();
                for value in parts.headers.get_all(http::header::AUTHORIZATION) {
                    headers.append(http::header::AUTHORIZATION, value.clone());
                }
                Authenticating::Waiting(Box::pin(async move {
                    auth.authenticate_for(&headers, &resources).await
                }))
            }
        };
        AuthFuture {
            state: State::Authenticating {
                authenticating,
                request: Some((parts, body)),
                inner: Some(inner),
                reject: self.reject.clone(),
            },
        }
    }
}

/// Where authenticating a request stands when its future is first polled.
enum Authenticating {
    /// Decided in [`AuthService::call`] (taken on the first poll).
    Decided(Option<Result<Principal, AuthError>>),
    Waiting(Waiting),
}

impl Authenticating {
    fn poll(&mut self, cx: &mut Context<'_>) -> Poll<Result<Principal, AuthError>> {
        match self {
            Authenticating::Decided(outcome) => {
                Poll::Ready(outcome.take().expect("AuthFuture polled after completion"))
            }
            Authenticating::Waiting(future) => future.as_mut().poll(cx),
        }
    }
}

pin_project_lite::pin_project! {
    /// The future of [`AuthService`]: authenticating, then the inner service's call.
    pub struct AuthFuture<S, R, ReqB>
    where
        S: Service<Request<ReqB>>,
    {
        #[pin]
        state: State<S, R, ReqB>,
    }
}

pin_project_lite::pin_project! {
    #[project = StateProj]
    enum State<S, R, ReqB>
    where
        S: Service<Request<ReqB>>,
    {
        Authenticating {
            authenticating: Authenticating,
            request: Option<(http::request::Parts, ReqB)>,
            inner: Option<S>,
            reject: R,
        },
        Calling {
            #[pin]
            future: S::Future,
        },
    }
}

impl<S, R, ReqB, B> Future for AuthFuture<S, R, ReqB>
where
    S: Service<Request<ReqB>, Response = Response<B>>,
    R: Reject<B>,
{
    type Output = Result<Response<B>, S::Error>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut this = self.project();
        loop {
            match this.state.as_mut().project() {
                StateProj::Authenticating {
                    authenticating,
                    request,
                    inner,
                    reject,
                } => {
                    let outcome = std::task::ready!(authenticating.poll(cx));
                    let (Some((mut parts, body)), Some(mut inner)) = (request.take(), inner.take())
                    else {
                        panic!("AuthFuture polled after completion");
                    };
                    match outcome {
                        Ok(principal) => {
                            parts.extensions.insert::<Principal>(principal);
                            let future = inner.call(Request::from_parts(parts, body));
                            this.state.set(State::Calling { future });
                        }
                        Err(err) => return Poll::Ready(Ok(reject.reject(&parts, &err))),
                    }
                }
                StateProj::Calling { future } => return future.poll(cx),
            }
        }
    }
}
