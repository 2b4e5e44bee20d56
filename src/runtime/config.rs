//! Consumer configuration: in code ([`ConsumerBuilder`](super::ConsumerBuilder))
//! or from a YAML / TOML file with environment overrides.
//!
//! ```yaml
//! # consumer.yml
//! group_id: orders-service
//! topics: [orders, payments]
//! service_id: orders-service
//! max_in_flight: 64
//! buffer_per_partition: 256
//! ordering: partition        # or: key
//! commit_interval: 1s
//! drain_timeout: 30s
//! retry:
//!   max_attempts: 4          # first delivery included
//!   initial_backoff: 200ms
//!   max_backoff: 30s
//!   multiplier: 2.0
//! dead_letter:
//!   enabled: true
//!   suffix: .dlq             # orders -> orders.dlq
//! properties:                # passed to librdkafka as they are
//!   bootstrap.servers: 127.0.0.1:9092
//!   auto.offset.reset: earliest
//! ```
//!
//! Every field of the file can be overridden by an environment variable
//! `KAFKA_TOWER_<FIELD>`, nested fields joined with `__`:
//! `KAFKA_TOWER_GROUP_ID`, `KAFKA_TOWER_RETRY__MAX_ATTEMPTS`,
//! `KAFKA_TOWER_TOPICS=orders,payments` (comma-separated), and librdkafka
//! properties as `KAFKA_TOWER_PROPERTIES__BOOTSTRAP_SERVERS` (lower-cased,
//! `_` becomes `.`). An unknown field, in the file or in a variable, is an
//! error naming it.
//!
//! ```
//! use kafka_tower::runtime::ConsumerConfig;
//!
//! let yaml = "group_id: g\ntopics: [orders]\nproperties:\n  bootstrap.servers: 127.0.0.1:9092\n";
//! let env = [("KAFKA_TOWER_RETRY__MAX_ATTEMPTS", "7")];
//! let config = ConsumerConfig::from_yaml_str(yaml, "consumer.yml", env).unwrap();
//! assert_eq!(config.retry.max_attempts, 7);
//!
//! let no_env: [(&str, &str); 0] = [];
//! let err = ConsumerConfig::from_yaml_str("group_id: g\ntopics: [t]\nmax_inflight: 3\n", "consumer.yml", no_env).unwrap_err();
//! assert!(err.to_string().contains("max_inflight"));
//! assert!(err.to_string().contains("consumer.yml"));
//! ```

use std::collections::BTreeMap;
use std::fmt;
use std::path::Path;
use std::time::Duration;

use serde::{Deserialize, Deserializer};
use serde_json::Value;

use crate::mapping::is_valid_topic_name;

/// The prefix of environment variables that override configuration.
pub const ENV_PREFIX: &str = "KAFKA_TOWER_";

/// How records of one partition are ordered while being served.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Ordering {
    /// One record of a partition at a time, in offset order. Partitions run
    /// in parallel.
    #[default]
    Partition,
    /// Records of one key (within a partition) in offset order; records of
    /// different keys of the same partition run in parallel. Records without
    /// a key are ordered among themselves.
    Key,
}

/// Retries of retryable failures (`408`, `429`, `5xx`, `Err`, panic).
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RetryPolicy {
    /// Attempts in all, the first delivery included; `1` disables retries.
    pub max_attempts: u32,
    /// The delay before the first retry.
    #[serde(with = "humantime_serde")]
    pub initial_backoff: Duration,
    /// The cap on any delay.
    #[serde(with = "humantime_serde")]
    pub max_backoff: Duration,
    /// The factor between successive delays (≥ 1).
    pub multiplier: f64,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy {
            max_attempts: 4,
            initial_backoff: Duration::from_millis(200),
            max_backoff: Duration::from_secs(30),
            multiplier: 2.0,
        }
    }
}

impl RetryPolicy {
    /// Retries with exponential backoff from `initial` up to `max`, `max_attempts`
    /// attempts in all.
    pub fn exponential(max_attempts: u32, initial: Duration, max: Duration) -> Self {
        RetryPolicy {
            max_attempts,
            initial_backoff: initial,
            max_backoff: max,
            multiplier: 2.0,
        }
    }

