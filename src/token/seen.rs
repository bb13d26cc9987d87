//! Tokens that verified on a route, remembered by their SHA-256 until they expire: a pipeline or an
//! operator sends the same token with every request, and a signature check costs 30–70 µs
//! of CPU (RS256 to ES256; docs/performance.md) where a lookup costs about one. An entry
//! holds only while the issuer's key set is the one it verified against: after a refresh the
//! token is verified again, so a key the issuer withdrew stops its tokens as it would without
//! this. Time is checked on every hit (`exp`, `nbf`).

use super::jws::KeySet;
use crate::identity::BearerToken;
use std::collections::HashMap;
use std::sync::{Arc, Mutex, Weak};

/// Most tokens remembered per route; beyond, the expired ones go, then all (a client minting
/// thousands of live tokens costs the others their signature checks, nothing more).
const MAX: usize = 4096;

/// A remembered token: which of the route's issuers verified it, against which key set.
#[derive(Clone)]
pub(crate) struct Entry {
    /// The index of the issuer (in the route's list) that verified it.
    pub issuer: usize,
    token: Arc<BearerToken>,
    nbf: Option<i64>,
    keys: Weak<KeySet>,
}

impl Entry {
    /// The token, if it verified against `keys` (the issuer's set now) and is in its time
    /// window at `now`.
    pub fn valid(self, keys: &Arc<KeySet>, now: i64, leeway: i64) -> Option<Arc<BearerToken>> {
        let same_keys = self.keys.upgrade().is_some_and(|k| Arc::ptr_eq(&k, keys));
        let in_time = now < self.token.exp.saturating_add(leeway)
            && self.nbf.is_none_or(|nbf| now.saturating_add(leeway) >= nbf);
        (same_keys && in_time).then_some(self.token)
    }
}

/// A route's verified tokens.
#[derive(Default)]
pub(crate) struct Seen {
    entries: Mutex<HashMap<[u8; 32], Entry>>,
}

impl Seen {
    /// The entry of `digest`, if any (one lock; [`Entry::valid`] decides, off the lock).
    pub fn get(&self, digest: &[u8; 32]) -> Option<Entry> {
        self.entries.lock().ok()?.get(digest).cloned()
    }

    /// Remembers a token that the route's issuer `issuer` verified against `keys`.
    pub fn put(
        &self,
        digest: [u8; 32],
        issuer: usize,
        keys: &Arc<KeySet>,
        token: Arc<BearerToken>,
        now: i64,
    ) {
        let Ok(mut entries) = self.entries.lock() else {
            return;
        };
        if entries.len() >= MAX {
            entries.retain(|_, e| now < e.token.exp);
            if entries.len() >= MAX {
                entries.clear();
            }
        }
        let nbf = token
            .claims
            .get("nbf")
            .and_then(serde_json::Value::as_f64)
            .map(|f| f as i64);
        entries.insert(
            digest,
            Entry {
                issuer,
                token,
                nbf,
                keys: Arc::downgrade(keys),
            },
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn token(exp: i64) -> Arc<BearerToken> {
        Arc::new(BearerToken {
            issuer: "i".into(),
            iss: "https://i".into(),
            sub: "s".into(),
            client: None,
            jti: None,
            exp,
            claims: serde_json::Map::new(),
        })
    }

    #[test]
    fn a_hit_needs_the_same_keys_and_the_time_window() {
        let seen = Seen::default();
        let keys = Arc::new(KeySet::default());
        seen.put([1; 32], 0, &keys, token(100), 50);
        let hit = |keys: &Arc<KeySet>, now, leeway| {
            seen.get(&[1; 32])
                .and_then(|e| e.valid(keys, now, leeway))
                .is_some()
        };
        assert!(hit(&keys, 60, 0));
        assert_eq!(seen.get(&[1; 32]).map(|e| e.issuer), Some(0));
        assert!(seen.get(&[2; 32]).is_none(), "another token");
        assert!(!hit(&keys, 100, 0), "expired at exp");
        assert!(hit(&keys, 100, 5), "within the leeway");
        let refreshed = Arc::new(KeySet::default());
        assert!(!hit(&refreshed, 60, 0), "verified again against new keys");
    }

    #[test]
    fn the_table_is_bounded() {
        let seen = Seen::default();
        let keys = Arc::new(KeySet::default());
        for i in 0..MAX + 10 {
            let mut d = [0u8; 32];
            d[..8].copy_from_slice(&(i as u64).to_le_bytes());
            seen.put(d, 0, &keys, token(100), 50);
        }
        assert!(seen.entries.lock().unwrap().len() <= MAX);
    }
}
