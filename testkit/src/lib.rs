//! Shared helpers of kafka-tower's integration tests (not published): a
//! real Apache Kafka broker, named by `KAFKA_BOOTSTRAP_SERVERS`
//! (`scripts/test` starts one) or, when that is unset, started by the first
//! test that needs it (see [`broker`]). Topics get unique names so that
//! tests run in parallel on one broker; waits are on conditions with a
//! deadline ([`WAIT`]), never bare sleeps.
#![allow(missing_docs)]

use std::collections::HashMap;
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use kafka_tower::runtime::{rdkafka_headers, record_from_message, RuntimeStats};
use kafka_tower::{
    BoxError, ConsumedRecord, Consumer, ConsumerBuilder, RawHeaders, RecordBody, RecordMeta,
};
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::consumer::{BaseConsumer, Consumer as _};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::{ClientConfig, Offset, TopicPartitionList};
use tokio::sync::watch;

/// How long any wait for the broker may take before the test fails.
pub const WAIT: Duration = Duration::from_secs(90);

/// The test broker's addresses (`KAFKA_BOOTSTRAP_SERVERS` and the other
/// `KAFKA_*` values `scripts/kafka.sh start` prints).
///
/// From the environment when `KAFKA_BOOTSTRAP_SERVERS` is set. Otherwise,
/// like testcontainers, the first test that asks starts the project's
/// broker (`scripts/kafka.sh`, in `target/kafka-auto`) and every test
/// binary of the run shares it: a lock file serialises the start, each
/// process registers itself, and a reaper stops the broker 30 s after the
/// last registered process has exited. Without Java or Maven the test fails
/// with one message saying what to install.
pub fn broker() -> &'static HashMap<String, String> {
    static BROKER: std::sync::OnceLock<HashMap<String, String>> = std::sync::OnceLock::new();
    BROKER.get_or_init(|| {
        if std::env::var_os("KAFKA_BOOTSTRAP_SERVERS").is_some() {
            return std::env::vars()
                .filter(|(k, _)| k.starts_with("KAFKA_"))
                .collect();
        }
        auto_service::start_or_join(&auto_service::BROKER).unwrap_or_else(|why| panic!("{why}"))
    })
}

pub fn bootstrap() -> String {
    broker_env("KAFKA_BOOTSTRAP_SERVERS")
}

fn broker_env(name: &str) -> String {
    broker().get(name).cloned().unwrap_or_else(|| {
        panic!("{name} is not set: `scripts/kafka.sh start` prints it (run `scripts/test`, or `cargo test` without KAFKA_BOOTSTRAP_SERVERS)")
    })
}

/// The Schema Registry of the tests (`SCHEMA_REGISTRY_URL`, the
/// Confluent-compatible API of `scripts/registry.sh`'s Apicurio Registry).
///
/// From the environment when set; otherwise the first test that asks starts
/// the project's registry in `target/registry-auto`, shared and reaped like
/// the broker of [`broker`]. It needs Java 21 or later.
pub fn registry_url() -> String {
    static URL: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    URL.get_or_init(|| {
        if let Ok(url) = std::env::var("SCHEMA_REGISTRY_URL") {
            return url;
        }
        auto_service::start_or_join(&auto_service::REGISTRY)
            .unwrap_or_else(|why| panic!("{why}"))
            .remove("SCHEMA_REGISTRY_URL")
            .expect("checked by start_or_join")
    })
    .clone()
}

/// The broker and registry `cargo test` starts for itself (see [`broker`]
/// and [`registry_url`]).
mod auto_service {
    use std::collections::HashMap;
    use std::fs::{self, File, OpenOptions};
    use std::io::Write;
    use std::path::{Path, PathBuf};
    use std::process::{Command, Stdio};

    pub(super) struct Spec {
        what: &'static str,
        script: &'static str,
        dir_env: &'static str,
        dir: &'static str,
        pid_file: &'static str,
        prefix: &'static str,
        required: &'static str,
        java: &'static str,
        fetched: &'static str,
        /// Whether the script keeps `$DIR/addresses` itself.
        keeps_addresses: bool,
    }

    pub(super) const BROKER: Spec = Spec {
        what: "broker",
        script: "scripts/kafka.sh",
        dir_env: "KAFKA_TOWER_BROKER_DIR",
        dir: "target/kafka-auto",
        pid_file: "broker.pid",
        prefix: "KAFKA_",
        required: "KAFKA_BOOTSTRAP_SERVERS",
        java: "Java 17 or later",
        fetched: "target/kafka-libs/.complete",
        keeps_addresses: true,
    };

