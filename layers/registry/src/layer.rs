//! [`RegistryLayer`], its builder, and the decoding it does per record.

use std::collections::HashMap;
use std::fmt;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use http::header::CONTENT_TYPE;
use http::{HeaderValue, Response, StatusCode};
use kafka_tower::Refusal;
use tower_layer::Layer;

use crate::avro::{CompiledReader, ReaderCache};
use crate::client::RegistryClient;
use crate::decoded::{Decoded, DecodedValue};
use crate::error::RegistryError;
use crate::lock;
use crate::schema::{Compiled, LocalSchema, RegisteredSchema, JSON_KEY};
use crate::service::Registry;
use crate::subject::{Part, SubjectNameStrategy};
use crate::wire;

/// The name this layer gives itself in a [`Refusal`].
pub const LAYER_NAME: &str = "registry";

/// Why the layer refused a record; its [`code`](RejectKind::code) is the
/// reason of the [`Refusal`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum RejectKind {
    /// Not in the wire format: shorter than 5 bytes or no magic byte `0`
    /// (`400`).
    NotFramed,
    /// The registry has no schema with the record's id (`422`).
    UnknownSchemaId,
    /// The id is not registered under the subject the topic's records must
    /// use, with [`enforce_subject`](RegistryLayerBuilder::enforce_subject)
    /// (`422`).
    SubjectMismatch,
    /// The body does not decode with the writer schema, has bytes after the
    /// datum, or cannot be read as the reader schema (`422`).
    DecodeFailed,
    /// A JSON record that its JSON Schema rejects (`422`).
    Invalid,
    /// The writer schema cannot be used here: Protobuf, references, or a
    /// schema that does not parse (`422`).
    UnsupportedSchema,
    /// Larger than the configured limit (`413`).
    TooLarge,
    /// The body failed while being read (`400`).
    Unreadable,
    /// The registry could not be reached to fetch an unknown id, or
    /// refused the service's credentials (`503`: retried, never
    /// dead-lettered for an outage).
    RegistryUnavailable,
}

impl RejectKind {
    /// The refusal reason, e.g. `unknown_schema_id`.
    pub fn code(self) -> &'static str {
        match self {
            RejectKind::NotFramed => "not_framed",
            RejectKind::UnknownSchemaId => "unknown_schema_id",
            RejectKind::SubjectMismatch => "subject_mismatch",
            RejectKind::DecodeFailed => "decode_failed",
            RejectKind::Invalid => "invalid",
            RejectKind::UnsupportedSchema => "unsupported_schema",
            RejectKind::TooLarge => "too_large",
            RejectKind::Unreadable => "unreadable",
            RejectKind::RegistryUnavailable => "registry_unavailable",
        }
    }

    /// The status of the refusal: `503` for an unavailable registry
    /// (retryable), a `4xx` (permanent) for everything about the record.
    pub fn status(self) -> StatusCode {
        match self {
            RejectKind::NotFramed | RejectKind::Unreadable => StatusCode::BAD_REQUEST,
            RejectKind::TooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            RejectKind::RegistryUnavailable => StatusCode::SERVICE_UNAVAILABLE,
            _ => StatusCode::UNPROCESSABLE_ENTITY,
        }
    }
}

/// A record the layer refused, as a typed error: the value
/// [`RegistryLayer::decode`] returns and the refusal response carries in
/// its extensions.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rejection {
    kind: RejectKind,
    topic: String,
    part: Part,
    schema_id: Option<u32>,
    detail: String,
}

impl Rejection {
    fn new(kind: RejectKind, topic: &str, part: Part, detail: impl Into<String>) -> Self {
        Rejection {
            kind,
            topic: topic.to_owned(),
            part,
            schema_id: None,
            detail: detail.into(),
        }
    }

    fn id(mut self, id: u32) -> Self {
        self.schema_id = Some(id);
        self
    }

    /// What was wrong.
    pub fn kind(&self) -> RejectKind {
        self.kind
    }

    /// The record's topic.
    pub fn topic(&self) -> &str {
        &self.topic
    }

