//! Authentication of the MCP gateway: turns the `Authorization: Bearer <token>` header of a
//! request into a [`Principal`] (subject, issuer, roles), or says why not ([`AuthError`]).
//! Deciding what a principal may do is not this crate's job (see
//! [`mcp_gateway_core::Authorizer`]), nor is shaping the 401/503 response (the caller's
//! [`Reject`]).
//!
//! Two kinds of credentials, told apart by shape: a token with exactly two dots is a JWT,
//! anything else is a static API key.
//!
//! # Configuration ([`AuthConfig`])
//!
//! ```toml
//! jwks_cache_ttl = "10m"            # keys older than this are fetched again
//! jwks_min_refresh_interval = "10s" # at most one unknown-kid refetch per issuer per interval
//! fetch_timeout = "5s"              # per discovery or JWKS request
//!
//! [[issuers]]
//! issuer = "https://keycloak.example.com/realms/mcp"  # exact `iss`; discovery base
//! audiences = ["mcp-gateway"]                          # `aud` must contain one
//! # jwks_uri = "https://…/certs"    # skip discovery
//! # algorithms = ["RS256"]          # RS/PS 256/384/512, ES256, ES384, EdDSA
//! roles_claim = "realm_access.roles"                   # default "roles"
//! # subject_claim = "sub"           # "oid" for Entra ID object ids
//! # leeway_secs = 60
//! # authorization_server = "…"      # RFC 9728 metadata; default: issuer
//!
//! [[api_keys]]
//! subject = "ci"
//! roles = ["mcp.admin"]
//! sha256 = "…"                      # hash_api_key(key); the key itself is never configured
//! ```
//!
//! [`Authenticator::new`] refuses a configuration that could not be secure or could not
//! work: an issuer (or `jwks_uri`) that is not `https` (plain `http` only for `127.0.0.1`,
//! `[::1]` and `localhost`), no audience, HMAC (`HS*`) or `none` algorithms, a `sha256` that
//! is not 64 hex digits, two keys with the same hash, an empty subject.
//!
//! # What a JWT must pass
//!
//! 1. Its unverified `iss` names a configured issuer (else refused before any network I/O).
//! 2. Its header `alg` is one the issuer allows; `none` is always refused, and a `crit`
//!    header is refused.
//! 3. A key of the issuer's JWKS with the token's `kid` (or, without `kid`, any key) that
//!    fits the algorithm: the JWK's key type matches the algorithm family (an RSA public key
//!    is never used as an HMAC secret — the classic confusion attack) and its own `alg`, if
//!    any, equals the header's. Embedded `jwk`/`jku`/`x5u` headers are ignored.
//! 4. The signature verifies ([`jsonwebtoken`] with the RustCrypto backend); `exp` is
//!    required and `exp`/`nbf` are checked with the issuer's leeway; `iss` equals the
//!    issuer exactly; `aud` (string or array) contains a configured audience.
//! 5. The subject claim is a non-empty string. Roles come from the roles claim (missing:
//!    no roles).
//!
//! # Keys
//!
//! Each issuer's keys are fetched on its first token (OIDC discovery first when no
//! `jwks_uri` is configured; the document's `issuer` must equal the configured one), then
//! again when older than `jwks_cache_ttl`. A token naming an unknown `kid` triggers a refetch
//! unless the issuer was fetched within `jwks_min_refresh_interval`; concurrent requests wait
//! for the one fetch in flight. A failed refresh keeps the cached keys (with a warning); with
//! no keys at all the request fails as [`AuthError::Unavailable`]. Bodies are limited to
//! 1 MiB and each request to `fetch_timeout`; https uses the platform's TLS (native-tls).
//!
//! # API keys
//!
//! Generate one with [`generate_api_key`] (`mcpgw_` + 32 random bytes, base64url), configure
//! its [`hash_api_key`]. A presented key is hashed and looked up; its principal has
//! issuer [`Principal::API_KEY_ISSUER`].
//!
//! # Observability
//!
//! Counters `mcp_gateway_auth_failures_total{reason}` ([`AuthError::reason`]) and
//! `mcp_gateway_jwks_fetches_total{issuer,result}`; `tracing` logs never contain tokens.

mod config;
mod error;
mod jwks;
mod layer;
mod token;
mod verified;

