//! Which credentials are accepted and which refused, against a real OIDC issuer over HTTP.

mod common;

use common::{AUD, bearer, config, issuer, refusal};
use http::{HeaderMap, HeaderValue, header::AUTHORIZATION};
use mcp_gateway_auth::{
    ApiKeyConfig, AuthConfig, AuthError, Authenticator, IssuerConfig, TokenErrorKind,
    generate_api_key, hash_api_key,
};
use mcp_gateway_core::Principal;
use mcp_gateway_testkit::oidc::{OidcServer, TestKey, hs256_token, now, unsigned_token};
use serde_json::json;

async fn setup() -> (OidcServer, Authenticator) {
    let idp = OidcServer::start().await.unwrap();
    let auth = Authenticator::new(config(vec![issuer(&idp)])).unwrap();
    (idp, auth)
}

fn kind(err: &AuthError) -> Option<TokenErrorKind> {
    match err {
        AuthError::InvalidToken(e) => Some(e.kind()),
        _ => None,
    }
}

// === accepted ===

#[tokio::test]
async fn valid_rs256_token_found_by_discovery_yields_principal() {
    let (idp, auth) = setup().await;
    let token = idp.token(idp.claims("alice", &["mcp.admin", "team-a"], AUD));
    let p = auth.authenticate(&bearer(&token)).await.unwrap();
    assert_eq!(
        p,
        Principal::new(
            "alice",
            Some(idp.issuer()),
            vec!["mcp.admin".into(), "team-a".into()]
        )
    );
    assert_eq!((idp.discovery_fetches(), idp.jwks_fetches()), (1, 1));
    // Cached: a second token fetches nothing.
    let again = idp.token(idp.claims("bob", &[], AUD));
    assert_eq!(
        auth.authenticate(&bearer(&again)).await.unwrap().subject,
        "bob"
    );
    assert_eq!((idp.discovery_fetches(), idp.jwks_fetches()), (1, 1));
}

#[tokio::test]
async fn explicit_jwks_uri_skips_discovery() {
    let idp = OidcServer::start().await.unwrap();
    let mut i = issuer(&idp);
    i.jwks_uri = Some(idp.jwks_uri());
    let auth = Authenticator::new(config(vec![i])).unwrap();
    let token = idp.token(idp.claims("alice", &[], AUD));
    assert_eq!(
        auth.authenticate(&bearer(&token)).await.unwrap().subject,
        "alice"
    );
    assert_eq!((idp.discovery_fetches(), idp.jwks_fetches()), (0, 1));
}

#[tokio::test]
async fn roles_from_space_separated_dotted_and_literal_claims() {
    let idp = OidcServer::start().await.unwrap();
    let mut claims = idp.claims("alice", &[], AUD);
    claims["scp"] = json!("mcp.read mcp.write");
    claims["realm_access"] = json!({"roles": ["kc-admin", "kc-user"]});
    claims["https://example.com/roles"] = json!(["auth0-role"]);
    claims["oid"] = json!("00000000-0000-0000-0000-000000000042");
    let token = idp.token(claims);
    let cases: &[(&str, &str, &[&str], &str)] = &[
        ("roles", "sub", &[], "alice"),
        ("scp", "sub", &["mcp.read", "mcp.write"], "alice"),
        (
            "realm_access.roles",
            "sub",
            &["kc-admin", "kc-user"],
            "alice",
        ),
        (
            "https://example.com/roles",
            "oid",
            &["auth0-role"],
            "00000000-0000-0000-0000-000000000042",
        ),
    ];
    for (roles_claim, subject_claim, roles, subject) in cases {
        let mut i = issuer(&idp);
        i.roles_claim = roles_claim.to_string();
        i.subject_claim = subject_claim.to_string();
        let auth = Authenticator::new(config(vec![i])).unwrap();
        let p = auth.authenticate(&bearer(&token)).await.unwrap();
        assert_eq!(p.roles, *roles, "{roles_claim}");
        assert_eq!(p.subject, *subject, "{subject_claim}");
    }
}

#[tokio::test]
async fn audience_array_containing_one_configured_audience_is_accepted() {
    let (idp, auth) = setup().await;
    let mut claims = idp.claims("alice", &[], AUD);
    claims["aud"] = json!(["other", AUD]);
    assert!(auth.authenticate(&bearer(&idp.token(claims))).await.is_ok());
}

