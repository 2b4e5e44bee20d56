//! Consumer configuration: in code ([`ConsumerBuilder`](super::ConsumerBuilder))
//! or from a YAML / TOML file with environment overrides.
//!
//! ```yaml
//! # consumer.yml
//! group_id: orders-service
//! topics: [orders, payments]
//! service_id: orders-service
//! max_in_flight: 64
//! buffer_per_partition: 256   # key mode: look-ahead per partition
//! pause_after: 500ms         # pause a partition whose lane is stuck this long
//! ordering: partition        # or: key
//! commit_interval: 1s
//! drain_timeout: 30s
//! retry:
//!   max_attempts: 4          # first delivery included
//!   initial_backoff: 200ms
//!   max_backoff: 30s
//!   multiplier: 2.0
//!   hold: 5m                 # a downstream outage holds the partition, 0s: off
//! dead_letter:
//!   enabled: true
//!   suffix: .dlq             # orders -> orders.dlq
//! batch:                     # Consumer::serve_batches only
//!   max_batch: 500           # records per call at most
//!   max_delay: 0s            # wait for more once a batch has one
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
//! The namespace rule: `KAFKA_TOWER_PRODUCER_*` variables belong to the
//! producer's loader ([`ProducerConfig`]) and are never read as consumer
//! overrides, nor consumer variables as producer ones; the variables of the
//! project's own tooling, listed in [`TOOLING_ENV_VARS`] (e.g.
//! `KAFKA_TOWER_BROKER_DIR`, read by `scripts/kafka.sh`), are ignored by
//! both; every other `KAFKA_TOWER_*` variable is an override, and one that
//! names no field fails.
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

/// The prefix of environment variables that override consumer configuration.
pub const ENV_PREFIX: &str = "KAFKA_TOWER_";

/// The prefix of environment variables that override producer configuration.
pub const PRODUCER_ENV_PREFIX: &str = "KAFKA_TOWER_PRODUCER_";

/// Variables under the `KAFKA_TOWER_` prefix that the project's scripts,
/// test kit and benches read for themselves: the configuration loaders
/// ignore them, so setting one never breaks a consumer or producer that
/// loads its configuration from a file and the environment.
///
/// ```
/// use kafka_tower::runtime::ConsumerConfig;
///
/// let yaml = "group_id: g\ntopics: [orders]\nproperties:\n  bootstrap.servers: 127.0.0.1:9092\n";
/// let env = [("KAFKA_TOWER_BROKER_DIR", "/var/lib/kafka-test")];
/// let config = ConsumerConfig::from_yaml_str(yaml, "consumer.yml", env).unwrap();
/// assert_eq!(config.group_id, "g");
/// ```
pub const TOOLING_ENV_VARS: &[&str] = &["KAFKA_TOWER_BROKER_DIR"];

const CONSUMER_FIELDS: &[&str] = &[
    "group_id",
    "topics",
    "service_id",
    "max_in_flight",
    "buffer_per_partition",
    "pause_after",
    "ordering",
    "commit_interval",
    "drain_timeout",
    "retry",
    "dead_letter",
    "context",
    "batch",
    "properties",
];

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

/// How [`Consumer::serve_batches`](super::Consumer::serve_batches) groups a
/// partition's records.
///
/// ```yaml
/// batch:
///   max_batch: 500     # records per call at most
///   max_delay: 20ms    # wait this long for more once a batch has one
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct BatchSettings {
    /// The most records one call gets (≥ 1; default 500).
    pub max_batch: usize,
    /// How long a batch waits for more records once it has one (default
    /// `0s`: it takes what is fetched already, and does not wait).
    #[serde(with = "humantime_serde")]
    pub max_delay: Duration,
}