    /// Whether the key or the value was refused.
    pub fn part(&self) -> Part {
        self.part
    }

    /// The schema id of the frame, when it had one.
    pub fn schema_id(&self) -> Option<u32> {
        self.schema_id
    }

    /// A human-readable explanation.
    pub fn detail(&self) -> &str {
        &self.detail
    }
}

impl fmt::Display for Rejection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} of topic {}: {}",
            self.part,
            self.topic,
            self.kind.code()
        )?;
        if let Some(id) = self.schema_id {
            write!(f, " (schema id {id})")?;
        }
        write!(f, ": {}", self.detail)
    }
}

impl std::error::Error for Rejection {}

/// A topic's key or value as the layer decodes it.
#[derive(Clone)]
pub(crate) struct PartConfig {
    reader: Option<LocalSchema>,
    readers: Arc<ReaderCache>,
    /// Schema ids found registered under this part's subject, with the
    /// subject and version: kept for good (a registration is not undone by
    /// an outage), so an enforced subject costs one lookup per id.
    subjects: Arc<Mutex<SubjectsById>>,
}

impl PartConfig {
    fn new(reader: Option<LocalSchema>) -> Self {
        PartConfig {
            reader,
            readers: Arc::default(),
            subjects: Arc::default(),
        }
    }
}

/// Schema id → the subject it was found under, and its version there.
type SubjectsById = HashMap<u32, (Arc<str>, u32), foldhash::fast::RandomState>;

/// A topic's parts: `[value, key]`.
#[derive(Clone, Default)]
pub(crate) struct Parts([Option<PartConfig>; 2]);

fn slot(part: Part) -> usize {
    match part {
        Part::Value => 0,
        Part::Key => 1,
    }
}

/// Decodes and validates records framed in the Confluent wire format with
/// their writer schema from the registry; see the [crate docs](crate).
/// Cloning is an `Arc` clone.
#[derive(Clone)]
pub struct RegistryLayer {
    pub(crate) inner: Arc<Config>,
}

pub(crate) struct Config {
    pub(crate) client: RegistryClient,
    topics: HashMap<Box<str>, Parts, foldhash::fast::RandomState>,
    strategy: SubjectNameStrategy,
    enforce_subject: bool,
    pub(crate) json_body: bool,
    pub(crate) max_body_bytes: usize,
    max_detail_len: usize,
    max_depth: usize,
    avro_allocation_limit: usize,
}

impl fmt::Debug for RegistryLayer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut topics: Vec<_> = self
            .inner
            .parts()
            .map(|(t, p, _)| format!("{t}/{p}"))
            .collect();
        topics.sort();
        f.debug_struct("RegistryLayer")
            .field("client", &self.inner.client)
            .field("topics", &topics)
            .field("strategy", &self.inner.strategy)
            .field("enforce_subject", &self.inner.enforce_subject)
            .finish_non_exhaustive()
    }
}

impl<S> Layer<S> for RegistryLayer {
    type Service = Registry<S>;

    fn layer(&self, inner: S) -> Registry<S> {
        Registry::new(inner, self.clone())
    }
}

impl RegistryLayer {
    /// Starts a configuration using `client`.
    pub fn builder(client: RegistryClient) -> RegistryLayerBuilder {
        RegistryLayerBuilder {
            client,
            topics: Vec::new(),
            strategy: SubjectNameStrategy::TopicName,
            enforce_subject: false,
            json_body: false,
            max_body_bytes: 1024 * 1024,
            max_detail_len: 1024,
            avro_allocation_limit: DEFAULT_AVRO_ALLOCATION_LIMIT,
            max_depth: DEFAULT_MAX_DEPTH,
        }
    }

    /// apache-avro's process-wide allocation limit in force (see
    /// [`RegistryLayerBuilder::avro_allocation_limit`]).
    pub fn avro_allocation_limit(&self) -> usize {
        self.inner.avro_allocation_limit
    }

    /// The registry client (and its caches).
    pub fn client(&self) -> &RegistryClient {
        &self.inner.client
    }