    /// No retries: a retryable failure is dead-lettered after the first attempt.
    pub fn none() -> Self {
        RetryPolicy {
            max_attempts: 1,
            ..Default::default()
        }
    }

    /// The delay after attempt `attempt` (1-based) failed, before jitter:
    /// `initial_backoff * multiplier^(attempt-1)`, capped at `max_backoff`.
    pub fn base_delay(&self, attempt: u32) -> Duration {
        let exp = self
            .multiplier
            .powi(attempt.saturating_sub(1).min(64) as i32);
        let secs = self.initial_backoff.as_secs_f64() * exp;
        if !secs.is_finite() || secs >= self.max_backoff.as_secs_f64() {
            self.max_backoff
        } else {
            Duration::from_secs_f64(secs)
        }
    }

    /// [`RetryPolicy::base_delay`] with "equal jitter": a uniformly random
    /// delay between half of it and all of it, so that consumers retrying
    /// together spread out.
    pub fn delay(&self, attempt: u32) -> Duration {
        let base = self.base_delay(attempt);
        base.mul_f64(0.5 + rand::random::<f64>() * 0.5)
    }
}

/// Where records go that cannot be handled.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DeadLetterPolicy {
    /// `false` skips failed records with an error log instead.
    pub enabled: bool,
    /// The dead-letter topic of topic `t` is `t` + suffix.
    pub suffix: String,
    /// One dead-letter topic for every source topic, overriding `suffix`.
    pub topic: Option<String>,
    /// The longest error message written to `kt-dlq-error-message`, in bytes.
    pub max_error_len: usize,
    /// librdkafka properties of the dead-letter producer, on top of the
    /// consumer's connection properties (`bootstrap.servers`, `security.*`,
    /// `sasl.*`, `ssl.*`, `client.id`).
    pub producer_properties: BTreeMap<String, PropertyValue>,
}

impl Default for DeadLetterPolicy {
    fn default() -> Self {
        DeadLetterPolicy {
            enabled: true,
            suffix: ".dlq".to_owned(),
            topic: None,
            max_error_len: 1024,
            producer_properties: BTreeMap::new(),
        }
    }
}

impl DeadLetterPolicy {
    /// Dead-letter to `<topic><suffix>`.
    pub fn suffix(suffix: impl Into<String>) -> Self {
        DeadLetterPolicy {
            suffix: suffix.into(),
            ..Default::default()
        }
    }

    /// No dead-letter topic: failed records are logged at error level and
    /// skipped.
    pub fn disabled() -> Self {
        DeadLetterPolicy {
            enabled: false,
            ..Default::default()
        }
    }

    /// The dead-letter topic for records of `topic`, or `None` when disabled.
    pub fn topic_for(&self, topic: &str) -> Option<String> {
        if !self.enabled {
            return None;
        }
        Some(match &self.topic {
            Some(t) => t.clone(),
            None => format!("{topic}{}", self.suffix),
        })
    }
}

/// A librdkafka property value. Files may write numbers and booleans
/// unquoted; librdkafka receives them as strings.
#[derive(Clone, PartialEq, Eq)]
pub struct PropertyValue(pub String);

impl<'de> Deserialize<'de> for PropertyValue {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        match Value::deserialize(d)? {
            Value::String(s) => Ok(PropertyValue(s)),
            Value::Number(n) => Ok(PropertyValue(n.to_string())),
            Value::Bool(b) => Ok(PropertyValue(b.to_string())),
            // The value itself is not echoed: it may be a secret.
            Value::Null => Err(serde::de::Error::custom(
                "expected a string, number or boolean, found null",
            )),
            Value::Array(_) => Err(serde::de::Error::custom(
                "expected a string, number or boolean, found a list",
            )),
            Value::Object(_) => Err(serde::de::Error::custom(
                "expected a string, number or boolean, found a map (in TOML, quote a property name with dots)",
            )),
        }
    }
}

impl fmt::Debug for PropertyValue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&self.0, f)
    }
}