use std::collections::HashMap;
use std::fmt;
use std::sync::Arc;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::{Algorithm, Validation};
use mcp_gateway_core::Principal;
use serde_json::Value;
use sha2::{Digest as _, Sha256};

pub use config::{ApiKeyConfig, AuthConfig, IssuerConfig, KeyFileConfig};
pub use error::{AuthError, ConfigError, TokenError, TokenErrorKind};
pub use layer::{AuthLayer, AuthService, Reject, Resources};

use config::{ApiKey, Issuer};
use error::TokenErrorKind as Kind;
use jwks::{Fetcher, IssuerKeys, Timing};
use token::Credential;
use verified::Verified;

/// Most keys a token without `kid` is checked against.
const MAX_KEYS_TRIED: usize = 3;

/// Authenticates requests. Cheap to clone (one `Arc`); clones share the key caches.
#[derive(Clone)]
pub struct Authenticator {
    inner: Arc<Inner>,
}

struct Inner {
    issuers: Vec<(Issuer, IssuerKeys)>,
    by_iss: HashMap<String, usize>,
    api_keys: HashMap<String, ApiKey>,
    /// Configured API keys already presented and matched, by the key itself: a key is hashed
    /// once, not on every request. Holds at most one entry per configured key (only a match
    /// enters). The key file's key is not remembered here: its file is looked at on every use,
    /// so that deleting it revokes the key at once.
    known_keys: std::sync::RwLock<HashMap<Box<str>, Arc<Principal>, foldhash::fast::RandomState>>,
    key_file: Option<KeyFileConfig>,
    /// What the key file held when last read, and how it looked then.
    key_file_seen: std::sync::Mutex<Option<FileSeen>>,
    /// `None` when no issuer is configured.
    fetcher: Option<Fetcher>,
    timing: Timing,
    verified: Verified,
}

impl fmt::Debug for Authenticator {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Authenticator")
            .field(
                "issuers",
                &self
                    .inner
                    .issuers
                    .iter()
                    .map(|(i, _)| i.issuer.as_str())
                    .collect::<Vec<_>>(),
            )
            .field("api_keys", &self.inner.api_keys.len())
            .finish()
    }
}

impl Authenticator {
    /// Checks `config` (see the crate documentation for what is refused) and prepares the
    /// key caches. Fetches nothing yet.
    pub fn new(config: AuthConfig) -> Result<Self, ConfigError> {
        let validated = config.validate()?;
        let fetcher = if validated.issuers.is_empty() {
            None
        } else {
            Some(Fetcher::new(config.fetch_timeout)?)
        };
        let by_iss = validated
            .issuers
            .iter()
            .enumerate()
            .map(|(n, i)| (i.issuer.clone(), n))
            .collect();
        Ok(Self {
            inner: Arc::new(Inner {
                issuers: validated
                    .issuers
                    .into_iter()
                    .map(|i| (i, IssuerKeys::new()))
                    .collect(),
                by_iss,
                api_keys: validated.api_keys,
                known_keys: std::sync::RwLock::default(),
                key_file: config.key_file.clone(),
                key_file_seen: std::sync::Mutex::default(),
                fetcher,
                timing: Timing {
                    ttl: config.jwks_cache_ttl,
                    min_refresh: config.jwks_min_refresh_interval,
                },
                verified: Verified::default(),
            }),
        })
    }

    /// No issuers and no API keys: nobody can authenticate.
    pub fn is_empty(&self) -> bool {
        self.inner.issuers.is_empty()
            && self.inner.api_keys.is_empty()
            && self.inner.key_file.is_none()
    }

    /// The authorization servers to advertise in RFC 9728 protected-resource metadata: each
    /// issuer's `authorization_server` (default: the issuer), without duplicates.
    pub fn authorization_servers(&self) -> Vec<String> {
        let mut out: Vec<String> = Vec::new();
        for (i, _) in &self.inner.issuers {
            if !out.contains(&i.authorization_server) {
                out.push(i.authorization_server.clone());
            }
        }
        out
    }

    /// The principal of the request's `Authorization: Bearer` credential. Counts failures in
    /// `mcp_gateway_auth_failures_total{reason}`.
    pub async fn authenticate(&self, headers: &http::HeaderMap) -> Result<Principal, AuthError> {
        self.authenticate_for(headers, &[]).await
    }