    /// Whether `topic`'s `part` is decoded.
    pub fn decodes(&self, topic: &str, part: Part) -> bool {
        self.part(topic, part).is_some()
    }

    pub(crate) fn part(&self, topic: &str, part: Part) -> Option<&PartConfig> {
        self.inner.topics.get(topic)?.0[slot(part)].as_ref()
    }

    /// Decodes framed `bytes` as `topic`'s `part` — what the layer does
    /// for each record, as a typed result (for tests, tools and a
    /// producer's own check). A topic the layer does not decode is
    /// decoded with its writer schema alone.
    pub async fn decode(
        &self,
        topic: &str,
        part: Part,
        bytes: &[u8],
    ) -> Result<Decoded, Rejection> {
        let config = self.part(topic, part);
        self.decode_with(topic, part, config, bytes).await
    }

    async fn decode_with(
        &self,
        topic: &str,
        part: Part,
        part_config: Option<&PartConfig>,
        bytes: &[u8],
    ) -> Result<Decoded, Rejection> {
        let reader = part_config.and_then(|c| c.reader.as_ref());
        let cache = part_config.map(|c| &*c.readers);
        let config = &self.inner;
        let (id, body) = wire::parse(bytes)
            .map_err(|e| Rejection::new(RejectKind::NotFramed, topic, part, e.to_string()))?;
        let schema = match config.client.cached(id) {
            Some(s) => s,
            None => config
                .client
                .schema_by_id(id)
                .await
                .map_err(|e| registry_rejection(e, topic, part).id(id))?,
        };
        let (subject, version) = if config.enforce_subject {
            let known = part_config.and_then(|c| lock(&c.subjects).get(&id).cloned());
            let (s, v) = match known {
                Some(found) => found,
                None => {
                    let found = self.check_subject(&schema, topic, part).await?;
                    if let Some(c) = part_config {
                        lock(&c.subjects).insert(id, found.clone());
                    }
                    found
                }
            };
            (Some(s), Some(v))
        } else {
            (None, None)
        };
        let value = decode_body(&schema, reader, cache, body, config.max_depth)
            .map_err(|(kind, detail)| Rejection::new(kind, topic, part, detail).id(id))?;
        Ok(Decoded {
            schema,
            subject,
            version,
            value,
        })
    }

    async fn check_subject(
        &self,
        schema: &RegisteredSchema,
        topic: &str,
        part: Part,
    ) -> Result<(Arc<str>, u32), Rejection> {
        let id = schema.id();
        let Some(expected) = self
            .inner
            .strategy
            .subject(topic, part, schema.record_name())
        else {
            return Err(Rejection::new(
                RejectKind::SubjectMismatch,
                topic,
                part,
                format!(
                    "the {:?} strategy needs a named schema; schema id {id} has no name",
                    self.inner.strategy
                ),
            )
            .id(id));
        };
        let subjects = self
            .inner
            .client
            .subjects_of(id)
            .await
            .map_err(|e| registry_rejection(e, topic, part).id(id))?;
        match subjects.iter().find(|(s, _)| *s == expected) {
            Some((s, v)) => Ok((Arc::from(s.as_str()), *v)),
            None => {
                let mut names: Vec<&str> = subjects.iter().map(|(s, _)| s.as_str()).collect();
                names.truncate(5);
                Err(Rejection::new(
                    RejectKind::SubjectMismatch,
                    topic,
                    part,
                    format!(
                        "schema id {id} is not registered under subject {expected} (it is under {})",
                        if names.is_empty() { "no subject".to_owned() } else { names.join(", ") }
                    ),
                )
                .id(id))
            }
        }
    }