#[tokio::test]
async fn es256_accepted_when_allowed() {
    let idp = OidcServer::start().await.unwrap();
    let ec = TestKey::ec("ec-1");
    idp.publish(&ec);
    let mut i = issuer(&idp);
    i.algorithms = vec!["RS256".into(), "ES256".into()];
    let auth = Authenticator::new(config(vec![i])).unwrap();
    let p = auth
        .authenticate(&bearer(&ec.sign(&idp.claims("eve", &["r"], AUD))))
        .await
        .unwrap();
    assert_eq!(
        (p.subject.as_str(), p.roles.as_slice()),
        ("eve", &["r".to_owned()][..])
    );
    // An RS256 token of the same issuer still works.
    assert!(
        auth.authenticate(&bearer(&idp.token(idp.claims("a", &[], AUD))))
            .await
            .is_ok()
    );
}

#[tokio::test]
async fn api_key_yields_configured_principal_and_unknown_key_is_refused() {
    let key = generate_api_key();
    let auth = Authenticator::new(AuthConfig {
        api_keys: vec![ApiKeyConfig {
            subject: "ci-bot".into(),
            roles: vec!["mcp.admin".into()],
            sha256: hash_api_key(&key),
        }],
        ..Default::default()
    })
    .unwrap();
    assert!(!auth.is_empty());
    let p = auth.authenticate(&bearer(&key)).await.unwrap();
    assert_eq!(
        p,
        Principal::new(
            "ci-bot",
            Some(Principal::API_KEY_ISSUER.into()),
            vec!["mcp.admin".into()]
        )
    );
    let err = refusal(&auth, &generate_api_key()).await;
    assert_eq!(kind(&err), Some(TokenErrorKind::UnknownKey));
    assert_eq!(err.reason(), "unknown_key");
    assert_eq!(err.to_string(), "unknown API key");
    // Once matched, the key is remembered (hashed once): the same answer again, and a key
    // that differs from it in its last character is still refused.
    for _ in 0..3 {
        assert_eq!(auth.authenticate(&bearer(&key)).await.unwrap(), p);
    }
    let last = key.chars().last().unwrap();
    let near = format!(
        "{}{}",
        &key[..key.len() - 1],
        if last == 'A' { 'B' } else { 'A' }
    );
    assert_eq!(refusal(&auth, &near).await.reason(), "unknown_key");
    // A clone shares what it remembers, and still refuses what it never matched.
    assert_eq!(auth.clone().authenticate(&bearer(&key)).await.unwrap(), p);
    assert_eq!(refusal(&auth.clone(), &near).await.reason(), "unknown_key");
    // A JWT when no issuer is configured.
    let idp = OidcServer::start().await.unwrap();
    let err = refusal(&auth, &idp.token(idp.claims("a", &[], AUD))).await;
    assert_eq!(err.reason(), "issuer");
}

// === refused: the header ===

#[tokio::test]
async fn missing_and_malformed_headers_are_refused() {
    let (_idp, auth) = setup().await;
    assert_eq!(
        auth.authenticate(&HeaderMap::new()).await,
        Err(AuthError::Missing)
    );
    for value in ["Basic eDp5", "Bearer", "Bearer ", "Token abc"] {
        let mut h = HeaderMap::new();
        h.insert(AUTHORIZATION, HeaderValue::from_static(value));
        let err = auth.authenticate(&h).await.unwrap_err();
        assert!(matches!(err, AuthError::Malformed(_)), "{value}: {err:?}");
        assert_eq!(err.reason(), "malformed");
    }
    let mut h = HeaderMap::new();
    h.append(AUTHORIZATION, HeaderValue::from_static("Bearer a"));
    h.append(AUTHORIZATION, HeaderValue::from_static("Bearer b"));
    assert_eq!(
        auth.authenticate(&h).await,
        Err(AuthError::Malformed("several Authorization headers"))
    );
}

// === refused: time, issuer, audience ===

#[tokio::test]
async fn expired_token_is_refused() {
    let (idp, auth) = setup().await;
    let mut claims = idp.claims("alice", &[], AUD);
    claims["exp"] = json!(now() - 120); // beyond the 60 s leeway
    let err = refusal(&auth, &idp.token(claims)).await;
    assert_eq!(kind(&err), Some(TokenErrorKind::Expired));
    assert_eq!(err.to_string(), "token expired");
}

