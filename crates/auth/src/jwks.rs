//! An issuer's signing keys: fetched over HTTP (OIDC discovery, then the JWKS), cached,
//! refreshed when stale or when a token names an unknown `kid`, one fetch at a time.

use std::sync::{Arc, RwLock};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, StatusCode, header};
use http_body_util::{BodyExt as _, Empty, Limited};
use hyper_tls::HttpsConnector;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use jsonwebtoken::jwk::{
    AlgorithmParameters, EllipticCurve, Jwk, KeyAlgorithm, KeyOperations, PublicKeyUse,
};
use jsonwebtoken::{Algorithm, DecodingKey};
use serde::Deserialize;
use serde::de::DeserializeOwned;
use tokio::sync::Mutex;
use tokio::time::Instant;

use crate::ConfigError;
use crate::config::{Issuer, acceptable_fetch_url};

/// Largest discovery document or JWKS accepted.
const MAX_BODY: usize = 1024 * 1024;

// === Key ===

/// The key type and curve of a JWK, which fixes the algorithms it may verify.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum KeyType {
    Rsa,
    P256,
    P384,
    Ed25519,
}

/// A usable public signing key of an issuer.
pub(crate) struct Key {
    pub kid: Option<String>,
    /// The JWK's own `alg`, when it names one: then the key verifies only that algorithm.
    alg: Option<Algorithm>,
    key_type: KeyType,
    pub decoding: DecodingKey,
}

impl Key {
    /// A JWK usable for signature verification, or why not.
    fn from_jwk(jwk: &Jwk) -> Result<Self, &'static str> {
        let common = &jwk.common;
        if matches!(&common.public_key_use, Some(u) if *u != PublicKeyUse::Signature) {
            return Err("not a signature key (use)");
        }
        if let Some(ops) = &common.key_operations
            && !ops.iter().any(|o| matches!(o, KeyOperations::Verify))
        {
            return Err("not a verification key (key_ops)");
        }
        let alg = match common.key_algorithm {
            None => None,
            Some(KeyAlgorithm::HS256 | KeyAlgorithm::HS384 | KeyAlgorithm::HS512) => {
                return Err("symmetric algorithm");
            }
            Some(a) => Some(Algorithm::try_from(a).map_err(|_| "not a signature algorithm")?),
        };
        let key_type = match &jwk.algorithm {
            AlgorithmParameters::RSA(_) => KeyType::Rsa,
            AlgorithmParameters::EllipticCurve(p) => match p.curve {
                EllipticCurve::P256 => KeyType::P256,
                EllipticCurve::P384 => KeyType::P384,
                _ => return Err("unsupported curve"),
            },
            AlgorithmParameters::OctetKeyPair(p) => match p.curve {
                EllipticCurve::Ed25519 => KeyType::Ed25519,
                _ => return Err("unsupported curve"),
            },
            AlgorithmParameters::OctetKey(_) => return Err("symmetric key"),
            _ => return Err("unsupported key type"),
        };
        let key = Self {
            kid: common.key_id.clone(),
            alg,
            key_type,
            decoding: DecodingKey::from_jwk(jwk).map_err(|_| "undecodable key")?,
        };
        if let Some(a) = alg
            && !key.fits(a)
        {
            return Err("alg does not fit the key type");
        }
        Ok(key)
    }

    /// Whether this key may verify a token signed with `alg`: the key type fits the
    /// algorithm family (never an RSA key as an HMAC secret), and the JWK's own `alg`, if any,
    /// is `alg`.
    pub fn fits(&self, alg: Algorithm) -> bool {
        if self.alg.is_some_and(|a| a != alg) {
            return false;
        }
        match alg {
            Algorithm::RS256
            | Algorithm::RS384
            | Algorithm::RS512
            | Algorithm::PS256
            | Algorithm::PS384
            | Algorithm::PS512 => self.key_type == KeyType::Rsa,
            Algorithm::ES256 => self.key_type == KeyType::P256,
            Algorithm::ES384 => self.key_type == KeyType::P384,
            Algorithm::EdDSA => self.key_type == KeyType::Ed25519,
            _ => false,
        }
    }
}

/// The keys of one successful fetch.
pub(crate) struct KeySet {
    pub keys: Vec<Key>,
    fetched_at: Instant,
    generation: u64,
}

impl KeySet {
    pub fn generation(&self) -> u64 {
        self.generation
    }

    pub fn has_kid(&self, kid: &str) -> bool {
        self.keys.iter().any(|k| k.kid.as_deref() == Some(kid))
    }
}

// === Fetcher ===

