//! A real OIDC issuer for tests: discovery document and JWKS over HTTP on `127.0.0.1:0`,
//! key rotation, and tokens good and bad.
//!
//! ```no_run
//! # async fn demo() -> anyhow::Result<()> {
//! use mcp_gateway_testkit::oidc::OidcServer;
//! let idp = OidcServer::start().await?;
//! let token = idp.token(idp.claims("alice", &["mcp.admin"], "gw"));
//! let old = idp.signing_kid();
//! let new_kid = idp.rotate(); // published and signing; `old` still published
//! idp.retire(&old);           // now only `new_kid` is published
//! # Ok(()) }
//! ```
//!
//! RSA keys (2048 bit) are slow to generate in debug builds, so they come from a
//! process-wide pool generated on first use and shared by every server of the process; one
//! server never uses the same pool key twice.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use bytes::Bytes;
use http::{Request, Response, StatusCode, header};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::{Value, json};
use tokio::net::TcpListener;
use tokio::task::{JoinHandle, JoinSet};

// === keys ===

/// A signing key of a test issuer: its private half signs, its public half is its JWK.
#[derive(Clone)]
pub struct TestKey {
    kid: String,
    alg: Algorithm,
    encoding: EncodingKey,
    jwk: Value,
    public_pem: String,
}

impl TestKey {
    /// The `n`-th RSA key of the process-wide pool (RS256), named `kid`.
    pub fn rsa(n: usize, kid: impl Into<String>) -> Self {
        let m = rsa_material(n);
        let kid = kid.into();
        TestKey {
            jwk: json!({"kty": "RSA", "kid": kid, "alg": "RS256", "use": "sig", "n": m.n, "e": m.e}),
            kid,
            alg: Algorithm::RS256,
            encoding: m.encoding.clone(),
            public_pem: m.public_pem.clone(),
        }
    }

    /// A fresh P-256 key (ES256), named `kid`.
    pub fn ec(kid: impl Into<String>) -> Self {
        use p256::ecdsa::SigningKey;
        use p256::elliptic_curve::rand_core::OsRng;
        use p256::pkcs8::{EncodePrivateKey as _, EncodePublicKey as _, LineEnding};
        let secret = SigningKey::random(&mut OsRng);
        let point = secret.verifying_key().to_encoded_point(false);
        let (Some(x), Some(y)) = (point.x(), point.y()) else {
            unreachable!("an uncompressed point has coordinates")
        };
        let der = secret
            .to_pkcs8_der()
            .unwrap_or_else(|e| panic!("P-256 key to PKCS#8: {e}"));
        let public_pem = secret
            .verifying_key()
            .to_public_key_pem(LineEnding::LF)
            .unwrap_or_else(|e| panic!("P-256 public key to PEM: {e}"));
        let kid = kid.into();
        TestKey {
            jwk: json!({
                "kty": "EC", "crv": "P-256", "kid": kid, "alg": "ES256", "use": "sig",
                "x": URL_SAFE_NO_PAD.encode(x), "y": URL_SAFE_NO_PAD.encode(y),
            }),
            kid,
            alg: Algorithm::ES256,
            encoding: EncodingKey::from_ec_der(der.as_bytes()),
            public_pem,
        }
    }

    pub fn kid(&self) -> &str {
        &self.kid
    }

    pub fn alg(&self) -> Algorithm {
        self.alg
    }

    /// The public JWK as published.
    pub fn jwk(&self) -> &Value {
        &self.jwk
    }

    /// The public key as SPKI PEM (what an attacker would use as an HMAC secret).
    pub fn public_key_pem(&self) -> &str {
        &self.public_pem
    }

    /// A JWT over `claims`, header `alg` of the key and `kid` of the key.
    pub fn sign(&self, claims: &Value) -> String {
        self.sign_as(Some(&self.kid), claims)
    }

    /// A JWT over `claims` with the given header `kid` (or none).
    pub fn sign_as(&self, kid: Option<&str>, claims: &Value) -> String {
        let mut header = Header::new(self.alg);
        header.kid = kid.map(str::to_owned);
        jsonwebtoken::encode(&header, claims, &self.encoding)
            .unwrap_or_else(|e| panic!("signing a test token: {e}"))
    }
}

