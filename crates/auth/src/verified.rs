//! Tokens already verified, so a client that sends the same JWT with every request of a
//! session pays for the signature check once (an RS256 verification costs ~240 µs with the
//! pure-Rust RSA of `jsonwebtoken`'s `rust_crypto` backend; a hit costs a SHA-256 and a map
//! lookup).
//!
//! An entry is the token's digest (the token itself is not kept) and the principal it proved.
//! It is used while the token is unexpired (`exp` plus the issuer's leeway) and at most the
//! JWKS cache TTL after it was verified, so a key the issuer retires stops being honoured
//! as soon as it would without this cache. Bounded: when full, expired entries go first,
//! then everything.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use mcp_gateway_core::Principal;

/// Most tokens remembered.
const CAPACITY: usize = 10_000;

struct Entry {
    principal: Principal,
    /// Unix seconds after which the token no longer passes (`exp` + leeway).
    valid_until: u64,
    verified_at: Instant,
}

#[derive(Default)]
pub(crate) struct Verified {
    entries: Mutex<HashMap<[u8; 32], Entry>>,
}

impl Verified {
    pub fn get(&self, digest: &[u8; 32], now: u64, max_age: Duration) -> Option<Principal> {
        let map = self.entries.lock().unwrap_or_else(|e| e.into_inner());
        let e = map.get(digest)?;
        (now <= e.valid_until && e.verified_at.elapsed() < max_age).then(|| e.principal.clone())
    }

    pub fn put(&self, digest: [u8; 32], principal: Principal, valid_until: u64, now: u64) {
        let mut map = self.entries.lock().unwrap_or_else(|e| e.into_inner());
        if map.len() >= CAPACITY {
            map.retain(|_, e| now <= e.valid_until);
            if map.len() >= CAPACITY {
                map.clear();
            }
        }
        map.insert(
            digest,
            Entry {
                principal,
                valid_until,
                verified_at: Instant::now(),
            },
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_expire_with_the_token_and_the_key_cache() {
        let v = Verified::default();
        let p = Principal::new("a", Some("iss".into()), vec![]);
        v.put([1; 32], p.clone(), 100, 50);
        let long = Duration::from_secs(60);
        assert_eq!(v.get(&[1; 32], 100, long), Some(p));
        assert_eq!(v.get(&[1; 32], 101, long), None, "past exp + leeway");
        assert_eq!(v.get(&[2; 32], 50, long), None);
        assert_eq!(
            v.get(&[1; 32], 50, Duration::ZERO),
            None,
            "older than the key cache"
        );
        for i in 0..CAPACITY + 1 {
            let mut d = [0; 32];
            d[..8].copy_from_slice(&(i as u64).to_le_bytes());
            v.put(d, Principal::new("b", None, vec![]), 100, 50);
        }
        assert!(v.entries.lock().unwrap().len() <= CAPACITY);
    }
}