impl From<&str> for PropertyValue {
    fn from(s: &str) -> Self {
        PropertyValue(s.to_owned())
    }
}

impl From<String> for PropertyValue {
    fn from(s: String) -> Self {
        PropertyValue(s)
    }
}

/// Everything the consumer runtime needs. See the [module docs](self).
///
/// Its `Debug` output redacts secrets (any property whose name mentions
/// `password`, `secret`, `key` or `token`).
#[derive(Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConsumerConfig {
    /// The consumer group.
    pub group_id: String,
    /// The topics to subscribe to.
    pub topics: Vec<String>,
    /// This service's id, written into dead-letter provenance headers.
    #[serde(default = "default_service_id")]
    pub service_id: String,
    /// Records being served at once, over all partitions.
    #[serde(default = "default_max_in_flight")]
    pub max_in_flight: usize,
    /// Records fetched but not yet started, per partition, before the
    /// partition is paused.
    #[serde(default = "default_buffer")]
    pub buffer_per_partition: usize,
    /// Ordering within a partition.
    #[serde(default)]
    pub ordering: Ordering,
    /// How often finished offsets are committed (asynchronously).
    #[serde(default = "default_commit_interval", with = "humantime_serde")]
    pub commit_interval: Duration,
    /// How long in-flight records may take to finish on revocation and on
    /// shutdown before they are abandoned (and redelivered later).
    #[serde(default = "default_drain_timeout", with = "humantime_serde")]
    pub drain_timeout: Duration,
    /// Retries of retryable failures.
    #[serde(default)]
    pub retry: RetryPolicy,
    /// The dead-letter topic.
    #[serde(default)]
    pub dead_letter: DeadLetterPolicy,
    /// librdkafka consumer properties (`bootstrap.servers` is required).
    #[serde(default)]
    pub properties: BTreeMap<String, PropertyValue>,
}

fn default_service_id() -> String {
    "kafka-tower".to_owned()
}
fn default_max_in_flight() -> usize {
    64
}
fn default_buffer() -> usize {
    256
}
fn default_commit_interval() -> Duration {
    Duration::from_secs(1)
}
fn default_drain_timeout() -> Duration {
    Duration::from_secs(30)
}

impl ConsumerConfig {
    /// A configuration with defaults for `group_id` and `topics`.
    pub fn new(
        group_id: impl Into<String>,
        topics: impl IntoIterator<Item = impl Into<String>>,
    ) -> Self {
        ConsumerConfig {
            group_id: group_id.into(),
            topics: topics.into_iter().map(Into::into).collect(),
            service_id: default_service_id(),
            max_in_flight: default_max_in_flight(),
            buffer_per_partition: default_buffer(),
            ordering: Ordering::default(),
            commit_interval: default_commit_interval(),
            drain_timeout: default_drain_timeout(),
            retry: RetryPolicy::default(),
            dead_letter: DeadLetterPolicy::default(),
            properties: BTreeMap::new(),
        }
    }

    /// Loads a `.yml` / `.yaml` / `.toml` file, then applies the
    /// `KAFKA_TOWER_*` variables of the process environment.
    pub fn from_file(path: impl AsRef<Path>) -> Result<Self, ConfigError> {
        Self::from_file_with_env(path, std::env::vars())
    }

    /// As [`ConsumerConfig::from_file`], with the environment given
    /// explicitly (variables without the prefix are ignored).
    pub fn from_file_with_env<K, V>(
        path: impl AsRef<Path>,
        env: impl IntoIterator<Item = (K, V)>,
    ) -> Result<Self, ConfigError>
    where
        K: AsRef<str>,
        V: AsRef<str>,
    {
        let path = path.as_ref();
        let origin = path.display().to_string();
        let text = std::fs::read_to_string(path)
            .map_err(|e| ConfigError::new(&origin, None, format!("cannot read the file: {e}")))?;
        match path.extension().and_then(|e| e.to_str()) {
            Some("yml" | "yaml") => Self::from_yaml_str(&text, &origin, env),
            Some("toml") => Self::from_toml_str(&text, &origin, env),
            _ => Err(ConfigError::new(
                &origin,
                None,
                "unknown file type: expected a .yml, .yaml or .toml extension",
            )),
        }
    }

