//! The verified-token cache.
//!
//! A token propagated along thousands of records is verified once: the
//! cache maps a 64-bit hash of the token (foldhash, randomly seeded per
//! cache) to the verified claims. A hit compares the stored token bytes
//! with the presented ones, so a hash collision can only cost a miss, never
//! accept a token that was not verified. Entries hold only what does not
//! depend on time or topic (signature, issuer, audience, key generation);
//! `exp`/`nbf`, the topic's expiry mode and its scopes are judged on every
//! request, so a cached token is accepted exactly when a fresh verification
//! would accept it.

use std::collections::HashMap;
use std::hash::{BuildHasher, BuildHasherDefault, Hasher};
use std::sync::RwLock;

use crate::claims::VerifiedClaims;

/// The key is already a hash; do not hash it again.
#[derive(Default)]
pub(crate) struct PassThrough(u64);

impl Hasher for PassThrough {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = (self.0 << 8) | u64::from(b);
        }
    }
    fn write_u64(&mut self, n: u64) {
        self.0 = n;
    }
}

struct Entry {
    token: Box<[u8]>,
    claims: VerifiedClaims,
    generation: u64,
}

pub(crate) struct TokenCache {
    map: RwLock<HashMap<u64, Entry, BuildHasherDefault<PassThrough>>>,
    hasher: foldhash::fast::RandomState,
    capacity: usize,
    /// Seconds past `exp` an entry may still be accepted by some topic;
    /// `None` when a topic skips expiry.
    retention: Option<u64>,
}

impl TokenCache {
    pub(crate) fn new(capacity: usize, retention: Option<u64>) -> Self {
        TokenCache {
            map: RwLock::new(HashMap::default()),
            hasher: foldhash::fast::RandomState::default(),
            capacity,
            retention,
        }
    }

    #[inline]
    pub(crate) fn get(&self, token: &[u8], generation: u64) -> Option<VerifiedClaims> {
        if self.capacity == 0 {
            return None;
        }
        let h = self.hasher.hash_one(token);
        let map = self.map.read().unwrap_or_else(|e| e.into_inner());
        let e = map.get(&h)?;
        (e.generation == generation && *e.token == *token).then(|| e.claims.clone())
    }

    pub(crate) fn insert(&self, token: &[u8], claims: VerifiedClaims, generation: u64, now: u64) {
        if self.capacity == 0 {
            return;
        }
        let h = self.hasher.hash_one(token);
        let mut map = self.map.write().unwrap_or_else(|e| e.into_inner());
        if map.len() >= self.capacity && !map.contains_key(&h) {
            let retention = self.retention;
            map.retain(|_, e| {
                e.generation == generation
                    && match (retention, e.claims.expires_at()) {
                        (Some(r), Some(exp)) => exp.saturating_add(r) >= now,
                        _ => true,
                    }
            });
            if map.len() >= self.capacity {
                // Still full of live tokens: drop an arbitrary eighth.
                let n = (self.capacity / 8).max(1);
                let victims: Vec<u64> = map.keys().take(n).copied().collect();
                for k in victims {
                    map.remove(&k);
                }
            }
        }
        map.insert(
            h,
            Entry {
                token: token.into(),
                claims,
                generation,
            },
        );
    }

    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.map.read().unwrap().len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::algorithm::Algorithm;
    use crate::claims::{ClaimsInner, Fingerprint};
    use std::sync::Arc;

    fn claims(exp: u64) -> VerifiedClaims {
        VerifiedClaims(Arc::new(ClaimsInner {
            subject: Some("s".into()),
            client_id: None,
            service_id: None,
            issuer: None,
            scopes: Box::new([]),
            expires_at: Some(exp),
            not_before: None,
            algorithm: Algorithm::HS256,
            kid: None,
            fingerprint: Fingerprint::of(b"t"),
            raw: serde_json::Value::Null,
            caller: kafka_tower::Caller::new(Some("s"), None, None),
        }))
    }

    #[test]
    fn hit_needs_same_bytes_and_generation() {
        let c = TokenCache::new(10, Some(60));
        c.insert(b"token-a", claims(1000), 0, 900);
        assert!(c.get(b"token-a", 0).is_some());
        assert!(c.get(b"token-b", 0).is_none());
        assert!(c.get(b"token-a", 1).is_none(), "a key rotation invalidates");
    }

    #[test]
    fn collision_on_the_hash_is_a_miss_not_a_hit() {
        let c = TokenCache::new(10, Some(60));
        c.insert(b"token-a", claims(1000), 0, 900);
        // Forge an entry under token-b's hash that holds token-a's bytes,
        // as a hash collision would.
        let hb = c.hasher.hash_one(&b"token-b"[..]);
        let ha = c.hasher.hash_one(&b"token-a"[..]);
        let mut map = c.map.write().unwrap();
        let e = map.remove(&ha).unwrap();
        map.insert(hb, e);
        drop(map);
        assert!(c.get(b"token-b", 0).is_none());
    }

    #[test]
    fn bounded_and_stale_entries_go_first() {
        let c = TokenCache::new(4, Some(60));
        c.insert(b"old-1", claims(100), 0, 1000);
        c.insert(b"old-2", claims(100), 0, 1000);
        c.insert(b"live-1", claims(5000), 0, 1000);
        c.insert(b"live-2", claims(5000), 0, 1000);
        c.insert(b"live-3", claims(5000), 0, 1000);
        assert_eq!(c.len(), 3);
        assert!(c.get(b"old-1", 0).is_none());
        assert!(c.get(b"live-1", 0).is_some());
        for i in 0..100u32 {
            c.insert(&i.to_be_bytes(), claims(5000), 0, 1000);
            assert!(c.len() <= 4);
        }
    }

    #[test]
    fn capacity_zero_disables() {
        let c = TokenCache::new(0, None);
        c.insert(b"t", claims(1), 0, 0);
        assert!(c.get(b"t", 0).is_none());
    }
}