    /// Like [`authenticate`](Self::authenticate), for a request of one protected resource
    /// named by its URLs (an MCP server's `…/mcp`, and its `…/sse`): a JWT of an issuer with
    /// `resource_audiences` is also accepted when its `aud` is one of them (RFC 8707), and then
    /// opens only this resource, since each request is checked against its own.
    pub async fn authenticate_for(
        &self,
        headers: &http::HeaderMap,
        resources: &[String],
    ) -> Result<Principal, AuthError> {
        match token::bearer(headers) {
            Ok(token) => match token::classify(token) {
                Credential::Jwt(jwt) => counted(self.jwt(jwt, resources).await),
                Credential::ApiKey(key) => counted(self.api_key(key).map(Arc::unwrap_or_clone)),
            },
            Err(e) => counted(Err(e)),
        }
    }

    /// The outcome of [`authenticate_for`](Self::authenticate_for) when it is known without
    /// waiting: no, malformed or several `Authorization` headers, or an API key. `None` for a
    /// JWT, whose issuer's keys may have to be fetched first. Counts failures as
    /// `authenticate_for` does, so a caller that takes this path first and falls back to it
    /// counts each request once.
    pub fn authenticate_now(
        &self,
        headers: &http::HeaderMap,
    ) -> Option<Result<Principal, AuthError>> {
        self.authenticate_now_shared(headers)
            .map(|outcome| outcome.map(Arc::unwrap_or_clone))
    }

    /// [`authenticate_now`](Self::authenticate_now), with the principal shared: an API key's
    /// principal is made once and lent to each of its requests (an `Arc<Principal>` request
    /// extension, which [`Principal::of`] reads), not copied.
    pub fn authenticate_now_shared(
        &self,
        headers: &http::HeaderMap,
    ) -> Option<Result<Arc<Principal>, AuthError>> {
        match token::bearer(headers) {
            Ok(token) => match token::classify(token) {
                Credential::Jwt(_) => None,
                Credential::ApiKey(key) => Some(counted(self.api_key(key))),
            },
            Err(e) => Some(counted(Err(e))),
        }
    }

    fn api_key(&self, key: &str) -> Result<Arc<Principal>, AuthError> {
        let known = self
            .inner
            .known_keys
            .read()
            .unwrap_or_else(|e| e.into_inner());
        if let Some(p) = known.get(key) {
            return Ok(p.clone());
        }
        drop(known);
        let digest = hash_api_key(key);
        let principal = |subject: &str, roles: &[String]| {
            Arc::new(Principal::new(
                subject,
                Some(Principal::API_KEY_ISSUER.into()),
                roles.to_vec(),
            ))
        };
        if let Some(k) = self.inner.api_keys.get(&digest) {
            let p = principal(&k.subject, &k.roles);
            self.inner
                .known_keys
                .write()
                .unwrap_or_else(|e| e.into_inner())
                .insert(key.into(), p.clone());
            return Ok(p);
        }
        match &self.inner.key_file {
            Some(file) if key_file_holds(file, &self.inner.key_file_seen, &digest) => {
                Ok(principal(&file.subject, &file.roles))
            }
            _ => Err(AuthError::invalid(Kind::UnknownKey, "unknown API key")),
        }
    }

    async fn jwt(&self, token: &str, resources: &[String]) -> Result<Principal, AuthError> {
        // Whether a token passes depends on the resources it is presented for.
        let mut hash = Sha256::new();
        hash.update(token.as_bytes());
        for r in resources {
            hash.update([0]);
            hash.update(r.as_bytes());
        }
        let digest: [u8; 32] = hash.finalize().into();
        let now = jsonwebtoken::get_current_timestamp();
        let ttl = self.inner.timing.ttl;
        let fresh = |issuer: usize, generation: u64| {
            self.inner.issuers[issuer].1.fresh_generation(ttl) == Some(generation)
        };
        if let Some(p) = self.inner.verified.get(&digest, now, fresh) {
            return Ok(p);
        }
        let (principal, valid_until, keys) = self.verify(token, resources).await?;
        self.inner
            .verified
            .put(digest, principal.clone(), valid_until, keys, now);
        Ok(principal)
    }

