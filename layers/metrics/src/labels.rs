//! Bounded, cached label values: [`LabelLimit`] and the cache that keeps the
//! hot path from hashing label strings.

use std::collections::{HashMap, HashSet};
use std::hash::{BuildHasherDefault, Hasher};
use std::sync::Arc;

use parking_lot::{Mutex, RwLock};

/// The label value every value beyond a [`LabelLimit`] folds into.
pub const OTHER: &str = "other";

/// How many distinct values a label may take; the rest fold into
/// [`OTHER`]. Bounds the number of time series an untrusted input (a
/// client id from a token, a URI path) can create.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub enum LabelLimit {
    /// The first `n` distinct values seen get their own series.
    Cap(usize),
    /// Only these values get their own series.
    AllowList(HashSet<String>),
}

impl LabelLimit {
    /// The first `n` distinct values get their own series.
    pub fn cap(n: usize) -> Self {
        LabelLimit::Cap(n)
    }

    /// Only `values` get their own series.
    pub fn allow<I, S>(values: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        LabelLimit::AllowList(values.into_iter().map(Into::into).collect())
    }

    fn admits(&self, value: &str, already: usize) -> bool {
        match self {
            LabelLimit::Cap(n) => already < *n,
            LabelLimit::AllowList(set) => set.contains(value),
        }
    }
}

/// Label handles keyed by the address of the label's bytes, with the
/// label kept to check a hit.
type ByAddress<H> = HashMap<usize, (Box<str>, Arc<H>), BuildHasherDefault<AddressHasher>>;

/// Entries kept in the address-keyed cache before it is emptied.
const BY_ADDRESS_CAPACITY: usize = 4096;

/// The handles (pre-resolved metric children) of each label value.
///
/// Two levels: values that live in a shared allocation which is reused
/// across records (the interned topic of [`kafka_tower::RecordMeta`], the
/// client id of a cached [`kafka_tower::Caller`]) are found by the address
/// of their bytes, an integer, after a `memcmp` guards against a reused
/// address; everything else goes to a map keyed by the string, where the
/// limit is enforced.
pub(crate) struct LabelCache<H> {
    limit: LabelLimit,
    named: Mutex<HashMap<Box<str>, Arc<H>>>,
    other: Arc<H>,
    by_address: RwLock<ByAddress<H>>,
    make: Box<dyn Fn(&str) -> H + Send + Sync>,
}

impl<H> LabelCache<H> {
    pub(crate) fn new(limit: LabelLimit, make: impl Fn(&str) -> H + Send + Sync + 'static) -> Self {
        LabelCache {
            limit,
            named: Mutex::new(HashMap::new()),
            other: Arc::new(make(OTHER)),
            by_address: RwLock::new(HashMap::default()),
            make: Box::new(make),
        }
    }

    /// The handles of `value`, which lives in a shared allocation (an
    /// `Arc<str>`) likely to be seen again.
    pub(crate) fn get_shared(&self, value: &str) -> Arc<H> {
        let addr = value.as_ptr() as usize;
        if let Some((name, h)) = self.by_address.read().get(&addr) {
            if **name == *value {
                return h.clone();
            }
        }
        let h = self.get(value);
        let mut map = self.by_address.write();
        if map.len() >= BY_ADDRESS_CAPACITY {
            map.clear();
        }
        map.insert(addr, (value.into(), h.clone()));
        h
    }

    /// The handles of `value`, looked up by the string itself.
    pub(crate) fn get(&self, value: &str) -> Arc<H> {
        let mut named = self.named.lock();
        if let Some(h) = named.get(value) {
            return h.clone();
        }
        if value == OTHER || !self.limit.admits(value, named.len()) {
            return self.other.clone();
        }
        let h = Arc::new((self.make)(value));
        named.insert(value.into(), h.clone());
        h
    }

    /// The handles of [`OTHER`].
    #[cfg(test)]
    pub(crate) fn other(&self) -> &Arc<H> {
        &self.other
    }
}

/// Hashes an address: a multiply-shift, enough for pointer keys.
#[derive(Default)]
pub(crate) struct AddressHasher(u64);

impl Hasher for AddressHasher {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for b in bytes {
            self.0 = (self.0 ^ u64::from(*b)).wrapping_mul(0x100_0000_01b3);
        }
    }
    fn write_usize(&mut self, n: usize) {
        self.0 = (n as u64)
            .wrapping_mul(0x9e37_79b9_7f4a_7c15)
            .rotate_left(26);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    #[test]
    fn cap_folds_the_rest_into_other() {
        let made = Arc::new(AtomicUsize::new(0));
        let m = made.clone();
        let cache = LabelCache::new(LabelLimit::cap(2), move |v: &str| {
            m.fetch_add(1, Ordering::Relaxed);
            v.to_owned()
        });
        assert_eq!(*cache.get("a"), "a");
        assert_eq!(*cache.get("b"), "b");
        assert_eq!(*cache.get("c"), OTHER);
        assert_eq!(*cache.get("a"), "a");
        // `other` plus two values, each made once.
        assert_eq!(made.load(Ordering::Relaxed), 3);
    }

    #[test]
    fn allow_list_admits_only_listed_values() {
        let cache = LabelCache::new(LabelLimit::allow(["web"]), |v: &str| v.to_owned());
        assert_eq!(*cache.get("web"), "web");
        assert_eq!(*cache.get("batch"), OTHER);
        assert!(Arc::ptr_eq(&cache.get("batch"), cache.other()));
    }

    #[test]
    fn shared_values_are_found_by_address_and_checked_by_content() {
        let cache = LabelCache::new(LabelLimit::cap(10), |v: &str| v.to_owned());
        let a: Arc<str> = Arc::from("orders");
        let first = cache.get_shared(&a);
        assert!(Arc::ptr_eq(&first, &cache.get_shared(&a)));
        // Same address range reused with different content is not confused.
        let b: Arc<str> = Arc::from("payments");
        assert_eq!(*cache.get_shared(&b), "payments");
    }
}
