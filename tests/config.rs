//! `ConsumerConfig` loading: YAML, TOML, files, defaults, environment
//! overrides (always passed explicitly: the process environment is never
//! touched), validation errors, secret redaction, and the retry and
//! dead-letter policies.
#![cfg(feature = "runtime")]

use std::path::{Path, PathBuf};
use std::time::Duration;

use kafka_tower::runtime::{
    BatchSettings, ConsumerConfig, DeadLetterPolicy, Ordering, ProducerConfig, PropertyValue,
    RetryPolicy,
};

const NO_ENV: [(&str, &str); 0] = [];

/// The example of the module docs, every field set.
const FULL_YAML: &str = "\
group_id: orders-service
topics: [orders, payments]
service_id: orders-worker
max_in_flight: 32
buffer_per_partition: 128
ordering: key
commit_interval: 250ms
drain_timeout: 2s
retry:
  max_attempts: 5
  initial_backoff: 100ms
  max_backoff: 1m 30s
  multiplier: 3.0
  hold: 10m
dead_letter:
  enabled: true
  suffix: .failed
  max_error_len: 512
  producer_properties:
    linger.ms: 5
batch:
  max_batch: 200
  max_delay: 20ms
properties:
  bootstrap.servers: 127.0.0.1:9092
  auto.offset.reset: earliest
  fetch.min.bytes: 1024
  enable.partition.eof: false
";

const FULL_TOML: &str = r#"
group_id = "orders-service"
topics = ["orders", "payments"]
service_id = "orders-worker"
max_in_flight = 32
buffer_per_partition = 128
ordering = "key"
commit_interval = "250ms"
drain_timeout = "2s"

[retry]
max_attempts = 5
initial_backoff = "100ms"
max_backoff = "1m 30s"
multiplier = 3
hold = "10m"

[dead_letter]
enabled = true
suffix = ".failed"
max_error_len = 512
producer_properties = { "linger.ms" = 5 }

[batch]
max_batch = 200
max_delay = "20ms"

[properties]
"bootstrap.servers" = "127.0.0.1:9092"
"auto.offset.reset" = "earliest"
"fetch.min.bytes" = 1024
"enable.partition.eof" = false
"#;

/// The smallest valid file.
const MINIMAL_YAML: &str =
    "group_id: g\ntopics: [orders]\nproperties:\n  bootstrap.servers: 127.0.0.1:9092\n";

fn prop(config: &ConsumerConfig, name: &str) -> Option<String> {
    config.properties.get(name).map(|v| v.0.clone())
}

fn yaml(text: &str) -> ConsumerConfig {
    ConsumerConfig::from_yaml_str(text, "test.yml", NO_ENV).unwrap_or_else(|e| panic!("{e}"))
}

fn yaml_env(text: &str, env: &[(&str, &str)]) -> ConsumerConfig {
    ConsumerConfig::from_yaml_str(text, "test.yml", env.iter().copied())
        .unwrap_or_else(|e| panic!("{e}"))
}

/// A directory of its own under the system temp dir, removed on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn new() -> Self {
        let dir =
            std::env::temp_dir().join(format!("kafka-tower-config-test-{}", uuid::Uuid::new_v4()));
        std::fs::create_dir_all(&dir).unwrap();
        TempDir(dir)
    }

    fn write(&self, name: &str, text: &str) -> PathBuf {
        let path = self.0.join(name);
        std::fs::write(&path, text).unwrap();
        path
    }

    fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

// ---------------------------------------------------------------------------
// Parsing
// ---------------------------------------------------------------------------

fn assert_full(config: &ConsumerConfig) {
    assert_eq!(config.group_id, "orders-service");
    assert_eq!(config.topics, ["orders", "payments"]);
    assert_eq!(config.service_id, "orders-worker");
    assert_eq!(config.max_in_flight, 32);
    assert_eq!(config.buffer_per_partition, 128);
    assert_eq!(config.ordering, Ordering::Key);
    assert_eq!(config.commit_interval, Duration::from_millis(250));
    assert_eq!(config.drain_timeout, Duration::from_secs(2));
    assert_eq!(
        config.retry,
        RetryPolicy {
            max_attempts: 5,
            initial_backoff: Duration::from_millis(100),
            max_backoff: Duration::from_secs(90),
            multiplier: 3.0,
            hold: Duration::from_secs(600),
        }
    );
    assert!(config.dead_letter.enabled);
    assert_eq!(config.dead_letter.suffix, ".failed");
    assert_eq!(config.dead_letter.topic, None);
    assert_eq!(config.dead_letter.max_error_len, 512);
    assert_eq!(
        config.dead_letter.producer_properties.get("linger.ms"),
        Some(&PropertyValue::from("5"))
    );
    assert_eq!(
        prop(config, "bootstrap.servers").as_deref(),
        Some("127.0.0.1:9092")
    );
    assert_eq!(
        prop(config, "auto.offset.reset").as_deref(),
        Some("earliest")
    );
    // Numbers and booleans written unquoted reach librdkafka as strings.
    assert_eq!(prop(config, "fetch.min.bytes").as_deref(), Some("1024"));
    assert_eq!(
        prop(config, "enable.partition.eof").as_deref(),
        Some("false")
    );
    assert_eq!(
        config.batch,
        BatchSettings {
            max_batch: 200,
            max_delay: Duration::from_millis(20),
        }
    );
    assert_eq!(config.properties.len(), 4);
}

#[test]
fn yaml_with_every_field() {
    assert_full(&yaml(FULL_YAML));
}

