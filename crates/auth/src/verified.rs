//! Tokens already verified, so a client that sends the same JWT with every request of a
//! session pays for the signature check once (an RS256 verification costs ~240 µs with the
//! pure-Rust RSA of `jsonwebtoken`'s `rust_crypto` backend; a hit costs a SHA-256 and a map
//! lookup).
//!
//! An entry is the token's digest (the token itself is not kept), the principal it proved and
//! the issuer's key set that verified it. It is used while the token is unexpired (`exp` plus
//! the issuer's leeway) and while that key set is still the issuer's current, fresh one: once
//! the keys are due for a refresh the token is verified again against what the refresh
//! brings, so a key the issuer retires stops being honoured exactly when it would without this
//! cache. Bounded: when full, expired entries go first, then everything.

use std::collections::HashMap;
use std::sync::Mutex;

use mcp_gateway_core::Principal;

/// Most tokens remembered.
const CAPACITY: usize = 10_000;

struct Entry {
    principal: Principal,
    /// Unix seconds after which the token no longer passes (`exp` + leeway).
    valid_until: u64,
    /// The issuer (its index) and the generation of its key set that verified the token.
    keys: (usize, u64),
}

#[derive(Default)]
pub(crate) struct Verified {
    entries: Mutex<HashMap<[u8; 32], Entry>>,
}

impl Verified {
    /// The principal of an unexpired token verified before, if `fresh_keys` says the key set
    /// that verified it (issuer index, generation) is still current and fresh.
    pub fn get(
        &self,
        digest: &[u8; 32],
        now: u64,
        fresh_keys: impl FnOnce(usize, u64) -> bool,
    ) -> Option<Principal> {
        let (principal, (issuer, generation)) = {
            let map = self.entries.lock().unwrap_or_else(|e| e.into_inner());
            let e = map.get(digest).filter(|e| now <= e.valid_until)?;
            (e.principal.clone(), e.keys)
        };
        fresh_keys(issuer, generation).then_some(principal)
    }

    pub fn put(
        &self,
        digest: [u8; 32],
        principal: Principal,
        valid_until: u64,
        keys: (usize, u64),
        now: u64,
    ) {
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
                keys,
            },
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_expire_with_the_token_and_the_key_set() {
        let v = Verified::default();
        let p = Principal::new("a", Some("iss".into()), vec![]);
        v.put([1; 32], p.clone(), 100, (0, 7), 50);
        let same = |i, g| (i, g) == (0, 7);
        assert_eq!(v.get(&[1; 32], 100, same), Some(p));
        assert_eq!(v.get(&[1; 32], 101, same), None, "past exp + leeway");
        assert_eq!(v.get(&[2; 32], 50, same), None);
        assert_eq!(
            v.get(&[1; 32], 50, |_, g| g == 8),
            None,
            "keys refreshed since"
        );
        for i in 0..CAPACITY + 1 {
            let mut d = [0; 32];
            d[..8].copy_from_slice(&(i as u64).to_le_bytes());
            v.put(d, Principal::new("b", None, vec![]), 100, (0, 1), 50);
        }
        assert!(v.entries.lock().unwrap().len() <= CAPACITY);
    }
}