    /// Parses YAML text; `origin` names it in errors.
    pub fn from_yaml_str<K, V>(
        text: &str,
        origin: &str,
        env: impl IntoIterator<Item = (K, V)>,
    ) -> Result<Self, ConfigError>
    where
        K: AsRef<str>,
        V: AsRef<str>,
    {
        let value: Value = serde_yaml::from_str(text)
            .map_err(|e| ConfigError::new(origin, None, format!("invalid YAML: {e}")))?;
        Self::from_value(value, origin, env)
    }

    /// Parses TOML text; `origin` names it in errors.
    pub fn from_toml_str<K, V>(
        text: &str,
        origin: &str,
        env: impl IntoIterator<Item = (K, V)>,
    ) -> Result<Self, ConfigError>
    where
        K: AsRef<str>,
        V: AsRef<str>,
    {
        // Not `{e}`: toml's Display quotes the offending line, which may
        // hold a secret.
        let value: Value = toml::from_str(text).map_err(|e| {
            let at = e.span().map_or(String::new(), |span| {
                let before = &text[..span.start.min(text.len())];
                let line = before.matches('\n').count() + 1;
                let column = before.len() - before.rfind('\n').map_or(0, |i| i + 1) + 1;
                format!(" at line {line}, column {column}")
            });
            let message = e.message().trim_end().replace('\n', "; ");
            ConfigError::new(origin, None, format!("invalid TOML{at}: {message}"))
        })?;
        Self::from_value(value, origin, env)
    }

    fn from_value<K, V>(
        mut value: Value,
        origin: &str,
        env: impl IntoIterator<Item = (K, V)>,
    ) -> Result<Self, ConfigError>
    where
        K: AsRef<str>,
        V: AsRef<str>,
    {
        if value.is_null() {
            value = Value::Object(Default::default());
        }
        let mut env_origin = None;
        for (k, v) in env {
            let k = k.as_ref();
            let Some(rest) = k.strip_prefix(ENV_PREFIX) else {
                continue;
            };
            apply_env(&mut value, rest, v.as_ref())
                .map_err(|msg| ConfigError::new(&format!("environment variable {k}"), None, msg))?;
            env_origin.get_or_insert_with(|| format!("{origin} (with {ENV_PREFIX}* overrides)"));
        }
        let origin = env_origin.as_deref().unwrap_or(origin);
        let config: ConsumerConfig = serde_path_to_error::deserialize(value).map_err(|e| {
            let path = e.path().to_string();
            let key = (path != ".").then_some(path);
            ConfigError::new(origin, key, e.into_inner().to_string())
        })?;
        config.validate_in(origin)?;
        Ok(config)
    }

    /// Checks the values that serde cannot: non-empty group and topics,
    /// legal topic names, positive limits, properties the runtime owns.
    pub fn validate(&self) -> Result<(), ConfigError> {
        self.validate_in("configuration")
    }