#[test]
fn toml_with_every_field_equals_yaml() {
    let toml = ConsumerConfig::from_toml_str(FULL_TOML, "test.toml", NO_ENV)
        .unwrap_or_else(|e| panic!("{e}"));
    assert_full(&toml);
    assert_eq!(toml, yaml(FULL_YAML));
}

#[test]
fn minimal_config_has_the_defaults() {
    let config = yaml(MINIMAL_YAML);
    let mut expected = ConsumerConfig::new("g", ["orders"]);
    expected
        .properties
        .insert("bootstrap.servers".into(), "127.0.0.1:9092".into());
    assert_eq!(config, expected);

    assert_eq!(config.service_id, "kafka-tower");
    assert_eq!(config.max_in_flight, 64);
    assert_eq!(config.buffer_per_partition, 256);
    assert_eq!(config.ordering, Ordering::Partition);
    assert_eq!(config.commit_interval, Duration::from_secs(1));
    assert_eq!(config.drain_timeout, Duration::from_secs(30));
    assert_eq!(config.retry, RetryPolicy::default());
    assert_eq!(config.retry.max_attempts, 4);
    assert_eq!(config.retry.initial_backoff, Duration::from_millis(200));
    assert_eq!(config.retry.max_backoff, Duration::from_secs(30));
    assert_eq!(config.retry.multiplier, 2.0);
    assert_eq!(config.retry.hold, Duration::from_secs(300));
    assert_eq!(RetryPolicy::none().hold, Duration::ZERO);
    assert_eq!(config.dead_letter, DeadLetterPolicy::default());
    assert!(config.dead_letter.enabled);
    assert_eq!(config.dead_letter.suffix, ".dlq");
    assert_eq!(config.dead_letter.topic, None);
    assert_eq!(config.dead_letter.max_error_len, 1024);
    assert!(config.dead_letter.producer_properties.is_empty());
    assert_eq!(config.batch.max_batch, 500);
    assert_eq!(config.batch.max_delay, Duration::ZERO);
    config.validate().unwrap();
}

#[test]
fn an_empty_batch_fails_naming_the_key() {
    let err = ConsumerConfig::from_yaml_str(
        &format!("{MINIMAL_YAML}batch:\n  max_batch: 0\n"),
        "test.yml",
        NO_ENV,
    )
    .unwrap_err();
    let text = err.to_string();
    assert!(text.contains("batch.max_batch"), "{text}");
    assert!(text.contains("test.yml"), "{text}");
}

/// A section given partly keeps the defaults of the rest.
#[test]
fn partial_sections_keep_their_defaults() {
    let config = yaml(&format!(
        "{MINIMAL_YAML}retry:\n  max_attempts: 2\ndead_letter:\n  topic: all.failures\n"
    ));
    assert_eq!(
        config.retry,
        RetryPolicy {
            max_attempts: 2,
            ..RetryPolicy::default()
        }
    );
    assert_eq!(config.dead_letter.topic.as_deref(), Some("all.failures"));
    assert_eq!(config.dead_letter.suffix, ".dlq");
}

#[test]
fn humantime_durations() {
    for (text, expected) in [
        ("250ms", Duration::from_millis(250)),
        ("2s", Duration::from_secs(2)),
        ("1m 30s", Duration::from_secs(90)),
        ("1h", Duration::from_secs(3600)),
        ("1s 500ms", Duration::from_millis(1500)),
    ] {
        let config = yaml(&format!(
            "{MINIMAL_YAML}commit_interval: {text}\ndrain_timeout: {text}\nretry:\n  initial_backoff: {text}\n  max_backoff: {text}\n"
        ));
        assert_eq!(config.commit_interval, expected, "{text}");
        assert_eq!(config.drain_timeout, expected, "{text}");
        assert_eq!(config.retry.initial_backoff, expected, "{text}");
        assert_eq!(config.retry.max_backoff, expected, "{text}");
    }
}

#[test]
fn bad_duration_fails_naming_the_key() {
    for bad in ["250", "soon", "-1s", "2 parsecs"] {
        let err = ConsumerConfig::from_yaml_str(
            &format!("{MINIMAL_YAML}drain_timeout: {bad}\n"),
            "test.yml",
            NO_ENV,
        )
        .unwrap_err();
        assert_eq!(err.key(), Some("drain_timeout"), "{bad}: {err}");
        assert!(err.to_string().contains("test.yml"), "{err}");
    }
}

// ---------------------------------------------------------------------------
// Files
// ---------------------------------------------------------------------------

#[test]
fn loads_yaml_and_toml_files_by_extension() {
    let dir = TempDir::new();
    let from_yml =
        ConsumerConfig::from_file_with_env(dir.write("consumer.yml", FULL_YAML), NO_ENV).unwrap();
    let from_yaml =
        ConsumerConfig::from_file_with_env(dir.write("consumer.yaml", FULL_YAML), NO_ENV).unwrap();
    let from_toml =
        ConsumerConfig::from_file_with_env(dir.write("consumer.toml", FULL_TOML), NO_ENV).unwrap();
    assert_full(&from_yml);
    assert_eq!(from_yaml, from_yml);
    assert_eq!(from_toml, from_yml);
}

#[test]
fn file_with_env_overrides() {
    let dir = TempDir::new();
    let env = [
        ("KAFKA_TOWER_GROUP_ID", "from-env"),
        ("KAFKA_TOWER_RETRY__MAX_ATTEMPTS", "7"),
        ("UNRELATED_VARIABLE", "ignored"),
    ];
    for (name, text) in [("c.yml", FULL_YAML), ("c.toml", FULL_TOML)] {
        let config = ConsumerConfig::from_file_with_env(dir.write(name, text), env).unwrap();
        assert_eq!(config.group_id, "from-env", "{name}");
        assert_eq!(config.retry.max_attempts, 7, "{name}");
        assert_eq!(config.topics, ["orders", "payments"], "{name}");
    }
}

