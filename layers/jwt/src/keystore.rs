//! The current set of verification keys, swapped whole when a JWKS
//! document is refreshed.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};

use crate::key::VerificationKey;

pub(crate) struct KeySnapshot {
    pub(crate) keys: Vec<VerificationKey>,
}

pub(crate) struct KeyStore {
    current: RwLock<Arc<KeySnapshot>>,
    generation: AtomicU64,
    /// Keys configured statically (secrets, PEM/DER, JWKS files); always
    /// part of the snapshot.
    static_keys: Vec<VerificationKey>,
    #[cfg(feature = "jwks-http")]
    pub(crate) remote: Option<crate::jwks_http::Remote>,
}

impl KeyStore {
    pub(crate) fn new(static_keys: Vec<VerificationKey>) -> Self {
        KeyStore {
            current: RwLock::new(Arc::new(KeySnapshot {
                keys: static_keys.clone(),
            })),
            generation: AtomicU64::new(0),
            static_keys,
            #[cfg(feature = "jwks-http")]
            remote: None,
        }
    }

    /// Bumped whenever the key set changes; cached verifications of an older
    /// generation are not trusted any more.
    #[inline]
    pub(crate) fn generation(&self) -> u64 {
        self.generation.load(Ordering::Acquire)
    }

    pub(crate) fn snapshot(&self) -> Arc<KeySnapshot> {
        self.current
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Replaces the fetched keys (the static ones stay).
    #[cfg_attr(not(feature = "jwks-http"), allow(dead_code))]
    pub(crate) fn replace_fetched(&self, fetched: Vec<VerificationKey>) {
        let mut keys = self.static_keys.clone();
        keys.extend(fetched);
        let mut cur = self.current.write().unwrap_or_else(|e| e.into_inner());
        let generation = self.generation.load(Ordering::Acquire) + 1;
        *cur = Arc::new(KeySnapshot { keys });
        self.generation.store(generation, Ordering::Release);
    }

    /// Called when a token names a `kid` no key has. Returns `true` when a
    /// refresh of the configured JWKS URLs was started (or is pending), so
    /// the refusal is worth retrying.
    pub(crate) fn on_unknown_kid(&self) -> bool {
        #[cfg(feature = "jwks-http")]
        if let Some(remote) = &self.remote {
            return remote.request_refresh();
        }
        false
    }
}