/// An HS256 JWT whose HMAC secret is `secret` (e.g. an RSA public key's PEM: the
/// algorithm-confusion attack).
pub fn hs256_token(secret: &[u8], kid: Option<&str>, claims: &Value) -> String {
    let mut header = Header::new(Algorithm::HS256);
    header.kid = kid.map(str::to_owned);
    jsonwebtoken::encode(&header, claims, &EncodingKey::from_secret(secret))
        .unwrap_or_else(|e| panic!("signing a test token: {e}"))
}

/// An unsigned JWT (`alg: none`, empty signature), crafted by hand.
pub fn unsigned_token(kid: Option<&str>, claims: &Value) -> String {
    let mut header = json!({"alg": "none", "typ": "JWT"});
    if let Some(kid) = kid {
        header["kid"] = json!(kid);
    }
    let enc = |v: &Value| URL_SAFE_NO_PAD.encode(v.to_string());
    format!("{}.{}.", enc(&header), enc(claims))
}

/// Seconds since the epoch.
pub fn now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}

struct RsaMaterial {
    encoding: EncodingKey,
    n: String,
    e: String,
    public_pem: String,
}

static RSA_POOL: Mutex<Vec<Arc<RsaMaterial>>> = Mutex::new(Vec::new());

/// The `n`-th pool key, generating keys up to it on first use.
fn rsa_material(n: usize) -> Arc<RsaMaterial> {
    use rsa::pkcs1::EncodeRsaPrivateKey as _;
    use rsa::pkcs8::{EncodePublicKey as _, LineEnding};
    use rsa::traits::PublicKeyParts as _;
    let mut pool = RSA_POOL.lock().unwrap_or_else(PoisonError::into_inner);
    while pool.len() <= n {
        let private = rsa::RsaPrivateKey::new(&mut rsa::rand_core::OsRng, 2048)
            .unwrap_or_else(|e| panic!("RSA key generation: {e}"));
        let public = private.to_public_key();
        let der = private
            .to_pkcs1_der()
            .unwrap_or_else(|e| panic!("RSA key to PKCS#1: {e}"));
        pool.push(Arc::new(RsaMaterial {
            encoding: EncodingKey::from_rsa_der(der.as_bytes()),
            n: URL_SAFE_NO_PAD.encode(public.n().to_bytes_be()),
            e: URL_SAFE_NO_PAD.encode(public.e().to_bytes_be()),
            public_pem: public
                .to_public_key_pem(LineEnding::LF)
                .unwrap_or_else(|e| panic!("RSA public key to PEM: {e}")),
        }));
    }
    pool[n].clone()
}

// === OidcServer ===

struct Keys {
    published: Vec<TestKey>,
    signing: TestKey,
    /// The next pool index this server has not used.
    next: usize,
}

struct State {
    issuer: String,
    /// The `issuer` the discovery document claims, when not the real one.
    claimed_issuer: Mutex<Option<String>>,
    keys: Mutex<Keys>,
    jwks_fetches: AtomicUsize,
    discovery_fetches: AtomicUsize,
}

impl State {
    fn keys(&self) -> std::sync::MutexGuard<'_, Keys> {
        self.keys.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// An OIDC issuer on `127.0.0.1:0` serving `/.well-known/openid-configuration` and `/jwks`.
pub struct OidcServer {
    addr: SocketAddr,
    state: Arc<State>,
    /// The accept loop; it owns the connection tasks, so aborting it closes every connection.
    task: Option<JoinHandle<()>>,
}

impl OidcServer {
    /// Starts an issuer publishing one RSA key (kid `key-0`), which signs [`Self::token`].
    pub async fn start() -> anyhow::Result<Self> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let first = TestKey::rsa(0, "key-0");
        let state = Arc::new(State {
            issuer: format!("http://{addr}"),
            claimed_issuer: Mutex::new(None),
            keys: Mutex::new(Keys {
                published: vec![first.clone()],
                signing: first,
                next: 1,
            }),
            jwks_fetches: AtomicUsize::new(0),
            discovery_fetches: AtomicUsize::new(0),
        });
        let task = tokio::spawn(accept(listener, state.clone()));
        Ok(Self {
            addr,
            state,
            task: Some(task),
        })
    }

    /// `http://127.0.0.1:PORT`: the `iss` of its tokens and the discovery base.
    pub fn issuer(&self) -> String {
        self.state.issuer.clone()
    }