/// GETs small JSON documents over http(s), with a body limit and a time limit.
pub(crate) struct Fetcher {
    client: Client<HttpsConnector<HttpConnector>, Empty<Bytes>>,
    timeout: Duration,
}

impl Fetcher {
    pub fn new(timeout: Duration) -> Result<Self, ConfigError> {
        let tls = hyper_tls::native_tls::TlsConnector::new()
            .map_err(|e| ConfigError::new(format!("cannot initialise TLS: {e}")))?;
        let mut http = HttpConnector::new();
        http.enforce_http(false);
        http.set_connect_timeout(Some(timeout));
        let https = HttpsConnector::from((http, tls.into()));
        let client = Client::builder(TokioExecutor::new()).build(https);
        Ok(Self { client, timeout })
    }

    async fn get_json<T: DeserializeOwned>(&self, url: &str) -> Result<T, String> {
        let req = Request::get(url)
            .header(header::ACCEPT, "application/json")
            .body(Empty::new())
            .map_err(|e| format!("bad URL {url}: {e}"))?;
        let fetch = async {
            let resp = self
                .client
                .request(req)
                .await
                .map_err(|e| format!("GET {url}: {e}"))?;
            if resp.status() != StatusCode::OK {
                return Err(format!("GET {url}: status {}", resp.status()));
            }
            let body = Limited::new(resp.into_body(), MAX_BODY)
                .collect()
                .await
                .map_err(|e| format!("GET {url}: body: {e}"))?
                .to_bytes();
            serde_json::from_slice(&body).map_err(|e| format!("GET {url}: invalid JSON: {e}"))
        };
        tokio::time::timeout(self.timeout, fetch)
            .await
            .map_err(|_| format!("GET {url}: no answer within {:?}", self.timeout))?
    }
}

// === IssuerKeys ===

/// Cache timings.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Timing {
    pub ttl: Duration,
    pub min_refresh: Duration,
}

#[derive(Default)]
struct RefreshState {
    last_attempt: Option<Instant>,
    /// Whether the last attempt succeeded.
    last_ok: bool,
    jwks_uri: Option<String>,
    generation: u64,
}

/// One issuer's cached keys.
pub(crate) struct IssuerKeys {
    current: RwLock<Option<Arc<KeySet>>>,
    /// Whether the last fetch succeeded (true before the first).
    reachable: std::sync::atomic::AtomicBool,
    /// Held for the whole of a fetch: concurrent refreshes wait for the one in flight.
    refresh: Mutex<RefreshState>,
}

/// Why keys are wanted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Need {
    /// Any keys, fresh if possible.
    Fresh,
    /// Keys newer than the given generation (a token named a `kid` it does not hold).
    NewerThan(u64),
}

impl IssuerKeys {
    pub fn new() -> Self {
        Self {
            current: RwLock::new(None),
            reachable: std::sync::atomic::AtomicBool::new(true),
            refresh: Mutex::new(RefreshState::default()),
        }
    }

    /// The generation of the cached key set while it is fresh (younger than `ttl`).
    pub fn fresh_generation(&self, ttl: Duration) -> Option<u64> {
        self.snapshot()
            .filter(|k| k.fetched_at.elapsed() < ttl)
            .map(|k| k.generation)
    }

    /// Whether the issuer answered the last fetch: when it did not, a key id the cached set
    /// lacks may be a key it rotated to, which cannot be checked now.
    pub fn reachable(&self) -> bool {
        self.reachable.load(std::sync::atomic::Ordering::Relaxed)
    }