    pub(super) const REGISTRY: Spec = Spec {
        what: "schema registry",
        script: "scripts/registry.sh",
        dir_env: "KAFKA_TOWER_REGISTRY_DIR",
        dir: "target/registry-auto",
        pid_file: "registry.pid",
        prefix: "SCHEMA_REGISTRY_",
        required: "SCHEMA_REGISTRY_URL",
        java: "Java 21 or later",
        fetched: "target/registry-app/.complete",
        keeps_addresses: false,
    };

    fn workspace_root() -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .parent()
            .expect("testkit lives in the workspace")
            .to_path_buf()
    }

    fn missing(spec: &Spec, what: &str) -> String {
        format!(
            "the {} tests need a {}: set {} to one, or install {what} so that `cargo test` \
             starts one itself ({}; Debian/Ubuntu: `apt-get install openjdk-21-jre-headless maven`), \
             or run `scripts/test`",
            spec.what, spec.what, spec.required, spec.script
        )
    }

    fn has(cmd: &str, arg: &str) -> bool {
        Command::new(cmd)
            .arg(arg)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    }

    fn parse(spec: &Spec, text: &str) -> HashMap<String, String> {
        text.lines()
            .filter_map(|l| l.trim().split_once('='))
            .filter(|(k, _)| k.starts_with(spec.prefix))
            .map(|(k, v)| (k.to_owned(), v.to_owned()))
            .collect()
    }

    fn alive(spec: &Spec, dir: &Path) -> bool {
        fs::read_to_string(dir.join(spec.pid_file))
            .ok()
            .and_then(|p| p.trim().parse::<i32>().ok())
            .is_some_and(|pid| Path::new(&format!("/proc/{pid}")).exists())
    }

    pub(super) fn start_or_join(spec: &Spec) -> Result<HashMap<String, String>, String> {
        let root = workspace_root();
        let dir = root.join(spec.dir);
        fs::create_dir_all(&dir).map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
        let lock = File::create(dir.join("lock")).map_err(|e| e.to_string())?;
        lock.lock()
            .map_err(|e| format!("cannot lock the {} directory: {e}", spec.what))?;
        // Registered before the service is looked at, so that the reaper of
        // a service about to be reaped sees this process.
        let mut users = OpenOptions::new()
            .create(true)
            .append(true)
            .open(dir.join("users"))
            .map_err(|e| e.to_string())?;
        writeln!(users, "{}", std::process::id()).map_err(|e| e.to_string())?;
        let addresses = dir.join("addresses");
        if alive(spec, &dir) {
            if let Ok(text) = fs::read_to_string(&addresses) {
                let found = parse(spec, &text);
                if found.contains_key(spec.required) {
                    return Ok(found);
                }
            }
        }
        if spec.required == BROKER.required && !has("java", "-version") {
            return Err(missing(spec, spec.java));
        }
        if !root.join(spec.fetched).exists() && !has("mvn", "-v") {
            return Err(missing(spec, "Maven (to fetch it)"));
        }
        eprintln!(
            "kafka-tower-testkit: {} is unset: starting a {} in {}",
            spec.required,
            spec.what,
            dir.display()
        );
        let script = root.join(spec.script);
        let out = Command::new(&script)
            .arg("start")
            .env(spec.dir_env, &dir)
            .stderr(Stdio::inherit())
            .output()
            .map_err(|e| format!("cannot run {}: {e}", script.display()))?;
        if !out.status.success() {
            return Err(format!(
                "{} start failed ({}): its messages are above (it needs {}, Maven and python3)",
                script.display(),
                out.status,
                spec.java
            ));
        }
        let stdout = String::from_utf8_lossy(&out.stdout);
        let found = parse(spec, &stdout);
        if !found.contains_key(spec.required) {
            return Err(format!(
                "{} start printed no {}",
                script.display(),
                spec.required
            ));
        }
        if !spec.keeps_addresses {
            fs::write(&addresses, stdout.as_bytes()).map_err(|e| e.to_string())?;
        }
        // The reaper outlives this process: it stops the service once every
        // registered test process is gone.
        Command::new(&script)
            .args(["reap", "30"])
            .env(spec.dir_env, &dir)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| format!("cannot start the {}'s reaper: {e}", spec.what))?;
        Ok(found)
    }
}