#[test]
fn unreadable_or_unknown_files_fail_naming_the_file() {
    let dir = TempDir::new();
    let missing = dir.path().join("absent.yml");
    let err = ConsumerConfig::from_file_with_env(&missing, NO_ENV).unwrap_err();
    assert_eq!(err.origin(), missing.display().to_string());
    assert!(
        err.to_string().contains(&missing.display().to_string()),
        "{err}"
    );

    for name in ["consumer.json", "consumer", "consumer.yml.bak"] {
        let path = dir.write(name, MINIMAL_YAML);
        let err = ConsumerConfig::from_file_with_env(&path, NO_ENV).unwrap_err();
        assert!(
            err.to_string().contains(&path.display().to_string()),
            "{err}"
        );
        assert!(err.message().contains("extension"), "{err}");
    }
}

#[test]
fn syntax_errors_fail_naming_the_file() {
    let dir = TempDir::new();
    let yml = dir.write("broken.yml", "group_id: [\n");
    let err = ConsumerConfig::from_file_with_env(&yml, NO_ENV).unwrap_err();
    assert!(
        err.to_string().contains(&yml.display().to_string()),
        "{err}"
    );
    assert!(err.message().contains("YAML"), "{err}");

    let toml = dir.write("broken.toml", "group_id = \n");
    let err = ConsumerConfig::from_file_with_env(&toml, NO_ENV).unwrap_err();
    assert!(
        err.to_string().contains(&toml.display().to_string()),
        "{err}"
    );
    assert!(err.message().contains("TOML"), "{err}");
    assert!(err.message().contains("line 1"), "{err}");
}

#[test]
fn unknown_top_level_key_fails_naming_key_and_file() {
    let dir = TempDir::new();
    let cases = [
        ("typo.yml", format!("{MINIMAL_YAML}max_inflight: 3\n")),
        ("typo.toml", format!("max_inflight = 3\n{}", toml_minimal())),
    ];
    for (name, text) in cases {
        let path = dir.write(name, &text);
        let err = ConsumerConfig::from_file_with_env(&path, NO_ENV).unwrap_err();
        let shown = err.to_string();
        assert_eq!(err.key(), Some("max_inflight"), "{shown}");
        assert!(shown.contains("max_inflight"), "{shown}");
        assert!(shown.contains(&path.display().to_string()), "{shown}");
    }
}

#[test]
fn unknown_nested_key_fails_naming_key_and_file() {
    let dir = TempDir::new();
    let cases = [
        (
            "nested.yml",
            format!("{MINIMAL_YAML}retry:\n  max_attemps: 3\n"),
            "retry.max_attemps",
        ),
        (
            "nested.toml",
            format!("{}[retry]\nmax_attemps = 3\n", toml_minimal()),
            "retry.max_attemps",
        ),
        (
            "dl.yml",
            format!("{MINIMAL_YAML}dead_letter:\n  sufix: .x\n"),
            "dead_letter.sufix",
        ),
    ];
    for (name, text, key) in cases {
        let path = dir.write(name, &text);
        let err = ConsumerConfig::from_file_with_env(&path, NO_ENV).unwrap_err();
        let shown = err.to_string();
        assert_eq!(err.key(), Some(key), "{shown}");
        assert!(shown.contains(key), "{shown}");
        assert!(shown.contains(&path.display().to_string()), "{shown}");
    }
}

fn toml_minimal() -> String {
    "group_id = \"g\"\ntopics = [\"orders\"]\n[properties]\n\"bootstrap.servers\" = \"127.0.0.1:9092\"\n".to_owned()
}

#[test]
fn minimal_toml_equals_minimal_yaml() {
    let toml = ConsumerConfig::from_toml_str(&toml_minimal(), "t.toml", NO_ENV).unwrap();
    assert_eq!(toml, yaml(MINIMAL_YAML));
}

// ---------------------------------------------------------------------------
// Environment
// ---------------------------------------------------------------------------

#[test]
fn env_overrides_file_values() {
    let env = [
        ("KAFKA_TOWER_GROUP_ID", "env-group"),
        ("KAFKA_TOWER_TOPICS", "a,b"),
        ("KAFKA_TOWER_RETRY__MAX_ATTEMPTS", "7"),
        (
            "KAFKA_TOWER_PROPERTIES__BOOTSTRAP_SERVERS",
            "broker-1:9093,broker-2:9093",
        ),
        ("KAFKA_TOWER_DEAD_LETTER__SUFFIX", "-dead"),
        ("PATH", "/usr/bin"),
        (
            "kafka_tower_group_id",
            "lower-case prefix is not the prefix",
        ),
    ];
    for config in [
        ConsumerConfig::from_yaml_str(FULL_YAML, "c.yml", env).unwrap(),
        ConsumerConfig::from_toml_str(FULL_TOML, "c.toml", env).unwrap(),
    ] {
        assert_eq!(config.group_id, "env-group");
        assert_eq!(config.topics, ["a", "b"]);
        assert_eq!(config.retry.max_attempts, 7);
        assert_eq!(
            prop(&config, "bootstrap.servers").as_deref(),
            Some("broker-1:9093,broker-2:9093")
        );
        assert_eq!(config.dead_letter.suffix, "-dead");
        assert_eq!(config.dead_letter.topic_for("a").as_deref(), Some("a-dead"));
        // Untouched values stay as in the file.
        assert_eq!(config.retry.initial_backoff, Duration::from_millis(100));
        assert_eq!(config.max_in_flight, 32);
        assert_eq!(
            prop(&config, "auto.offset.reset").as_deref(),
            Some("earliest")
        );
    }
}

