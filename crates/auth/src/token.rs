//! Reading a credential: the `Authorization` header, JWT or API key, the unverified header
//! and issuer of a JWT (to pick its issuer and key), and claim lookup.

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use http::HeaderMap;
use http::header::AUTHORIZATION;
use jsonwebtoken::Algorithm;
use serde_json::Value;

use crate::error::{AuthError, TokenErrorKind};

/// The bytes of an RFC 6750 b64token before its padding:
/// `1*( ALPHA / DIGIT / "-" / "." / "_" / "~" / "+" / "/" ) *"="` (a table: the token is
/// checked on every request).
const B64TOKEN: [bool; 256] = {
    let mut table = [false; 256];
    let mut i = 0;
    while i < 256 {
        let b = i as u8;
        table[i] =
            b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~' | b'+' | b'/');
        i += 1;
    }
    table
};

/// The token of the request's single `Authorization: Bearer <token>` header.
pub(crate) fn bearer(headers: &HeaderMap) -> Result<&str, AuthError> {
    let mut values = headers.get_all(AUTHORIZATION).iter();
    let Some(value) = values.next() else {
        return Err(AuthError::Missing);
    };
    if values.next().is_some() {
        return Err(AuthError::Malformed("several Authorization headers"));
    }
    match plain_bearer(value.as_bytes()) {
        Some(token) => Ok(token),
        None => any_bearer(value),
    }
}

/// [`bearer`] of one header value, whatever its form.
fn any_bearer(value: &http::HeaderValue) -> Result<&str, AuthError> {
    let value = value
        .to_str()
        .map_err(|_| AuthError::Malformed("not ASCII"))?
        .trim();
    let (scheme, token) = value.split_once(' ').unwrap_or((value, ""));
    if !scheme.eq_ignore_ascii_case("bearer") {
        return Err(AuthError::Malformed("expected \"Bearer <token>\""));
    }
    let token = token.trim_start_matches(' ');
    if token.is_empty() {
        return Err(AuthError::Malformed("empty bearer token"));
    }
    let body = token.trim_end_matches('=');
    if body.is_empty() || !body.bytes().all(|b| B64TOKEN[usize::from(b)]) {
        return Err(AuthError::Malformed(
            "bearer token has characters outside RFC 6750",
        ));
    }
    Ok(token)
}

/// The token of the usual form, `Bearer <token>` (any case, one or more spaces, nothing after
/// the token), in one pass over its bytes; `None` for anything else, which [`bearer`] then
/// reads (and refuses) the long way, with the same outcome for every value this accepts.
fn plain_bearer(value: &[u8]) -> Option<&str> {
    const SCHEME: &[u8] = b"bearer ";
    let rest = value.get(SCHEME.len()..)?;
    if !value[..SCHEME.len()].eq_ignore_ascii_case(SCHEME) {
        return None;
    }
    let token = &rest[rest.iter().position(|&b| b != b' ')?..];
    let body = token.len() - token.iter().rev().take_while(|&&b| b == b'=').count();
    if body == 0 || !token[..body].iter().all(|&b| B64TOKEN[usize::from(b)]) {
        return None;
    }
    // Token characters and `=` only: ASCII.
    std::str::from_utf8(token).ok()
}

/// What a bearer token is.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Credential<'a> {
    /// Exactly two dots: a JWS compact serialization.
    Jwt(&'a str),
    /// Anything else: a static API key.
    ApiKey(&'a str),
}

pub(crate) fn classify(token: &str) -> Credential<'_> {
    if token.bytes().filter(|&b| b == b'.').count() == 2 {
        Credential::Jwt(token)
    } else {
        Credential::ApiKey(token)
    }
}

/// The parts of a JWT read before its signature is checked: only to choose the issuer
/// configuration and the key; everything is checked again by the verification.
#[derive(Debug)]
pub(crate) struct Unverified {
    pub alg: Algorithm,
    pub kid: Option<String>,
    pub iss: String,
}