/// The test broker's secured listeners (`scripts/kafka.sh`): SASL_SSL with
/// SCRAM-SHA-512, and SSL with client certificates required.
pub mod secured {
    use super::broker_env;

    /// The SASL_SSL (SCRAM-SHA-512) listener.
    pub fn sasl_ssl_bootstrap() -> String {
        broker_env("KAFKA_SASL_SSL_BOOTSTRAP_SERVERS")
    }
    /// The SSL listener that requires a client certificate (mTLS).
    pub fn mtls_bootstrap() -> String {
        broker_env("KAFKA_SSL_BOOTSTRAP_SERVERS")
    }
    /// The SCRAM user created at format time.
    pub fn scram_user() -> String {
        broker_env("KAFKA_SCRAM_USER")
    }
    /// Its password.
    pub fn scram_password() -> String {
        broker_env("KAFKA_SCRAM_PASSWORD")
    }
    /// A file of the broker's certificate directory: `ca.pem`,
    /// `client.pem`, `client.key`, `expired-client.pem`,
    /// `expired-client.key`, `other-ca.pem`.
    pub fn tls_file(name: &str) -> String {
        format!("{}/{name}", broker_env("KAFKA_TLS_DIR"))
    }

    /// The broker's `log.dirs` (one directory per topic partition).
    pub fn broker_log_dir() -> String {
        broker_env("KAFKA_LOG_DIR")
    }

    /// librdkafka properties for the SASL_SSL listener with `password`.
    pub fn sasl_ssl_properties(password: &str) -> Vec<(String, String)> {
        [
            ("bootstrap.servers", sasl_ssl_bootstrap()),
            ("security.protocol", "SASL_SSL".into()),
            ("sasl.mechanism", "SCRAM-SHA-512".into()),
            ("sasl.username", scram_user()),
            ("sasl.password", password.into()),
            ("ssl.ca.location", tls_file("ca.pem")),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v))
        .collect()
    }

    /// librdkafka properties for the mTLS listener, trusting `ca` and
    /// presenting certificate `client` (`client` or `expired-client`).
    pub fn mtls_properties(ca: &str, client: &str) -> Vec<(String, String)> {
        [
            ("bootstrap.servers", mtls_bootstrap()),
            ("security.protocol", "SSL".into()),
            ("ssl.ca.location", tls_file(ca)),
            (
                "ssl.certificate.location",
                tls_file(&format!("{client}.pem")),
            ),
            ("ssl.key.location", tls_file(&format!("{client}.key"))),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v))
        .collect()
    }
}

pub fn unique(prefix: &str) -> String {
    format!("{prefix}-{}", uuid::Uuid::new_v4().simple())
}

pub async fn create_topic(name: &str, partitions: i32) {
    create_topic_with_config(name, partitions, &[]).await;
}

/// A topic with topic-level settings (e.g. `max.message.bytes`).
pub async fn create_topic_with_config(name: &str, partitions: i32, config: &[(&str, &str)]) {
    create_topic_on(&bootstrap(), name, partitions, config).await;
}

/// [`create_topic_with_config`] on the broker at `bootstrap`.
pub async fn create_topic_on(
    bootstrap: &str,
    name: &str,
    partitions: i32,
    config: &[(&str, &str)],
) {
    let mut topic = NewTopic::new(name, partitions, TopicReplication::Fixed(1));
    for (k, v) in config {
        topic = topic.set(k, v);
    }
    let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .create()
        .expect("admin client");
    let results = admin
        .create_topics(&[topic], &AdminOptions::new())
        .await
        .expect("create_topics");
    for r in results {
        r.unwrap_or_else(|(t, e)| panic!("cannot create topic {t}: {e}"));
    }
}

/// A topic and its dead-letter topic.
pub async fn create_topic_with_dlq(name: &str, partitions: i32) {
    create_topic(name, partitions).await;
    create_topic(&format!("{name}.dlq"), 1).await;
}

pub fn producer() -> FutureProducer {
    producer_on(&bootstrap())
}

/// [`producer`] for the broker at `bootstrap`.
pub fn producer_on(bootstrap: &str) -> FutureProducer {
    ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("message.max.bytes", "2000000")
        .set("linger.ms", "5")
        .create()
        .expect("producer")
}

/// One record to produce in a test.
#[derive(Clone, Debug, Default)]
pub struct Rec {
    pub partition: Option<i32>,
    pub key: Option<Bytes>,
    pub payload: Option<Bytes>,
    pub headers: RawHeaders,
}