#[test]
fn env_alone_is_a_configuration() {
    let env = [
        ("KAFKA_TOWER_GROUP_ID", "g"),
        ("KAFKA_TOWER_TOPICS", " a , b ,, c "),
        ("KAFKA_TOWER_PROPERTIES__BOOTSTRAP_SERVERS", "h:9092"),
        ("KAFKA_TOWER_PROPERTIES__AUTO_OFFSET_RESET", "earliest"),
    ];
    for config in [
        ConsumerConfig::from_yaml_str("", "empty.yml", env).unwrap(),
        ConsumerConfig::from_toml_str("", "empty.toml", env).unwrap(),
    ] {
        assert_eq!(config.topics, ["a", "b", "c"]);
        assert_eq!(
            prop(&config, "bootstrap.servers").as_deref(),
            Some("h:9092")
        );
        assert_eq!(
            prop(&config, "auto.offset.reset").as_deref(),
            Some("earliest")
        );
    }
}

/// Every scalar field can be set from a variable, with the value's type.
#[test]
fn every_scalar_field_can_be_set_from_the_environment() {
    let config = yaml_env(
        MINIMAL_YAML,
        &[
            ("KAFKA_TOWER_SERVICE_ID", "svc"),
            ("KAFKA_TOWER_MAX_IN_FLIGHT", "3"),
            ("KAFKA_TOWER_BUFFER_PER_PARTITION", "4"),
            ("KAFKA_TOWER_ORDERING", "key"),
            ("KAFKA_TOWER_COMMIT_INTERVAL", "250ms"),
            ("KAFKA_TOWER_DRAIN_TIMEOUT", "2s"),
            ("KAFKA_TOWER_RETRY__INITIAL_BACKOFF", "50ms"),
            ("KAFKA_TOWER_RETRY__MAX_BACKOFF", "5s"),
            ("KAFKA_TOWER_RETRY__MULTIPLIER", "1.5"),
            ("KAFKA_TOWER_DEAD_LETTER__ENABLED", "false"),
            ("KAFKA_TOWER_DEAD_LETTER__TOPIC", "failures"),
            ("KAFKA_TOWER_DEAD_LETTER__MAX_ERROR_LEN", "99"),
            (
                "KAFKA_TOWER_DEAD_LETTER__PRODUCER_PROPERTIES__LINGER_MS",
                "7",
            ),
            ("KAFKA_TOWER_CONTEXT__CAPTURE", "false"),
            ("KAFKA_TOWER_BATCH__MAX_BATCH", "9"),
            ("KAFKA_TOWER_BATCH__MAX_DELAY", "15ms"),
        ],
    );
    assert_eq!(config.service_id, "svc");
    assert_eq!(config.max_in_flight, 3);
    assert_eq!(config.buffer_per_partition, 4);
    assert_eq!(config.ordering, Ordering::Key);
    assert_eq!(config.commit_interval, Duration::from_millis(250));
    assert_eq!(config.drain_timeout, Duration::from_secs(2));
    assert_eq!(config.retry.initial_backoff, Duration::from_millis(50));
    assert_eq!(config.retry.max_backoff, Duration::from_secs(5));
    assert_eq!(config.retry.multiplier, 1.5);
    assert!(!config.dead_letter.enabled);
    assert_eq!(config.dead_letter.topic.as_deref(), Some("failures"));
    assert_eq!(config.dead_letter.max_error_len, 99);
    assert_eq!(
        config.dead_letter.producer_properties.get("linger.ms"),
        Some(&PropertyValue::from("7"))
    );
    assert!(!config.context.capture);
    assert_eq!(config.batch.max_batch, 9);
    assert_eq!(config.batch.max_delay, Duration::from_millis(15));
}

/// A string field takes the variable verbatim, even when it looks like a
/// number or a boolean.
#[test]
fn env_string_fields_are_taken_verbatim() {
    let config = yaml_env(
        MINIMAL_YAML,
        &[
            ("KAFKA_TOWER_GROUP_ID", "2024"),
            ("KAFKA_TOWER_SERVICE_ID", "true"),
            ("KAFKA_TOWER_TOPICS", "1,2"),
            ("KAFKA_TOWER_DEAD_LETTER__TOPIC", "404"),
            ("KAFKA_TOWER_PROPERTIES__FETCH_MIN_BYTES", "1"),
        ],
    );
    assert_eq!(config.group_id, "2024");
    assert_eq!(config.service_id, "true");
    assert_eq!(config.topics, ["1", "2"]);
    assert_eq!(config.dead_letter.topic.as_deref(), Some("404"));
    assert_eq!(prop(&config, "fetch.min.bytes").as_deref(), Some("1"));

    let config = yaml_env(MINIMAL_YAML, &[("KAFKA_TOWER_DEAD_LETTER__SUFFIX", "-1")]);
    assert_eq!(
        config.dead_letter.topic_for("orders").as_deref(),
        Some("orders-1")
    );
}