fn malformed() -> AuthError {
    AuthError::invalid(TokenErrorKind::Claims, "token is not a well-formed JWT")
}

fn decode_part(part: &str) -> Result<serde_json::Map<String, Value>, AuthError> {
    let bytes = URL_SAFE_NO_PAD.decode(part).map_err(|_| malformed())?;
    match serde_json::from_slice(&bytes) {
        Ok(Value::Object(map)) => Ok(map),
        _ => Err(malformed()),
    }
}

pub(crate) fn peek(token: &str) -> Result<Unverified, AuthError> {
    let mut parts = token.split('.');
    let (Some(header), Some(payload), Some(_), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(malformed());
    };
    let header = decode_part(header)?;
    let alg = match header.get("alg") {
        Some(Value::String(a)) if a.eq_ignore_ascii_case("none") => {
            return Err(AuthError::invalid(
                TokenErrorKind::Algorithm,
                "unsigned tokens (alg \"none\") are refused",
            ));
        }
        Some(Value::String(a)) => a.parse::<Algorithm>().map_err(|_| {
            AuthError::invalid(TokenErrorKind::Algorithm, "token algorithm not supported")
        })?,
        _ => {
            return Err(AuthError::invalid(
                TokenErrorKind::Algorithm,
                "token has no alg",
            ));
        }
    };
    if header.contains_key("crit") {
        return Err(AuthError::invalid(
            TokenErrorKind::Claims,
            "token has critical header parameters this gateway does not understand",
        ));
    }
    let kid = match header.get("kid") {
        None => None,
        Some(Value::String(k)) => Some(k.clone()),
        Some(_) => return Err(malformed()),
    };
    let claims = decode_part(payload)?;
    let Some(Value::String(iss)) = claims.get("iss") else {
        return Err(AuthError::invalid(
            TokenErrorKind::Issuer,
            "token has no issuer",
        ));
    };
    Ok(Unverified {
        alg,
        kid,
        iss: iss.clone(),
    })
}

/// A claim by name: the whole name as a key first (`https://example.com/roles`), else a
/// dotted path through nested objects (`realm_access.roles`).
pub(crate) fn lookup<'a>(claims: &'a Value, name: &str) -> Option<&'a Value> {
    if let Some(v) = claims.get(name) {
        return Some(v);
    }
    if !name.contains('.') {
        return None;
    }
    name.split('.')
        .try_fold(claims, |v, segment| v.get(segment))
}

