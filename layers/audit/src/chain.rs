//! Tamper evidence: records hash-chained per stream, and a verifier.
//!
//! With [`AuditorBuilder::chain`](crate::AuditorBuilder::chain) on, every
//! record gets a [`ChainLink`]: the chain id `<auditor instance>:<stream>`
//! (the stream is `<topic>/<partition>`, or `http`), a sequence number from
//! 0, the previous record's hash ([`GENESIS`] for the first) and its own
//! hash — SHA-256 over the record serialised as JSON with `hash` empty. The
//! link is made on the auditor's writer thread, in the order records reach
//! the sinks, so a sink's output is a valid chain as written.
//!
//! [`verify`] walks records (in any interleaving of chains) and reports the
//! first [`ChainBreak`], naming the record's index: a changed field breaks
//! that record's hash; a removed or reordered record breaks `seq` or
//! `prev`. What a chain cannot show is the removal of its *last* records —
//! anchor the latest hash elsewhere when that matters. Each auditor
//! instance (each process, each restart) starts its own chains.
//!
//! ```
//! use kafka_tower_audit::chain::{verify, BreakKind, Chainer};
//! use kafka_tower_audit::AuditRecord;
//!
//! let mut chainer = Chainer::new("instance-1");
//! let mut records: Vec<AuditRecord> = (0..3)
//!     .map(|i| {
//!         let mut r = AuditRecord::new(format!("2024-05-01T12:00:0{i}.000000Z"), "orders");
//!         chainer.link(&mut r);
//!         r
//!     })
//!     .collect();
//! assert_eq!(verify(&records).unwrap().records, 3);
//!
//! records[1].service_id = "someone-else".into();
//! let broken = verify(&records).unwrap_err();
//! assert_eq!(broken.index, 1);
//! assert!(matches!(broken.kind, BreakKind::HashMismatch { .. }));
//! ```

use std::collections::HashMap;
use std::fmt;

use sha2::{Digest, Sha256};

use crate::record::{hex, AuditRecord, ChainLink};

/// The `prev` of a chain's first record: 64 zeros.
pub const GENESIS: &str = "0000000000000000000000000000000000000000000000000000000000000000";

/// SHA-256, hex, of `record` serialised with its chain link's `hash`
/// empty (and with no link at all when it has none).
pub fn record_hash(record: &AuditRecord) -> String {
    let mut hasher = Sha256::new();
    match &record.chain {
        Some(link) if !link.hash.is_empty() => {
            let mut unhashed = record.clone();
            if let Some(l) = unhashed.chain.as_mut() {
                l.hash.clear();
            }
            serde_json::to_writer(HashWriter(&mut hasher), &unhashed)
        }
        _ => serde_json::to_writer(HashWriter(&mut hasher), record),
    }
    .expect("an audit record always serialises");
    hex(&hasher.finalize())
}

struct HashWriter<'a>(&'a mut Sha256);

impl std::io::Write for HashWriter<'_> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.update(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Links records into chains, one per stream. The auditor keeps one on
/// its writer thread; it is public for sinks and tools that build chains
/// themselves.
#[derive(Debug)]
pub struct Chainer {
    instance: String,
    heads: HashMap<String, (u64, String)>,
}

impl Chainer {
    /// Chains whose ids start with `instance`.
    pub fn new(instance: impl Into<String>) -> Self {
        Chainer {
            instance: instance.into(),
            heads: HashMap::new(),
        }
    }

    /// Gives `record` the next link of its stream's chain.
    pub fn link(&mut self, record: &mut AuditRecord) {
        let stream = record.stream();
        let (seq, prev) = match self.heads.get(&stream) {
            Some((seq, hash)) => (seq + 1, hash.clone()),
            None => (0, GENESIS.to_owned()),
        };
        record.chain = Some(ChainLink {
            id: format!("{}:{stream}", self.instance),
            seq,
            prev,
            hash: String::new(),
        });
        let hash = record_hash(record);
        record.chain.as_mut().expect("just set").hash = hash.clone();
        self.heads.insert(stream, (seq, hash));
    }
}