impl Rec {
    pub fn payload(p: impl Into<Bytes>) -> Self {
        Rec {
            payload: Some(p.into()),
            ..Default::default()
        }
    }
    pub fn key(mut self, k: impl Into<Bytes>) -> Self {
        self.key = Some(k.into());
        self
    }
    pub fn partition(mut self, p: i32) -> Self {
        self.partition = Some(p);
        self
    }
    pub fn headers(mut self, h: RawHeaders) -> Self {
        self.headers = h;
        self
    }
}

/// Produces `records` in order and waits for every acknowledgement.
pub async fn produce(topic: &str, records: impl IntoIterator<Item = Rec>) -> Vec<(i32, i64)> {
    produce_on(&bootstrap(), topic, records).await
}

/// [`produce`] to the broker at `bootstrap`.
pub async fn produce_on(
    bootstrap: &str,
    topic: &str,
    records: impl IntoIterator<Item = Rec>,
) -> Vec<(i32, i64)> {
    let producer = producer_on(bootstrap);
    let mut pending = Vec::new();
    for r in records {
        let mut fr: FutureRecord<'_, [u8], [u8]> =
            FutureRecord::to(topic).headers(rdkafka_headers(&r.headers));
        if let Some(k) = &r.key {
            fr = fr.key(&k[..]);
        }
        if let Some(p) = &r.payload {
            fr = fr.payload(&p[..]);
        }
        if let Some(p) = r.partition {
            fr = fr.partition(p);
        }
        let delivery = producer
            .send_result(fr)
            .map_err(|(e, _)| e)
            .expect("enqueue");
        pending.push(delivery);
    }
    let mut out = Vec::with_capacity(pending.len());
    for d in pending {
        let delivery = d
            .await
            .expect("delivery future")
            .map_err(|(e, _)| e)
            .expect("produce");
        out.push((delivery.partition, delivery.offset));
    }
    out
}

/// Reads `expected` records from every partition of `topic` (from the
/// beginning, no group), failing after [`WAIT`].
pub async fn read_topic(topic: &str, expected: usize) -> Vec<ConsumedRecord> {
    let topic = topic.to_owned();
    tokio::task::spawn_blocking(move || {
        let consumer: BaseConsumer = ClientConfig::new()
            .set("bootstrap.servers", bootstrap())
            .set("group.id", unique("reader"))
            .set("enable.auto.commit", "false")
            .create()
            .expect("reader");
        let md = consumer
            .fetch_metadata(Some(&topic), Duration::from_secs(10))
            .expect("metadata");
        let partitions = md.topics()[0].partitions().len() as i32;
        let mut tpl = TopicPartitionList::new();
        for p in 0..partitions {
            tpl.add_partition_offset(&topic, p, Offset::Beginning)
                .unwrap();
        }
        consumer.assign(&tpl).expect("assign");
        let deadline = std::time::Instant::now() + WAIT;
        let mut out = Vec::new();
        while out.len() < expected {
            assert!(
                std::time::Instant::now() < deadline,
                "read only {} of {expected} records from {topic}",
                out.len()
            );
            if let Some(m) = consumer.poll(Duration::from_millis(200)) {
                out.push(record_from_message(&m.expect("read error")));
            }
        }
        out
    })
    .await
    .expect("reader thread")
}

/// The end offsets (high watermarks) of partitions `0..partitions` of
/// `topic`: how many records each holds, for a topic never truncated.
pub fn end_offsets(topic: &str, partitions: i32) -> Vec<i64> {
    end_offsets_on(&bootstrap(), topic, partitions)
}

/// [`end_offsets`] on the broker at `bootstrap`.
pub fn end_offsets_on(bootstrap: &str, topic: &str, partitions: i32) -> Vec<i64> {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .create()
        .expect("watermark reader");
    (0..partitions)
        .map(|p| {
            consumer
                .fetch_watermarks(topic, p, Duration::from_secs(10))
                .unwrap_or_else(|e| panic!("watermarks of {topic}[{p}]: {e}"))
                .1
        })
        .collect()
}

/// The committed offsets of `group` for partitions `0..partitions` of `topic`
/// (`-1` when nothing is committed).
pub fn committed(group: &str, topic: &str, partitions: i32) -> Vec<i64> {
    committed_on(&bootstrap(), group, topic, partitions)
}

