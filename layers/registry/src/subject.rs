//! Subjects: which registry subject a topic's keys or values are under.

use std::fmt;

/// The key or the value of a record.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Part {
    /// The record key.
    Key,
    /// The record value (payload).
    Value,
}

impl Part {
    /// `key` or `value`, as in subject names.
    pub fn as_str(self) -> &'static str {
        match self {
            Part::Key => "key",
            Part::Value => "value",
        }
    }
}

impl fmt::Display for Part {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// How a subject is named, as Confluent's serializers name it.
///
/// ```
/// use kafka_tower_registry::{Part, SubjectNameStrategy};
///
/// let s = SubjectNameStrategy::TopicName;
/// assert_eq!(s.subject("orders", Part::Value, None).as_deref(), Some("orders-value"));
/// let s = SubjectNameStrategy::TopicRecordName;
/// assert_eq!(s.subject("orders", Part::Value, Some("shop.Order")).as_deref(), Some("orders-shop.Order"));
/// assert_eq!(s.subject("orders", Part::Value, None), None);
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum SubjectNameStrategy {
    /// `<topic>-key` / `<topic>-value` (the default).
    #[default]
    TopicName,
    /// The schema's record full name (e.g. `shop.Order`), whatever the
    /// topic.
    RecordName,
    /// `<topic>-<record full name>`.
    TopicRecordName,
}

impl SubjectNameStrategy {
    /// The subject of `topic`'s `part` written with a schema named
    /// `record_name` (`None` when the schema has no name: the record-name
    /// strategies then have no subject).
    pub fn subject(self, topic: &str, part: Part, record_name: Option<&str>) -> Option<String> {
        match self {
            SubjectNameStrategy::TopicName => Some(format!("{topic}-{part}")),
            SubjectNameStrategy::RecordName => record_name.map(str::to_owned),
            SubjectNameStrategy::TopicRecordName => record_name.map(|n| format!("{topic}-{n}")),
        }
    }
}