#[test]
fn unknown_env_var_fails_naming_the_variable() {
    for var in [
        "KAFKA_TOWER_BOGUS",
        "KAFKA_TOWER_MAX_INFLIGHT",
        "KAFKA_TOWER_RETRY__MAX_ATTEMPS",
        "KAFKA_TOWER_DEAD_LETTER__SUFIX",
        "KAFKA_TOWER_NOPE__X",
        "KAFKA_TOWER_RETRY",
        "KAFKA_TOWER_PROPERTIES",
        "KAFKA_TOWER_TOPICS__X",
    ] {
        let err =
            ConsumerConfig::from_yaml_str(MINIMAL_YAML, "test.yml", [(var, "1")]).unwrap_err();
        let shown = err.to_string();
        assert!(shown.contains(var), "{var}: {shown}");
        assert!(err.origin().contains(var), "{var}: {err:?}");
    }
}

#[test]
fn the_projects_own_tooling_variables_are_not_overrides() {
    for var in kafka_tower::runtime::TOOLING_ENV_VARS {
        let config = ConsumerConfig::from_yaml_str(MINIMAL_YAML, "test.yml", [(*var, "/x")])
            .unwrap_or_else(|e| panic!("{var} broke the consumer loader: {e}"));
        assert_eq!(config, yaml_env(MINIMAL_YAML, &[]));
        ProducerConfig::from_yaml_str(
            "properties:\n  bootstrap.servers: 127.0.0.1:9092\n",
            "producer.yml",
            [(*var, "/x")],
        )
        .unwrap_or_else(|e| panic!("{var} broke the producer loader: {e}"));
    }
    // A misspelling of one is still an error naming it.
    let err = ConsumerConfig::from_yaml_str(
        MINIMAL_YAML,
        "test.yml",
        [("KAFKA_TOWER_BROKER_DIRS", "/x")],
    )
    .unwrap_err();
    assert!(err.to_string().contains("KAFKA_TOWER_BROKER_DIRS"), "{err}");
}

#[test]
fn producer_and_consumer_overrides_do_not_interfere() {
    let env = [
        ("KAFKA_TOWER_PRODUCER_PROPERTIES__LINGER_MS", "7"),
        ("KAFKA_TOWER_RETRY__MAX_ATTEMPTS", "9"),
    ];
    let consumer = ConsumerConfig::from_yaml_str(MINIMAL_YAML, "test.yml", env).unwrap();
    assert_eq!(consumer.retry.max_attempts, 9);
    assert!(!consumer.properties.contains_key("linger.ms"));
    let producer = ProducerConfig::from_yaml_str(
        "properties:\n  bootstrap.servers: 127.0.0.1:9092\n",
        "producer.yml",
        env,
    )
    .unwrap();
    assert_eq!(
        producer.properties.get("linger.ms").map(|v| v.0.as_str()),
        Some("7")
    );
}

/// A value of the wrong type in a variable: the error names the key and the
/// variable.
#[test]
fn bad_env_value_fails_naming_the_key_and_variable() {
    for (var, value, key) in [
        ("KAFKA_TOWER_MAX_IN_FLIGHT", "many", "max_in_flight"),
        ("KAFKA_TOWER_MAX_IN_FLIGHT", "-1", "max_in_flight"),
        ("KAFKA_TOWER_RETRY__MULTIPLIER", "fast", "retry.multiplier"),
        (
            "KAFKA_TOWER_DEAD_LETTER__ENABLED",
            "yes please",
            "dead_letter.enabled",
        ),
        ("KAFKA_TOWER_DRAIN_TIMEOUT", "30", "drain_timeout"),
    ] {
        let err =
            ConsumerConfig::from_yaml_str(MINIMAL_YAML, "test.yml", [(var, value)]).unwrap_err();
        assert_eq!(err.key(), Some(key), "{err}");
        assert!(err.to_string().contains(var), "{err}");
    }

    let err = ConsumerConfig::from_yaml_str(
        MINIMAL_YAML,
        "test.yml",
        [("KAFKA_TOWER_RETRY__MAX_ATTEMPTS", "0")],
    )
    .unwrap_err();
    assert_eq!(err.key(), Some("retry.max_attempts"), "{err}");
}

// ---------------------------------------------------------------------------
// Validation
// ---------------------------------------------------------------------------

#[test]
fn invalid_values_fail_naming_the_key() {
    let with_props = |extra_props: &str, rest: &str| {
        format!("group_id: g\ntopics: [orders]\n{rest}properties:\n  bootstrap.servers: h:9092\n{extra_props}")
    };
    let cases: Vec<(String, &str)> = vec![
        (with_props("", "max_in_flight: 0\n"), "max_in_flight"),
        (
            with_props("", "buffer_per_partition: 0\n"),
            "buffer_per_partition",
        ),
        (with_props("", "commit_interval: 0s\n"), "commit_interval"),
        (
            "group_id: g\ntopics: [\"bad topic\"]\nproperties:\n  bootstrap.servers: h\n".into(),
            "topics",
        ),
        (
            "group_id: g\ntopics: [orders, \"a/b\"]\nproperties:\n  bootstrap.servers: h\n".into(),
            "topics",
        ),
        (
            "group_id: g\ntopics: []\nproperties:\n  bootstrap.servers: h\n".into(),
            "topics",
        ),
        (
            "group_id: \" \"\ntopics: [orders]\nproperties:\n  bootstrap.servers: h\n".into(),
            "group_id",
        ),
        (
            with_props("", "retry:\n  multiplier: 0.5\n"),
            "retry.multiplier",
        ),
        (
            with_props("", "retry:\n  max_attempts: 0\n"),
            "retry.max_attempts",
        ),
        (
            with_props("", "retry:\n  initial_backoff: 1m\n  max_backoff: 1s\n"),
            "retry.initial_backoff",
        ),
        (
            "group_id: g\ntopics: [orders]\n".into(),
            "properties.bootstrap.servers",
        ),
        (
            "group_id: g\ntopics: [orders]\nproperties:\n  client.id: x\n".into(),
            "properties.bootstrap.servers",
        ),
        (
            with_props("  enable.auto.commit: true\n", ""),
            "properties.enable.auto.commit",
        ),
        (
            with_props("  enable.auto.offset.store: false\n", ""),
            "properties.enable.auto.offset.store",
        ),
        (with_props("  group.id: other\n", ""), "properties.group.id"),
        (
            with_props("  enable.partition.eof: true\n", ""),
            "properties.enable.partition.eof",
        ),
        (
            with_props("", "dead_letter:\n  suffix: \"\"\n"),
            "dead_letter.suffix",
        ),
        (
            with_props("", "dead_letter:\n  suffix: \" dlq\"\n"),
            "dead_letter.suffix",
        ),
        (
            with_props("", "dead_letter:\n  topic: \"no good\"\n"),
            "dead_letter.topic",
        ),
        (with_props("", "ordering: random\n"), "ordering"),
        (with_props("", "max_in_flight: -1\n"), "max_in_flight"),
    ];
    for (text, key) in cases {
        let err = ConsumerConfig::from_yaml_str(&text, "bad.yml", NO_ENV).unwrap_err();
        let shown = err.to_string();
        assert_eq!(err.key(), Some(key), "{shown}\n--- for ---\n{text}");
        assert!(shown.contains(key), "{shown}");
        assert!(shown.contains("bad.yml"), "{shown}");
    }
}