    /// The full check of a JWT: its principal, until when (unix seconds) it passes, and the
    /// key set that verified it (issuer index, generation).
    async fn verify(
        &self,
        token: &str,
        resources: &[String],
    ) -> Result<(Principal, u64, (usize, u64)), AuthError> {
        let unverified = token::peek(token)?;
        let Some(&n) = self.inner.by_iss.get(&unverified.iss) else {
            return Err(AuthError::invalid(Kind::Issuer, "issuer not accepted"));
        };
        let (issuer, cache) = &self.inner.issuers[n];
        let alg = unverified.alg;
        if !issuer.algorithms.contains(&alg) {
            return Err(AuthError::invalid(
                Kind::Algorithm,
                format!("algorithm {alg:?} not accepted for this issuer"),
            ));
        }
        let Some(fetcher) = &self.inner.fetcher else {
            return Err(AuthError::Unavailable("no key source".into()));
        };
        let kid = unverified.kid.as_deref();
        let Some(keys) = cache.keys(issuer, fetcher, self.inner.timing, kid).await else {
            return Err(AuthError::Unavailable(
                "the token issuer's signing keys cannot be fetched".into(),
            ));
        };
        let named: Vec<_> = match kid {
            Some(kid) if keys.has_kid(kid) => keys
                .keys
                .iter()
                .filter(|k| k.kid.as_deref() == Some(kid))
                .collect(),
            // A kid the issuer does not publish: only keys that do not name themselves.
            Some(_) => keys.keys.iter().filter(|k| k.kid.is_none()).collect(),
            None => keys.keys.iter().collect(),
        };
        if named.is_empty() {
            if !cache.reachable() {
                // Maybe a key the issuer rotated to: the client did nothing wrong, retry later.
                return Err(AuthError::Unavailable(
                    "the token names a key the issuer's cached keys lack, and the issuer cannot \
                     be reached to fetch new ones"
                        .into(),
                ));
            }
            return Err(AuthError::invalid(
                Kind::UnknownKid,
                "token signed with a key the issuer does not publish",
            ));
        }
        // A token without `kid` is tried against the fitting keys, but not all of a large set:
        // each try is a signature check, and such tokens cost no credentials to send.
        let candidates: Vec<_> = named
            .into_iter()
            .filter(|k| k.fits(alg))
            .take(MAX_KEYS_TRIED)
            .collect();
        if candidates.is_empty() {
            return Err(AuthError::invalid(
                Kind::Algorithm,
                format!("the issuer's key is not for algorithm {alg:?}"),
            ));
        }

        let validation = validation(issuer, alg, resources);
        let mut last = AuthError::invalid(Kind::Signature, "invalid token signature");
        for key in candidates {
            match jsonwebtoken::decode::<Value>(token, &key.decoding, &validation) {
                Ok(data) => {
                    // Validated above; a fractional `exp` counts down to the second.
                    let exp = data
                        .claims
                        .get("exp")
                        .and_then(|v| v.as_u64().or_else(|| v.as_f64().map(|f| f as u64)));
                    let exp = exp.unwrap_or(0);
                    let until = exp.saturating_add(issuer.leeway_secs);
                    return principal(issuer, &data.claims)
                        .map(|p| (p, until, (n, keys.generation())));
                }
                Err(e) => {
                    let err = map_jwt_error(e.kind());
                    if err.reason() != "signature" {
                        return Err(err);
                    }
                    last = err;
                }
            }
        }
        Err(last)
    }
}

fn validation(issuer: &Issuer, alg: Algorithm, resources: &[String]) -> Validation {
    let mut v = Validation::new(alg);
    v.leeway = issuer.leeway_secs;
    v.validate_exp = true;
    v.validate_nbf = true;
    v.validate_aud = true;
    v.set_issuer(&[&issuer.issuer]);
    let mut audiences = issuer.audiences.clone();
    if issuer.resource_audiences {
        audiences.extend(resources.iter().cloned());
    }
    v.set_audience(&audiences);
    v.set_required_spec_claims(&["exp", "iss", "aud"]);
    v
}

