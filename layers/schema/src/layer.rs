//! [`JsonSchemaLayer`] and its [`JsonSchemaLayerBuilder`].

use std::collections::HashMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use bytes::Bytes;
use http::header::CONTENT_TYPE;
use http::{HeaderValue, Response};
use kafka_tower::Refusal;
use serde_json::Value;
use tower_layer::Layer;

use crate::retriever::{file_uri, read_json, LocalFiles};
use crate::service::JsonSchema;
use crate::violation::{SchemaViolation, ViolationDetail, ViolationKind};

/// The name this layer gives itself in a [`Refusal`].
pub const LAYER_NAME: &str = "schema";

/// Applies [`JsonSchema`] to a service. Holds the compiled schemas; cloning
/// is an `Arc` clone.
#[derive(Clone)]
pub struct JsonSchemaLayer {
    pub(crate) inner: Arc<Schemas>,
}

pub(crate) struct Schemas {
    topics: HashMap<Box<str>, jsonschema::Validator, foldhash::fast::RandomState>,
    pub(crate) max_body_bytes: usize,
    max_errors: usize,
    max_detail_len: usize,
}

impl fmt::Debug for JsonSchemaLayer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut topics: Vec<_> = self.inner.topics.keys().collect();
        topics.sort();
        f.debug_struct("JsonSchemaLayer")
            .field("topics", &topics)
            .field("max_body_bytes", &self.inner.max_body_bytes)
            .finish_non_exhaustive()
    }
}

impl<S> Layer<S> for JsonSchemaLayer {
    type Service = JsonSchema<S>;

    fn layer(&self, inner: S) -> JsonSchema<S> {
        JsonSchema::new(inner, self.clone())
    }
}

impl JsonSchemaLayer {
    /// Starts a configuration.
    pub fn builder() -> JsonSchemaLayerBuilder {
        JsonSchemaLayerBuilder::default()
    }

    /// Whether `topic` has a schema. Requests of other topics pass through
    /// unread.
    pub fn has_schema(&self, topic: &str) -> bool {
        self.inner.topics.contains_key(topic)
    }

    /// Validates `payload` against `topic`'s schema — the check the layer
    /// makes, as a typed result. On the producer side, call it before
    /// sending: an `Err` means nothing should reach Kafka. A topic without
    /// a schema is `Ok`.
    pub fn validate(&self, topic: &str, payload: &[u8]) -> Result<(), SchemaViolation> {
        self.inner.validate(topic, payload)
    }

    /// Validates an already parsed JSON `value` against `topic`'s schema:
    /// [`validate`](Self::validate) without the UTF-8, size and parse
    /// checks, for callers that hold the value (e.g. a decoder that parsed
    /// it once). A topic without a schema is `Ok`.
    pub fn validate_value(&self, topic: &str, value: &Value) -> Result<(), SchemaViolation> {
        match self.inner.topics.get(topic) {
            Some(validator) => self.inner.check(validator, topic, value),
            None => Ok(()),
        }
    }
}

impl Schemas {
    pub(crate) fn has(&self, topic: &str) -> bool {
        self.topics.contains_key(topic)
    }

    pub(crate) fn validate(&self, topic: &str, payload: &[u8]) -> Result<(), SchemaViolation> {
        let Some(validator) = self.topics.get(topic) else {
            return Ok(());
        };
        if payload.len() > self.max_body_bytes {
            return Err(self.too_large(topic));
        }
        let text = std::str::from_utf8(payload).map_err(|e| {
            SchemaViolation::new(
                ViolationKind::NotUtf8,
                topic,
                format!(
                    "payload is not UTF-8 (invalid byte at offset {})",
                    e.valid_up_to()
                ),
            )
        })?;
        let value: Value = serde_json::from_str(text).map_err(|e| {
            SchemaViolation::new(
                ViolationKind::NotJson,
                topic,
                format!("payload is not JSON: {e}"),
            )
        })?;
        self.check(validator, topic, &value)
    }

    fn check(
        &self,
        validator: &jsonschema::Validator,
        topic: &str,
        value: &Value,
    ) -> Result<(), SchemaViolation> {
        if validator.is_valid(value) {
            return Ok(());
        }
        let mut total = 0;
        let mut errors = Vec::new();
        for e in validator.iter_errors(value) {
            total += 1;
            if errors.len() < self.max_errors {
                errors.push(ViolationDetail {
                    instance_path: e.instance_path().as_str().to_owned(),
                    schema_path: e.evaluation_path().as_str().to_owned(),
                    message: e.to_string(),
                });
            }
        }
        let mut v = SchemaViolation::new(
            ViolationKind::Invalid,
            topic,
            format!("{total} schema error{}", if total == 1 { "" } else { "s" }),
        );
        v.errors = errors;
        v.total_errors = total;
        Err(v)
    }

    pub(crate) fn too_large(&self, topic: &str) -> SchemaViolation {
        SchemaViolation::new(
            ViolationKind::TooLarge,
            topic,
            format!("payload larger than {} bytes", self.max_body_bytes),
        )
    }