#[test]
fn missing_required_fields_fail() {
    for (text, field) in [
        (
            "topics: [orders]\nproperties:\n  bootstrap.servers: h\n",
            "group_id",
        ),
        (
            "group_id: g\nproperties:\n  bootstrap.servers: h\n",
            "topics",
        ),
    ] {
        let err = ConsumerConfig::from_yaml_str(text, "missing.yml", NO_ENV).unwrap_err();
        assert!(err.message().contains(field), "{err}");
        assert!(err.to_string().contains("missing.yml"), "{err}");
    }
}

/// Dead-lettering disabled: the suffix is irrelevant.
#[test]
fn empty_suffix_is_fine_when_dead_lettering_is_disabled_or_a_topic_is_set() {
    let config = yaml(&format!(
        "{MINIMAL_YAML}dead_letter:\n  enabled: false\n  suffix: \"\"\n"
    ));
    assert_eq!(config.dead_letter.topic_for("orders"), None);
    let config = yaml(&format!(
        "{MINIMAL_YAML}dead_letter:\n  topic: failures\n  suffix: \"\"\n"
    ));
    assert_eq!(
        config.dead_letter.topic_for("orders").as_deref(),
        Some("failures")
    );
}

#[test]
fn validate_checks_a_config_built_in_code() {
    let mut config = ConsumerConfig::new("g", ["orders"]);
    let err = config.validate().unwrap_err();
    assert_eq!(err.key(), Some("properties.bootstrap.servers"));
    config
        .properties
        .insert("bootstrap.servers".into(), "h:9092".into());
    config.validate().unwrap();
    config.max_in_flight = 0;
    assert_eq!(config.validate().unwrap_err().key(), Some("max_in_flight"));
}

// ---------------------------------------------------------------------------
// Secrets
// ---------------------------------------------------------------------------

const SECRETS: [&str; 4] = [
    "hunter2-sasl",
    "hunter2-ssl",
    "hunter2-oauth",
    "hunter2-producer",
];

#[test]
fn secrets_never_appear_in_debug() {
    let text = format!(
        "{MINIMAL_YAML}  security.protocol: SASL_SSL\n  sasl.mechanism: PLAIN\n  sasl.username: alice\n  \
         sasl.password: {}\n  ssl.key.password: {}\n  sasl.oauthbearer.client.secret: {}\n\
         dead_letter:\n  producer_properties:\n    sasl.password: {}\n    linger.ms: 5\n",
        SECRETS[0], SECRETS[1], SECRETS[2], SECRETS[3]
    );
    let config = yaml(&text);
    assert_eq!(
        prop(&config, "sasl.password").as_deref(),
        Some(SECRETS[0]),
        "kept for librdkafka"
    );
    let shown = format!("{config:?}");
    let pretty = format!("{config:#?}");
    for secret in SECRETS {
        assert!(!shown.contains(secret), "{secret} in {shown}");
        assert!(!pretty.contains(secret), "{secret} in {pretty}");
    }
    for visible in [
        "127.0.0.1:9092",
        "SASL_SSL",
        "PLAIN",
        "alice",
        "sasl.password",
        "linger.ms",
        "orders",
    ] {
        assert!(shown.contains(visible), "{visible} missing from {shown}");
    }
}

#[test]
fn secrets_from_env_never_appear_in_debug() {
    let config = yaml_env(
        MINIMAL_YAML,
        &[
            ("KAFKA_TOWER_PROPERTIES__SASL_PASSWORD", "hunter2-env"),
            ("KAFKA_TOWER_PROPERTIES__SASL_USERNAME", "bob"),
        ],
    );
    assert_eq!(
        prop(&config, "sasl.password").as_deref(),
        Some("hunter2-env")
    );
    let shown = format!("{config:?}");
    assert!(!shown.contains("hunter2-env"), "{shown}");
    assert!(shown.contains("bob"), "{shown}");
}

