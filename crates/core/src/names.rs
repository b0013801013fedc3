//! Validated identifiers: adapter names (DNS-1123 labels) and MCP session ids.

use std::fmt;
use std::sync::Arc;

/// The longest session id the gateway accepts. The MCP spec asks for visible ASCII only and
/// SDKs issue UUIDs (32–36 characters); anything far longer is refused rather than stored.
pub const MAX_SESSION_ID_LEN: usize = 128;

/// The name of an adapter: a DNS-1123 label (`[a-z0-9]([-a-z0-9]*[a-z0-9])?`, at most 63
/// characters), so it can name Kubernetes objects and appear in URLs unescaped.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct AdapterName(Arc<str>);

/// Why a string is not a valid adapter name.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid adapter name {name:?}: {reason}")]
pub struct InvalidName {
    pub name: String,
    pub reason: &'static str,
}

impl AdapterName {
    pub fn new(name: &str) -> Result<Self, InvalidName> {
        let fail = |reason| {
            Err(InvalidName {
                name: name.chars().take(80).collect(),
                reason,
            })
        };
        if name.is_empty() {
            return fail("must not be empty");
        }
        if name.len() > 63 {
            return fail("must be at most 63 characters (a DNS-1123 label)");
        }
        if !name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        {
            return fail("may contain only lowercase letters, digits and '-' (a DNS-1123 label)");
        }
        if name.starts_with('-') || name.ends_with('-') {
            return fail("must start and end with a letter or digit (a DNS-1123 label)");
        }
        Ok(Self(name.into()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The name as a shared string (a reference-count increment, no copy): for metric labels
    /// and other per-request uses.
    pub fn shared(&self) -> Arc<str> {
        self.0.clone()
    }
}

impl fmt::Display for AdapterName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for AdapterName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&*self.0, f)
    }
}

impl std::str::FromStr for AdapterName {
    type Err = InvalidName;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::new(s)
    }
}

impl serde::Serialize for AdapterName {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.0)
    }
}

impl<'de> serde::Deserialize<'de> for AdapterName {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = <std::borrow::Cow<'de, str>>::deserialize(d)?;
        Self::new(&s).map_err(serde::de::Error::custom)
    }
}

/// An MCP session id as issued by a replica: 1 to [`MAX_SESSION_ID_LEN`] visible ASCII
/// characters (0x21–0x7E), as the MCP spec requires. Ids pass through the gateway unchanged.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SessionId(Arc<str>);

/// Why a string is not an acceptable session id.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum InvalidSessionId {
    #[error("session id is empty")]
    Empty,
    #[error("session id is longer than {MAX_SESSION_ID_LEN} characters")]
    TooLong,
    #[error("session id may contain only visible ASCII characters (0x21-0x7E)")]
    BadChar,
}

impl SessionId {
    pub fn new(id: &str) -> Result<Self, InvalidSessionId> {
        Self::check(id.as_bytes())?;
        Ok(Self(id.into()))
    }

    /// Validates raw bytes (e.g. a header value) without allocating.
    pub fn check(id: &[u8]) -> Result<(), InvalidSessionId> {
        if id.is_empty() {
            return Err(InvalidSessionId::Empty);
        }
        if id.len() > MAX_SESSION_ID_LEN {
            return Err(InvalidSessionId::TooLong);
        }
        if !id.iter().all(|b| (0x21..=0x7e).contains(b)) {
            return Err(InvalidSessionId::BadChar);
        }
        Ok(())
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for SessionId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for SessionId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&*self.0, f)
    }
}

impl serde::Serialize for SessionId {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.0)
    }
}

impl<'de> serde::Deserialize<'de> for SessionId {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = <std::borrow::Cow<'de, str>>::deserialize(d)?;
        Self::new(&s).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn adapter_names_are_dns_1123_labels() {
        for ok in ["a", "everything", "my-server-2", "0abc", &"a".repeat(63)] {
            assert!(AdapterName::new(ok).is_ok(), "{ok}");
        }
        for bad in [
            "",
            "-a",
            "a-",
            "A",
            "a_b",
            "a.b",
            "a/b",
            "ä",
            &"a".repeat(64),
        ] {
            assert!(AdapterName::new(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn session_ids_are_short_visible_ascii() {
        assert!(SessionId::new("0f8e2c2a-2b4c-4d1e-9a43-0b3c1e6f0a1b").is_ok());
        assert!(SessionId::new("abc_DEF.123~!").is_ok());
        assert_eq!(SessionId::new(""), Err(InvalidSessionId::Empty));
        assert_eq!(SessionId::new("a b"), Err(InvalidSessionId::BadChar));
        assert_eq!(SessionId::new("a\nb"), Err(InvalidSessionId::BadChar));
        assert_eq!(SessionId::new("é"), Err(InvalidSessionId::BadChar));
        assert_eq!(
            SessionId::new(&"x".repeat(MAX_SESSION_ID_LEN + 1)),
            Err(InvalidSessionId::TooLong)
        );
        assert!(SessionId::new(&"x".repeat(MAX_SESSION_ID_LEN)).is_ok());
    }

    #[test]
    fn names_round_trip_through_serde_and_reject_bad_values() {
        let n: AdapterName = serde_json::from_str("\"abc\"").unwrap();
        assert_eq!(serde_json::to_string(&n).unwrap(), "\"abc\"");
        assert!(serde_json::from_str::<AdapterName>("\"ABC\"").is_err());
        assert!(serde_json::from_str::<SessionId>("\"a b\"").is_err());
    }
}

#[cfg(test)]
mod properties {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        /// A session id is accepted exactly when it is 1–128 visible ASCII characters, and then
        /// kept as given (so what is routed on is what the client sent).
        #[test]
        fn session_ids_are_accepted_exactly_when_visible_ascii(bytes in prop::collection::vec(any::<u8>(), 0..200)) {
            let valid = (1..=MAX_SESSION_ID_LEN).contains(&bytes.len())
                && bytes.iter().all(|b| (0x21..=0x7e).contains(b));
            prop_assert_eq!(SessionId::check(&bytes).is_ok(), valid);
            if let Ok(s) = std::str::from_utf8(&bytes) {
                match SessionId::new(s) {
                    Ok(id) => {
                        prop_assert!(valid);
                        prop_assert_eq!(id.as_str(), s);
                    }
                    Err(_) => prop_assert!(!valid),
                }
            }
        }

        /// An adapter name never holds what would make a store key or a route ambiguous.
        #[test]
        fn adapter_names_never_hold_separators(name in "[ -~]{0,80}") {
            if let Ok(n) = AdapterName::new(&name) {
                prop_assert!(!n.as_str().contains([':', '/', '\n', '?', '#', ' ']));
                prop_assert_eq!(n.as_str(), name.as_str());
            }
        }
    }
}