    fn snapshot(&self) -> Option<Arc<KeySet>> {
        self.current
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Keys to verify a token naming `kid`: the cached set when fresh (and holding `kid`),
    /// else after a refresh as the throttle allows. `None`: no keys at all.
    pub async fn keys(
        &self,
        issuer: &Issuer,
        fetcher: &Fetcher,
        timing: Timing,
        kid: Option<&str>,
    ) -> Option<Arc<KeySet>> {
        let mut keys = match self.snapshot() {
            Some(k) if k.fetched_at.elapsed() < timing.ttl => Some(k),
            Some(stale) => {
                // Stale: refresh unless a refresh is already running, in which case the
                // stale keys serve meanwhile.
                match self.refresh.try_lock() {
                    Ok(state) => {
                        self.refresh_locked(state, Need::Fresh, issuer, fetcher, timing)
                            .await
                    }
                    Err(_) => Some(stale),
                }
            }
            None => {
                let state = self.refresh.lock().await;
                self.refresh_locked(state, Need::Fresh, issuer, fetcher, timing)
                    .await
            }
        };
        if let (Some(kid), Some(set)) = (kid, &keys)
            && !set.has_kid(kid)
        {
            let state = self.refresh.lock().await;
            keys = self
                .refresh_locked(
                    state,
                    Need::NewerThan(set.generation),
                    issuer,
                    fetcher,
                    timing,
                )
                .await;
        }
        keys
    }

    async fn refresh_locked(
        &self,
        mut state: tokio::sync::MutexGuard<'_, RefreshState>,
        need: Need,
        issuer: &Issuer,
        fetcher: &Fetcher,
        timing: Timing,
    ) -> Option<Arc<KeySet>> {
        let current = self.snapshot();
        // Another request refreshed while this one waited.
        match (need, &current) {
            (Need::Fresh, Some(k)) if k.fetched_at.elapsed() < timing.ttl => return current,
            (Need::NewerThan(g), Some(k)) if k.generation > g => return current,
            _ => {}
        }
        // Throttle: a stale set is refreshed unless the last attempt failed recently; an
        // unknown kid refetches at most once per interval whatever the last result.
        let recent = state
            .last_attempt
            .is_some_and(|t| t.elapsed() < timing.min_refresh);
        let throttled = match need {
            Need::Fresh => recent && !state.last_ok,
            Need::NewerThan(_) => recent,
        };
        if throttled {
            return current;
        }
        state.last_attempt = Some(Instant::now());
        state.last_ok = false;
        match fetch_keys(&mut state, issuer, fetcher).await {
            Ok(keys) => {
                metrics::counter!("mcp_gateway_jwks_fetches_total",
                    "issuer" => issuer.issuer.clone(), "result" => "ok")
                .increment(1);
                tracing::debug!(issuer = %issuer.issuer, keys = keys.len(), "fetched JWKS");
                state.generation += 1;
                state.last_ok = true;
                self.reachable
                    .store(true, std::sync::atomic::Ordering::Relaxed);
                let set = Arc::new(KeySet {
                    keys,
                    fetched_at: Instant::now(),
                    generation: state.generation,
                });
                *self.current.write().unwrap_or_else(|e| e.into_inner()) = Some(set.clone());
                Some(set)
            }
            Err(error) => {
                metrics::counter!("mcp_gateway_jwks_fetches_total",
                    "issuer" => issuer.issuer.clone(), "result" => "error")
                .increment(1);
                self.reachable
                    .store(false, std::sync::atomic::Ordering::Relaxed);
                // Rediscover next time: the issuer may have moved its keys.
                if issuer.jwks_uri.is_none() {
                    state.jwks_uri = None;
                }
                tracing::warn!(
                    issuer = %issuer.issuer,
                    %error,
                    cached = current.is_some(),
                    "cannot fetch the issuer's keys; keeping the cached ones"
                );
                current
            }
        }
    }
}

#[derive(Deserialize)]
struct Discovery {
    issuer: String,
    jwks_uri: String,
}

#[derive(Deserialize)]
struct RawJwks {
    keys: Vec<serde_json::Value>,
}

async fn fetch_keys(
    state: &mut RefreshState,
    issuer: &Issuer,
    fetcher: &Fetcher,
) -> Result<Vec<Key>, String> {
    let uri = match (&issuer.jwks_uri, &state.jwks_uri) {
        (Some(u), _) | (None, Some(u)) => u.clone(),
        (None, None) => {
            let doc: Discovery = fetcher.get_json(&issuer.discovery_url()).await?;
            if doc.issuer != issuer.issuer {
                return Err(format!(
                    "discovery document names issuer {:?}, not the configured one",
                    doc.issuer
                ));
            }
            if !acceptable_fetch_url(&doc.jwks_uri) {
                return Err(format!(
                    "discovery document's jwks_uri {:?} is not https",
                    doc.jwks_uri
                ));
            }
            state.jwks_uri = Some(doc.jwks_uri.clone());
            doc.jwks_uri
        }
    };
    let raw: RawJwks = fetcher.get_json(&uri).await?;
    let mut keys = Vec::with_capacity(raw.keys.len());
    for value in raw.keys {
        let kid = value.get("kid").and_then(|k| k.as_str()).map(str::to_owned);
        let parsed = serde_json::from_value::<Jwk>(value)
            .map_err(|_| "unparsable JWK")
            .and_then(|jwk| Key::from_jwk(&jwk));
        match parsed {
            Ok(key) => keys.push(key),
            Err(why) => {
                tracing::debug!(issuer = %issuer.issuer, ?kid, why, "skipping JWK");
            }
        }
    }
    if keys.is_empty() {
        return Err(format!("{uri} holds no usable signature key"));
    }
    Ok(keys)
}