/// What [`verify`] checked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ChainSummary {
    /// Records verified.
    pub records: usize,
    /// Distinct chains among them.
    pub chains: usize,
}

/// The first record that does not continue its chain.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChainBreak {
    /// The record's index in the verified sequence (line number − 1 for
    /// [`verify_json_lines`]).
    pub index: usize,
    /// The record's chain id, when it has one.
    pub chain_id: Option<String>,
    /// What is wrong.
    pub kind: BreakKind,
}

/// Why a record breaks its chain.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum BreakKind {
    /// The record has no chain link.
    Unchained,
    /// The line is not an audit record ([`verify_json_lines`] only).
    Unparsable(String),
    /// The record's content does not hash to its `hash`: it was changed.
    HashMismatch {
        /// The hash the content has.
        computed: String,
        /// The hash the record claims.
        recorded: String,
    },
    /// `seq` is not the previous record's `seq + 1` (0 for a chain's first
    /// record): a record is missing or out of order.
    SeqGap {
        /// The `seq` expected.
        expected: u64,
        /// The `seq` found.
        found: u64,
    },
    /// `prev` is not the previous record's hash ([`GENESIS`] for a chain's
    /// first record).
    PrevMismatch,
}

impl fmt::Display for ChainBreak {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "audit record {} ", self.index)?;
        if let Some(id) = &self.chain_id {
            write!(f, "(chain {id}) ")?;
        }
        match &self.kind {
            BreakKind::Unchained => f.write_str("has no chain link"),
            BreakKind::Unparsable(e) => write!(f, "is not an audit record: {e}"),
            BreakKind::HashMismatch { computed, recorded } => write!(
                f,
                "was altered: its content hashes to {computed}, it claims {recorded}"
            ),
            BreakKind::SeqGap { expected, found } => write!(
                f,
                "has seq {found} where {expected} was expected: a record is missing or out of order"
            ),
            BreakKind::PrevMismatch => f.write_str("does not point at the previous record's hash"),
        }
    }
}

impl std::error::Error for ChainBreak {}

/// Verifies that `records` form complete chains (each chain from its
/// first record, in order; chains may interleave) and returns the first
/// break.
pub fn verify<'a>(
    records: impl IntoIterator<Item = &'a AuditRecord>,
) -> Result<ChainSummary, ChainBreak> {
    let mut verifier = Verifier::default();
    let mut n = 0;
    for (i, r) in records.into_iter().enumerate() {
        verifier.check(i, r)?;
        n = i + 1;
    }
    Ok(ChainSummary {
        records: n,
        chains: verifier.heads.len(),
    })
}

/// [`verify`] over JSON lines, as the file sink writes them (empty lines
/// are skipped but counted, so indices stay line numbers − 1).
pub fn verify_json_lines(text: &str) -> Result<ChainSummary, ChainBreak> {
    let mut verifier = Verifier::default();
    let mut n = 0;
    for (i, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let record: AuditRecord = serde_json::from_str(line).map_err(|e| ChainBreak {
            index: i,
            chain_id: None,
            kind: BreakKind::Unparsable(e.to_string()),
        })?;
        verifier.check(i, &record)?;
        n += 1;
    }
    Ok(ChainSummary {
        records: n,
        chains: verifier.heads.len(),
    })
}

#[derive(Default)]
struct Verifier {
    heads: HashMap<String, (u64, String)>,
}

