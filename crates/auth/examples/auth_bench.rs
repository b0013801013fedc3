//! What authentication costs per request: `cargo run --release -p mcp-gateway-auth --example
//! auth_bench`. One task, issuer keys cached (the first JWT fetches the JWKS from a local
//! issuer): an API key, a JWT seen before (verified-token cache), a JWT's first use (RS256
//! signature check).

use std::time::{Duration, Instant};

use mcp_gateway_auth::{ApiKeyConfig, AuthConfig, Authenticator, IssuerConfig, hash_api_key};
use mcp_gateway_testkit::oidc::OidcServer;

fn headers(token: &str) -> http::HeaderMap {
    let mut h = http::HeaderMap::new();
    h.insert(
        http::header::AUTHORIZATION,
        format!("Bearer {token}").parse().expect("header value"),
    );
    h
}

async fn measure(name: &str, auth: &Authenticator, h: &http::HeaderMap) -> anyhow::Result<()> {
    let mut samples = Vec::with_capacity(20_000);
    let deadline = Instant::now() + Duration::from_secs(2);
    while Instant::now() < deadline {
        let t = Instant::now();
        auth.authenticate(h).await?;
        samples.push(t.elapsed());
    }
    samples.sort();
    let total: Duration = samples.iter().sum();
    let pct = |p: f64| samples[((samples.len() as f64 * p) as usize).min(samples.len() - 1)];
    eprintln!(
        "{name:<28} {:>9.0}/s  p50 {:>6.1} µs  p99 {:>6.1} µs",
        samples.len() as f64 / total.as_secs_f64(),
        pct(0.5).as_secs_f64() * 1e6,
        pct(0.99).as_secs_f64() * 1e6,
    );
    Ok(())
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let idp = OidcServer::start().await?;
    let key = mcp_gateway_auth::generate_api_key();
    let auth = Authenticator::new(AuthConfig {
        issuers: vec![IssuerConfig::new(idp.issuer(), vec!["bench".into()])],
        api_keys: vec![ApiKeyConfig {
            subject: "svc".into(),
            roles: vec!["mcp.admin".into()],
            sha256: hash_api_key(&key),
        }],
        ..AuthConfig::default()
    })?;
    let jwt = idp.token(idp.claims("alice", &["team-a", "team-b"], "bench"));
    auth.authenticate(&headers(&jwt)).await?; // warm: fetch discovery + JWKS once
    measure("API key (SHA-256 lookup)", &auth, &headers(&key)).await?;
    measure("JWT RS256, seen before", &auth, &headers(&jwt)).await?;
    // First use of each token: the signature is verified (tokens signed beforehand).
    let fresh: Vec<_> = (0..300)
        .map(|i| headers(&idp.token(idp.claims(&format!("user{i}"), &["team-a"], "bench"))))
        .collect();
    let t = Instant::now();
    for h in &fresh {
        auth.authenticate(h).await?;
    }
    let each = t.elapsed() / fresh.len() as u32;
    eprintln!(
        "{:<28} {:>9.0}/s  mean {:>5.1} µs",
        "JWT RS256, first use",
        1.0 / each.as_secs_f64(),
        each.as_secs_f64() * 1e6
    );
    eprintln!("JWKS fetches: {}", idp.jwks_fetches());
    Ok(())
}