impl Default for BatchSettings {
    fn default() -> Self {
        BatchSettings {
            max_batch: 500,
            max_delay: Duration::ZERO,
        }
    }
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
    /// How long a record may hold its partition once its `max_attempts`
    /// are spent on retryable failures (`0s` turns holding off).
    ///
    /// A downstream outage (a database down, a dependency answering `503`)
    /// makes every record fail retryably; dead-lettering each one after its
    /// attempts would move every good record that arrives during the outage
    /// to the dead-letter topic. So a record whose attempts are exhausted on
    /// a retryable failure is not dead-lettered at once: it holds its
    /// partition (nothing after it is started; the partition is paused
    /// after `pause_after`) and is retried at the capped backoff
    /// (`max_backoff`) until a call succeeds — the outage is over and the
    /// partition resumes — or a permanent failure, or until it has held for
    /// this long, when it is dead-lettered (the reason says so) and the
    /// partition moves on. A record that keeps failing retryably on its own
    /// (a poison record answering `503`) therefore costs its partition
    /// `hold` (and one more call) once; permanent failures (`4xx`) are dead-lettered at
    /// once whether or not the partition is held, and a record that makes
    /// the service panic on every attempt is dead-lettered after
    /// `max_attempts` (a panic is a bug met by that record, not an outage;
    /// a `500` that `CatchPanicLayer` makes of one is a status like any
    /// other, and holds).
    ///
    /// Holds are counted in [`RuntimeStats::holds`](super::RuntimeStats::holds)
    /// and [`RuntimeStats::held`](super::RuntimeStats::held). The
    /// exactly-once mode does not hold (a transaction cannot stay open
    /// that long): it dead-letters after `max_attempts`.
    #[serde(with = "humantime_serde")]
    pub hold: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy {
            max_attempts: 4,
            initial_backoff: Duration::from_millis(200),
            max_backoff: Duration::from_secs(30),
            multiplier: 2.0,
            hold: Duration::from_secs(300),
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
            ..Default::default()
        }
    }

    /// No retries and no hold: a retryable failure is dead-lettered after
    /// the first attempt.
    pub fn none() -> Self {
        RetryPolicy {
            max_attempts: 1,
            hold: Duration::ZERO,
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
    pub producer_properties: Properties,
}

impl Default for DeadLetterPolicy {
    fn default() -> Self {
        DeadLetterPolicy {
            enabled: true,
            suffix: ".dlq".to_owned(),
            topic: None,
            max_error_len: 1024,
            producer_properties: Properties::new(),
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

/// How the consumer captures the [`PropagatedContext`](crate::PropagatedContext)
/// of each record (into the request extensions and the task-local scope of
/// the service call).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ContextSettings {
    /// Capture the context at all (default `true`).
    pub capture: bool,
    /// Generate a correlation id for a record that has none (default
    /// `true`); the same id is used for every attempt of the record.
    pub generate_correlation_id: bool,
    /// Header names propagated besides the defaults.
    pub extra_headers: Vec<String>,
}

impl Default for ContextSettings {
    fn default() -> Self {
        ContextSettings {
            capture: true,
            generate_correlation_id: true,
            extra_headers: Vec::new(),
        }
    }
}

impl ContextSettings {
    /// The [`ContextConfig`](crate::context::ContextConfig) these settings describe.
    pub fn to_context_config(&self) -> Result<crate::context::ContextConfig, String> {
        let mut c = crate::context::ContextConfig::new()
            .generate_correlation_id(self.generate_correlation_id);
        for name in &self.extra_headers {
            let n = http::HeaderName::from_bytes(name.as_bytes())
                .map_err(|_| format!("{name:?} is not a valid header name"))?;
            c = c.with_header(n);
        }
        Ok(c)
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

/// A map of librdkafka properties (name → value), as every configuration
/// of the runtime holds them: consumer, producer, dead-letter producer,
/// streams, audit sink.
///
/// Its `Debug` prints `<redacted>` for every property whose name looks
/// secret ([`is_secret_property`]: `password`, `secret`, `key`, `token`,
/// `jaas`), and [`Properties::redact`] removes those values from any text
/// (librdkafka's error messages may quote a value), so a configuration
/// can be logged whole.
///
/// ```
/// use kafka_tower::runtime::Properties;
///
/// let mut p = Properties::new();
/// p.set("sasl.username", "svc-orders")
///     .set("sasl.password", "hunter2-hunter2");
/// let shown = format!("{p:?}");
/// assert!(shown.contains("svc-orders"));
/// assert!(!shown.contains("hunter2"));
/// assert_eq!(p.get_str("sasl.password"), Some("hunter2-hunter2"));
/// ```
#[derive(Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(transparent)]
pub struct Properties(BTreeMap<String, PropertyValue>);

impl Properties {
    /// No properties.
    pub fn new() -> Self {
        Properties(BTreeMap::new())
    }

    /// Sets a property, returning the value it replaces (as
    /// `BTreeMap::insert`, which this map replaces in the configuration
    /// types).
    pub fn insert(&mut self, name: String, value: PropertyValue) -> Option<PropertyValue> {
        self.0.insert(name, value)
    }

    /// Sets a property.
    pub fn set(&mut self, name: impl Into<String>, value: impl Into<PropertyValue>) -> &mut Self {
        self.0.insert(name.into(), value.into());
        self
    }

    /// A property's value.
    pub fn get(&self, name: &str) -> Option<&PropertyValue> {
        self.0.get(name)
    }

    /// A property's value as text.
    pub fn get_str(&self, name: &str) -> Option<&str> {
        self.0.get(name).map(|v| v.0.as_str())
    }

    /// Whether the property is set.
    pub fn contains_key(&self, name: &str) -> bool {
        self.0.contains_key(name)
    }

    /// Removes a property, returning its value.
    pub fn remove(&mut self, name: &str) -> Option<PropertyValue> {
        self.0.remove(name)
    }

    /// The properties, by name.
    pub fn iter(&self) -> std::collections::btree_map::Iter<'_, String, PropertyValue> {
        self.0.iter()
    }

    /// How many properties are set.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// Whether none is set.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// `text` with the value of every secret-looking property replaced by
    /// `<redacted>`.
    pub fn redact(&self, text: &str) -> String {
        let mut out = text.to_owned();
        for (k, v) in &self.0 {
            if is_secret_property(k) && !v.0.is_empty() && out.contains(v.0.as_str()) {
                out = out.replace(v.0.as_str(), "<redacted>");
            }
        }
        out
    }
}

impl fmt::Debug for Properties {
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

impl<'a> IntoIterator for &'a Properties {
    type Item = (&'a String, &'a PropertyValue);
    type IntoIter = std::collections::btree_map::Iter<'a, String, PropertyValue>;
    fn into_iter(self) -> Self::IntoIter {
        self.0.iter()
    }
}

impl IntoIterator for Properties {
    type Item = (String, PropertyValue);
    type IntoIter = std::collections::btree_map::IntoIter<String, PropertyValue>;
    fn into_iter(self) -> Self::IntoIter {
        self.0.into_iter()
    }
}

impl<K: Into<String>, V: Into<PropertyValue>> FromIterator<(K, V)> for Properties {
    fn from_iter<I: IntoIterator<Item = (K, V)>>(iter: I) -> Self {
        Properties(
            iter.into_iter()
                .map(|(k, v)| (k.into(), v.into()))
                .collect(),
        )
    }
}

impl<K: Into<String>, V: Into<PropertyValue>> Extend<(K, V)> for Properties {
    fn extend<I: IntoIterator<Item = (K, V)>>(&mut self, iter: I) {
        self.0
            .extend(iter.into_iter().map(|(k, v)| (k.into(), v.into())));
    }
}

impl From<BTreeMap<String, PropertyValue>> for Properties {
    fn from(map: BTreeMap<String, PropertyValue>) -> Self {
        Properties(map)
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
    /// Records a key-ordered lane takes from its partition ahead of those
    /// it serves (the scheduler's look-ahead). Partition-ordered lanes take
    /// one record at a time.
    #[serde(default = "default_buffer")]
    pub buffer_per_partition: usize,
    /// How long a partition's lane may be busy without finishing a record
    /// (a service not ready, a slow call, retries) before the partition is
    /// paused; it resumes when the lane finishes a record.
    #[serde(default = "default_pause_after", with = "humantime_serde")]
    pub pause_after: Duration,
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
    /// Capture of the propagated context from each record.
    #[serde(default)]
    pub context: ContextSettings,
    /// Batches, for [`Consumer::serve_batches`](super::Consumer::serve_batches).
    #[serde(default)]
    pub batch: BatchSettings,
    /// librdkafka consumer properties (`bootstrap.servers` is required).
    #[serde(default)]
    pub properties: Properties,
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
fn default_pause_after() -> Duration {
    Duration::from_millis(500)
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
            pause_after: default_pause_after(),
            ordering: Ordering::default(),
            commit_interval: default_commit_interval(),
            drain_timeout: default_drain_timeout(),
            retry: RetryPolicy::default(),
            dead_letter: DeadLetterPolicy::default(),
            context: ContextSettings::default(),
            batch: BatchSettings::default(),
            properties: Properties::new(),
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
        let (value, origin) = read_file(path.as_ref())?;
        Self::from_value(value, &origin, env)
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
        Self::from_value(parse_yaml(text, origin)?, origin, env)
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
        Self::from_value(parse_toml(text, origin)?, origin, env)
    }

    fn from_value<K, V>(
        value: Value,
        origin: &str,
        env: impl IntoIterator<Item = (K, V)>,
    ) -> Result<Self, ConfigError>
    where
        K: AsRef<str>,
        V: AsRef<str>,
    {
        let env = env
            .into_iter()
            .filter(|(k, _)| !k.as_ref().starts_with(PRODUCER_ENV_PREFIX));
        let config: ConsumerConfig = load(value, origin, env, ENV_PREFIX, CONSUMER_FIELDS)?;
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
        if self.batch.max_batch == 0 {
            return err("batch.max_batch", "must be at least 1".into());
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
        if let Err(msg) = self.context.to_context_config() {
            return err("context.extra_headers", msg);
        }
        Ok(())
    }
}

/// Applies one `KAFKA_TOWER_*` variable (prefix removed) to the parsed
/// file. Segments separated by `__` walk nested maps; after a `properties`
/// or `producer_properties` segment the rest is a librdkafka property name
/// (lower-cased, `_` → `.`); `topics` takes a comma-separated list.
///
/// Any other value goes in as a string; [`load`] retypes it as a number or
/// boolean only if the field needs one, so that `KAFKA_TOWER_GROUP_ID=2024`
/// is the group "2024". Returns the segments of the field set that way.
fn apply_env(
    root: &mut Value,
    rest: &str,
    raw: &str,
    fields: &[&str],
) -> Result<Option<Vec<String>>, String> {
    let segments: Vec<String> = rest.split("__").map(|s| s.to_ascii_lowercase()).collect();
    if segments.iter().any(String::is_empty) {
        return Err("empty name segment".into());
    }
    if !fields.contains(&segments[0].as_str()) {
        return Err(format!(
            "`{}` names no configuration field",
            segments.join(".")
        ));
    }
    let mut node = root;
    let mut i = 0;
    loop {
        let seg = &segments[i];
        let obj = node
            .as_object_mut()
            .ok_or_else(|| format!("`{}` is not a map", segments[..i].join(".")))?;
        let last = i + 1 == segments.len();
        if (seg == "properties" || seg == "producer_properties") && !last {
            let prop = segments[i + 1..].join("_").replace('_', ".");
            let props = obj
                .entry(seg.clone())
                .or_insert_with(|| Value::Object(Default::default()));
            props
                .as_object_mut()
                .ok_or_else(|| format!("`{seg}` is not a map"))?
                .insert(prop, Value::String(raw.to_owned()));
            return Ok(None);
        }
        if last {
            if seg == "topics" {
                let topics = raw
                    .split(',')
                    .map(str::trim)
                    .filter(|s| !s.is_empty())
                    .map(|s| Value::String(s.to_owned()))
                    .collect();
                obj.insert(seg.clone(), Value::Array(topics));
                return Ok(None);
            }
            obj.insert(seg.clone(), Value::String(raw.to_owned()));
            return Ok(Some(segments));
        }
        node = obj
            .entry(seg.clone())
            .or_insert_with(|| Value::Object(Default::default()));
        i += 1;
    }
}

/// Parses YAML or TOML (by `kind`), applies the environment, deserializes
/// with key paths in errors. Unknown env fields are checked against `fields`.
pub(crate) fn load<T: serde::de::DeserializeOwned, K: AsRef<str>, V: AsRef<str>>(
    mut value: Value,
    origin: &str,
    env: impl IntoIterator<Item = (K, V)>,
    prefix: &str,
    fields: &[&str],
) -> Result<T, ConfigError> {
    if value.is_null() {
        value = Value::Object(Default::default());
    }
    let mut env_origin = None;
    // (field segments, raw value, variable, retyped) of the scalar fields set
    // by variables.
    let mut from_env: Vec<(Vec<String>, String, String, bool)> = Vec::new();
    for (k, v) in env {
        let k = k.as_ref();
        if TOOLING_ENV_VARS.contains(&k) {
            continue;
        }
        let Some(rest) = k.strip_prefix(prefix) else {
            continue;
        };
        let set = apply_env(&mut value, rest, v.as_ref(), fields)
            .map_err(|msg| ConfigError::new(&format!("environment variable {k}"), None, msg))?;
        if let Some(segments) = set {
            from_env.retain(|(s, ..)| *s != segments);
            from_env.push((segments, v.as_ref().to_owned(), k.to_owned(), false));
        }
        env_origin.get_or_insert_with(|| format!("{origin} (with {prefix}* overrides)"));
    }
    let origin = env_origin.as_deref().unwrap_or(origin);
    loop {
        let e = match serde_path_to_error::deserialize(&value) {
            Ok(config) => return Ok(config),
            Err(e) => e,
        };
        let path = e.path().to_string();
        if let Some((segments, raw, name, retyped)) = from_env
            .iter_mut()
            .find(|(segments, ..)| segments.join(".") == path)
        {
            // A variable's value is a string unless the field wants a number
            // or a boolean: retype it once and try again.
            let typed = scalar(raw);
            if !*retyped && !typed.is_string() {
                *retyped = true;
                let slot = segments
                    .iter()
                    .try_fold(&mut value, |node, seg| node.get_mut(seg.as_str()))
                    .expect("set by apply_env");
                *slot = typed;
                continue;
            }
            // The variable's own field is wrong (unknown, or a bad value):
            // name the variable.
            return Err(ConfigError::new(
                &format!("environment variable {name}"),
                Some(path),
                e.into_inner().to_string(),
            ));
        }
        let key = (path != ".").then_some(path);
        return Err(ConfigError::new(origin, key, e.into_inner().to_string()));
    }
}

/// Reads a `.yml` / `.yaml` / `.toml` file into a JSON value.
pub(crate) fn read_file(path: &Path) -> Result<(Value, String), ConfigError> {
    let origin = path.display().to_string();
    let text = std::fs::read_to_string(path)
        .map_err(|e| ConfigError::new(&origin, None, format!("cannot read the file: {e}")))?;
    let value = match path.extension().and_then(|e| e.to_str()) {
        Some("yml" | "yaml") => parse_yaml(&text, &origin)?,
        Some("toml") => parse_toml(&text, &origin)?,
        _ => {
            return Err(ConfigError::new(
                &origin,
                None,
                "unknown file type: expected a .yml, .yaml or .toml extension",
            ))
        }
    };
    Ok((value, origin))
}

pub(crate) fn parse_yaml(text: &str, origin: &str) -> Result<Value, ConfigError> {
    serde_yaml::from_str(text)
        .map_err(|e| ConfigError::new(origin, None, format!("invalid YAML: {e}")))
}

pub(crate) fn parse_toml(text: &str, origin: &str) -> Result<Value, ConfigError> {
    // Not `{e}`: toml's Display quotes the offending line, which may hold a
    // secret.
    toml::from_str(text).map_err(|e| {
        let at = e.span().map_or(String::new(), |span| {
            let before = text.get(..span.start).unwrap_or(text);
            let line = before.matches('\n').count() + 1;
            let column = before.len() - before.rfind('\n').map_or(0, |i| i + 1) + 1;
            format!(" at line {line}, column {column}")
        });
        let message = e.message().trim_end().replace('\n', "; ");
        ConfigError::new(origin, None, format!("invalid TOML{at}: {message}"))
    })
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
    [
        "password",
        "secret",
        "key",
        "token",
        "jaas",
        "oauthbearer.config",
    ]
    .iter()
    .any(|s| n.contains(s))
}

impl fmt::Debug for ConsumerConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ConsumerConfig")
            .field("group_id", &self.group_id)
            .field("topics", &self.topics)
            .field("service_id", &self.service_id)
            .field("max_in_flight", &self.max_in_flight)
            .field("buffer_per_partition", &self.buffer_per_partition)
            .field("pause_after", &self.pause_after)
            .field("ordering", &self.ordering)
            .field("commit_interval", &self.commit_interval)
            .field("drain_timeout", &self.drain_timeout)
            .field("retry", &self.retry)
            .field("dead_letter", &self.dead_letter)
            .field("context", &self.context)
            .field("batch", &self.batch)
            .field("properties", &self.properties)
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

const PRODUCER_FIELDS: &[&str] = &[
    "acks",
    "linger",
    "batch_size",
    "compression",
    "idempotence",
    "transactional_id",
    "check_topics",
    "send_timeout",
    "transaction_call_timeout",
    "properties",
];

/// Producer configuration, in code or from a YAML / TOML file with
/// `KAFKA_TOWER_PRODUCER_*` environment overrides (same rules as the
/// consumer's).
///
/// ```yaml
/// # producer.yml
/// acks: all                 # 0, 1 or all
/// linger: 5ms
/// batch_size: 131072        # bytes
/// compression: zstd         # none, gzip, snappy, lz4, zstd
/// idempotence: true         # the default
/// properties:
///   bootstrap.servers: 127.0.0.1:9092
/// ```
#[derive(Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProducerConfig {
    /// `acks`: `0`, `1` or `all` (default `all`); a number or a string.
    #[serde(default, deserialize_with = "optional_scalar_string")]
    pub acks: Option<String>,
    /// `linger.ms`: how long to wait to fill a batch.
    #[serde(default, with = "humantime_serde")]
    pub linger: Option<Duration>,
    /// `batch.size` in bytes.
    #[serde(default)]
    pub batch_size: Option<usize>,
    /// `compression.type`: `none`, `gzip`, `snappy`, `lz4` or `zstd`.
    #[serde(default)]
    pub compression: Option<String>,
    /// `enable.idempotence` (default `true`: no duplicates from producer
    /// retries, order kept per partition).
    #[serde(default = "yes")]
    pub idempotence: bool,
    /// `transactional.id`, required by the transactional producer; stable per
    /// instance so that a restarted instance fences its predecessor.
    #[serde(default)]
    pub transactional_id: Option<String>,
    /// Check once per topic, before the first send, that the topic exists,
    /// so that a send to a missing topic fails at once with
    /// `ProduceError::UnknownTopic` (default `true`).
    #[serde(default = "yes")]
    pub check_topics: bool,
    /// How long a send may wait in the local queue when it is full.
    #[serde(default = "default_send_timeout", with = "humantime_serde")]
    pub send_timeout: Duration,
    /// How long each call of a transactional producer (initialise, commit,
    /// abort, add consumed offsets) waits for the broker before it returns
    /// `TransactionError::TimedOut` (default 30 s). A commit or abort that
    /// timed out is resumed by calling it again; the exactly-once mode and
    /// `send_batch` do so until the broker answers.
    #[serde(default = "default_transaction_call_timeout", with = "humantime_serde")]
    pub transaction_call_timeout: Duration,
    /// librdkafka producer properties (`bootstrap.servers` is required).
    #[serde(default)]
    pub properties: Properties,
}

fn yes() -> bool {
    true
}
fn default_send_timeout() -> Duration {
    Duration::from_secs(5)
}
fn default_transaction_call_timeout() -> Duration {
    Duration::from_secs(30)
}

impl Default for ProducerConfig {
    fn default() -> Self {
        ProducerConfig {
            acks: None,
            linger: None,
            batch_size: None,
            compression: None,
            idempotence: true,
            transactional_id: None,
            check_topics: true,
            send_timeout: default_send_timeout(),
            transaction_call_timeout: default_transaction_call_timeout(),
            properties: Properties::new(),
        }
    }
}

impl fmt::Debug for ProducerConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ProducerConfig")
            .field("acks", &self.acks)
            .field("linger", &self.linger)
            .field("batch_size", &self.batch_size)
            .field("compression", &self.compression)
            .field("idempotence", &self.idempotence)
            .field("transactional_id", &self.transactional_id)
            .field("check_topics", &self.check_topics)
            .field("send_timeout", &self.send_timeout)
            .field("transaction_call_timeout", &self.transaction_call_timeout)
            .field("properties", &self.properties)
            .finish()
    }
}

impl ProducerConfig {
    /// A configuration for `bootstrap_servers` with defaults.
    pub fn new(bootstrap_servers: impl Into<String>) -> Self {
        let mut c = ProducerConfig::default();
        c.properties
            .set("bootstrap.servers", bootstrap_servers.into());
        c
    }

    /// Sets a librdkafka property.
    pub fn property(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.properties
            .insert(key.into(), PropertyValue(value.into()));
        self
    }

    /// Loads a `.yml` / `.yaml` / `.toml` file, then applies the
    /// `KAFKA_TOWER_PRODUCER_*` variables of the process environment.
    pub fn from_file(path: impl AsRef<Path>) -> Result<Self, ConfigError> {
        Self::from_file_with_env(path, std::env::vars())
    }

    /// As [`ProducerConfig::from_file`], with the environment given explicitly.
    pub fn from_file_with_env<K: AsRef<str>, V: AsRef<str>>(
        path: impl AsRef<Path>,
        env: impl IntoIterator<Item = (K, V)>,
    ) -> Result<Self, ConfigError> {
        let (value, origin) = read_file(path.as_ref())?;
        let config: ProducerConfig =
            load(value, &origin, env, PRODUCER_ENV_PREFIX, PRODUCER_FIELDS)?;
        config.validate_in(&origin)?;
        Ok(config)
    }

    /// Parses YAML text; `origin` names it in errors.
    pub fn from_yaml_str<K: AsRef<str>, V: AsRef<str>>(
        text: &str,
        origin: &str,
        env: impl IntoIterator<Item = (K, V)>,
    ) -> Result<Self, ConfigError> {
        let config: ProducerConfig = load(
            parse_yaml(text, origin)?,
            origin,
            env,
            PRODUCER_ENV_PREFIX,
            PRODUCER_FIELDS,
        )?;
        config.validate_in(origin)?;
        Ok(config)
    }

    /// Checks values serde cannot.
    pub fn validate(&self) -> Result<(), ConfigError> {
        self.validate_in("producer configuration")
    }

    fn validate_in(&self, origin: &str) -> Result<(), ConfigError> {
        let err = |key: &str, msg: String| Err(ConfigError::new(origin, Some(key.to_owned()), msg));
        if !self.properties.contains_key("bootstrap.servers") {
            return err("properties.bootstrap.servers", "is required".into());
        }
        if let Some(a) = &self.acks {
            if !matches!(a.as_str(), "0" | "1" | "all" | "-1") {
                return err("acks", format!("must be 0, 1 or all, got {a:?}"));
            }
        }
        if let Some(c) = &self.compression {
            if !matches!(c.as_str(), "none" | "gzip" | "snappy" | "lz4" | "zstd") {
                return err(
                    "compression",
                    format!("must be none, gzip, snappy, lz4 or zstd, got {c:?}"),
                );
            }
        }
        if self
            .transactional_id
            .as_deref()
            .is_some_and(|t| t.trim().is_empty())
        {
            return err("transactional_id", "must not be empty".into());
        }
        Ok(())
    }

    /// The librdkafka configuration: typed fields first, `properties` last
    /// (so a property set explicitly wins).
    pub(crate) fn client_config(&self) -> rdkafka::ClientConfig {
        let mut cc = rdkafka::ClientConfig::new();
        cc.set(
            "enable.idempotence",
            if self.idempotence { "true" } else { "false" },
        );
        cc.set("acks", self.acks.as_deref().unwrap_or("all"));
        if let Some(l) = self.linger {
            cc.set("linger.ms", l.as_millis().to_string());
        }
        if let Some(b) = self.batch_size {
            cc.set("batch.size", b.to_string());
        }
        if let Some(c) = &self.compression {
            cc.set("compression.type", c);
        }
        if let Some(t) = &self.transactional_id {
            cc.set("transactional.id", t);
        }
        for (k, v) in &self.properties {
            cc.set(k, &v.0);
        }
        cc
    }

    /// `message.max.bytes` as configured, or librdkafka's default.
    pub(crate) fn max_message_bytes(&self) -> usize {
        self.properties
            .get("message.max.bytes")
            .and_then(|v| v.0.parse().ok())
            .unwrap_or(1_000_000)
    }
}

/// An optional string that files may also write as a bare number or boolean.
fn optional_scalar_string<'de, D: Deserializer<'de>>(d: D) -> Result<Option<String>, D::Error> {
    Option::<PropertyValue>::deserialize(d).map(|v| v.map(|p| p.0))
}