#[tokio::test]
async fn token_without_exp_is_refused() {
    let (idp, auth) = setup().await;
    let mut claims = idp.claims("alice", &[], AUD);
    claims.as_object_mut().unwrap().remove("exp");
    assert_eq!(refusal(&auth, &idp.token(claims)).await.reason(), "claims");
}

#[tokio::test]
async fn not_yet_valid_beyond_leeway_is_refused_within_leeway_accepted() {
    let (idp, auth) = setup().await;
    let mut claims = idp.claims("alice", &[], AUD);
    claims["nbf"] = json!(now() + 600);
    let err = refusal(&auth, &idp.token(claims.clone())).await;
    assert_eq!(kind(&err), Some(TokenErrorKind::NotYetValid));
    claims["nbf"] = json!(now() + 20);
    assert!(auth.authenticate(&bearer(&idp.token(claims))).await.is_ok());
}

#[tokio::test]
async fn unknown_issuer_is_refused_without_fetching() {
    let (idp, auth) = setup().await;
    let mut claims = idp.claims("alice", &[], AUD);
    claims["iss"] = json!("https://evil.example.com");
    let err = refusal(&auth, &idp.token(claims)).await;
    assert_eq!(kind(&err), Some(TokenErrorKind::Issuer));
    assert_eq!(err.to_string(), "issuer not accepted");
    assert_eq!(idp.jwks_fetches(), 0);
}

#[tokio::test]
async fn wrong_or_missing_audience_is_refused() {
    let (idp, auth) = setup().await;
    let err = refusal(&auth, &idp.token(idp.claims("alice", &[], "someone-else"))).await;
    assert_eq!(kind(&err), Some(TokenErrorKind::Audience));
    let mut claims = idp.claims("alice", &[], AUD);
    claims.as_object_mut().unwrap().remove("aud");
    assert_eq!(
        refusal(&auth, &idp.token(claims)).await.reason(),
        "audience"
    );
}

// === refused: signature, key, algorithm ===

#[tokio::test]
async fn unpublished_key_with_published_kid_is_a_bad_signature() {
    let (idp, auth) = setup().await;
    let forged = idp.unpublished_key(&idp.signing_kid());
    let err = refusal(
        &auth,
        &forged.sign(&idp.claims("mallory", &["mcp.admin"], AUD)),
    )
    .await;
    assert_eq!(kind(&err), Some(TokenErrorKind::Signature));
    assert_eq!(err.reason(), "signature");
}

#[tokio::test]
async fn unknown_kid_is_refused() {
    let (idp, auth) = setup().await;
    let stranger = idp.unpublished_key("not-published");
    let err = refusal(&auth, &stranger.sign(&idp.claims("mallory", &[], AUD))).await;
    assert_eq!(kind(&err), Some(TokenErrorKind::UnknownKid));
}

#[tokio::test]
async fn alg_none_is_refused() {
    let (idp, auth) = setup().await;
    let token = unsigned_token(Some(&idp.signing_kid()), &idp.claims("mallory", &[], AUD));
    let err = refusal(&auth, &token).await;
    assert_eq!(kind(&err), Some(TokenErrorKind::Algorithm));
    assert!(err.to_string().contains("none"), "{err}");
}

#[tokio::test]
async fn hs256_signed_with_the_rsa_public_key_is_refused() {
    let (idp, auth) = setup().await;
    let public = idp.signing_key();
    let claims = idp.claims("mallory", &["mcp.admin"], AUD);
    for kid in [Some(public.kid()), None] {
        let token = hs256_token(public.public_key_pem().as_bytes(), kid, &claims);
        let err = refusal(&auth, &token).await;
        assert_eq!(kind(&err), Some(TokenErrorKind::Algorithm), "{kid:?}");
    }
}

#[tokio::test]
async fn es256_refused_when_only_rs256_allowed() {
    let (idp, auth) = setup().await;
    let ec = TestKey::ec("ec-1");
    idp.publish(&ec);
    let err = refusal(&auth, &ec.sign(&idp.claims("eve", &[], AUD))).await;
    assert_eq!(kind(&err), Some(TokenErrorKind::Algorithm));
}