    /// The refusal response for `r`.
    pub(crate) fn refusal(&self, r: Rejection) -> Response<Bytes> {
        let mut detail = r.to_string();
        truncate(&mut detail, self.inner.max_detail_len);
        tracing::debug!(
            target: "kafka_tower_registry",
            reason = r.kind.code(),
            topic = %r.topic,
            detail = %detail,
            "record refused"
        );
        let body = serde_json::json!({
            "layer": LAYER_NAME,
            "reason": r.kind.code(),
            "detail": detail,
            "part": r.part.as_str(),
            "schema_id": r.schema_id,
        });
        let mut res = Response::new(Bytes::from(serde_json::to_vec(&body).unwrap_or_default()));
        *res.status_mut() = r.kind.status();
        res.headers_mut()
            .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
        res.extensions_mut()
            .insert(Refusal::new(LAYER_NAME, r.kind.code(), detail));
        res.extensions_mut().insert(r);
        res
    }

    pub(crate) fn too_large(&self, topic: &str, part: Part) -> Rejection {
        Rejection::new(
            RejectKind::TooLarge,
            topic,
            part,
            format!("larger than {} bytes", self.inner.max_body_bytes),
        )
    }

    pub(crate) fn unconvertible(
        &self,
        topic: &str,
        decoded: &Decoded,
        e: &crate::decoded::ConvertError,
    ) -> Rejection {
        Rejection::new(RejectKind::DecodeFailed, topic, Part::Value, e.to_string())
            .id(decoded.schema_id())
    }

    pub(crate) fn unreadable(&self, topic: &str, e: &dyn fmt::Display) -> Rejection {
        Rejection::new(
            RejectKind::Unreadable,
            topic,
            Part::Value,
            format!("the body could not be read: {e}"),
        )
    }
}

fn truncate(s: &mut String, max: usize) {
    if s.len() > max {
        let mut end = max;
        while !s.is_char_boundary(end) {
            end -= 1;
        }
        s.truncate(end);
    }
}

fn registry_rejection(e: RegistryError, topic: &str, part: Part) -> Rejection {
    let kind = match &e {
        e if e.is_unknown_schema() => RejectKind::UnknownSchemaId,
        RegistryError::Unusable { .. } => RejectKind::UnsupportedSchema,
        // Unavailable, credentials refused, a 404 that is not the
        // registry's "no such schema" (a wrong base path, a proxy's default
        // page), a registry answering nonsense: nothing about the record;
        // retry.
        _ => RejectKind::RegistryUnavailable,
    };
    Rejection::new(kind, topic, part, e.to_string())
}

/// Decodes `body` written with `schema`, into `reader` when given.
pub(crate) fn decode_body(
    schema: &RegisteredSchema,
    reader: Option<&LocalSchema>,
    cache: Option<&ReaderCache>,
    body: &[u8],
    max_depth: usize,
) -> Result<DecodedValue, (RejectKind, String)> {
    match &schema.compiled {
        Compiled::Avro(writer) => {
            let reader_schema = match reader.map(|r| &r.compiled) {
                None => None,
                Some(Compiled::Avro(r)) => Some(r),
                Some(_) => {
                    return Err((
                        RejectKind::DecodeFailed,
                        "written in Avro, but the topic's reader schema is JSON Schema".into(),
                    ))
                }
            };
            let decode = || {
                let compiled = match cache {
                    Some(c) => c.get(schema.id(), writer, reader_schema)?,
                    None => Arc::new(CompiledReader::compile(
                        writer.clone(),
                        reader_schema.cloned(),
                    )?),
                };
                compiled.read(body)
            };
            if schema.recursive {
                // The decoder recurses per level: data that nests a level
                // per byte could exhaust the stack of whatever decodes,
                // resolves, clones or drops it. Measured first, without
                // recursion.
                crate::avro::check_depth(writer, body, max_depth)
                    .map_err(|m| (RejectKind::DecodeFailed, m))?;
            }
            // A decoder bug must not take the partition down: a panic is a
            // refusal of this record.
            let decoded = match catch_unwind(AssertUnwindSafe(decode)) {
                Ok(r) => r.map_err(|e| avro_message(&e)),
                Err(_) => Err("the Avro decoder panicked on this body".to_owned()),
            };
            match decoded {
                Ok((value, 0)) => Ok(DecodedValue::Avro(value)),
                Ok((_, rest)) => Err((
                    RejectKind::DecodeFailed,
                    format!(
                        "{rest} byte{} after the Avro datum",
                        if rest == 1 { "" } else { "s" }
                    ),
                )),
                Err(message) => Err((RejectKind::DecodeFailed, message)),
            }
        }
        Compiled::Json(validator) => {
            let reader = match reader.map(|r| &r.compiled) {
                None => None,
                Some(Compiled::Json(r)) => Some(r),
                Some(_) => {
                    return Err((
                        RejectKind::DecodeFailed,
                        "written as JSON, but the topic's reader schema is Avro".into(),
                    ))
                }
            };
            let value: serde_json::Value = serde_json::from_slice(body)
                .map_err(|e| (RejectKind::DecodeFailed, format!("not JSON: {e}")))?;
            validator
                .validate_value(JSON_KEY, &value)
                .map_err(|v| (RejectKind::Invalid, v.summary(512)))?;
            // A JSON reader schema is what the service accepts: the record
            // must pass it too.
            if let Some(reader) = reader {
                reader.validate_value(JSON_KEY, &value).map_err(|v| {
                    (
                        RejectKind::Invalid,
                        format!("the reader schema: {}", v.summary(512)),
                    )
                })?;
            }
            Ok(DecodedValue::Json(value))
        }
        Compiled::Protobuf => Err((
            RejectKind::UnsupportedSchema,
            "Protobuf records are not decoded by this version".into(),
        )),
    }
}