/// A configuration error names the key but never quotes a secret value,
/// whatever the mistake around it.
#[test]
fn errors_never_quote_secret_values() {
    let cases = [
        // TOML: an unquoted dotted name makes a table, not a property.
        (
            "c.toml",
            format!("{}sasl.password = \"hunter2-a\"\n", toml_minimal()),
        ),
        // TOML: a syntax error on the secret's line.
        (
            "c.toml",
            format!("{}\"sasl.password\" = hunter2-b\n", toml_minimal()),
        ),
        // YAML: a list or a map where a property value belongs.
        (
            "c.yml",
            format!("{MINIMAL_YAML}  sasl.password: [hunter2-c]\n"),
        ),
        (
            "c.yml",
            format!("{MINIMAL_YAML}  sasl.password: {{ v: hunter2-d }}\n"),
        ),
        // A bad value elsewhere while secrets are set.
        (
            "c.yml",
            format!("{MINIMAL_YAML}  sasl.password: hunter2-e\nmax_in_flight: 0\n"),
        ),
    ];
    let dir = TempDir::new();
    for (name, text) in cases {
        let path = dir.write(name, &text);
        let err = ConsumerConfig::from_file_with_env(&path, NO_ENV).unwrap_err();
        let all = format!("{err} {err:?}");
        assert!(!all.contains("hunter2"), "secret quoted: {all}");
        assert!(all.contains(&path.display().to_string()), "{all}");
    }
}

// ---------------------------------------------------------------------------
// Retry and dead-letter policies
// ---------------------------------------------------------------------------

#[test]
fn base_delay_grows_by_the_multiplier_and_is_capped() {
    let policy = RetryPolicy::default(); // 200ms × 2, capped at 30s
    let expected_ms = [
        200, 200, 400, 800, 1_600, 3_200, 6_400, 12_800, 25_600, 30_000, 30_000,
    ];
    for (attempt, ms) in expected_ms.into_iter().enumerate() {
        assert_eq!(
            policy.base_delay(attempt as u32),
            Duration::from_millis(ms),
            "attempt {attempt}"
        );
    }
    assert_eq!(policy.base_delay(1_000), Duration::from_secs(30));
    assert_eq!(policy.base_delay(u32::MAX), Duration::from_secs(30));

    let policy = RetryPolicy {
        max_attempts: 10,
        initial_backoff: Duration::from_millis(100),
        max_backoff: Duration::from_secs(1),
        multiplier: 1.5,
        ..RetryPolicy::default()
    };
    let mut previous = Duration::ZERO;
    for attempt in 1..=20 {
        let d = policy.base_delay(attempt);
        let uncapped = 0.1 * 1.5f64.powi(attempt as i32 - 1);
        let want = uncapped.min(1.0);
        assert!(
            (d.as_secs_f64() - want).abs() < 1e-8,
            "attempt {attempt}: {d:?} vs {want}"
        );
        assert!(d >= previous, "never shrinks");
        assert!(d <= policy.max_backoff);
        previous = d;
    }

    let constant = RetryPolicy {
        multiplier: 1.0,
        ..RetryPolicy::default()
    };
    for attempt in 1..50 {
        assert_eq!(constant.base_delay(attempt), Duration::from_millis(200));
    }

    let exp = RetryPolicy::exponential(3, Duration::from_secs(1), Duration::from_secs(3));
    assert_eq!(exp.max_attempts, 3);
    assert_eq!(exp.base_delay(1), Duration::from_secs(1));
    assert_eq!(exp.base_delay(2), Duration::from_secs(2));
    assert_eq!(exp.base_delay(3), Duration::from_secs(3));
    assert_eq!(RetryPolicy::none().max_attempts, 1);
}

#[test]
fn jittered_delay_stays_within_half_and_full_base() {
    let policy = RetryPolicy {
        max_attempts: 10,
        initial_backoff: Duration::from_millis(100),
        max_backoff: Duration::from_secs(2),
        multiplier: 3.0,
        ..RetryPolicy::default()
    };
    for attempt in 1..=5 {
        let base = policy.base_delay(attempt);
        let (mut lo, mut hi) = (Duration::MAX, Duration::ZERO);
        for _ in 0..2_000 {
            let d = policy.delay(attempt);
            assert!(
                d >= base / 2 && d <= base,
                "attempt {attempt}: {d:?} outside [{:?}, {base:?}]",
                base / 2
            );
            lo = lo.min(d);
            hi = hi.max(d);
        }
        // Jitter actually spreads the delays over the range.
        assert!(
            lo < base.mul_f64(0.6),
            "attempt {attempt}: lowest {lo:?} of {base:?}"
        );
        assert!(
            hi > base.mul_f64(0.9),
            "attempt {attempt}: highest {hi:?} of {base:?}"
        );
    }
}

#[test]
fn dead_letter_topic_for() {
    let default = DeadLetterPolicy::default();
    assert_eq!(default.topic_for("orders").as_deref(), Some("orders.dlq"));
    assert_eq!(
        DeadLetterPolicy::suffix("-failed")
            .topic_for("orders")
            .as_deref(),
        Some("orders-failed")
    );
    let single = DeadLetterPolicy {
        topic: Some("all.failures".into()),
        ..DeadLetterPolicy::default()
    };
    assert_eq!(single.topic_for("orders").as_deref(), Some("all.failures"));
    assert_eq!(
        single.topic_for("payments").as_deref(),
        Some("all.failures")
    );
    assert_eq!(DeadLetterPolicy::disabled().topic_for("orders"), None);
    let disabled_with_topic = DeadLetterPolicy {
        enabled: false,
        ..single
    };
    assert_eq!(disabled_with_topic.topic_for("orders"), None);
}