impl Verifier {
    fn check(&mut self, index: usize, record: &AuditRecord) -> Result<(), ChainBreak> {
        let Some(link) = &record.chain else {
            return Err(ChainBreak {
                index,
                chain_id: None,
                kind: BreakKind::Unchained,
            });
        };
        let broken = |kind| ChainBreak {
            index,
            chain_id: Some(link.id.clone()),
            kind,
        };
        let computed = record_hash(record);
        if computed != link.hash {
            return Err(broken(BreakKind::HashMismatch {
                computed,
                recorded: link.hash.clone(),
            }));
        }
        let (expected_seq, expected_prev) = match self.heads.get(&link.id) {
            Some((seq, hash)) => (seq + 1, hash.as_str()),
            None => (0, GENESIS),
        };
        if link.seq != expected_seq {
            return Err(broken(BreakKind::SeqGap {
                expected: expected_seq,
                found: link.seq,
            }));
        }
        if link.prev != expected_prev {
            return Err(broken(BreakKind::PrevMismatch));
        }
        self.heads
            .insert(link.id.clone(), (link.seq, link.hash.clone()));
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(topic: &str, partition: i32, offset: i64) -> AuditRecord {
        let mut r = AuditRecord::new("2024-05-01T12:00:00.000000Z", "orders");
        r.topic = Some(topic.into());
        r.partition = Some(partition);
        r.offset = Some(offset);
        r.payload = Some(serde_json::json!({"n": offset, "x": 0.1}));
        r
    }

    /// Two partitions' records, interleaved, chained.
    fn chained() -> Vec<AuditRecord> {
        let mut chainer = Chainer::new("i");
        (0..6)
            .map(|i| {
                let mut r = record("orders", (i % 2) as i32, i / 2);
                chainer.link(&mut r);
                r
            })
            .collect()
    }

    #[test]
    fn chains_follow_partitions() {
        let records = chained();
        let links: Vec<_> = records.iter().map(|r| r.chain.clone().unwrap()).collect();
        assert_eq!(links[0].id, "i:orders/0");
        assert_eq!(links[1].id, "i:orders/1");
        assert_eq!((links[0].seq, links[2].seq, links[4].seq), (0, 1, 2));
        assert_eq!(links[0].prev, GENESIS);
        assert_eq!(links[2].prev, links[0].hash);
        assert_eq!(links[3].prev, links[1].hash);
        assert_eq!(
            verify(&records),
            Ok(ChainSummary {
                records: 6,
                chains: 2
            })
        );
    }

    #[test]
    fn an_altered_field_is_detected_at_its_index() {
        let mut records = chained();
        records[3].outcome = crate::Outcome::Refused;
        let b = verify(&records).unwrap_err();
        assert_eq!(b.index, 3);
        assert_eq!(b.chain_id.as_deref(), Some("i:orders/1"));
        assert!(matches!(b.kind, BreakKind::HashMismatch { .. }), "{b}");
    }

    #[test]
    fn a_rehashed_forgery_is_detected_by_its_successor() {
        // The forger changes record 2 and recomputes its hash; record 4
        // (the next of partition 0) still points at the original.
        let mut records = chained();
        records[2].payload = Some(serde_json::json!({"n": 999}));
        let rehashed = record_hash(&records[2]);
        records[2].chain.as_mut().unwrap().hash = rehashed;
        let b = verify(&records).unwrap_err();
        assert_eq!((b.index, b.kind), (4, BreakKind::PrevMismatch));
    }

    #[test]
    fn removed_and_reordered_records_are_detected() {
        let mut records = chained();
        records.remove(2);
        let b = verify(&records).unwrap_err();
        assert_eq!(b.index, 3, "partition 0's seq 2 now follows seq 0");
        assert_eq!(
            b.kind,
            BreakKind::SeqGap {
                expected: 1,
                found: 2
            }
        );

        let mut records = chained();
        records.swap(0, 2);
        assert_eq!(verify(&records).unwrap_err().index, 0);

        let mut records = chained();
        records[5].chain = None;
        assert_eq!(verify(&records).unwrap_err().kind, BreakKind::Unchained);
    }

    #[test]
    fn json_lines_verify_and_name_the_broken_line() {
        let records = chained();
        let mut text: String = records.iter().map(|r| r.to_json_line() + "\n").collect();
        assert_eq!(verify_json_lines(&text).unwrap().records, 6);
        text = text.replacen("\"offset\":1", "\"offset\":7", 1);
        let b = verify_json_lines(&text).unwrap_err();
        assert_eq!(b.index, 2, "the first record with offset 1 is line 3");
        let b = verify_json_lines("{not json}\n").unwrap_err();
        assert!(matches!(b.kind, BreakKind::Unparsable(_)));
    }
}
