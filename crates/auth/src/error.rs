//! The crate's errors: [`AuthError`] per request, [`ConfigError`] at start-up.

/// Why a request was not authenticated. `Display` is a short reason fit for an RFC 6750
/// `error_description`: it never contains the token or a key.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    /// No `Authorization` header.
    #[error("no Authorization header")]
    Missing,
    /// An `Authorization` header that is not one `Bearer <token>`.
    #[error("malformed Authorization header: {0}")]
    Malformed(&'static str),
    /// A well-formed credential that is not accepted; [`TokenError::kind`] says why.
    #[error("{0}")]
    InvalidToken(TokenError),
    /// The token's issuer publishes its keys somewhere this gateway cannot reach, and no
    /// cached keys can decide (the gateway answers 503, the client may retry).
    #[error("{0}")]
    Unavailable(String),
}

impl AuthError {
    /// A bounded label for metrics: `missing`, `malformed`, `expired`, `not_yet_valid`,
    /// `issuer`, `audience`, `signature`, `unknown_kid`, `algorithm`, `claims`,
    /// `unknown_key` or `unavailable`.
    pub fn reason(&self) -> &'static str {
        match self {
            AuthError::Missing => "missing",
            AuthError::Malformed(_) => "malformed",
            AuthError::InvalidToken(e) => e.kind.as_str(),
            AuthError::Unavailable(_) => "unavailable",
        }
    }

    pub(crate) fn invalid(kind: TokenErrorKind, message: impl Into<String>) -> Self {
        AuthError::InvalidToken(TokenError {
            kind,
            message: message.into(),
        })
    }
}

/// A refused credential: what kind of check failed, and a human reason.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct TokenError {
    kind: TokenErrorKind,
    message: String,
}

impl TokenError {
    pub fn kind(&self) -> TokenErrorKind {
        self.kind
    }

    pub fn message(&self) -> &str {
        &self.message
    }
}

/// Which check refused a credential.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum TokenErrorKind {
    /// `exp` is past (beyond the leeway).
    Expired,
    /// `nbf` is in the future (beyond the leeway).
    NotYetValid,
    /// `iss` missing or not a configured issuer.
    Issuer,
    /// `aud` missing or holding none of the issuer's audiences.
    Audience,
    /// The signature does not verify with the key the token names.
    Signature,
    /// The issuer publishes no key with the token's `kid` (or none fit its algorithm).
    UnknownKid,
    /// `alg` is `none`, unknown, not allowed for the issuer, or does not fit the key.
    Algorithm,
    /// The token is not a decodable JWT, or a required claim (subject, `exp`) is missing or
    /// ill-typed.
    Claims,
    /// An API key that is not configured.
    UnknownKey,
}

impl TokenErrorKind {
    pub fn as_str(self) -> &'static str {
        match self {
            TokenErrorKind::Expired => "expired",
            TokenErrorKind::NotYetValid => "not_yet_valid",
            TokenErrorKind::Issuer => "issuer",
            TokenErrorKind::Audience => "audience",
            TokenErrorKind::Signature => "signature",
            TokenErrorKind::UnknownKid => "unknown_kid",
            TokenErrorKind::Algorithm => "algorithm",
            TokenErrorKind::Claims => "claims",
            TokenErrorKind::UnknownKey => "unknown_key",
        }
    }
}

/// An invalid [`crate::AuthConfig`]; the message names the field and what to fix.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid authentication configuration: {0}")]
pub struct ConfigError(String);

impl ConfigError {
    pub(crate) fn new(message: impl Into<String>) -> Self {
        Self(message.into())
    }
}
