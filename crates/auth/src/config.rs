//! Configuration: issuers, API keys, cache timings; checked once by [`AuthConfig::validate`].

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use jsonwebtoken::Algorithm;
use serde::Deserialize;

use crate::ConfigError;

/// How the gateway authenticates callers. An empty configuration (no issuers, no keys)
/// authenticates nobody; whether that means "refuse everyone" or "run without
/// authentication" is the gateway's decision ([`crate::Authenticator::is_empty`]).
///
/// In TOML (durations are integer seconds or strings such as `"500ms"`, `"5s"`, `"10m"`,
/// `"1h"`):
///
/// ```toml
/// jwks_cache_ttl = "10m"
/// jwks_min_refresh_interval = "10s"
/// fetch_timeout = "5s"
///
/// [[issuers]]
/// issuer = "https://login.microsoftonline.com/TENANT/v2.0"
/// audiences = ["api://mcp-gateway"]
///
/// [[api_keys]]
/// subject = "ci-bot"
/// roles = ["mcp.admin"]
/// sha256 = "…64 lowercase hex digits…"
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AuthConfig {
    /// OIDC issuers whose JWTs are accepted.
    pub issuers: Vec<IssuerConfig>,
    /// Static API keys, stored as SHA-256 digests (see [`crate::hash_api_key`]).
    pub api_keys: Vec<ApiKeyConfig>,
    /// An issuer's keys are fetched again when older than this (default 10 minutes).
    #[serde(deserialize_with = "mcp_gateway_core::deserialize_duration")]
    pub jwks_cache_ttl: Duration,
    /// A token with an unknown `kid` triggers a refetch of its issuer's keys at most once per
    /// this interval, measured from the issuer's last fetch (default 10 seconds). Also the
    /// pause after a failed fetch before the next attempt.
    #[serde(deserialize_with = "mcp_gateway_core::deserialize_duration")]
    pub jwks_min_refresh_interval: Duration,
    /// Time limit of one discovery or JWKS fetch, connection included (default 5 seconds).
    #[serde(deserialize_with = "mcp_gateway_core::deserialize_duration")]
    pub fetch_timeout: Duration,
    /// A key kept in a file rather than configured (the gateway's `admin.key`). Not part of
    /// the TOML: the gateway sets it.
    #[serde(skip)]
    pub key_file: Option<KeyFileConfig>,
}

/// An API key read from a file on every use: accepted while the file holds it, so deleting
/// (or replacing) the file revokes the key at once, without a restart. The file must be
/// readable by its owner only; otherwise the key is refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyFileConfig {
    /// The file; the key is its content, surrounding white space trimmed.
    pub path: std::path::PathBuf,
    /// The principal the key authenticates.
    pub subject: String,
    pub roles: Vec<String>,
}

impl Default for AuthConfig {
    fn default() -> Self {
        Self {
            key_file: None,
            issuers: Vec::new(),
            api_keys: Vec::new(),
            jwks_cache_ttl: Duration::from_secs(600),
            jwks_min_refresh_interval: Duration::from_secs(10),
            fetch_timeout: Duration::from_secs(5),
        }
    }
}

/// One accepted token issuer.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IssuerConfig {
    /// The exact `iss` value of its tokens, and the base of OIDC discovery
    /// (`{issuer}/.well-known/openid-configuration`). `https`, or `http` for loopback hosts.
    pub issuer: String,
    /// Accepted audiences (at least one): the token's `aud` (a string or an array) must
    /// contain one of them.
    pub audiences: Vec<String>,
    /// Where the issuer publishes its keys; when unset, found by OIDC discovery.
    #[serde(default)]
    pub jwks_uri: Option<String>,
    /// Accepted signature algorithms (default `["RS256"]`): RS256/384/512, PS256/384/512,
    /// ES256, ES384, EdDSA. HMAC (`HS*`) and `none` are refused.
    #[serde(default = "default_algorithms")]
    pub algorithms: Vec<String>,
    /// The claim holding roles (default `roles`): the whole name as a key first (Auth0's
    /// `https://example.com/roles`), else a dotted path (`realm_access.roles`). An array of
    /// strings or a space-separated string (`scp`).
    #[serde(default = "default_roles_claim")]
    pub roles_claim: String,
    /// The claim naming the caller (default `sub`; Entra ID users may prefer `oid`). Looked
    /// up like `roles_claim`; a token without it is refused.
    #[serde(default = "default_subject_claim")]
    pub subject_claim: String,
    /// Clock skew tolerated on `exp` and `nbf`, in seconds (default 60).
    #[serde(default = "default_leeway")]
    pub leeway_secs: u64,
    /// The authorization server advertised in the RFC 9728 protected-resource metadata
    /// (default: `issuer`).
    #[serde(default)]
    pub authorization_server: Option<String>,
    /// Also accept tokens whose `aud` is the URL of the resource requested (RFC 8707 resource
    /// indicators, as MCP clients ask for them): such a token opens only that resource. The
    /// caller names the resource per request ([`Authenticator::authenticate_for`]). With this
    /// set, `audiences` may be empty (then only resource-bound tokens are accepted).
    ///
    /// [`Authenticator::authenticate_for`]: crate::Authenticator::authenticate_for
    #[serde(default)]
    pub resource_audiences: bool,
}