/// An Avro error and its causes on one line.
pub(crate) fn avro_message(e: &apache_avro::Error) -> String {
    let mut out = e.to_string();
    let mut source = std::error::Error::source(e);
    while let Some(s) = source {
        out.push_str(": ");
        out.push_str(&s.to_string());
        source = s.source();
    }
    out
}

/// Builds a [`RegistryLayer`].
pub struct RegistryLayerBuilder {
    client: RegistryClient,
    topics: Vec<((String, Part), PartConfig)>,
    strategy: SubjectNameStrategy,
    enforce_subject: bool,
    json_body: bool,
    max_body_bytes: usize,
    max_detail_len: usize,
    avro_allocation_limit: usize,
    max_depth: usize,
}

/// The default of [`RegistryLayerBuilder::max_depth`].
pub const DEFAULT_MAX_DEPTH: usize = 32;

/// The default of [`RegistryLayerBuilder::avro_allocation_limit`].
pub const DEFAULT_AVRO_ALLOCATION_LIMIT: usize = 16 * 1024 * 1024;

impl fmt::Debug for RegistryLayerBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RegistryLayerBuilder")
            .field("client", &self.client)
            .finish_non_exhaustive()
    }
}

impl RegistryLayerBuilder {
    /// Decodes `topic`'s values with their writer schema.
    pub fn value(mut self, topic: impl Into<String>) -> Self {
        self.topics
            .push(((topic.into(), Part::Value), PartConfig::new(None)));
        self
    }

    /// Decodes `topic`'s values into `reader` (Avro schema resolution:
    /// fields the writer lacks take the reader's defaults, fields the
    /// reader lacks are skipped), so the service sees one shape whatever
    /// version wrote the record.
    pub fn value_reader(mut self, topic: impl Into<String>, reader: LocalSchema) -> Self {
        self.topics
            .push(((topic.into(), Part::Value), PartConfig::new(Some(reader))));
        self
    }

    /// Decodes `topic`'s keys with their writer schema (a [`DecodedKey`](crate::DecodedKey)).
    pub fn key(mut self, topic: impl Into<String>) -> Self {
        self.topics
            .push(((topic.into(), Part::Key), PartConfig::new(None)));
        self
    }

    /// Decodes `topic`'s keys into `reader`.
    pub fn key_reader(mut self, topic: impl Into<String>, reader: LocalSchema) -> Self {
        self.topics
            .push(((topic.into(), Part::Key), PartConfig::new(Some(reader))));
        self
    }

    /// How subjects are named (default `TopicName`: `<topic>-value`).
    pub fn subject_strategy(mut self, strategy: SubjectNameStrategy) -> Self {
        self.strategy = strategy;
        self
    }

