//! [`SchemaViolation`]: why a payload was refused, as a typed error — the
//! same value the layer puts in a refusal's extensions and the producer side
//! gets from [`JsonSchemaLayer::validate`](crate::JsonSchemaLayer::validate).

use std::fmt;

use http::StatusCode;
use serde::Serialize;

/// The kind of a [`SchemaViolation`]; its [`code`](ViolationKind::code) is
/// the reason of the [`kafka_tower::Refusal`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ViolationKind {
    /// Valid JSON that the topic's schema rejects (`422`).
    Invalid,
    /// Not JSON (`400`).
    NotJson,
    /// Not UTF-8, so not JSON text (RFC 8259 §8.1) (`400`).
    NotUtf8,
    /// Larger than the configured limit; not read further (`413`).
    TooLarge,
    /// The request body failed while being read (`400`).
    Unreadable,
}

impl ViolationKind {
    /// `invalid`, `not_json`, `not_utf8`, `too_large` or `unreadable`.
    pub fn code(self) -> &'static str {
        match self {
            ViolationKind::Invalid => "invalid",
            ViolationKind::NotJson => "not_json",
            ViolationKind::NotUtf8 => "not_utf8",
            ViolationKind::TooLarge => "too_large",
            ViolationKind::Unreadable => "unreadable",
        }
    }

    /// The status of the refusal; all are permanent (4xx) failures.
    pub fn status(self) -> StatusCode {
        match self {
            ViolationKind::Invalid => StatusCode::UNPROCESSABLE_ENTITY,
            ViolationKind::TooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            _ => StatusCode::BAD_REQUEST,
        }
    }
}

/// One detail of a [`SchemaViolation`]: where in the payload, which schema
/// keyword, and what.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ViolationDetail {
    /// JSON Pointer into the payload, e.g. `/items/0/qty` (`""` = root).
    pub instance_path: String,
    /// The path through the schema to the failing keyword, `$ref`s
    /// included (JSON Schema's evaluation path), e.g.
    /// `/properties/shipTo/$ref/properties/country/$ref/pattern`.
    pub schema_path: String,
    /// A human-readable message.
    pub message: String,
}

/// A payload the topic's schema (or JSON itself) refuses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SchemaViolation {
    pub(crate) kind: ViolationKind,
    pub(crate) topic: String,
    pub(crate) errors: Vec<ViolationDetail>,
    pub(crate) total_errors: usize,
    pub(crate) message: String,
}

impl SchemaViolation {
    pub(crate) fn new(kind: ViolationKind, topic: &str, message: impl Into<String>) -> Self {
        SchemaViolation {
            kind,
            topic: topic.to_owned(),
            errors: Vec::new(),
            total_errors: 0,
            message: message.into(),
        }
    }

    /// What went wrong.
    pub fn kind(&self) -> ViolationKind {
        self.kind
    }

    /// The topic whose schema applied.
    pub fn topic(&self) -> &str {
        &self.topic
    }

    /// The schema errors (for [`ViolationKind::Invalid`]), at most the
    /// configured `max_errors`.
    pub fn errors(&self) -> &[ViolationDetail] {
        &self.errors
    }

    /// How many schema errors there were in all, listed or not.
    pub fn total_errors(&self) -> usize {
        self.total_errors
    }

    /// A one-line summary, at most `max_len` bytes (cut on a character
    /// boundary, ending in `…` when cut): what goes into the refusal detail
    /// and so into the dead-letter record's header.
    pub fn summary(&self, max_len: usize) -> String {
        let mut s = self.message.clone();
        for e in &self.errors {
            let path = if e.instance_path.is_empty() {
                "/"
            } else {
                &e.instance_path
            };
            s.push_str(&format!("; {path}: {}", e.message));
        }
        if self.total_errors > self.errors.len() {
            s.push_str(&format!(
                "; and {} more",
                self.total_errors - self.errors.len()
            ));
        }
        if s.len() > max_len {
            let mut cut = max_len.saturating_sub('…'.len_utf8());
            while !s.is_char_boundary(cut) {
                cut -= 1;
            }
            s.truncate(cut);
            s.push('…');
        }
        s
    }
}

impl fmt::Display for SchemaViolation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.kind.code(), self.summary(usize::MAX))
    }
}

impl std::error::Error for SchemaViolation {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn summary_is_bounded_on_a_char_boundary() {
        let mut v = SchemaViolation::new(ViolationKind::Invalid, "t", "2 schema errors");
        v.errors.push(ViolationDetail {
            instance_path: "/name".into(),
            schema_path: "/properties/name/maxLength".into(),
            message: "\"ééééééééééé\" is longer than 3 characters".into(),
        });
        v.total_errors = 2;
        let full = v.summary(usize::MAX);
        assert!(full.ends_with("; and 1 more"), "{full}");
        for max in [10, 20, 25, 26, 27] {
            let s = v.summary(max);
            assert!(s.len() <= max, "{max}: {s}");
            assert!(s.ends_with('…'));
        }
    }
}