impl IssuerConfig {
    /// An issuer with the given audiences and every other field at its default.
    pub fn new(issuer: impl Into<String>, audiences: Vec<String>) -> Self {
        Self {
            issuer: issuer.into(),
            audiences,
            jwks_uri: None,
            algorithms: default_algorithms(),
            roles_claim: default_roles_claim(),
            subject_claim: default_subject_claim(),
            leeway_secs: default_leeway(),
            authorization_server: None,
            resource_audiences: false,
        }
    }
}

/// One static API key.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ApiKeyConfig {
    /// The principal's subject (e.g. the name of the automation using the key).
    pub subject: String,
    /// The principal's roles.
    #[serde(default)]
    pub roles: Vec<String>,
    /// Lowercase hex SHA-256 of the key ([`crate::hash_api_key`]); the key itself is never
    /// configured.
    pub sha256: String,
}

fn default_algorithms() -> Vec<String> {
    vec!["RS256".to_owned()]
}
fn default_roles_claim() -> String {
    "roles".to_owned()
}
fn default_subject_claim() -> String {
    "sub".to_owned()
}
fn default_leeway() -> u64 {
    60
}

// === validation ===

/// An issuer after validation.
#[derive(Debug)]
pub(crate) struct Issuer {
    pub issuer: String,
    pub audiences: Vec<String>,
    pub jwks_uri: Option<String>,
    pub algorithms: Vec<Algorithm>,
    pub roles_claim: String,
    pub subject_claim: String,
    pub leeway_secs: u64,
    pub authorization_server: String,
    pub resource_audiences: bool,
}

impl Issuer {
    /// `{issuer}/.well-known/openid-configuration`.
    pub fn discovery_url(&self) -> String {
        format!(
            "{}/.well-known/openid-configuration",
            self.issuer.trim_end_matches('/')
        )
    }
}

/// A configured API key after validation.
#[derive(Debug)]
pub(crate) struct ApiKey {
    pub subject: String,
    pub roles: Vec<String>,
}

pub(crate) struct Validated {
    pub issuers: Vec<Issuer>,
    pub api_keys: HashMap<String, ApiKey>,
}

impl AuthConfig {
    pub(crate) fn validate(&self) -> Result<Validated, ConfigError> {
        if self.fetch_timeout.is_zero() {
            return Err(ConfigError::new("fetch_timeout must be greater than zero"));
        }
        if self.jwks_cache_ttl.is_zero() {
            return Err(ConfigError::new("jwks_cache_ttl must be greater than zero"));
        }
        let mut seen = HashSet::new();
        let mut issuers = Vec::with_capacity(self.issuers.len());
        for i in &self.issuers {
            let issuer = i.validate()?;
            if !seen.insert(issuer.issuer.clone()) {
                return Err(ConfigError::new(format!(
                    "issuer {:?} is configured twice; merge its audiences into one entry",
                    issuer.issuer
                )));
            }
            issuers.push(issuer);
        }
        let mut api_keys = HashMap::with_capacity(self.api_keys.len());
        for (n, k) in self.api_keys.iter().enumerate() {
            let subject = k.subject.trim();
            if subject.is_empty() {
                return Err(ConfigError::new(format!(
                    "api_keys[{n}]: subject is empty; name who uses the key"
                )));
            }
            let digest = k.sha256.trim().to_ascii_lowercase();
            if digest.len() != 64 || !digest.bytes().all(|b| b.is_ascii_hexdigit()) {
                return Err(ConfigError::new(format!(
                    "api_keys[{n}] ({subject}): sha256 must be 64 hex digits, the SHA-256 of the \
                     key (not the key itself)"
                )));
            }
            if k.roles.iter().any(|r| r.trim().is_empty()) {
                return Err(ConfigError::new(format!(
                    "api_keys[{n}] ({subject}): roles must not be empty strings"
                )));
            }
            let key = ApiKey {
                subject: subject.to_owned(),
                roles: k.roles.clone(),
            };
            if let Some(other) = api_keys.insert(digest, key) {
                return Err(ConfigError::new(format!(
                    "api_keys[{n}] ({subject}): the same key is already configured for {:?}; \
                     give each caller its own key",
                    other.subject
                )));
            }
        }
        Ok(Validated { issuers, api_keys })
    }
}