    fn validate_in(&self, origin: &str) -> Result<(), ConfigError> {
        let err = |key: &str, msg: String| Err(ConfigError::new(origin, Some(key.to_owned()), msg));
        if self.group_id.trim().is_empty() {
            return err("group_id", "must not be empty".into());
        }
        if self.topics.is_empty() {
            return err("topics", "must name at least one topic".into());
        }
        if let Some(t) = self.topics.iter().find(|t| !is_valid_topic_name(t)) {
            return err(
                "topics",
                format!("{t:?} is not a legal topic name (1-249 characters of [a-zA-Z0-9._-])"),
            );
        }
        if self.max_in_flight == 0 {
            return err("max_in_flight", "must be at least 1".into());
        }
        if self.buffer_per_partition == 0 {
            return err("buffer_per_partition", "must be at least 1".into());
        }
        if self.commit_interval.is_zero() {
            return err("commit_interval", "must be greater than zero".into());
        }
        if self.retry.max_attempts == 0 {
            return err(
                "retry.max_attempts",
                "must be at least 1 (1 = no retries)".into(),
            );
        }
        if !(self.retry.multiplier.is_finite() && self.retry.multiplier >= 1.0) {
            return err(
                "retry.multiplier",
                format!("must be a number ≥ 1, got {}", self.retry.multiplier),
            );
        }
        if self.retry.initial_backoff > self.retry.max_backoff {
            return err(
                "retry.initial_backoff",
                "must not exceed retry.max_backoff".into(),
            );
        }
        if self.dead_letter.enabled {
            match &self.dead_letter.topic {
                Some(t) if !is_valid_topic_name(t) => {
                    return err(
                        "dead_letter.topic",
                        format!("{t:?} is not a legal topic name"),
                    );
                }
                None if self.dead_letter.suffix.is_empty() => {
                    return err(
                        "dead_letter.suffix",
                        "must not be empty (the DLQ would be the source topic)".into(),
                    );
                }
                None => {
                    if let Some(t) = self
                        .topics
                        .iter()
                        .find(|t| !is_valid_topic_name(&format!("{t}{}", self.dead_letter.suffix)))
                    {
                        return err(
                            "dead_letter.suffix",
                            format!("{t}{} is not a legal topic name", self.dead_letter.suffix),
                        );
                    }
                }
                _ => {}
            }
        }
        for owned in ["group.id", "enable.auto.commit", "enable.auto.offset.store"] {
            if self.properties.contains_key(owned) {
                return err(
                    &format!("properties.{owned}"),
                    "is managed by the runtime (use group_id; offsets are committed only for finished records)".into(),
                );
            }
        }
        if !self.properties.contains_key("bootstrap.servers") {
            return err("properties.bootstrap.servers", "is required".into());
        }
        Ok(())
    }
}

fn apply_env(root: &mut Value, rest: &str, raw: &str) -> Result<(), String> {
    let segments: Vec<String> = rest.split("__").map(|s| s.to_ascii_lowercase()).collect();
    let (first, tail) = segments.split_first().ok_or("empty name")?;
    let obj = root
        .as_object_mut()
        .ok_or("the configuration root is not a map")?;
    match first.as_str() {
        "properties" if !tail.is_empty() => {
            let prop = tail.join("_").replace('_', ".");
            let props = obj
                .entry("properties")
                .or_insert_with(|| Value::Object(Default::default()));
            props
                .as_object_mut()
                .ok_or("`properties` is not a map")?
                .insert(prop, Value::String(raw.to_owned()));
        }
        "topics" if tail.is_empty() => {
            let topics = raw
                .split(',')
                .map(str::trim)
                .filter(|s| !s.is_empty())
                .map(|s| Value::String(s.to_owned()))
                .collect();
            obj.insert("topics".into(), Value::Array(topics));
        }
        "retry" | "dead_letter" if tail.len() == 1 => {
            let section = obj
                .entry(first.clone())
                .or_insert_with(|| Value::Object(Default::default()));
            let section = section
                .as_object_mut()
                .ok_or_else(|| format!("`{first}` is not a map"))?;
            let value = env_scalar(&format!("{first}.{}", tail[0]), raw)?;
            section.insert(tail[0].clone(), value);
        }
        "dead_letter" if tail.len() > 1 && tail[0] == "producer_properties" => {
            let prop = tail[1..].join("_").replace('_', ".");
            let section = obj
                .entry("dead_letter")
                .or_insert_with(|| Value::Object(Default::default()));
            let props = section
                .as_object_mut()
                .ok_or("`dead_letter` is not a map")?
                .entry("producer_properties")
                .or_insert_with(|| Value::Object(Default::default()));
            props
                .as_object_mut()
                .ok_or("`dead_letter.producer_properties` is not a map")?
                .insert(prop, Value::String(raw.to_owned()));
        }
        field if tail.is_empty() => {
            let value = env_scalar(field, raw)?;
            obj.insert(field.to_owned(), value);
        }
        _ => {
            return Err(format!(
                "`{}` names no configuration field",
                segments.join(".")
            ))
        }
    }
    Ok(())
}