fn map_jwt_error(kind: &ErrorKind) -> AuthError {
    let (k, msg) = match kind {
        ErrorKind::ExpiredSignature => (Kind::Expired, "token expired"),
        ErrorKind::ImmatureSignature => (Kind::NotYetValid, "token not yet valid"),
        ErrorKind::InvalidIssuer => (Kind::Issuer, "issuer not accepted"),
        ErrorKind::InvalidAudience => (Kind::Audience, "token audience not accepted"),
        ErrorKind::MissingRequiredClaim(c) if c == "aud" => {
            (Kind::Audience, "token has no audience")
        }
        ErrorKind::MissingRequiredClaim(c) if c == "iss" => (Kind::Issuer, "token has no issuer"),
        ErrorKind::MissingRequiredClaim(_) => (Kind::Claims, "token has no expiry (exp)"),
        ErrorKind::InvalidClaimFormat(_) => (Kind::Claims, "token has an ill-typed time claim"),
        ErrorKind::InvalidAlgorithm => (Kind::Algorithm, "token algorithm does not fit the key"),
        ErrorKind::InvalidToken
        | ErrorKind::Base64(_)
        | ErrorKind::Json(_)
        | ErrorKind::Utf8(_) => (Kind::Claims, "token is not a well-formed JWT"),
        // Bad signature, or a key that cannot verify it: try the next candidate.
        _ => (Kind::Signature, "invalid token signature"),
    };
    AuthError::invalid(k, msg)
}

fn principal(issuer: &Issuer, claims: &Value) -> Result<Principal, AuthError> {
    let subject = match token::lookup(claims, &issuer.subject_claim) {
        Some(Value::String(s)) if !s.is_empty() => s.clone(),
        _ => {
            return Err(AuthError::invalid(
                Kind::Claims,
                format!("token has no {} claim", issuer.subject_claim),
            ));
        }
    };
    let roles = token::roles(token::lookup(claims, &issuer.roles_claim));
    Ok(Principal::new(subject, Some(issuer.issuer.clone()), roles))
}

/// `result`, with a failure counted in `mcp_gateway_auth_failures_total{reason}` and logged.
fn counted<P>(result: Result<P, AuthError>) -> Result<P, AuthError> {
    if let Err(e) = &result {
        metrics::counter!("mcp_gateway_auth_failures_total", "reason" => e.reason()).increment(1);
        tracing::debug!(reason = e.reason(), error = %e, "authentication failed");
    }
    result
}

// === API keys ===

/// The key file as last read: its key's digest (`None` when it held none), and the file's
/// identity, size and times then.
struct FileSeen {
    stamp: FileStamp,
    read_at: std::time::Instant,
    digest: Option<String>,
}

/// What changes when a file is replaced or written: device and inode, size, modification and
/// change times.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct FileStamp {
    dev: u64,
    ino: u64,
    len: u64,
    mtime: (i64, i64),
    ctime: (i64, i64),
}

impl FileStamp {
    fn of(meta: &std::fs::Metadata) -> Self {
        use std::os::unix::fs::MetadataExt as _;
        Self {
            dev: meta.dev(),
            ino: meta.ino(),
            len: meta.len(),
            mtime: (meta.mtime(), meta.mtime_nsec()),
            ctime: (meta.ctime(), meta.ctime_nsec()),
        }
    }
}

/// A file that looks unchanged is read again after this long anyway: a key written over in
/// place within the file system's timestamp granularity, at the same length, is seen then.
const KEY_FILE_REREAD: std::time::Duration = std::time::Duration::from_secs(1);

/// Whether the key file exists, is private to its owner and holds the key of `digest`. Its
/// metadata is looked at on every use, so a deleted (or replaced) file revokes its key at
/// once; its content is read again only when the metadata changed or a second has passed.
/// An unknown key thus costs one `stat`, not a read and a hash of the file, however many are
/// presented.
fn key_file_holds(
    file: &KeyFileConfig,
    seen: &std::sync::Mutex<Option<FileSeen>>,
    digest: &str,
) -> bool {
    use std::os::unix::fs::PermissionsExt as _;
    let Ok(meta) = std::fs::metadata(&file.path) else {
        return false;
    };
    if meta.permissions().mode() & 0o077 != 0 {
        tracing::warn!(path = %file.path.display(), "key file readable by other users: its key is refused (chmod 600 it)");
        return false;
    }
    let stamp = FileStamp::of(&meta);
    let mut seen = seen.lock().unwrap_or_else(|e| e.into_inner());
    let fresh = seen
        .as_ref()
        .filter(|s| s.stamp == stamp && s.read_at.elapsed() < KEY_FILE_REREAD);
    if fresh.is_none() {
        let held = std::fs::read_to_string(&file.path).ok().and_then(|text| {
            let key = text.trim();
            (!key.is_empty()).then(|| hash_api_key(key))
        });
        *seen = Some(FileSeen {
            stamp,
            read_at: std::time::Instant::now(),
            digest: held,
        });
    }
    seen.as_ref()
        .and_then(|s| s.digest.as_deref())
        .is_some_and(|held| held == digest)
}