/// [`committed`] on the broker at `bootstrap`.
pub fn committed_on(bootstrap: &str, group: &str, topic: &str, partitions: i32) -> Vec<i64> {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("group.id", group)
        .create()
        .expect("committed reader");
    let mut tpl = TopicPartitionList::new();
    for p in 0..partitions {
        tpl.add_partition(topic, p);
    }
    // A loaded broker may time a request out: ask again until WAIT runs out.
    let deadline = std::time::Instant::now() + WAIT;
    let got = loop {
        match consumer.committed_offsets(tpl.clone(), Duration::from_secs(10)) {
            Ok(got) => break got,
            Err(e) if std::time::Instant::now() < deadline => {
                eprintln!("committed offsets of {group}: {e}; asking again");
            }
            Err(e) => panic!("committed offsets of {group}: {e}"),
        }
    };
    (0..partitions)
        .map(|p| match got.find_partition(topic, p).map(|e| e.offset()) {
            Some(Offset::Offset(o)) => o,
            _ => -1,
        })
        .collect()
}

/// What a recording service saw of one call.
#[derive(Clone, Debug)]
pub struct Seen {
    pub topic: String,
    pub method: http::Method,
    pub partition: i32,
    pub offset: i64,
    pub key: Option<Bytes>,
    pub payload: Option<Bytes>,
    pub tombstone: bool,
    pub attempt: u32,
    pub headers: RawHeaders,
    pub header_map: http::HeaderMap,
}

impl Seen {
    pub fn text(&self) -> String {
        self.payload
            .as_ref()
            .map(|p| String::from_utf8_lossy(p).into_owned())
            .unwrap_or_default()
    }
}

/// Every call a service received, with a condition variable to wait on.
#[derive(Clone)]
pub struct Recorder {
    seen: Arc<Mutex<Vec<Seen>>>,
    count: Arc<watch::Sender<usize>>,
}

impl Default for Recorder {
    fn default() -> Self {
        Recorder {
            seen: Default::default(),
            count: Arc::new(watch::channel(0).0),
        }
    }
}

impl Recorder {
    pub fn record(&self, req: &Request<RecordBody>) -> Seen {
        let meta = req
            .extensions()
            .get::<RecordMeta>()
            .expect("RecordMeta extension");
        let seen = Seen {
            topic: meta.topic().to_owned(),
            method: req.method().clone(),
            partition: meta.partition(),
            offset: meta.offset(),
            key: meta.key().cloned(),
            payload: req.body().payload().cloned(),
            tombstone: req.body().is_tombstone(),
            attempt: meta.attempt(),
            headers: req
                .extensions()
                .get::<RawHeaders>()
                .cloned()
                .unwrap_or_default(),
            header_map: req.headers().clone(),
        };
        let n = {
            let mut v = self.seen.lock().unwrap();
            v.push(seen.clone());
            v.len()
        };
        self.count.send_replace(n);
        seen
    }

    /// How many calls were recorded.
    pub fn count(&self) -> usize {
        self.seen.lock().unwrap().len()
    }

    pub fn all(&self) -> Vec<Seen> {
        self.seen.lock().unwrap().clone()
    }

    /// Waits until `cond` holds over everything seen, failing after [`WAIT`].
    pub async fn wait_until(&self, what: &str, cond: impl Fn(&[Seen]) -> bool) {
        let mut rx = self.count.subscribe();
        let fut = async {
            loop {
                if cond(&self.seen.lock().unwrap()) {
                    return;
                }
                rx.changed().await.expect("recorder alive");
            }
        };
        if tokio::time::timeout(WAIT, fut).await.is_err() {
            let n = self.seen.lock().unwrap().len();
            panic!("timed out waiting for {what} ({n} calls seen)");
        }
    }

    pub async fn wait_count(&self, n: usize) {
        self.wait_until(&format!("{n} calls"), |s| s.len() >= n)
            .await;
    }

    /// Payload texts of successful... all calls, by payload.
    pub fn texts(&self) -> Vec<String> {
        self.all().iter().map(Seen::text).collect()
    }
}

/// A service that records each call and answers `respond(&seen)`.
pub fn recording_service<F>(
    recorder: Recorder,
    respond: F,
) -> impl tower::Service<
    Request<RecordBody>,
    Response = Response<String>,
    Error = BoxError,
    Future = impl Future<Output = Result<Response<String>, BoxError>> + Send,
> + Clone
       + Send
       + 'static
