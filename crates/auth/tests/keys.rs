//! The JWKS cache against a real issuer: rotation, unknown-kid throttling, single flight,
//! outages.

mod common;

use std::time::Duration;

use common::{AUD, bearer, refusal, with_timings};
use futures_util::future::join_all;
use mcp_gateway_auth::AuthError;
use mcp_gateway_testkit::oidc::OidcServer;

const LONG: Duration = Duration::from_secs(600);

#[tokio::test]
async fn key_published_after_first_fetch_is_accepted_after_one_refetch() {
    let idp = OidcServer::start().await.unwrap();
    let min_refresh = Duration::from_millis(200);
    let auth = with_timings(&idp, LONG, min_refresh);
    let first = idp.token(idp.claims("alice", &[], AUD));
    auth.authenticate(&bearer(&first)).await.unwrap();
    assert_eq!(idp.jwks_fetches(), 1);

    let new_kid = idp.rotate();
    tokio::time::sleep(min_refresh + Duration::from_millis(50)).await;
    let rotated = idp.token(idp.claims("alice", &[], AUD));
    let p = auth.authenticate(&bearer(&rotated)).await.unwrap();
    assert_eq!(p.subject, "alice");
    assert_eq!(idp.jwks_fetches(), 2, "one refetch for {new_kid}");
    // Both keys are now cached: no further fetch.
    auth.authenticate(&bearer(&first)).await.unwrap();
    auth.authenticate(&bearer(&rotated)).await.unwrap();
    assert_eq!(idp.jwks_fetches(), 2);
}

#[tokio::test]
async fn unknown_kid_within_min_interval_does_not_refetch() {
    let idp = OidcServer::start().await.unwrap();
    let auth = with_timings(&idp, LONG, LONG);
    auth.authenticate(&bearer(&idp.token(idp.claims("a", &[], AUD))))
        .await
        .unwrap();
    idp.rotate();
    let err = refusal(&auth, &idp.token(idp.claims("a", &[], AUD))).await;
    assert_eq!(err.reason(), "unknown_kid");
    assert_eq!(idp.jwks_fetches(), 1);
}

#[tokio::test]
async fn unknown_kid_storm_causes_at_most_one_fetch() {
    let idp = OidcServer::start().await.unwrap();
    let min_refresh = Duration::from_millis(500);
    let auth = with_timings(&idp, LONG, min_refresh);
    auth.authenticate(&bearer(&idp.token(idp.claims("a", &[], AUD))))
        .await
        .unwrap();
    tokio::time::sleep(min_refresh + Duration::from_millis(50)).await;

    let claims = idp.claims("mallory", &[], AUD);
    let forged: Vec<String> = (0..50)
        .map(|n| {
            idp.signing_key()
                .sign_as(Some(&format!("random-{n}")), &claims)
        })
        .collect();
    let storm = |tokens: Vec<String>| {
        let auth = auth.clone();
        async move {
            join_all(tokens.into_iter().map(|t| {
                let auth = auth.clone();
                tokio::spawn(async move { auth.authenticate(&bearer(&t)).await })
            }))
            .await
        }
    };
    for r in storm(forged.clone()).await {
        assert_eq!(r.unwrap().unwrap_err().reason(), "unknown_kid");
    }
    assert_eq!(
        idp.jwks_fetches(),
        2,
        "exactly one refetch for 50 unknown kids"
    );
    // And none for a second storm within the interval.
    for r in storm(forged).await {
        assert_eq!(r.unwrap().unwrap_err().reason(), "unknown_kid");
    }
    assert_eq!(idp.jwks_fetches(), 2);
}