impl IssuerConfig {
    fn validate(&self) -> Result<Issuer, ConfigError> {
        let name = &self.issuer;
        check_url("issuer", name, name)?;
        if let Some(u) = &self.jwks_uri {
            check_url("jwks_uri", u, name)?;
        }
        if let Some(u) = &self.authorization_server {
            check_url("authorization_server", u, name)?;
        }
        if (self.audiences.is_empty() && !self.resource_audiences)
            || self.audiences.iter().any(|a| a.trim().is_empty())
        {
            return Err(ConfigError::new(format!(
                "issuer {name:?}: audiences must list at least one non-empty audience (the \
                 `aud` its tokens carry for this gateway, e.g. its client id or api://...), \
                 unless resource_audiences is set"
            )));
        }
        if self.algorithms.is_empty() {
            return Err(ConfigError::new(format!(
                "issuer {name:?}: algorithms is empty; leave it out for [\"RS256\"]"
            )));
        }
        let mut algorithms = Vec::with_capacity(self.algorithms.len());
        for a in &self.algorithms {
            let alg = parse_algorithm(a).map_err(|why| {
                ConfigError::new(format!("issuer {name:?}: algorithm {a:?} {why}"))
            })?;
            if !algorithms.contains(&alg) {
                algorithms.push(alg);
            }
        }
        for (field, claim) in [
            ("roles_claim", &self.roles_claim),
            ("subject_claim", &self.subject_claim),
        ] {
            if claim.trim().is_empty() {
                return Err(ConfigError::new(format!(
                    "issuer {name:?}: {field} is empty; leave it out for the default"
                )));
            }
        }
        Ok(Issuer {
            issuer: self.issuer.clone(),
            audiences: self.audiences.clone(),
            jwks_uri: self.jwks_uri.clone(),
            algorithms,
            roles_claim: self.roles_claim.clone(),
            subject_claim: self.subject_claim.clone(),
            leeway_secs: self.leeway_secs,
            authorization_server: self
                .authorization_server
                .clone()
                .unwrap_or_else(|| self.issuer.clone()),
            resource_audiences: self.resource_audiences,
        })
    }
}

/// The algorithms an issuer may allow.
pub(crate) const ALLOWED_ALGORITHMS: &str =
    "RS256, RS384, RS512, PS256, PS384, PS512, ES256, ES384, EdDSA";

fn parse_algorithm(a: &str) -> Result<Algorithm, String> {
    if a.eq_ignore_ascii_case("none") {
        return Err("is refused: unsigned tokens would let anyone be anyone".into());
    }
    if a.get(..2).is_some_and(|p| p.eq_ignore_ascii_case("HS")) {
        return Err(format!(
            "is refused: HMAC algorithms need a shared secret, not an issuer's public keys; \
             use one of {ALLOWED_ALGORITHMS}"
        ));
    }
    a.parse::<Algorithm>()
        .map_err(|_| format!("is not supported; use one of {ALLOWED_ALGORITHMS}"))
}

/// `https`, or `http` to a loopback host; a host; no query or fragment.
fn check_url(field: &str, url: &str, issuer: &str) -> Result<(), ConfigError> {
    let bad = |why: &str| ConfigError::new(format!("issuer {issuer:?}: {field} {url:?} {why}"));
    let uri: http::Uri = url
        .parse()
        .map_err(|_| bad("is not a URL (expected https://host[/path])"))?;
    let Some(host) = uri.host() else {
        return Err(bad("has no host (expected https://host[/path])"));
    };
    if uri.query().is_some() || url.contains('#') {
        return Err(bad("must have no query or fragment"));
    }
    match uri.scheme_str() {
        Some("https") => Ok(()),
        Some("http") if is_loopback(host) => Ok(()),
        Some("http") => Err(bad(
            "must use https (plain http is allowed only for 127.0.0.1, [::1] and localhost)",
        )),
        _ => Err(bad("must be an https URL")),
    }
}

pub(crate) fn is_loopback(host: &str) -> bool {
    let host = host.trim_start_matches('[').trim_end_matches(']');
    host.eq_ignore_ascii_case("localhost") || host == "127.0.0.1" || host == "::1"
}

