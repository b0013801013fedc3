//! Helpers shared by the integration tests.
#![allow(dead_code)]

use std::time::Duration;

use http::{HeaderMap, HeaderValue, header::AUTHORIZATION};
use mcp_gateway_auth::{AuthConfig, AuthError, Authenticator, IssuerConfig};
use mcp_gateway_testkit::oidc::OidcServer;

pub const AUD: &str = "mcp-gateway";

/// Headers with `Authorization: Bearer <token>`.
pub fn bearer(token: &str) -> HeaderMap {
    let mut h = HeaderMap::new();
    h.insert(
        AUTHORIZATION,
        HeaderValue::from_str(&format!("Bearer {token}")).unwrap(),
    );
    h
}

/// The issuer `idp` with audience [`AUD`], found by discovery.
pub fn issuer(idp: &OidcServer) -> IssuerConfig {
    IssuerConfig::new(idp.issuer(), vec![AUD.into()])
}

pub fn config(issuers: Vec<IssuerConfig>) -> AuthConfig {
    AuthConfig {
        issuers,
        ..Default::default()
    }
}

/// An authenticator for `idp` with the given cache timings.
pub fn with_timings(idp: &OidcServer, ttl: Duration, min_refresh: Duration) -> Authenticator {
    Authenticator::new(AuthConfig {
        issuers: vec![issuer(idp)],
        jwks_cache_ttl: ttl,
        jwks_min_refresh_interval: min_refresh,
        fetch_timeout: Duration::from_secs(2),
        ..Default::default()
    })
    .unwrap()
}

/// The reason of a refusal (panics on success).
pub async fn refusal(auth: &Authenticator, token: &str) -> AuthError {
    match auth.authenticate(&bearer(token)).await {
        Ok(p) => panic!("accepted as {p}"),
        Err(e) => e,
    }
}
