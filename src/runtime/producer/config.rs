//! [`ProducerConfig`]: the producer's configuration, in code or from a
//! YAML / TOML file with `KAFKA_TOWER_PRODUCER_*` overrides (the loader of
//! [`config`](crate::runtime::config)).

use std::fmt;
use std::path::Path;
use std::time::Duration;

use serde::{Deserialize, Deserializer};

use crate::runtime::config::{
    load, parse_toml, parse_yaml, read_file, ConfigError, Properties, PropertyValue,
    PRODUCER_ENV_PREFIX,
};

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
        Self::from_value(value, &origin, env)
    }

    /// Parses YAML text; `origin` names it in errors.
    pub fn from_yaml_str<K: AsRef<str>, V: AsRef<str>>(
        text: &str,
        origin: &str,
        env: impl IntoIterator<Item = (K, V)>,
    ) -> Result<Self, ConfigError> {
        Self::from_value(parse_yaml(text, origin)?, origin, env)
    }

    /// Parses TOML text; `origin` names it in errors.
    ///
    /// ```
    /// use kafka_tower::runtime::ProducerConfig;
    ///
    /// let toml = "acks = 1\ntransactional_id = \"orders-1\"\n[properties]\n\"bootstrap.servers\" = \"127.0.0.1:9092\"\n";
    /// let env = [("KAFKA_TOWER_PRODUCER_ACKS", "all")];
    /// let config = ProducerConfig::from_toml_str(toml, "producer.toml", env).unwrap();
    /// assert_eq!(config.acks.as_deref(), Some("all"));
    /// assert_eq!(config.transactional_id.as_deref(), Some("orders-1"));
    /// ```
    pub fn from_toml_str<K: AsRef<str>, V: AsRef<str>>(
        text: &str,
        origin: &str,
        env: impl IntoIterator<Item = (K, V)>,
    ) -> Result<Self, ConfigError> {
        Self::from_value(parse_toml(text, origin)?, origin, env)
    }

    /// Applies the environment to a parsed file, then validates.
    fn from_value<K: AsRef<str>, V: AsRef<str>>(
        value: serde_json::Value,
        origin: &str,
        env: impl IntoIterator<Item = (K, V)>,
    ) -> Result<Self, ConfigError> {
        let config: ProducerConfig =
            load(value, origin, env, PRODUCER_ENV_PREFIX, PRODUCER_FIELDS)?;
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