/// Whether a URL the issuer handed us (discovery's `jwks_uri`) is acceptable: same rule as
/// configured URLs.
pub(crate) fn acceptable_fetch_url(url: &str) -> bool {
    check_url("jwks_uri", url, "").is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn issuer(url: &str) -> IssuerConfig {
        IssuerConfig::new(url, vec!["aud".into()])
    }

    fn err(config: AuthConfig) -> String {
        match config.validate() {
            Ok(_) => panic!("config accepted"),
            Err(e) => e.to_string(),
        }
    }

    #[test]
    fn toml_with_defaults() {
        let c: AuthConfig = toml::from_str(
            r#"
            jwks_cache_ttl = "5m"
            fetch_timeout = 2
            [[issuers]]
            issuer = "https://idp.example.com/realms/x"
            audiences = ["gw"]
            roles_claim = "realm_access.roles"
            [[api_keys]]
            subject = "bot"
            sha256 = "0000000000000000000000000000000000000000000000000000000000000000"
            "#,
        )
        .unwrap();
        assert_eq!(c.jwks_cache_ttl, Duration::from_secs(300));
        assert_eq!(c.fetch_timeout, Duration::from_secs(2));
        assert_eq!(c.jwks_min_refresh_interval, Duration::from_secs(10));
        let i = &c.issuers[0];
        assert_eq!(i.algorithms, ["RS256"]);
        assert_eq!(i.subject_claim, "sub");
        assert_eq!(i.leeway_secs, 60);
        assert!(c.api_keys[0].roles.is_empty());
        assert!(c.validate().is_ok());
        assert!(toml::from_str::<AuthConfig>("issuer = 'x'").is_err());
    }

    #[test]
    fn refuses_hmac_and_none() {
        for alg in ["HS256", "hs512", "none", "None"] {
            let mut i = issuer("https://idp");
            i.algorithms = vec![alg.into()];
            let e = err(AuthConfig {
                issuers: vec![i],
                ..Default::default()
            });
            assert!(e.contains("refused"), "{e}");
        }
        let mut i = issuer("https://idp");
        i.algorithms = vec!["XX1".into()];
        let e = err(AuthConfig {
            issuers: vec![i],
            ..Default::default()
        });
        assert!(e.contains("not supported"), "{e}");
    }

    #[test]
    fn urls_https_or_loopback_http() {
        for ok in [
            "https://login.example.com/tenant/v2.0",
            "http://127.0.0.1:8080",
            "http://localhost:1",
            "http://[::1]:9",
        ] {
            let c = AuthConfig {
                issuers: vec![issuer(ok)],
                ..Default::default()
            };
            assert!(c.validate().is_ok(), "{ok}");
        }
        for bad in [
            "http://idp.example.com",
            "ftp://idp",
            "idp.example.com",
            "https://idp/?x=1",
            "",
        ] {
            let e = err(AuthConfig {
                issuers: vec![issuer(bad)],
                ..Default::default()
            });
            assert!(e.contains(bad), "{e}");
        }
        let mut i = issuer("https://idp");
        i.jwks_uri = Some("http://10.0.0.1/keys".into());
        assert!(
            err(AuthConfig {
                issuers: vec![i],
                ..Default::default()
            })
            .contains("must use https")
        );
    }

    #[test]
    fn audiences_required_and_issuers_unique() {
        let e = err(AuthConfig {
            issuers: vec![IssuerConfig::new("https://idp", vec![])],
            ..Default::default()
        });
        assert!(e.contains("audiences"), "{e}");
        let e = err(AuthConfig {
            issuers: vec![issuer("https://idp"), issuer("https://idp")],
            ..Default::default()
        });
        assert!(e.contains("twice"), "{e}");
    }

    #[test]
    fn api_keys_checked() {
        let key = |subject: &str, sha: &str| ApiKeyConfig {
            subject: subject.into(),
            roles: vec![],
            sha256: sha.into(),
        };
        let good = "a".repeat(64);
        let e = err(AuthConfig {
            api_keys: vec![key("bot", "mcpgw_secret")],
            ..Default::default()
        });
        assert!(e.contains("64 hex"), "{e}");
        let e = err(AuthConfig {
            api_keys: vec![key(" ", &good)],
            ..Default::default()
        });
        assert!(e.contains("subject is empty"), "{e}");
        let e = err(AuthConfig {
            api_keys: vec![key("a", &good), key("b", &good.to_uppercase())],
            ..Default::default()
        });
        assert!(e.contains("already configured"), "{e}");
    }
}