where
    F: Fn(&Seen) -> StatusCode + Clone + Send + Sync + 'static,
{
    tower::service_fn(move |req: Request<RecordBody>| {
        let seen = recorder.record(&req);
        let status = respond(&seen);
        async move {
            Ok::<_, BoxError>(
                Response::builder()
                    .status(status)
                    .body(format!("status {status}"))
                    .unwrap(),
            )
        }
    })
}

/// A consumer serving in the background until [`Running::stop`].
pub struct Running {
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    join: tokio::task::JoinHandle<Result<(), kafka_tower::ConsumerError>>,
    pub stats: Arc<RuntimeStats>,
}

impl Running {
    pub async fn stop(mut self) {
        let _ = self.stop.take().unwrap().send(());
        let r = tokio::time::timeout(WAIT, &mut self.join)
            .await
            .expect("consumer stops in time");
        r.expect("consumer task").expect("consumer result");
    }
}

pub fn spawn<S: kafka_tower::runtime::RecordService>(consumer: Consumer, service: S) -> Running {
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    let stats = consumer.stats();
    let join = tokio::spawn(consumer.serve(service, async move {
        let _ = rx.await;
    }));
    Running {
        stop: Some(tx),
        join,
        stats,
    }
}

/// A builder for the test broker with fast retries and commits.
pub fn consumer(group: &str, topics: &[&str]) -> ConsumerBuilder {
    consumer_on(&bootstrap(), group, topics)
}

/// [`consumer`] for the broker at `bootstrap`.
pub fn consumer_on(bootstrap: &str, group: &str, topics: &[&str]) -> ConsumerBuilder {
    Consumer::builder()
        .bootstrap_servers(bootstrap)
        .group_id(group)
        .topics(topics.iter().copied())
        .property("auto.offset.reset", "earliest")
        .property("session.timeout.ms", "10000")
        .property("heartbeat.interval.ms", "500")
        .commit_interval(Duration::from_millis(200))
        .retry(kafka_tower::RetryPolicy::exponential(
            3,
            Duration::from_millis(10),
            Duration::from_millis(100),
        ))
}

/// Which of the named features the calling crate was built with (`cfg!`
/// expands in the caller), and whether that is all of them; for
/// [`build_example`].
#[macro_export]
macro_rules! enabled_features {
    ($($feature:literal),* $(,)?) => {{
        let mut enabled: Vec<&'static str> = Vec::new();
        let mut all = true;
        $(if cfg!(feature = $feature) { enabled.push($feature); } else { all = false; })*
        (enabled, all)
    }};
}

/// Builds example `name` of `package` with the features the test itself
/// was built with (see [`enabled_features!`]), so that it reuses the test
/// build instead of compiling librdkafka again for another feature set;
/// returns the binary's path.
///
/// A test built with all its features is taken to come from `cargo test
/// --workspace --all-features` (`scripts/test`), which builds the examples
/// too: the same invocation here finds them up to date.
pub fn build_example(
    package: &str,
    name: &str,
    (features, all): (Vec<&'static str>, bool),
) -> std::path::PathBuf {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let mut command = std::process::Command::new(cargo);
    command.args(["build", "--quiet", "--example", name]);
    if all {
        command.args(["--workspace", "--all-features"]);
    } else {
        command
            .args(["-p", package, "--no-default-features"])
            .arg(format!("--features={}", features.join(",")));
    }
    let status = command.status().expect("cargo build --example");
    assert!(status.success(), "building the {name} example failed");
    let exe = std::env::current_exe().unwrap();
    let bin = exe
        .parent()
        .unwrap()
        .parent()
        .unwrap()
        .join("examples")
        .join(name);
    assert!(bin.exists(), "example binary at {}", bin.display());
    bin
}

/// A consumer group protocol to run a test under.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GroupProtocol {
    /// The classic protocol with librdkafka's default (eager) assignors.
    ClassicEager,
    /// The classic protocol, `partition.assignment.strategy=cooperative-sticky`:
    /// incremental assignments and revocations.
    ClassicCooperative,
    /// KIP-848, `group.protocol=consumer`: the broker assigns, incrementally.
    Kip848,
}