/// Roles from a claim value: an array (its string elements) or a space-separated string.
pub(crate) fn roles(value: Option<&Value>) -> Vec<String> {
    match value {
        Some(Value::Array(items)) => items
            .iter()
            .filter_map(Value::as_str)
            .filter(|s| !s.is_empty())
            .map(str::to_owned)
            .collect(),
        Some(Value::String(s)) => s.split_whitespace().map(str::to_owned).collect(),
        _ => Vec::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;
    use serde_json::json;

    fn headers(values: &[&str]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for v in values {
            h.append(AUTHORIZATION, HeaderValue::from_str(v).unwrap());
        }
        h
    }

    #[test]
    fn bearer_header_forms() {
        assert_eq!(bearer(&headers(&["Bearer abc.def.ghi"])), Ok("abc.def.ghi"));
        assert_eq!(bearer(&headers(&["bearer  k_1-~+/=="])), Ok("k_1-~+/=="));
        assert_eq!(bearer(&headers(&[])), Err(AuthError::Missing));
        for bad in [
            "Basic eDp5",
            "Bearer",
            "Bearer ",
            "Bearer a b",
            "Bearerx",
            "Bearer =",
            "Bearer a=b",
            "Bearer a@b",
            "Bearer a,b",
            "Bearer a\"b",
        ] {
            assert!(
                matches!(bearer(&headers(&[bad])), Err(AuthError::Malformed(_))),
                "{bad}"
            );
        }
        assert_eq!(
            bearer(&headers(&["Bearer a", "Bearer b"])),
            Err(AuthError::Malformed("several Authorization headers"))
        );
        let mut h = HeaderMap::new();
        h.insert(
            AUTHORIZATION,
            HeaderValue::from_bytes(b"Bearer \xe9t\xe9").unwrap(),
        );
        assert_eq!(bearer(&h), Err(AuthError::Malformed("not ASCII")));
        // The one-pass reading of the usual form agrees with the full one on every value it
        // takes, and takes the usual ones.
        let pieces = [
            "Bearer", "bEaReR", "Basic", " ", "  ", "\t", "k_1", "a.b.c", "=", "==", "@", "é",
        ];
        let mut taken = 0;
        for a in pieces {
            for b in pieces {
                for c in pieces {
                    for d in ["", "=", " ", "x"] {
                        let v = format!("{a}{b}{c}{d}");
                        let Ok(v) = HeaderValue::from_bytes(v.as_bytes()) else {
                            continue;
                        };
                        if let Some(token) = plain_bearer(v.as_bytes()) {
                            taken += 1;
                            assert_eq!(any_bearer(&v), Ok(token), "{v:?}");
                        }
                    }
                }
            }
        }
        assert!(taken > 20, "{taken}");
        assert_eq!(plain_bearer(b"Bearer mcpgw_abc"), Some("mcpgw_abc"));
        // The table is the grammar's character set, byte for byte.
        for b in 0..=255u8 {
            let grammar = b.is_ascii_alphanumeric() || b"-._~+/".contains(&b);
            assert_eq!(B64TOKEN[usize::from(b)], grammar, "byte {b}");
        }
    }

    #[test]
    fn two_dots_make_a_jwt() {
        assert_eq!(classify("a.b.c"), Credential::Jwt("a.b.c"));
        assert_eq!(classify("a.b."), Credential::Jwt("a.b."));
        assert_eq!(classify("mcpgw_abc"), Credential::ApiKey("mcpgw_abc"));
        assert_eq!(classify("a.b"), Credential::ApiKey("a.b"));
        assert_eq!(classify("a.b.c.d"), Credential::ApiKey("a.b.c.d"));
    }

    fn jwt(header: Value, claims: Value) -> String {
        let enc = |v: &Value| URL_SAFE_NO_PAD.encode(serde_json::to_vec(v).unwrap());
        format!("{}.{}.", enc(&header), enc(&claims))
    }

    #[test]
    fn peek_reads_alg_kid_iss() {
        let t = jwt(
            json!({"alg": "RS256", "kid": "k1"}),
            json!({"iss": "https://i"}),
        );
        let u = peek(&t).unwrap();
        assert_eq!(
            (u.alg, u.kid.as_deref(), u.iss.as_str()),
            (Algorithm::RS256, Some("k1"), "https://i")
        );
        let reason = |h: Value, c: Value| peek(&jwt(h, c)).unwrap_err().reason();
        assert_eq!(
            reason(json!({"alg": "none"}), json!({"iss": "x"})),
            "algorithm"
        );
        assert_eq!(
            reason(json!({"alg": "XS1"}), json!({"iss": "x"})),
            "algorithm"
        );
        assert_eq!(
            reason(json!({"typ": "JWT"}), json!({"iss": "x"})),
            "algorithm"
        );
        assert_eq!(
            reason(json!({"alg": "RS256"}), json!({"sub": "x"})),
            "issuer"
        );
        assert_eq!(
            reason(
                json!({"alg": "RS256", "crit": ["b64"]}),
                json!({"iss": "x"})
            ),
            "claims"
        );
        assert_eq!(peek("x.y.z").unwrap_err().reason(), "claims");
    }

    #[test]
    fn claim_lookup_literal_then_path() {
        let c = json!({
            "https://example.com/roles": ["a"],
            "realm_access": {"roles": ["r1", "r2", 3]},
            "scp": "read  write",
            "a.b": "literal",
            "a": {"b": "nested"},
        });
        assert_eq!(roles(lookup(&c, "https://example.com/roles")), ["a"]);
        assert_eq!(roles(lookup(&c, "realm_access.roles")), ["r1", "r2"]);
        assert_eq!(roles(lookup(&c, "scp")), ["read", "write"]);
        assert_eq!(lookup(&c, "a.b"), Some(&json!("literal")));
        assert_eq!(lookup(&c, "realm_access.missing"), None);
        assert!(roles(lookup(&c, "nope")).is_empty());
        assert!(roles(Some(&json!({"x": 1}))).is_empty());
    }

    // === Properties: JWT headers and bearer values from anyone ===

    use proptest::strategy::Strategy as _;

    fn b64(bytes: &[u8]) -> String {
        use base64::Engine as _;
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
    }

    proptest::proptest! {
        /// Arbitrary text never panics `classify` or `peek`; what `peek` accepts is three
        /// dot-separated parts whose header names an algorithm that is not `none`, and whose
        /// issuer is the payload's `iss`.
        #[test]
        fn arbitrary_tokens_never_panic_and_peek_accepts_only_well_formed_jwts(token in ".{0,300}") {
            let _ = classify(&token);
            if let Ok(u) = peek(&token) {
                proptest::prop_assert_eq!(token.split('.').count(), 3);
                let payload = token.split('.').nth(1).unwrap_or_default();
                let claims = decode_part(payload).expect("peek decoded it");
                proptest::prop_assert_eq!(claims.get("iss").and_then(Value::as_str), Some(u.iss.as_str()));
            }
        }

        /// JWT headers of arbitrary JSON-ish content (any alg, kid, crit, types) never panic,
        /// and `none` in any case is never accepted.
        #[test]
        fn arbitrary_jwt_headers_never_panic_and_never_pass_alg_none(
            alg in proptest::prop_oneof![
                proptest::strategy::Just(json!("none")), proptest::strategy::Just(json!("NoNe")),
                proptest::strategy::Just(json!("RS256")), proptest::strategy::Just(json!("ES256")),
                proptest::strategy::Just(json!("HS256")), ".{0,12}".prop_map(Value::from),
                proptest::num::i64::ANY.prop_map(Value::from), proptest::strategy::Just(Value::Null),
            ],
            kid in proptest::option::of(".{0,40}"),
            extra in proptest::collection::btree_map("[a-z]{1,6}", ".{0,10}", 0..4),
            raw_header in proptest::collection::vec(proptest::num::u8::ANY, 0..40),
            iss in ".{0,30}",
        ) {
            let mut header = json!({ "alg": alg, "typ": "JWT" });
            if let Some(k) = &kid { header["kid"] = json!(k); }
            for (k, v) in &extra { header[k] = json!(v); }
            let payload = b64(json!({ "iss": iss }).to_string().as_bytes());
            for h in [b64(header.to_string().as_bytes()), b64(&raw_header)] {
                let token = format!("{h}.{payload}.c2ln");
                if let Ok(u) = peek(&token) {
                    let named = header["alg"].as_str().unwrap_or_default();
                    proptest::prop_assert!(!named.eq_ignore_ascii_case("none"));
                    proptest::prop_assert_eq!(&u.iss, &iss);
                }
            }
        }

        /// `bearer` on arbitrary Authorization values never panics and only returns text that
        /// is in the header.
        #[test]
        fn bearer_returns_only_what_the_header_holds(value in proptest::collection::vec(32u8..127, 0..80)) {
            let mut h = HeaderMap::new();
            if let Ok(v) = HeaderValue::from_bytes(&value) {
                h.insert(http::header::AUTHORIZATION, v);
            }
            if let Ok(token) = bearer(&h) {
                proptest::prop_assert!(String::from_utf8_lossy(&value).contains(token));
            }
        }
    }
}