    /// `{issuer}/jwks`.
    pub fn jwks_uri(&self) -> String {
        format!("{}/jwks", self.state.issuer)
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// How many times `/jwks` was fetched.
    pub fn jwks_fetches(&self) -> usize {
        self.state.jwks_fetches.load(Ordering::SeqCst)
    }

    /// How many times the discovery document was fetched.
    pub fn discovery_fetches(&self) -> usize {
        self.state.discovery_fetches.load(Ordering::SeqCst)
    }

    /// The kid of the current signing key.
    pub fn signing_kid(&self) -> String {
        self.state.keys().signing.kid.clone()
    }

    /// The current signing key.
    pub fn signing_key(&self) -> TestKey {
        self.state.keys().signing.clone()
    }

    /// Publishes a new RSA key and makes it the signing key; returns its kid. The previous
    /// keys stay published until [`Self::retire`]d.
    pub fn rotate(&self) -> String {
        let mut keys = self.state.keys();
        let n = keys.next;
        keys.next += 1;
        let key = TestKey::rsa(n, format!("key-{n}"));
        keys.published.push(key.clone());
        keys.signing = key;
        keys.signing.kid.clone()
    }

    /// Stops publishing the key `kid` (it still signs if it is the signing key).
    pub fn retire(&self, kid: &str) {
        self.state.keys().published.retain(|k| k.kid != kid);
    }

    /// Publishes `key` as well (e.g. an EC key from [`TestKey::ec`]).
    pub fn publish(&self, key: &TestKey) {
        self.state.keys().published.push(key.clone());
    }

    /// An RSA key this server has never published and never will, named `kid` (which may
    /// be a published kid: then its tokens have a bad signature).
    pub fn unpublished_key(&self, kid: &str) -> TestKey {
        let mut keys = self.state.keys();
        let n = keys.next;
        keys.next += 1;
        TestKey::rsa(n, kid)
    }

    /// A token over `claims`, RS256, signed by the current key with its kid.
    pub fn token(&self, claims: Value) -> String {
        self.signing_key().sign(&claims)
    }

    /// Claims of a token valid now for five minutes: `iss` this issuer, `sub`, `aud`,
    /// `roles`, `iat`, `nbf`, `exp`.
    pub fn claims(&self, sub: &str, roles: &[&str], aud: &str) -> Value {
        let now = now();
        json!({
            "iss": self.state.issuer,
            "sub": sub,
            "aud": aud,
            "roles": roles,
            "iat": now,
            "nbf": now,
            "exp": now + 300,
        })
    }

    /// Makes the discovery document claim `issuer` instead of the real one (a
    /// misconfigured or impostor issuer).
    pub fn claim_issuer(&self, issuer: &str) {
        *self
            .state
            .claimed_issuer
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = Some(issuer.to_owned());
    }

    /// Stops serving: the port refuses connections, open connections are closed.
    pub async fn stop(&mut self) {
        if let Some(task) = self.task.take() {
            task.abort();
            let _ = task.await;
        }
    }
}

impl Drop for OidcServer {
    fn drop(&mut self) {
        if let Some(task) = self.task.take() {
            task.abort();
        }
    }
}

async fn accept(listener: TcpListener, state: Arc<State>) {
    let mut conns = JoinSet::new();
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        let state = state.clone();
        conns.spawn(async move {
            let svc = service_fn(move |req| {
                let state = state.clone();
                async move { Ok::<_, Infallible>(handle(&state, &req)) }
            });
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), svc)
                .await;
        });
        while conns.try_join_next().is_some() {}
    }
}

fn handle(state: &State, req: &Request<Incoming>) -> Response<Full<Bytes>> {
    let body = match req.uri().path() {
        "/.well-known/openid-configuration" => {
            state.discovery_fetches.fetch_add(1, Ordering::SeqCst);
            let claimed = state
                .claimed_issuer
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .clone();
            json!({
                "issuer": claimed.unwrap_or_else(|| state.issuer.clone()),
                "jwks_uri": format!("{}/jwks", state.issuer),
                "id_token_signing_alg_values_supported": ["RS256", "ES256"],
            })
        }
        "/jwks" => {
            state.jwks_fetches.fetch_add(1, Ordering::SeqCst);
            let keys: Vec<Value> = state
                .keys()
                .published
                .iter()
                .map(|k| k.jwk.clone())
                .collect();
            json!({ "keys": keys })
        }
        _ => {
            return Response::builder()
                .status(StatusCode::NOT_FOUND)
                .body(Full::new(Bytes::new()))
                .unwrap_or_default();
        }
    };
    Response::builder()
        .header(header::CONTENT_TYPE, "application/json")
        .body(Full::new(Bytes::from(body.to_string())))
        .unwrap_or_default()
}