#[tokio::test]
async fn concurrent_first_tokens_share_one_fetch() {
    let idp = OidcServer::start().await.unwrap();
    let auth = with_timings(&idp, LONG, Duration::ZERO);
    let token = idp.token(idp.claims("a", &[], AUD));
    let results = join_all((0..20).map(|_| {
        let auth = auth.clone();
        let token = token.clone();
        tokio::spawn(async move { auth.authenticate(&bearer(&token)).await })
    }))
    .await;
    for r in results {
        assert_eq!(r.unwrap().unwrap().subject, "a");
    }
    assert_eq!((idp.discovery_fetches(), idp.jwks_fetches()), (1, 1));
}

#[tokio::test]
async fn retired_key_is_refused_after_the_next_refresh() {
    let idp = OidcServer::start().await.unwrap();
    let ttl = Duration::from_millis(300);
    let auth = with_timings(&idp, ttl, LONG);
    let old_token = idp.token(idp.claims("a", &[], AUD));
    let old_kid = idp.signing_kid();
    auth.authenticate(&bearer(&old_token)).await.unwrap();

    idp.rotate();
    idp.retire(&old_kid);
    // Still cached until the TTL passes.
    auth.authenticate(&bearer(&old_token)).await.unwrap();
    tokio::time::sleep(ttl + Duration::from_millis(50)).await;
    let err = refusal(&auth, &old_token).await;
    assert_eq!(err.reason(), "unknown_kid");
    assert_eq!(idp.jwks_fetches(), 2);
    // The new key works from the refreshed set.
    let new_token = idp.token(idp.claims("a", &[], AUD));
    auth.authenticate(&bearer(&new_token)).await.unwrap();
    assert_eq!(idp.jwks_fetches(), 2);
}

#[tokio::test]
async fn cached_keys_keep_working_when_the_issuer_goes_down() {
    let mut idp = OidcServer::start().await.unwrap();
    let ttl = Duration::from_millis(200);
    let auth = with_timings(&idp, ttl, Duration::ZERO);
    let token = idp.token(idp.claims("a", &[], AUD));
    auth.authenticate(&bearer(&token)).await.unwrap();
    idp.stop().await;
    tokio::time::sleep(ttl + Duration::from_millis(50)).await;
    // Stale, the refresh fails: the cached keys still decide.
    assert_eq!(
        auth.authenticate(&bearer(&token)).await.unwrap().subject,
        "a"
    );
    assert_eq!(
        auth.authenticate(&bearer(&token)).await.unwrap().subject,
        "a"
    );
    // A token of a key the issuer rotated to while unreachable cannot be checked: 503-worthy
    // (retry later), not a refusal of the token.
    idp.rotate();
    let rotated = idp.token(idp.claims("a", &[], AUD));
    let err = refusal(&auth, &rotated).await;
    assert!(matches!(err, AuthError::Unavailable(_)), "{err:?}");
}

#[tokio::test]
async fn never_fetched_and_issuer_down_is_unavailable() {
    let mut idp = OidcServer::start().await.unwrap();
    let auth = with_timings(&idp, LONG, Duration::from_secs(10));
    let token = idp.token(idp.claims("a", &[], AUD));
    idp.stop().await;
    let err = refusal(&auth, &token).await;
    assert!(matches!(err, AuthError::Unavailable(_)), "{err:?}");
    assert_eq!(err.reason(), "unavailable");
    // Within the interval the next request does not wait for another attempt.
    let started = tokio::time::Instant::now();
    assert!(matches!(
        refusal(&auth, &token).await,
        AuthError::Unavailable(_)
    ));
    assert!(started.elapsed() < Duration::from_millis(500));
}

#[tokio::test]
async fn discovery_naming_another_issuer_is_not_trusted() {
    let idp = OidcServer::start().await.unwrap();
    idp.claim_issuer("https://impostor.example.com");
    let auth = with_timings(&idp, LONG, Duration::from_secs(10));
    let err = refusal(&auth, &idp.token(idp.claims("a", &[], AUD))).await;
    assert!(matches!(err, AuthError::Unavailable(_)), "{err:?}");
    assert_eq!((idp.discovery_fetches(), idp.jwks_fetches()), (1, 0));
}