/// [`consumer`] under `protocol`. KIP-848 leaves session and heartbeat
/// timing to the broker (`scripts/kafka.sh` sets a 500 ms heartbeat), and
/// refuses the classic properties.
pub fn consumer_with(protocol: GroupProtocol, group: &str, topics: &[&str]) -> ConsumerBuilder {
    match protocol {
        GroupProtocol::ClassicEager => consumer(group, topics),
        GroupProtocol::ClassicCooperative => {
            consumer(group, topics).property("partition.assignment.strategy", "cooperative-sticky")
        }
        GroupProtocol::Kip848 => Consumer::builder()
            .bootstrap_servers(bootstrap())
            .group_id(group)
            .topics(topics.iter().copied())
            .property("group.protocol", "consumer")
            .property("auto.offset.reset", "earliest")
            .commit_interval(Duration::from_millis(200))
            .retry(kafka_tower::RetryPolicy::exponential(
                3,
                Duration::from_millis(10),
                Duration::from_millis(100),
            )),
    }
}

/// Headers of `h` as (key, value) byte pairs, for readable assertions.
pub fn header_pairs(h: &RawHeaders) -> Vec<(Vec<u8>, Option<Vec<u8>>)> {
    h.iter()
        .map(|h| (h.key.to_vec(), h.value.as_ref().map(|v| v.to_vec())))
        .collect()
}

/// The last value of header `name` as text.
pub fn header_text(h: &RawHeaders, name: &str) -> Option<String> {
    h.get_last(name.as_bytes())
        .flatten()
        .map(|v| String::from_utf8_lossy(v).into_owned())
}

/// Counts of each item.
pub fn counts<T: std::hash::Hash + Eq + Clone>(items: &[T]) -> HashMap<T, usize> {
    let mut m = HashMap::new();
    for i in items {
        *m.entry(i.clone()).or_insert(0) += 1;
    }
    m
}

/// Reads every record of `topic` up to its end (the high watermark of each
/// partition, read at the start) with the given isolation level.
pub async fn read_all(topic: &str, isolation: &str) -> Vec<ConsumedRecord> {
    read_all_on(&bootstrap(), topic, isolation).await
}

/// [`read_all`] on the broker at `bootstrap`.
pub async fn read_all_on(bootstrap: &str, topic: &str, isolation: &str) -> Vec<ConsumedRecord> {
    let topic = topic.to_owned();
    let isolation = isolation.to_owned();
    let bootstrap = bootstrap.to_owned();
    tokio::task::spawn_blocking(move || {
        let consumer: BaseConsumer = ClientConfig::new()
            .set("bootstrap.servers", &bootstrap)
            .set("group.id", unique("reader"))
            .set("enable.auto.commit", "false")
            .set("isolation.level", &isolation)
            .create()
            .expect("reader");
        let md = consumer.fetch_metadata(Some(&topic), Duration::from_secs(10)).expect("metadata");
        let partitions = md.topics()[0].partitions().len() as i32;
        let mut tpl = TopicPartitionList::new();
        let mut ends = HashMap::new();
        for p in 0..partitions {
            let (_, high) = consumer.fetch_watermarks(&topic, p, Duration::from_secs(10)).expect("watermarks");
            ends.insert(p, high);
            tpl.add_partition_offset(&topic, p, Offset::Beginning).unwrap();
        }
        consumer.assign(&tpl).expect("assign");
        let deadline = std::time::Instant::now() + WAIT;
        let mut out = Vec::new();
        loop {
            let pos = consumer.position().expect("position");
            let done = (0..partitions).all(|p| {
                let end = ends[&p];
                end == 0
                    || matches!(pos.find_partition(&topic, p).map(|e| e.offset()), Some(Offset::Offset(o)) if o >= end)
            });
            if done {
                return out;
            }
            assert!(std::time::Instant::now() < deadline, "could not read {topic} to its end");
            if let Some(m) = consumer.poll(Duration::from_millis(200)) {
                out.push(record_from_message(&m.expect("read error")));
            }
        }
    })
    .await
    .expect("reader thread")
}
// ---- compacted topics (streams) ----

/// A compacted topic.
pub async fn create_compacted_topic(name: &str, partitions: i32) {
    let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
        .set("bootstrap.servers", bootstrap())
        .create()
        .expect("admin client");
    let results = admin
        .create_topics(
            &[NewTopic::new(name, partitions, TopicReplication::Fixed(1))
                .set("cleanup.policy", "compact")],
            &AdminOptions::new(),
        )
        .await
        .expect("create_topics");
    for r in results {
        r.unwrap_or_else(|(t, e)| panic!("cannot create topic {t}: {e}"));
    }
}

