//! Which partition a key belongs to: Kafka's default (Java) partitioner,
//! murmur2, so that every producer of a co-partitioned topic agrees.
//!
//! Every record this crate produces to a keyed topic (events, repartition
//! records, changelog records) carries an explicit partition computed here;
//! records produced by others must use the same function (Java clients do
//! by default; librdkafka clients need `partitioner=murmur2_random`), or
//! queries look for keys in the wrong partition.
//!
//! ```
//! use kafka_tower_streams::partitioner::partition_for;
//! assert_eq!(partition_for(b"acc-1", 1), 0);
//! assert!(partition_for(b"acc-1", 8) < 8);
//! ```

/// Kafka's `Utils.murmur2`, bit for bit.
pub fn murmur2(data: &[u8]) -> i32 {
    const SEED: u32 = 0x9747_b28c;
    const M: u32 = 0x5bd1_e995;
    let len = data.len();
    let mut h: u32 = SEED ^ (len as u32);
    let mut chunks = data.chunks_exact(4);
    for c in &mut chunks {
        let mut k = u32::from_le_bytes([c[0], c[1], c[2], c[3]]);
        k = k.wrapping_mul(M);
        k ^= k >> 24;
        k = k.wrapping_mul(M);
        h = h.wrapping_mul(M);
        h ^= k;
    }
    let rest = chunks.remainder();
    if rest.len() == 3 {
        h ^= u32::from(rest[2]) << 16;
    }
    if rest.len() >= 2 {
        h ^= u32::from(rest[1]) << 8;
    }
    if !rest.is_empty() {
        h ^= u32::from(rest[0]);
        h = h.wrapping_mul(M);
    }
    h ^= h >> 13;
    h = h.wrapping_mul(M);
    h ^= h >> 15;
    h as i32
}

/// The partition of `key` among `partitions`, as Kafka's default
/// partitioner computes it: `(murmur2(key) & 0x7fffffff) % partitions`.
///
/// # Panics
/// If `partitions` is not positive.
pub fn partition_for(key: &[u8], partitions: i32) -> i32 {
    assert!(partitions > 0, "a topic has at least one partition");
    (murmur2(key) & 0x7fff_ffff) % partitions
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matches_kafkas_own_test_vectors() {
        // From Apache Kafka's UtilsTest.testMurmur2.
        let cases: [(&str, i32); 6] = [
            ("21", -973_932_308),
            ("foobar", -790_332_482),
            ("a-little-bit-long-string", -985_981_536),
            ("a-little-bit-longer-string", -1_486_304_829),
            (
                "lkjh234lh9fiuh90y23oiuhsafujhadof229phr9h19h89h8",
                -58_897_971,
            ),
            ("abc", 479_470_107),
        ];
        for (input, expected) in cases {
            assert_eq!(murmur2(input.as_bytes()), expected, "murmur2({input:?})");
        }
    }

    #[test]
    fn partition_is_in_range_and_stable() {
        for i in 0..1000 {
            let key = format!("key-{i}");
            let p = partition_for(key.as_bytes(), 7);
            assert!((0..7).contains(&p));
            assert_eq!(p, partition_for(key.as_bytes(), 7));
        }
    }
}