/// The scalar fields a variable may set, dotted, and whether each is a
/// string. A string field takes the value verbatim (`KAFKA_TOWER_GROUP_ID=2024`
/// is the group "2024", not a number); an unknown field is an error naming the
/// variable.
const ENV_FIELDS: &[(&str, bool)] = &[
    ("group_id", true),
    ("service_id", true),
    ("max_in_flight", false),
    ("buffer_per_partition", false),
    ("ordering", true),
    ("commit_interval", true),
    ("drain_timeout", true),
    ("retry.max_attempts", false),
    ("retry.initial_backoff", true),
    ("retry.max_backoff", true),
    ("retry.multiplier", false),
    ("dead_letter.enabled", false),
    ("dead_letter.suffix", true),
    ("dead_letter.topic", true),
    ("dead_letter.max_error_len", false),
];

/// The value of the scalar field `path` set from a variable.
fn env_scalar(path: &str, raw: &str) -> Result<Value, String> {
    match ENV_FIELDS.iter().find(|(f, _)| *f == path) {
        Some((_, true)) => Ok(Value::String(raw.to_owned())),
        Some((_, false)) => Ok(scalar(raw)),
        None => Err(format!("`{path}` names no configuration field")),
    }
}

/// Numbers and booleans as such, anything else as a string.
fn scalar(raw: &str) -> Value {
    match serde_json::from_str::<Value>(raw) {
        Ok(v @ (Value::Number(_) | Value::Bool(_))) => v,
        _ => Value::String(raw.to_owned()),
    }
}

/// Whether a librdkafka property holds a secret and must never be printed.
pub fn is_secret_property(name: &str) -> bool {
    let n = name.to_ascii_lowercase();
    ["password", "secret", "key", "token", "jaas"]
        .iter()
        .any(|s| n.contains(s))
}

struct Redacted<'a>(&'a BTreeMap<String, PropertyValue>);

impl fmt::Debug for Redacted<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_map()
            .entries(self.0.iter().map(|(k, v)| {
                let shown: &dyn fmt::Debug = if is_secret_property(k) {
                    &"<redacted>"
                } else {
                    &v.0
                };
                (k, shown)
            }))
            .finish()
    }
}

impl fmt::Debug for ConsumerConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ConsumerConfig")
            .field("group_id", &self.group_id)
            .field("topics", &self.topics)
            .field("service_id", &self.service_id)
            .field("max_in_flight", &self.max_in_flight)
            .field("buffer_per_partition", &self.buffer_per_partition)
            .field("ordering", &self.ordering)
            .field("commit_interval", &self.commit_interval)
            .field("drain_timeout", &self.drain_timeout)
            .field("retry", &self.retry)
            .field(
                "dead_letter",
                &format_args!(
                    "DeadLetterPolicy {{ enabled: {}, suffix: {:?}, topic: {:?}, max_error_len: {}, producer_properties: {:?} }}",
                    self.dead_letter.enabled,
                    self.dead_letter.suffix,
                    self.dead_letter.topic,
                    self.dead_letter.max_error_len,
                    Redacted(&self.dead_letter.producer_properties)
                ),
            )
            .field("properties", &Redacted(&self.properties))
            .finish()
    }
}

/// A configuration that cannot be used: names where it came from (file or
/// environment variable), the key, and what is wrong. Never contains a
/// secret value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    origin: String,
    key: Option<String>,
    message: String,
}

impl ConfigError {
    pub(crate) fn new(origin: &str, key: Option<String>, message: impl Into<String>) -> Self {
        ConfigError {
            origin: origin.to_owned(),
            key,
            message: message.into(),
        }
    }

    /// The file (or environment variable) the bad value came from.
    pub fn origin(&self) -> &str {
        &self.origin
    }

    /// The offending key, dotted (`retry.max_attempts`), when known.
    pub fn key(&self) -> Option<&str> {
        self.key.as_deref()
    }

    /// What is wrong.
    pub fn message(&self) -> &str {
        &self.message
    }
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.key {
            Some(k) => write!(
                f,
                "invalid configuration in {}: `{k}`: {}",
                self.origin, self.message
            ),
            None => write!(
                f,
                "invalid configuration in {}: {}",
                self.origin, self.message
            ),
        }
    }
}

impl std::error::Error for ConfigError {}
