//! See [`ConsumerConfig`].

use std::fmt;
use std::path::Path;
use std::time::Duration;

use serde::Deserialize;
use serde_json::Value;

use crate::mapping::is_valid_topic_name;

mod loader;

pub use loader::{
    is_secret_property, ConfigError, Properties, PropertyValue, ENV_PREFIX, PRODUCER_ENV_PREFIX,
    TOOLING_ENV_VARS,
};
pub(crate) use loader::{load, parse_toml, parse_yaml, read_file};

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

/// Consumer configuration: in code ([`ConsumerBuilder`](super::ConsumerBuilder))
/// or from a YAML / TOML file with environment overrides.
///
/// ```yaml
/// # consumer.yml
/// group_id: orders-service
/// topics: [orders, payments]
/// service_id: orders-service
/// max_in_flight: 64
/// buffer_per_partition: 256   # key mode: look-ahead per partition
/// pause_after: 500ms         # pause a partition whose lane is stuck this long
/// ordering: partition        # or: key
/// commit_interval: 1s
/// drain_timeout: 30s
/// retry:
///   max_attempts: 4          # first delivery included
///   initial_backoff: 200ms
///   max_backoff: 30s
///   multiplier: 2.0
///   hold: 5m                 # a downstream outage holds the partition, 0s: off
/// dead_letter:
///   enabled: true
///   suffix: .dlq             # orders -> orders.dlq
/// batch:                     # Consumer::serve_batches only
///   max_batch: 500           # records per call at most
///   max_delay: 0s            # wait for more once a batch has one
/// properties:                # passed to librdkafka as they are
///   bootstrap.servers: 127.0.0.1:9092
///   auto.offset.reset: earliest
/// ```
///
/// Every field of the file can be overridden by an environment variable
/// `KAFKA_TOWER_<FIELD>`, nested fields joined with `__`:
/// `KAFKA_TOWER_GROUP_ID`, `KAFKA_TOWER_RETRY__MAX_ATTEMPTS`,
/// `KAFKA_TOWER_TOPICS=orders,payments` (comma-separated), and librdkafka
/// properties as `KAFKA_TOWER_PROPERTIES__BOOTSTRAP_SERVERS` (lower-cased,
/// `_` becomes `.`). An unknown field, in the file or in a variable, is an
/// error naming it.
///
/// The namespace rule: `KAFKA_TOWER_PRODUCER_*` variables belong to the
/// producer's loader ([`ProducerConfig`](crate::runtime::ProducerConfig)) and are never read as consumer
/// overrides, nor consumer variables as producer ones; the variables of the
/// project's own tooling, listed in [`TOOLING_ENV_VARS`] (e.g.
/// `KAFKA_TOWER_BROKER_DIR`, read by `scripts/kafka.sh`), are ignored by
/// both; every other `KAFKA_TOWER_*` variable is an override, and one that
/// names no field fails.
///
/// ```
/// use kafka_tower::runtime::ConsumerConfig;
///
/// let yaml = "group_id: g\ntopics: [orders]\nproperties:\n  bootstrap.servers: 127.0.0.1:9092\n";
/// let env = [("KAFKA_TOWER_RETRY__MAX_ATTEMPTS", "7")];
/// let config = ConsumerConfig::from_yaml_str(yaml, "consumer.yml", env).unwrap();
/// assert_eq!(config.retry.max_attempts, 7);
///
/// let no_env: [(&str, &str); 0] = [];
/// let err = ConsumerConfig::from_yaml_str("group_id: g\ntopics: [t]\nmax_inflight: 3\n", "consumer.yml", no_env).unwrap_err();
/// assert!(err.to_string().contains("max_inflight"));
/// assert!(err.to_string().contains("consumer.yml"));
/// ```
///
/// Everything the consumer runtime needs.
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
    /// it serves (the scheduler's look-ahead). Partition-ordered lanes
    /// start one record at a time. Either way a lane takes messages off
    /// librdkafka's queue up to 32 per call; those it has not started yet
    /// are not copied and not counted here.
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
        if let Some(v) = self.properties.get("enable.partition.eof") {
            // librdkafka's spellings of false.
            let v = v.0.trim();
            if !["false", "f", "0"]
                .iter()
                .any(|f| v.eq_ignore_ascii_case(f))
            {
                return err(
                    "properties.enable.partition.eof",
                    "must be false (or unset): the runtime has no use for end-of-partition events, and serves records only".into(),
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