/// Lowercase hex SHA-256 of an API key: what [`ApiKeyConfig::sha256`] holds.
pub fn hash_api_key(key: &str) -> String {
    let digest = Sha256::digest(key.as_bytes());
    let mut out = String::with_capacity(64);
    for b in digest {
        out.push(char::from_digit(u32::from(b >> 4), 16).unwrap_or('0'));
        out.push(char::from_digit(u32::from(b & 0xf), 16).unwrap_or('0'));
    }
    out
}

/// A new API key: `mcpgw_` followed by 32 bytes of the operating system's RNG in base64url
/// (43 characters).
///
/// # Panics
///
/// If the operating system has no random source (as the standard library's `HashMap` would).
pub fn generate_api_key() -> String {
    let mut bytes = [0u8; 32];
    #[allow(clippy::expect_used)]
    getrandom::fill(&mut bytes).expect("the operating system's random source failed");
    format!("mcpgw_{}", URL_SAFE_NO_PAD.encode(bytes))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn api_key_shape_and_hash() {
        let k = generate_api_key();
        assert!(k.starts_with("mcpgw_"));
        assert_eq!(k.len(), 6 + 43);
        assert_eq!(token::classify(&k), Credential::ApiKey(&k));
        assert_ne!(k, generate_api_key());
        assert_eq!(
            hash_api_key("abc"),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }

    #[test]
    fn the_key_file_is_followed_as_it_changes() {
        use std::os::unix::fs::PermissionsExt as _;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("admin.key");
        let write = |key: &str| {
            std::fs::write(&path, format!("{key}\n")).unwrap();
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
        };
        let file = KeyFileConfig {
            path: path.clone(),
            subject: "admin".into(),
            roles: vec!["mcp.admin".into()],
        };
        let seen = std::sync::Mutex::default();
        let holds = |key: &str| key_file_holds(&file, &seen, &hash_api_key(key));

        assert!(!holds("mcpgw_one"), "no file yet");
        write("mcpgw_one");
        assert!(holds("mcpgw_one"));
        assert!(!holds("mcpgw_two") && !holds(""), "other keys");
        // Another key of another length: seen at once.
        write("mcpgw_three");
        assert!(holds("mcpgw_three") && !holds("mcpgw_one"));
        // Another key of the same length, written over in place: seen at once when the file
        // system's times moved, within a second when they did not.
        write("mcpgw_seven");
        let since = std::time::Instant::now();
        while !holds("mcpgw_seven") {
            assert!(
                since.elapsed() < KEY_FILE_REREAD * 3,
                "the new key is never seen"
            );
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
        assert!(!holds("mcpgw_three"));
        // Readable by others: refused at once.
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        assert!(!holds("mcpgw_seven"));
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
        assert!(holds("mcpgw_seven"));
        // Deleted: refused at once.
        std::fs::remove_file(&path).unwrap();
        assert!(!holds("mcpgw_seven"));
        // Empty: holds no key.
        write("");
        assert!(!holds(""));
    }

    #[test]
    fn error_mapping() {
        assert_eq!(
            map_jwt_error(&ErrorKind::ExpiredSignature).reason(),
            "expired"
        );
        assert_eq!(
            map_jwt_error(&ErrorKind::ImmatureSignature).reason(),
            "not_yet_valid"
        );
        assert_eq!(
            map_jwt_error(&ErrorKind::MissingRequiredClaim("aud".into())).reason(),
            "audience"
        );
        assert_eq!(
            map_jwt_error(&ErrorKind::InvalidSignature).reason(),
            "signature"
        );
        assert_eq!(
            map_jwt_error(&ErrorKind::InvalidEcdsaKey).reason(),
            "signature"
        );
    }
}