#[test]
fn producer_acks_may_be_a_bare_number_in_a_file() {
    use kafka_tower::runtime::ProducerConfig;
    let no_env: [(&str, &str); 0] = [];
    let c = ProducerConfig::from_yaml_str(
        "acks: 1\nproperties:\n  bootstrap.servers: b:9092\n",
        "producer.yml",
        no_env,
    )
    .expect("acks: 1 is valid");
    assert_eq!(c.acks.as_deref(), Some("1"));
    let err = ProducerConfig::from_yaml_str(
        "acks: 2\nproperties:\n  bootstrap.servers: b:9092\n",
        "producer.yml",
        no_env,
    )
    .unwrap_err();
    assert_eq!(err.key(), Some("acks"));
    let err = ProducerConfig::from_yaml_str(
        "ack: 1\nproperties:\n  bootstrap.servers: b:9092\n",
        "producer.yml",
        no_env,
    )
    .unwrap_err();
    assert!(err.to_string().contains("ack"), "{err}");
}

/// Every configuration type, with a secret in every property map, formats
/// without it: the maps are one type that redacts by key.
#[test]
fn no_configuration_type_prints_a_secret() {
    let secret = "hunter2-every-map";
    let mut dlq = DeadLetterPolicy::default();
    dlq.producer_properties
        .set("sasl.password", secret)
        .set("linger.ms", "5");
    let mut consumer = ConsumerConfig::new("g", ["orders"]);
    consumer
        .properties
        .set("bootstrap.servers", "127.0.0.1:9092")
        .set("sasl.password", secret)
        .set("ssl.key.pem", secret)
        .set("sasl.oauthbearer.client.secret", secret)
        .set("sasl.jaas.config", secret);
    consumer.dead_letter = dlq.clone();
    let mut producer = ProducerConfig::new("127.0.0.1:9092");
    producer
        .properties
        .set("sasl.password", secret)
        .set("ssl.keystore.password", secret);
    let builder = kafka_tower::Consumer::builder()
        .property("sasl.password", secret)
        .dead_letter(dlq.clone());
    let built = kafka_tower::Consumer::from_config(consumer.clone()).unwrap();
    let shown = [
        format!("{dlq:?}"),
        format!("{dlq:#?}"),
        format!("{consumer:?}"),
        format!("{consumer:#?}"),
        format!("{producer:?}"),
        format!("{producer:#?}"),
        format!("{builder:?}"),
        format!("{built:?}"),
        format!("{:?}", consumer.properties),
    ];
    for s in &shown {
        assert!(!s.contains(secret), "secret printed: {s}");
        assert!(s.contains("sasl.password"), "the key stays visible: {s}");
    }
    assert!(shown[0].contains("linger.ms") && shown[0].contains('5'));
}

/// `Properties::redact` removes every secret property's value from a text
/// (the runtime passes librdkafka's client-creation errors through it).
#[test]
fn redact_removes_secret_values_from_text() {
    let mut p = kafka_tower::runtime::Properties::new();
    p.set("sasl.password", "pw-123456")
        .set("ssl.key.location", "/keys/svc.pem")
        .set("sasl.username", "alice");
    let text =
        r#"Invalid value "pw-123456" for sasl.password; /keys/svc.pem unreadable; user alice"#;
    assert_eq!(
        p.redact(text),
        r#"Invalid value "<redacted>" for sasl.password; <redacted> unreadable; user alice"#
    );
}

/// A client that cannot be created fails with an error naming the
/// property, never quoting a secret.
#[tokio::test]
async fn client_creation_errors_name_the_property() {
    let secret = "/nonexistent/hunter2-key-path.pem";

    let mut producer = ProducerConfig::new("127.0.0.1:1");
    producer
        .properties
        .set("security.protocol", "SSL")
        .set("ssl.key.location", secret);
    let err = kafka_tower::runtime::Producer::new(producer)
        .unwrap_err()
        .to_string();
    assert!(err.contains("ssl.key.location"), "{err}");
    assert!(!err.contains("hunter2"), "secret quoted: {err}");

    let consumer = kafka_tower::Consumer::builder()
        .bootstrap_servers("127.0.0.1:1")
        .group_id("g")
        .topics(["t"])
        .property("security.protocol", "SSL")
        .property("ssl.key.location", secret)
        .dead_letter(DeadLetterPolicy::disabled())
        .build()
        .unwrap();
    let served = consumer
        .serve(
            tower::service_fn(|_r: http::Request<kafka_tower::RecordBody>| async {
                Ok::<_, std::convert::Infallible>(http::Response::new(String::new()))
            }),
            std::future::pending::<()>(),
        )
        .await;
    let err = served.unwrap_err();
    let text = format!("{err} {err:?}");
    assert!(text.contains("ssl.key.location"), "{text}");
    assert!(!text.contains("hunter2"), "secret quoted: {text}");
}

#[test]
fn a_configuration_error_stays_the_source_of_the_consumer_error() {
    use std::error::Error as _;
    let no_env: [(&str, &str); 0] = [];
    let bad = kafka_tower::runtime::ConsumerConfig::from_yaml_str(
        "group_id: g\ntopics: [t]\nretry:\n  max_attempts: many\n",
        "consumer.yml",
        no_env,
    )
    .unwrap_err();
    let shown = bad.to_string();
    let err = kafka_tower::ConsumerError::from(bad.clone());
    let source = err
        .source()
        .and_then(|s| s.downcast_ref::<kafka_tower::runtime::ConfigError>())
        .expect("the ConfigError itself, not its text");
    assert_eq!(source, &bad);
    assert_eq!(source.key(), Some("retry.max_attempts"));
    assert!(err.to_string().ends_with(&shown), "{err}");
}