    /// The refusal response for `v`.
    pub(crate) fn refusal(&self, v: SchemaViolation) -> Response<Bytes> {
        let detail = v.summary(self.max_detail_len);
        tracing::debug!(
            target: "kafka_tower_schema",
            reason = v.kind.code(),
            topic = %v.topic,
            detail = %detail,
            "payload refused"
        );
        let body = serde_json::json!({
            "layer": LAYER_NAME,
            "reason": v.kind.code(),
            "detail": detail,
            "errors": v.errors,
        });
        let mut res = Response::new(Bytes::from(serde_json::to_vec(&body).unwrap_or_default()));
        *res.status_mut() = v.kind.status();
        res.headers_mut()
            .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
        res.extensions_mut()
            .insert(Refusal::new(LAYER_NAME, v.kind.code(), detail));
        res.extensions_mut().insert(v);
        res
    }
}

/// A schema that cannot be used: a missing or unreadable file, invalid
/// JSON, an invalid schema, or a `$ref` that does not resolve. The message
/// names the file (or the inline schema's topic).
#[derive(Debug)]
pub struct SchemaConfigError {
    message: String,
}

impl fmt::Display for SchemaConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for SchemaConfigError {}

enum Source {
    File(PathBuf),
    Inline(Value),
}

/// Builds a [`JsonSchemaLayer`]. See the configuration table in the [crate
/// docs](crate).
pub struct JsonSchemaLayerBuilder {
    topics: Vec<(String, Source)>,
    roots: Vec<PathBuf>,
    max_body_bytes: usize,
    max_errors: usize,
    max_detail_len: usize,
}

impl fmt::Debug for JsonSchemaLayerBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("JsonSchemaLayerBuilder")
            .field(
                "topics",
                &self.topics.iter().map(|(t, _)| t).collect::<Vec<_>>(),
            )
            .finish_non_exhaustive()
    }
}

impl Default for JsonSchemaLayerBuilder {
    fn default() -> Self {
        JsonSchemaLayerBuilder {
            topics: Vec::new(),
            roots: Vec::new(),
            max_body_bytes: 1024 * 1024,
            max_errors: 10,
            max_detail_len: 1024,
        }
    }
}

impl JsonSchemaLayerBuilder {
    /// Validates `topic`'s payloads against the schema in `path`. Relative
    /// `$ref`s resolve against the file's location; files in its folder
    /// (and below) and in [`schema_dir`](Self::schema_dir)s may be referenced.
    pub fn schema_file(mut self, topic: impl Into<String>, path: impl Into<PathBuf>) -> Self {
        self.topics.push((topic.into(), Source::File(path.into())));
        self
    }

    /// Validates `topic`'s payloads against an inline schema. Its relative
    /// `$ref`s resolve against the first [`schema_dir`](Self::schema_dir).
    pub fn schema(mut self, topic: impl Into<String>, schema: Value) -> Self {
        self.topics.push((topic.into(), Source::Inline(schema)));
        self
    }

    /// A folder whose files `$ref`s may load. Files elsewhere, and anything
    /// not a local file, never are.
    pub fn schema_dir(mut self, dir: impl Into<PathBuf>) -> Self {
        self.roots.push(dir.into());
        self
    }

    /// The largest payload read (default 1 MiB); larger is `too_large`.
    pub fn max_body_bytes(mut self, bytes: usize) -> Self {
        self.max_body_bytes = bytes;
        self
    }

    /// How many schema errors a refusal lists (default 10).
    pub fn max_errors(mut self, n: usize) -> Self {
        self.max_errors = n;
        self
    }

    /// The longest refusal detail, in bytes (default 1024). The detail goes
    /// into the dead-letter record's header, so it is bounded.
    pub fn max_detail_len(mut self, bytes: usize) -> Self {
        self.max_detail_len = bytes;
        self
    }

    /// Reads and compiles every schema, once. The draft of each follows its
    /// `$schema` (2020-12, 2019-09, 7, 6 or 4; 2020-12 when absent).
    pub fn build(self) -> Result<JsonSchemaLayer, SchemaConfigError> {
        let err = |message: String| SchemaConfigError { message };
        let mut roots = Vec::new();
        for r in &self.roots {
            roots.push(
                r.canonicalize()
                    .map_err(|e| err(format!("schema folder {}: {e}", r.display())))?,
            );
        }
        let mut topics = HashMap::default();
        for (topic, source) in self.topics {
            let (schema, base, name, mut allowed) = match source {
                Source::File(path) => {
                    let abs = path
                        .canonicalize()
                        .map_err(|e| err(format!("schema file {}: {e}", path.display())))?;
                    let schema = read_json(&abs).map_err(|e| err(format!("schema file {e}")))?;
                    let dir = abs.parent().map(Path::to_path_buf).unwrap_or_default();
                    (
                        schema,
                        Some(file_uri(&abs)),
                        path.display().to_string(),
                        vec![dir],
                    )
                }
                Source::Inline(schema) => {
                    let base = roots.first().map(|r| file_uri(&r.join("inline.json")));
                    (
                        schema,
                        base,
                        format!("inline schema of topic {topic}"),
                        Vec::new(),
                    )
                }
            };
            allowed.extend(roots.iter().cloned());
            let mut options = jsonschema::options().with_retriever(LocalFiles { roots: allowed });
            if let Some(base) = base {
                options = options.with_base_uri(base);
            }
            let validator = options
                .build(&schema)
                .map_err(|e| err(format!("{name}: invalid schema: {e}")))?;
            topics.insert(topic.into_boxed_str(), validator);
        }
        Ok(JsonSchemaLayer {
            inner: Arc::new(Schemas {
                topics,
                max_body_bytes: self.max_body_bytes,
                max_errors: self.max_errors,
                max_detail_len: self.max_detail_len,
            }),
        })
    }
}