    /// Refuses (`subject_mismatch`) a record whose schema id is not
    /// registered under the subject its topic's records must use (default
    /// off, as in Confluent's deserializers). Costs one cached lookup per
    /// schema id; puts the subject and version in [`Decoded`].
    pub fn enforce_subject(mut self, enforce: bool) -> Self {
        self.enforce_subject = enforce;
        self
    }

    /// Replaces the body of a decoded value with the value as JSON
    /// (`content-type: application/json`), so JSON extractors and the JSON
    /// Schema layer work downstream (default off: the body stays as
    /// received).
    pub fn json_body(mut self, json: bool) -> Self {
        self.json_body = json;
        self
    }

    /// The largest value read (default 1 MiB); larger is `too_large`.
    pub fn max_body_bytes(mut self, bytes: usize) -> Self {
        self.max_body_bytes = bytes;
        self
    }

    /// The longest refusal detail, in bytes (default 1024).
    pub fn max_detail_len(mut self, bytes: usize) -> Self {
        self.max_detail_len = bytes;
        self
    }

    /// How deep the data of a recursive Avro schema (one that refers to a
    /// named type from inside it: lists, trees) may nest, counting
    /// records, unions, arrays and maps (default 32). Such data is
    /// measured before it is decoded, without recursion, and deeper data is
    /// refused (`decode_failed`): a byte per level could otherwise exhaust
    /// the stack of whatever decodes or drops the value. Each level costs
    /// apache-avro's decoder (and the value's conversions) about 1–3 KiB of
    /// stack in a release build and some 35 KiB in a debug build; the
    /// default fits a 2 MiB thread stack in both.
    pub fn max_depth(mut self, depth: usize) -> Self {
        self.max_depth = depth;
        self
    }

    /// The most memory one Avro string, bytes, array or map of a record
    /// may claim (default 16 MiB), for one allocation. A record's few
    /// bytes can declare a length of gigabytes; the decoder refuses it
    /// (`decode_failed`) instead of allocating it.
    ///
    /// The limit is apache-avro's, and process-wide: the first layer built
    /// (or anything else in the process that sets or uses it first) fixes
    /// it; [`RegistryLayer::avro_allocation_limit`] says what it is.
    pub fn avro_allocation_limit(mut self, bytes: usize) -> Self {
        self.avro_allocation_limit = bytes;
        self
    }

    /// The layer. A topic and part configured twice keeps the last
    /// configuration.
    pub fn build(self) -> RegistryLayer {
        let limit = apache_avro::util::max_allocation_bytes(self.avro_allocation_limit);
        if limit != self.avro_allocation_limit {
            tracing::warn!(
                target: "kafka_tower_registry",
                asked = self.avro_allocation_limit,
                in_force = limit,
                "apache-avro's allocation limit was set before this layer was built; the earlier limit stays"
            );
        }
        let mut topics: HashMap<Box<str>, Parts, _> = HashMap::default();
        for ((topic, part), config) in self.topics {
            topics.entry(topic.into_boxed_str()).or_default().0[slot(part)] = Some(config);
        }
        RegistryLayer {
            inner: Arc::new(Config {
                client: self.client,
                topics,
                strategy: self.strategy,
                enforce_subject: self.enforce_subject,
                json_body: self.json_body,
                max_body_bytes: self.max_body_bytes,
                max_detail_len: self.max_detail_len,
                max_depth: self.max_depth,
                avro_allocation_limit: limit,
            }),
        }
    }
}

impl Config {
    pub(crate) fn parts(&self) -> impl Iterator<Item = (&str, Part, Option<&LocalSchema>)> {
        self.topics.iter().flat_map(|(t, parts)| {
            [Part::Value, Part::Key].into_iter().filter_map(move |p| {
                parts.0[slot(p)]
                    .as_ref()
                    .map(|c| (&**t, p, c.reader.as_ref()))
            })
        })
    }

    pub(crate) fn strategy(&self) -> SubjectNameStrategy {
        self.strategy
    }
}