#[tokio::test]
async fn key_whose_jwk_alg_differs_from_the_header_is_not_used() {
    // The RSA key is published with alg RS256; a PS256 token naming it is refused even
    // when the issuer allows PS256.
    let idp = OidcServer::start().await.unwrap();
    let mut i = issuer(&idp);
    i.algorithms = vec!["RS256".into(), "PS256".into()];
    let auth = Authenticator::new(config(vec![i])).unwrap();
    let key = idp.signing_key();
    let ps = {
        use base64::Engine as _;
        // Header alg PS256 over an RS256 signature: never reaches verification.
        let t = key.sign(&idp.claims("a", &[], AUD));
        let mut parts: Vec<&str> = t.split('.').collect();
        let header = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .encode(json!({"alg": "PS256", "kid": key.kid()}).to_string());
        parts[0] = &header;
        parts.join(".")
    };
    let err = refusal(&auth, &ps).await;
    assert_eq!(kind(&err), Some(TokenErrorKind::Algorithm));
}

#[tokio::test]
async fn missing_subject_is_refused() {
    let (idp, auth) = setup().await;
    let mut claims = idp.claims("alice", &[], AUD);
    claims.as_object_mut().unwrap().remove("sub");
    let err = refusal(&auth, &idp.token(claims)).await;
    assert_eq!(kind(&err), Some(TokenErrorKind::Claims));
    assert_eq!(err.to_string(), "token has no sub claim");
}

// === configuration ===

#[test]
fn config_with_hmac_or_none_is_refused() {
    for alg in ["HS256", "none"] {
        let mut i = IssuerConfig::new("https://idp.example.com", vec![AUD.into()]);
        i.algorithms = vec!["RS256".into(), alg.into()];
        let err = Authenticator::new(config(vec![i])).unwrap_err().to_string();
        assert!(err.contains(alg) && err.contains("refused"), "{err}");
    }
}

#[test]
fn config_with_http_non_loopback_issuer_is_refused() {
    let i = IssuerConfig::new("http://idp.example.com", vec![AUD.into()]);
    let err = Authenticator::new(config(vec![i])).unwrap_err().to_string();
    assert!(err.contains("must use https"), "{err}");
    let i = IssuerConfig::new("https://idp.example.com", vec![AUD.into()]);
    let auth = Authenticator::new(config(vec![i])).unwrap();
    assert_eq!(auth.authorization_servers(), ["https://idp.example.com"]);
    assert!(
        Authenticator::new(AuthConfig::default())
            .unwrap()
            .is_empty()
    );
}

#[tokio::test]
async fn resource_bound_tokens_open_only_their_resource() {
    let idp = OidcServer::start().await.unwrap();
    let a = |n: &str| {
        vec![
            format!("https://gw.example/adapters/{n}/mcp"),
            format!("https://gw.example/adapters/{n}/sse"),
        ]
    };
    let mut bound = IssuerConfig::new(idp.issuer(), vec![]);
    bound.resource_audiences = true;
    let auth = Authenticator::new(config(vec![bound])).unwrap();
    let token = idp.token(idp.claims("bob", &[], "https://gw.example/adapters/gh/mcp"));
    let for_gh = auth.authenticate_for(&bearer(&token), &a("gh")).await;
    assert_eq!(for_gh.unwrap().subject, "bob");
    // The same token, again (now from the verified-token cache), for other resources.
    assert!(
        auth.authenticate_for(&bearer(&token), &a("gh"))
            .await
            .is_ok()
    );
    let other = auth.authenticate_for(&bearer(&token), &a("jira")).await;
    assert_eq!(kind(&other.unwrap_err()), Some(TokenErrorKind::Audience));
    let api = auth.authenticate(&bearer(&token)).await;
    assert_eq!(kind(&api.unwrap_err()), Some(TokenErrorKind::Audience));

    // Without resource_audiences the resource's URL is no audience.
    let plain = Authenticator::new(config(vec![issuer(&idp)])).unwrap();
    let refused = plain.authenticate_for(&bearer(&token), &a("gh")).await;
    assert_eq!(kind(&refused.unwrap_err()), Some(TokenErrorKind::Audience));
    // And an issuer with neither audiences nor resource_audiences is a configuration error.
    let err = Authenticator::new(config(vec![IssuerConfig::new(idp.issuer(), vec![])]));
    assert!(err.unwrap_err().to_string().contains("resource_audiences"));
}