/// The last value per key of `topic` read with `read_committed` (null
/// values delete): what a compacted changelog says the store holds.
pub async fn changelog_state(topic: &str) -> std::collections::BTreeMap<Bytes, Bytes> {
    let mut m = std::collections::BTreeMap::new();
    for r in read_all(topic, "read_committed").await {
        let k = r.key.clone().expect("changelog records have keys");
        match r.payload {
            Some(v) => {
                m.insert(k, v);
            }
            None => {
                m.remove(&k);
            }
        }
    }
    m
}

/// A transactional producer config for tests: short transaction timeout so
/// that a killed instance's open transaction does not block readers long.
pub fn txn_producer(id: &str) -> kafka_tower::runtime::ProducerConfig {
    let mut p = kafka_tower::runtime::ProducerConfig::new(bootstrap())
        .property("transaction.timeout.ms", "10000");
    p.transactional_id = Some(id.to_owned());
    p
}

/// Polls `cond` every 50 ms until it holds, failing after [`WAIT`].
pub async fn eventually(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = std::time::Instant::now() + WAIT;
    while !cond() {
        assert!(
            std::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Logs to stderr (test output) at `RUST_LOG`, default `warn`.
pub fn init_tracing() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn".into()),
        )
        .with_test_writer()
        .try_init();
}

// ---- a broker of the test's own, to kill and restart ----

/// A broker started for one test (its own data directory and ports, by
/// `scripts/kafka.sh` with `KAFKA_TOWER_BROKER_DIR`), which the test may
/// SIGKILL and restart on the same data and ports. Stopped and removed on
/// drop. Broker-fault tests use it so that the shared broker of the other
/// tests never goes down.
pub struct OwnBroker {
    dir: std::path::PathBuf,
    bootstrap: String,
}

impl OwnBroker {
    /// Runs `scripts/kafka.sh command` on the broker in `dir`; its stdout.
    fn try_script(dir: &std::path::Path, command: &str) -> Result<String, String> {
        let script = concat!(env!("CARGO_MANIFEST_DIR"), "/../scripts/kafka.sh");
        let out = std::process::Command::new(script)
            .arg(command)
            .env("KAFKA_TOWER_BROKER_DIR", dir)
            .stderr(std::process::Stdio::inherit())
            .output()
            .map_err(|e| format!("kafka.sh {command}: {e}"))?;
        if !out.status.success() {
            return Err(format!("kafka.sh {command} failed: {}", out.status));
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    fn script(dir: &std::path::Path, command: &str) -> String {
        Self::try_script(dir, command).unwrap_or_else(|e| panic!("{e}"))
    }

    /// Formats and starts a broker; returns once it serves metadata.
    pub async fn start() -> OwnBroker {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../target/kafka-own")
            .join(unique("broker"));
        std::fs::create_dir_all(&dir).expect("broker dir");
        let d = dir.clone();
        let out = tokio::task::spawn_blocking(move || Self::script(&d, "start"))
            .await
            .expect("kafka.sh start");
        let bootstrap = out
            .lines()
            .find_map(|l| l.strip_prefix("KAFKA_BOOTSTRAP_SERVERS="))
            .unwrap_or_else(|| panic!("kafka.sh start printed no address: {out}"))
            .to_owned();
        OwnBroker { dir, bootstrap }
    }

    /// Its PLAINTEXT bootstrap address.
    pub fn bootstrap(&self) -> &str {
        &self.bootstrap
    }

    /// SIGKILLs the broker (a crash) and waits until the process is gone.
    pub async fn kill(&self) {
        let d = self.dir.clone();
        tokio::task::spawn_blocking(move || Self::script(&d, "kill"))
            .await
            .expect("kafka.sh kill");
    }

    /// Starts the killed broker again on the same data and ports; returns
    /// once it serves metadata.
    pub async fn restart(&self) {
        let d = self.dir.clone();
        let out = tokio::task::spawn_blocking(move || Self::script(&d, "restart"))
            .await
            .expect("kafka.sh restart");
        assert!(
            out.contains(&format!("KAFKA_BOOTSTRAP_SERVERS={}", self.bootstrap)),
            "restarted on other addresses: {out}"
        );
    }
}

impl Drop for OwnBroker {
    fn drop(&mut self) {
        // Never panic here: the test may be unwinding from its own failure,
        // which a second panic would hide (scripts/test stops leftovers).
        match Self::try_script(&self.dir, "stop") {
            Ok(_) => {
                let _ = std::fs::remove_dir_all(&self.dir);
            }
            Err(e) => eprintln!("cannot stop the broker in {}: {e}", self.dir.display()),
        }
    }
}
