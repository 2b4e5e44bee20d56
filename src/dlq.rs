//! Operating dead letters: read them as typed [`DeadLetter`]s and
//! [`Redrive`] them to their original topic, exactly once.
//!
//! A dead letter (see [`dead_letter`](crate::runtime::dead_letter)) is the original
//! record — key, payload, headers byte for byte — followed by `kt-dlq-*`
//! provenance headers. [`DeadLetter::from_record`] splits the two again.
//!
//! A [`Redrive`] consumes the dead-letter topic in its own consumer group
//! and, for each dead letter its [`Filter`] selects, produces a copy to the
//! original topic (or [`Redrive::to`]): the original key, payload and
//! headers byte for byte, the `kt-dlq-*` headers removed and `kt-redrive-*`
//! headers added:
//!
//! | header | value |
//! |---|---|
//! | `kt-redrive-source-topic` | the dead-letter topic |
//! | `kt-redrive-source-partition` | the dead letter's partition (decimal) |
//! | `kt-redrive-source-offset` | the dead letter's offset (decimal) |
//! | `kt-redrive-time` | when it was redriven, ms since the epoch |
//! | `kt-redrive-attempts` | the dead-lettered delivery's `kt-dlq-attempts` |
//! | `kt-redrive-failed-by` | its `kt-dlq-failed-by` |
//! | `kt-redrive-reason` | its `kt-dlq-reason`, when it had one |
//! | `kt-redrive-note` | the operator's note ([`Redrive::note`]), when given |
//!
//! `kt-redrive-*` headers of an earlier redrive are replaced. A copy that
//! fails again is dead-lettered again with them, so its history travels on.
//!
//! The copies and the group's consumed offsets are written in one
//! transaction per batch (`transactional.id` = the group): a redrive killed
//! midway and started again with the same group neither skips nor repeats a
//! record (readers with `isolation.level=read_committed` see each copy
//! once). The group defaults to one derived from the dead-letter topic, the
//! filter and the destination, so a redrive with another filter starts
//! from the beginning while the same redrive run twice copies nothing the
//! second time.
//!
//! Dead letters written as references (the record was too large to copy,
//! `kt-dlq-payload: omitted`) carry no bytes to redrive: they are counted
//! and left alone; the original is still in the source topic at its
//! coordinates. A record of the topic that is not a dead letter is counted
//! too, never copied.
//!
//! ```no_run
//! use kafka_tower::dlq::{Filter, Redrive};
//! use kafka_tower::runtime::Properties;
//!
//! # async fn run() -> Result<(), kafka_tower::dlq::DlqError> {
//! let mut properties = Properties::new();
//! properties.set("bootstrap.servers", "127.0.0.1:9092");
//! let filter = Filter { reason: Some("invalid".into()), ..Filter::default() };
//! let summary = Redrive::new(properties, "orders.dlq")
//!     .filter(filter)
//!     .note("schema fix deployed")
//!     .run(|progress| eprintln!("{} of {} read", progress.scanned, progress.total))
//!     .await?;
//! println!("redrove {} dead letters", summary.redriven);
//! # Ok(()) }
//! ```

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fmt;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use rdkafka::config::{ClientConfig, FromClientConfigAndContext};
use rdkafka::consumer::{BaseConsumer, Consumer as _, StreamConsumer};
use rdkafka::error::KafkaError;
use rdkafka::message::Message as _;
use rdkafka::{Offset, TopicPartitionList};

use crate::runtime::dead_letter::HEADER_PREFIX;
use crate::runtime::native::to_consumed_record;
use crate::runtime::{ProducerConfig, Properties, TransactionError, TransactionalProducer};
use crate::{ConsumedRecord, OutgoingRecord, RawHeader, RawHeaders};

/// The prefix of the headers a redrive adds.
pub const REDRIVE_PREFIX: &str = "kt-redrive-";

/// How long one call to the cluster (metadata, watermarks, committed
/// offsets, a seek) may take.
const CALL_TIMEOUT: Duration = Duration::from_secs(10);

/// A dead letter: where it is, where its record came from, why it failed,
/// and the original record's bytes.
#[derive(Clone, PartialEq, Eq)]
pub struct DeadLetter {
    /// The dead-letter topic.
    pub topic: String,
    /// The dead letter's partition.
    pub partition: i32,
    /// The dead letter's offset.
    pub offset: i64,
    /// The dead letter's own timestamp (ms since the epoch), if any.
    pub timestamp: Option<i64>,
    /// `kt-dlq-original-topic`.
    pub original_topic: String,
    /// `kt-dlq-original-partition`.
    pub original_partition: i32,
    /// `kt-dlq-original-offset`.
    pub original_offset: i64,
    /// `kt-dlq-original-timestamp` (ms since the epoch).
    pub original_timestamp: Option<i64>,
    /// `kt-dlq-consumer-group`.
    pub consumer_group: Option<String>,
    /// `kt-dlq-attempts`: service calls made.
    pub attempts: Option<u32>,
    /// `kt-dlq-error-class`.
    pub error_class: Option<String>,
    /// `kt-dlq-status`: the response status, when there was one.
    pub status: Option<u16>,
    /// `kt-dlq-error-message`.
    pub error_message: Option<String>,
    /// `kt-dlq-failed-by`: the refusing layer, or `service`.
    pub failed_by: Option<String>,
    /// `kt-dlq-reason`: the refusal's reason code.
    pub reason: Option<String>,
    /// `kt-dlq-service-id`.
    pub service_id: Option<String>,
    /// `kt-dlq-time`: when it was dead-lettered (ms since the epoch).
    pub time: Option<i64>,
    /// A reference dead letter (`kt-dlq-payload: omitted`): the record was
    /// too large to copy, so key, payload and headers are absent.
    pub omitted: bool,
    /// The original key.
    pub key: Option<Bytes>,
    /// The original payload (`None`: a tombstone).
    pub payload: Option<Bytes>,
    /// The original headers, in order, byte for byte (`kt-dlq-*` removed).
    pub headers: RawHeaders,
}

impl fmt::Debug for DeadLetter {
    // The original headers may carry credentials (`Authorization`): only
    // their names are shown.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let names: Vec<String> = self
            .headers
            .iter()
            .map(|h| String::from_utf8_lossy(&h.key).into_owned())
            .collect();
        f.debug_struct("DeadLetter")
            .field("topic", &self.topic)
            .field("partition", &self.partition)
            .field("offset", &self.offset)
            .field("original_topic", &self.original_topic)
            .field("original_partition", &self.original_partition)
            .field("original_offset", &self.original_offset)
            .field("failed_by", &self.failed_by)
            .field("reason", &self.reason)
            .field("status", &self.status)
            .field("attempts", &self.attempts)
            .field("time", &self.time)
            .field("omitted", &self.omitted)
            .field("payload_len", &self.payload.as_ref().map(Bytes::len))
            .field("header_names", &names)
            .finish()
    }
}

/// A record of a dead-letter topic that is not a dead letter kafka-tower
/// wrote: a provenance header is missing or malformed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NotADeadLetter {
    /// Where the record is.
    pub topic: String,
    /// Its partition.
    pub partition: i32,
    /// Its offset.
    pub offset: i64,
    /// What is wrong, naming the header.
    pub problem: String,
}

impl fmt::Display for NotADeadLetter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}[{}]@{} is not a dead letter: {}",
            self.topic, self.partition, self.offset, self.problem
        )
    }
}

impl std::error::Error for NotADeadLetter {}

impl DeadLetter {
    /// Reads a dead letter from a record of a dead-letter topic.
    ///
    /// ```
    /// use kafka_tower::dlq::DeadLetter;
    /// use kafka_tower::{ConsumedRecord, RawHeader};
    ///
    /// let mut record = ConsumedRecord::builder("orders.dlq", 0, 7).payload(Some("{}".into()));
    /// for (k, v) in [
    ///     ("x-tenant", "acme"),
    ///     ("kt-dlq-original-topic", "orders"),
    ///     ("kt-dlq-original-partition", "3"),
    ///     ("kt-dlq-original-offset", "42"),
    ///     ("kt-dlq-reason", "invalid"),
    /// ] {
    ///     record = record.header(RawHeader::new(k, v));
    /// }
    /// let dl = DeadLetter::from_record(&record.build()).unwrap();
    /// assert_eq!((dl.original_topic.as_str(), dl.original_partition, dl.original_offset), ("orders", 3, 42));
    /// assert_eq!(dl.reason.as_deref(), Some("invalid"));
    /// assert_eq!(dl.headers.len(), 1); // the provenance headers are removed
    /// ```
    pub fn from_record(record: &ConsumedRecord) -> Result<DeadLetter, NotADeadLetter> {
        let problem = |problem: String| NotADeadLetter {
            topic: record.topic.to_string(),
            partition: record.partition,
            offset: record.offset,
            problem,
        };
        let mut provenance: HashMap<&[u8], &[u8]> = HashMap::new();
        let mut headers = RawHeaders::with_capacity(record.headers.len());
        for h in record.headers.iter() {
            match h.key.strip_prefix(HEADER_PREFIX.as_bytes()) {
                Some(name) => {
                    // The writer appends one of each; the last one wins.
                    provenance.insert(name, h.value.as_deref().unwrap_or_default());
                }
                None => headers.push(h.clone()),
            }
        }
        let text = |name: &str| -> Result<Option<String>, NotADeadLetter> {
            provenance
                .get(name.as_bytes())
                .map(|v| {
                    String::from_utf8(v.to_vec())
                        .map_err(|_| problem(format!("`{HEADER_PREFIX}{name}` is not UTF-8")))
                })
                .transpose()
        };
        fn number<T: std::str::FromStr>(
            value: Option<String>,
            name: &str,
            problem: &dyn Fn(String) -> NotADeadLetter,
        ) -> Result<Option<T>, NotADeadLetter> {
            value
                .map(|v| {
                    v.parse().map_err(|_| {
                        problem(format!("`{HEADER_PREFIX}{name}` is not a number: {v:?}"))
                    })
                })
                .transpose()
        }
        let required = |name: &str| -> Result<String, NotADeadLetter> {
            text(name)?.ok_or_else(|| problem(format!("no `{HEADER_PREFIX}{name}` header")))
        };
        let original_topic = required("original-topic")?;
        let original_partition = number(
            Some(required("original-partition")?),
            "original-partition",
            &problem,
        )?
        .expect("given");
        let original_offset = number(
            Some(required("original-offset")?),
            "original-offset",
            &problem,
        )?
        .expect("given");
        let omitted = text("payload")?.as_deref() == Some("omitted");
        Ok(DeadLetter {
            topic: record.topic.to_string(),
            partition: record.partition,
            offset: record.offset,
            timestamp: record.timestamp,
            original_topic,
            original_partition,
            original_offset,
            original_timestamp: number(
                text("original-timestamp")?,
                "original-timestamp",
                &problem,
            )?,
            consumer_group: text("consumer-group")?,
            attempts: number(text("attempts")?, "attempts", &problem)?,
            error_class: text("error-class")?,
            status: number(text("status")?, "status", &problem)?,
            error_message: text("error-message")?,
            failed_by: text("failed-by")?,
            reason: text("reason")?,
            service_id: text("service-id")?,
            time: number(text("time")?, "time", &problem)?,
            omitted,
            key: record.key.clone(),
            payload: record.payload.clone(),
            headers,
        })
    }

    /// When it was dead-lettered: `kt-dlq-time`, else the dead letter's own
    /// timestamp.
    pub fn dead_lettered_at(&self) -> Option<SystemTime> {
        let ms = self.time.or(self.timestamp)?;
        let ms = u64::try_from(ms).ok()?;
        Some(UNIX_EPOCH + Duration::from_millis(ms))
    }

    /// The bytes of the original key, payload and headers.
    pub fn size(&self) -> usize {
        self.key.as_ref().map_or(0, Bytes::len)
            + self.payload.as_ref().map_or(0, Bytes::len)
            + self
                .headers
                .iter()
                .map(|h| h.key.len() + h.value.as_ref().map_or(0, Bytes::len))
                .sum::<usize>()
    }

    /// The copy a redrive produces (see the [module docs](self)): to
    /// `topic`, the original key, payload and headers, earlier
    /// `kt-redrive-*` headers replaced by this redrive's.
    pub fn redrive_record(&self, topic: &str, note: Option<&str>) -> OutgoingRecord {
        let mut headers = RawHeaders::with_capacity(self.headers.len() + 8);
        for h in self.headers.iter() {
            if !h.key.starts_with(REDRIVE_PREFIX.as_bytes()) {
                headers.push(h.clone());
            }
        }
        let mut add = |name: &str, value: String| {
            headers.push(RawHeader::new(
                Bytes::from(format!("{REDRIVE_PREFIX}{name}")),
                Bytes::from(value),
            ));
        };
        add("source-topic", self.topic.clone());
        add("source-partition", self.partition.to_string());
        add("source-offset", self.offset.to_string());
        add("time", now_millis().to_string());
        if let Some(a) = self.attempts {
            add("attempts", a.to_string());
        }
        if let Some(f) = &self.failed_by {
            add("failed-by", f.clone());
        }
        if let Some(r) = &self.reason {
            add("reason", r.clone());
        }
        if let Some(n) = note {
            add("note", n.to_owned());
        }
        OutgoingRecord {
            topic: topic.to_owned(),
            partition: None,
            key: self.key.clone(),
            payload: self.payload.clone(),
            headers,
            timestamp: None,
        }
    }
}

fn now_millis() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

/// Which dead letters to act on; every field set must match.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash)]
pub struct Filter {
    /// `kt-dlq-reason` equals this.
    pub reason: Option<String>,
    /// `kt-dlq-failed-by` equals this.
    pub failed_by: Option<String>,
    /// `kt-dlq-original-topic` equals this.
    pub original_topic: Option<String>,
    /// Dead-lettered at or after this time.
    pub since: Option<SystemTime>,
    /// Dead-lettered before this time.
    pub until: Option<SystemTime>,
}

impl Filter {
    /// Whether `dl` is selected.
    pub fn matches(&self, dl: &DeadLetter) -> bool {
        let eq = |want: &Option<String>, got: &Option<String>| {
            want.as_ref().is_none_or(|w| got.as_ref() == Some(w))
        };
        let at = dl.dead_lettered_at();
        eq(&self.reason, &dl.reason)
            && eq(&self.failed_by, &dl.failed_by)
            && self
                .original_topic
                .as_ref()
                .is_none_or(|t| *t == dl.original_topic)
            && self.since.is_none_or(|s| at.is_some_and(|a| a >= s))
            && self.until.is_none_or(|u| at.is_some_and(|a| a < u))
    }
}

/// An error reading or redriving dead letters.
#[derive(Debug)]
#[non_exhaustive]
pub enum DlqError {
    /// The topic does not exist or has no partitions.
    UnknownTopic(String),
    /// No record at the asked coordinates.
    NotFound {
        /// The topic.
        topic: String,
        /// The partition.
        partition: i32,
        /// The offset.
        offset: i64,
    },
    /// A record that is not a dead letter where one was asked for.
    NotADeadLetter(NotADeadLetter),
    /// The configuration cannot be used (the message names what).
    Config(String),
    /// The cluster refused or failed a call (secrets redacted).
    Kafka {
        /// What was being done.
        doing: String,
        /// The client's error, redacted.
        error: String,
    },
    /// A transaction of the redrive failed; nothing of it is visible and
    /// the redrive can be run again.
    Transaction(TransactionError),
}

impl fmt::Display for DlqError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DlqError::UnknownTopic(t) => write!(f, "topic `{t}` does not exist"),
            DlqError::NotFound {
                topic,
                partition,
                offset,
            } => write!(f, "no record at {topic}[{partition}]@{offset}"),
            DlqError::NotADeadLetter(e) => e.fmt(f),
            DlqError::Config(m) => write!(f, "invalid configuration: {m}"),
            DlqError::Kafka { doing, error } => write!(f, "cannot {doing}: {error}"),
            DlqError::Transaction(e) => write!(f, "redrive transaction failed: {e}"),
        }
    }
}

impl std::error::Error for DlqError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            DlqError::NotADeadLetter(e) => Some(e),
            DlqError::Transaction(e) => Some(e),
            _ => None,
        }
    }
}

impl From<TransactionError> for DlqError {
    fn from(e: TransactionError) -> Self {
        DlqError::Transaction(e)
    }
}

fn kafka(properties: &Properties, doing: impl Into<String>, e: KafkaError) -> DlqError {
    DlqError::Kafka {
        doing: doing.into(),
        error: properties.redact(&e.to_string()),
    }
}

/// The client context of the readers: the end of a partition is an event
/// they wait for, not an error to log.
#[derive(Debug, Clone, Copy, Default)]
struct ReaderContext;

impl rdkafka::ClientContext for ReaderContext {
    fn error(&self, error: KafkaError, reason: &str) {
        if !matches!(error, KafkaError::PartitionEOF(_)) {
            tracing::error!(error = %error, "{reason}");
        }
    }
}

impl rdkafka::consumer::ConsumerContext for ReaderContext {}

/// A consumer on `properties` in `group`, no commits of its own.
fn consumer<C: FromClientConfigAndContext<ReaderContext>>(
    properties: &Properties,
    group: &str,
) -> Result<C, DlqError> {
    let mut cc = ClientConfig::new();
    for (k, v) in properties {
        cc.set(k, &v.0);
    }
    cc.set("group.id", group)
        .set("isolation.level", "read_committed")
        .set("enable.auto.commit", "false")
        .set("enable.auto.offset.store", "false")
        .set("auto.offset.reset", "earliest")
        .set("enable.partition.eof", "true");
    cc.create_with_context(ReaderContext)
        .map_err(|e| DlqError::Config(properties.redact(&e.to_string())))
}

/// The partitions of `topic`.
fn partitions(
    consumer: &impl rdkafka::consumer::Consumer<ReaderContext>,
    properties: &Properties,
    topic: &str,
) -> Result<Vec<i32>, DlqError> {
    let md = consumer
        .fetch_metadata(Some(topic), CALL_TIMEOUT)
        .map_err(|e| kafka(properties, format!("read the metadata of `{topic}`"), e))?;
    let t = md
        .topics()
        .iter()
        .find(|t| t.name() == topic)
        .ok_or_else(|| DlqError::UnknownTopic(topic.to_owned()))?;
    if t.error().is_some() || t.partitions().is_empty() {
        return Err(DlqError::UnknownTopic(topic.to_owned()));
    }
    Ok(t.partitions().iter().map(|p| p.id()).collect())
}

/// Reads every dead letter of a topic once, from the beginning to its end
/// when the reading started (records written meanwhile may be included).
/// No offsets are committed. Iterate it:
///
/// ```no_run
/// use kafka_tower::dlq::DeadLetters;
/// use kafka_tower::runtime::Properties;
///
/// let mut properties = Properties::new();
/// properties.set("bootstrap.servers", "127.0.0.1:9092");
/// for item in DeadLetters::open(&properties, "orders.dlq")? {
///     match item? {
///         Ok(dl) => println!("{}@{}: {:?}", dl.original_topic, dl.original_offset, dl.reason),
///         Err(not_one) => eprintln!("{not_one}"),
///     }
/// }
/// # Ok::<(), kafka_tower::dlq::DlqError>(())
/// ```
pub struct DeadLetters {
    consumer: BaseConsumer<ReaderContext>,
    properties: Properties,
    topic: Arc<str>,
    /// Partitions not yet read to their end.
    open: HashSet<i32>,
}

impl fmt::Debug for DeadLetters {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DeadLetters")
            .field("topic", &self.topic)
            .field("open_partitions", &self.open.len())
            .finish()
    }
}

impl DeadLetters {
    /// Starts reading `topic` (all partitions, from the beginning,
    /// `read_committed`).
    pub fn open(properties: &Properties, topic: &str) -> Result<Self, DlqError> {
        let consumer: BaseConsumer<ReaderContext> = consumer(properties, "kafka-tower-dlq-reader")?;
        let ids = partitions(&consumer, properties, topic)?;
        let mut tpl = TopicPartitionList::new();
        for p in &ids {
            tpl.add_partition_offset(topic, *p, Offset::Beginning)
                .map_err(|e| kafka(properties, "assign", e))?;
        }
        consumer
            .assign(&tpl)
            .map_err(|e| kafka(properties, format!("assign the partitions of `{topic}`"), e))?;
        Ok(DeadLetters {
            consumer,
            properties: properties.clone(),
            topic: topic.into(),
            open: ids.into_iter().collect(),
        })
    }
}

impl Iterator for DeadLetters {
    /// A dead letter, or a record that is not one (`Ok(Err(..))`); `Err`
    /// when the cluster fails the read.
    type Item = Result<Result<DeadLetter, NotADeadLetter>, DlqError>;

    fn next(&mut self) -> Option<Self::Item> {
        while !self.open.is_empty() {
            match self.consumer.poll(Duration::from_millis(500)) {
                Some(Ok(msg)) => {
                    let record = to_consumed_record(&msg, self.topic.clone());
                    return Some(Ok(DeadLetter::from_record(&record)));
                }
                Some(Err(KafkaError::PartitionEOF(p))) => {
                    self.open.remove(&p);
                }
                Some(Err(e)) => {
                    self.open.clear();
                    return Some(Err(kafka(&self.properties, "read the dead letters", e)));
                }
                None => {}
            }
        }
        None
    }
}

/// Reads the one record at `topic[partition]@offset` as a dead letter.
pub fn read_one(
    properties: &Properties,
    topic: &str,
    partition: i32,
    offset: i64,
) -> Result<DeadLetter, DlqError> {
    let consumer: BaseConsumer<ReaderContext> = consumer(properties, "kafka-tower-dlq-reader")?;
    if !partitions(&consumer, properties, topic)?.contains(&partition) {
        return Err(DlqError::NotFound {
            topic: topic.to_owned(),
            partition,
            offset,
        });
    }
    let mut tpl = TopicPartitionList::new();
    tpl.add_partition_offset(topic, partition, Offset::Offset(offset))
        .map_err(|e| kafka(properties, "assign", e))?;
    consumer
        .assign(&tpl)
        .map_err(|e| kafka(properties, "assign", e))?;
    let not_found = || DlqError::NotFound {
        topic: topic.to_owned(),
        partition,
        offset,
    };
    let deadline = Instant::now() + CALL_TIMEOUT;
    while Instant::now() < deadline {
        match consumer.poll(Duration::from_millis(500)) {
            Some(Ok(msg)) if msg.offset() == offset => {
                let record = to_consumed_record(&msg, topic.into());
                return DeadLetter::from_record(&record).map_err(DlqError::NotADeadLetter);
            }
            // Past it (a transaction marker or a compacted record was there),
            // or the end of the partition.
            Some(Ok(_)) | Some(Err(KafkaError::PartitionEOF(_))) => return Err(not_found()),
            Some(Err(KafkaError::MessageConsumption(
                rdkafka::types::RDKafkaErrorCode::OffsetOutOfRange,
            ))) => return Err(not_found()),
            Some(Err(e)) => return Err(kafka(properties, "read the dead letter", e)),
            None => {}
        }
    }
    Err(not_found())
}

/// How far a redrive is.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct RedriveProgress {
    /// Records of the dead-letter topic read so far.
    pub scanned: u64,
    /// Records between the group's position and the end of the topic when
    /// the redrive started (what `scanned` will reach).
    pub total: u64,
    /// Dead letters copied (committed), or that a dry run would copy.
    pub redriven: u64,
    /// Dead letters the filter did not select.
    pub skipped: u64,
    /// Selected reference dead letters (no bytes to copy): left alone.
    pub omitted: u64,
    /// Records that are not dead letters: left alone.
    pub not_dead_letters: u64,
    /// Since the redrive started.
    pub elapsed: Duration,
}

/// What a finished redrive did.
pub type RedriveSummary = RedriveProgress;

/// Copies selected dead letters back to their topic, exactly once. See
/// the [module docs](self).
#[derive(Debug, Clone)]
pub struct Redrive {
    properties: Properties,
    dlq_topic: String,
    filter: Filter,
    to: Option<String>,
    note: Option<String>,
    group: Option<String>,
    rate: Option<f64>,
    limit: Option<u64>,
    max_batch: usize,
    dry_run: bool,
}

impl Redrive {
    /// A redrive of every dead letter of `dlq_topic` over the cluster of
    /// `properties` (`bootstrap.servers`, security settings).
    pub fn new(properties: Properties, dlq_topic: impl Into<String>) -> Self {
        Redrive {
            properties,
            dlq_topic: dlq_topic.into(),
            filter: Filter::default(),
            to: None,
            note: None,
            group: None,
            rate: None,
            limit: None,
            max_batch: 500,
            dry_run: false,
        }
    }

    /// Only the dead letters `filter` selects.
    pub fn filter(mut self, filter: Filter) -> Self {
        self.filter = filter;
        self
    }

    /// Produces the copies to `topic` instead of their original topics.
    pub fn to(mut self, topic: impl Into<String>) -> Self {
        self.to = Some(topic.into());
        self
    }

    /// Adds `kt-redrive-note` to every copy.
    pub fn note(mut self, note: impl Into<String>) -> Self {
        self.note = Some(note.into());
        self
    }

    /// The consumer group (and `transactional.id`) of the redrive instead
    /// of the derived one ([`Redrive::group_id`]).
    pub fn group(mut self, group: impl Into<String>) -> Self {
        self.group = Some(group.into());
        self
    }

    /// Copies at most `per_second` records per second.
    pub fn rate_limit(mut self, per_second: f64) -> Self {
        self.rate = (per_second > 0.0).then_some(per_second);
        self
    }

    /// Copies at most `n` dead letters, then stops (committing what it read
    /// up to the last one).
    pub fn limit(mut self, n: u64) -> Self {
        self.limit = Some(n);
        self
    }

    /// Dead letters per transaction (default 500).
    pub fn max_batch(mut self, n: usize) -> Self {
        self.max_batch = n.max(1);
        self
    }

    /// Reads and counts only: nothing is produced and no offset committed.
    pub fn dry_run(mut self, yes: bool) -> Self {
        self.dry_run = yes;
        self
    }

    /// The consumer group: the one given, or
    /// `kafka-tower-redrive.<dlq topic>.<hash of filter and destination>`.
    pub fn group_id(&self) -> String {
        if let Some(g) = &self.group {
            return g.clone();
        }
        // FNV-1a over an explicit encoding of the filter and destination:
        // the same on every build and platform (std's hashers promise
        // neither).
        let mut h: u64 = 0xcbf2_9ce4_8422_2325;
        let mut write = |bytes: &[u8]| {
            for b in bytes {
                h = (h ^ u64::from(*b)).wrapping_mul(0x100_0000_01b3);
            }
        };
        let ms = |t: Option<SystemTime>| {
            t.and_then(|t| t.duration_since(UNIX_EPOCH).ok())
                .map(|d| d.as_millis().to_string())
        };
        for field in [
            self.filter.reason.clone(),
            self.filter.failed_by.clone(),
            self.filter.original_topic.clone(),
            ms(self.filter.since),
            ms(self.filter.until),
            self.to.clone(),
        ] {
            match field {
                // A length prefix keeps ("ab", "c") apart from ("a", "bc").
                Some(v) => {
                    write(&[1]);
                    write(&(v.len() as u64).to_be_bytes());
                    write(v.as_bytes());
                }
                None => write(&[0]),
            }
        }
        format!("kafka-tower-redrive.{}.{h:016x}", self.dlq_topic)
    }

    /// Runs the redrive to the end of the dead-letter topic (as it was when
    /// the run started), calling `progress` after every transaction.
    pub async fn run(
        self,
        mut progress: impl FnMut(&RedriveProgress),
    ) -> Result<RedriveSummary, DlqError> {
        let started = Instant::now();
        let group = self.group_id();
        let consumer: Arc<StreamConsumer<ReaderContext>> =
            Arc::new(consumer(&self.properties, &group)?);
        // Metadata, committed offsets and watermarks are blocking calls (up
        // to CALL_TIMEOUT each): off the async workers.
        let (ids, total) = {
            let (c, properties, topic) = (
                consumer.clone(),
                self.properties.clone(),
                self.dlq_topic.clone(),
            );
            tokio::task::spawn_blocking(move || assign_from_committed(&c, &properties, &topic))
                .await
                .map_err(|e| DlqError::Kafka {
                    doing: "assign the dead-letter topic".into(),
                    error: e.to_string(),
                })??
        };
        let mut state = RedriveProgress {
            total,
            ..RedriveProgress::default()
        };
        let producer = if self.dry_run {
            None
        } else {
            let mut config = ProducerConfig::default();
            for (k, v) in &self.properties {
                if crate::runtime::dead_letter::is_connection_property(k) {
                    config.properties.insert(k.clone(), v.clone());
                }
            }
            config.transactional_id = Some(group.clone());
            Some(TransactionalProducer::new(config).await?)
        };
        let topic: Arc<str> = self.dlq_topic.as_str().into();
        let mut open: HashSet<i32> = ids.iter().copied().collect();
        let mut pacer = Pacer::new(self.rate);
        // Rate-limited: about four transactions a second, each waiting its
        // turn, so that the copies arrive at the rate on average.
        let max_batch = match self.rate {
            Some(r) => ((r / 4.0).ceil() as usize).clamp(1, self.max_batch),
            None => self.max_batch,
        };
        let mut done = false;
        while !done {
            // One batch: up to `max_batch` records read, one transaction.
            let mut next: BTreeMap<i32, i64> = BTreeMap::new();
            let mut copies = Vec::new();
            let batch_started = Instant::now();
            while copies.len() < max_batch
                && !open.is_empty()
                && batch_started.elapsed() < Duration::from_secs(1)
            {
                if self
                    .limit
                    .is_some_and(|l| state.redriven + copies.len() as u64 >= l)
                {
                    open.clear();
                    break;
                }
                let msg =
                    match tokio::time::timeout(Duration::from_millis(200), consumer.recv()).await {
                        Ok(Ok(msg)) => msg,
                        Ok(Err(KafkaError::PartitionEOF(p))) => {
                            open.remove(&p);
                            continue;
                        }
                        Ok(Err(e)) => {
                            return Err(kafka(&self.properties, "read the dead-letter topic", e))
                        }
                        Err(_) => continue,
                    };
                state.scanned += 1;
                next.insert(msg.partition(), msg.offset() + 1);
                let record = to_consumed_record(&msg, topic.clone());
                match DeadLetter::from_record(&record) {
                    Err(not_one) => {
                        tracing::warn!(error = %not_one, "left alone");
                        state.not_dead_letters += 1;
                    }
                    Ok(dl) if !self.filter.matches(&dl) => state.skipped += 1,
                    Ok(dl) if dl.omitted => {
                        tracing::warn!(
                            topic = %dl.topic, partition = dl.partition, offset = dl.offset,
                            "a reference dead letter has no bytes to redrive: the original is at {}[{}]@{}",
                            dl.original_topic, dl.original_partition, dl.original_offset
                        );
                        state.omitted += 1;
                    }
                    Ok(dl) => {
                        let to = self.to.as_deref().unwrap_or(&dl.original_topic);
                        copies.push(dl.redrive_record(to, self.note.as_deref()));
                    }
                }
            }
            done = open.is_empty();
            if next.is_empty() {
                continue;
            }
            let selected = copies.len() as u64;
            if let Some(producer) = &producer {
                pacer.wait_for(copies.len()).await;
                producer.begin()?;
                let sent =
                    futures_util::future::join_all(copies.iter().map(|c| producer.send(c))).await;
                if let Some(e) = sent.into_iter().find_map(Result::err) {
                    let _ = producer.abort().await;
                    return Err(e.into());
                }
                let mut offsets = TopicPartitionList::new();
                for (p, o) in &next {
                    offsets
                        .add_partition_offset(&self.dlq_topic, *p, Offset::Offset(*o))
                        .map_err(|e| kafka(&self.properties, "record the offsets", e))?;
                }
                let group_md = consumer
                    .group_metadata()
                    .ok_or_else(|| DlqError::Config("the consumer has no group metadata".into()))?;
                producer.send_offsets(offsets, group_md).await?;
                loop {
                    match producer.commit().await {
                        Err(TransactionError::TimedOut(_)) => continue,
                        r => break r?,
                    }
                }
            }
            state.redriven += selected;
            state.elapsed = started.elapsed();
            progress(&state);
        }
        state.elapsed = started.elapsed();
        Ok(state)
    }
}

/// Assigns every partition of `topic` to `consumer` from its group's
/// committed offset (or the beginning); returns the partitions and how many
/// offsets lie between those positions and the ends.
fn assign_from_committed(
    consumer: &StreamConsumer<ReaderContext>,
    properties: &Properties,
    topic: &str,
) -> Result<(Vec<i32>, u64), DlqError> {
    let ids = partitions(consumer, properties, topic)?;
    let mut tpl = TopicPartitionList::new();
    for p in &ids {
        tpl.add_partition(topic, *p);
    }
    let committed = consumer
        .committed_offsets(tpl, CALL_TIMEOUT)
        .map_err(|e| kafka(properties, "read the redrive's committed offsets", e))?;
    let mut total = 0;
    let mut assign = TopicPartitionList::new();
    for p in &ids {
        let (low, high) = consumer
            .fetch_watermarks(topic, *p, CALL_TIMEOUT)
            .map_err(|e| kafka(properties, "read the watermarks", e))?;
        let from = match committed.find_partition(topic, *p).map(|e| e.offset()) {
            Some(Offset::Offset(o)) => o.max(low),
            _ => low,
        };
        total += u64::try_from(high - from).unwrap_or(0);
        assign
            .add_partition_offset(topic, *p, Offset::Offset(from))
            .map_err(|e| kafka(properties, "assign", e))?;
    }
    consumer
        .assign(&assign)
        .map_err(|e| kafka(properties, "assign the dead-letter topic", e))?;
    Ok((ids, total))
}

/// Keeps sends at `rate` per second on average: a group of `n` sends
/// waits until the previous ones have had their `1 / rate` seconds each.
struct Pacer {
    every: Option<Duration>,
    next: Instant,
}

impl Pacer {
    fn new(rate: Option<f64>) -> Self {
        Pacer {
            every: rate.map(|r| Duration::from_secs_f64(1.0 / r)),
            next: Instant::now(),
        }
    }

    async fn wait_for(&mut self, n: usize) {
        let Some(every) = self.every else { return };
        if n == 0 {
            return;
        }
        let now = Instant::now();
        if self.next > now {
            tokio::time::sleep_until(self.next.into()).await;
        }
        self.next = self.next.max(now) + every * n as u32;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dead_letter_record(extra: &[(&str, &str)]) -> ConsumedRecord {
        let mut b = ConsumedRecord::builder("orders.dlq", 2, 9)
            .key(Some(Bytes::from_static(b"k")))
            .payload(Some(Bytes::from_static(b"\xff\x00payload")));
        b = b.header(RawHeader::new("authorization", "Bearer s3cr3t"));
        b = b.header(RawHeader::new("kt-redrive-note", "an earlier redrive"));
        b = b.header(RawHeader {
            key: Bytes::from_static(b"nul\xff"),
            value: None,
        });
        for (k, v) in [
            ("kt-dlq-original-topic", "orders"),
            ("kt-dlq-original-partition", "1"),
            ("kt-dlq-original-offset", "41"),
            ("kt-dlq-attempts", "3"),
            ("kt-dlq-failed-by", "schema"),
            ("kt-dlq-reason", "invalid"),
            ("kt-dlq-status", "422"),
            ("kt-dlq-time", "1764930000000"),
        ]
        .iter()
        .chain(extra)
        {
            b = b.header(RawHeader::new(k.to_string(), v.to_string()));
        }
        b.build()
    }

    #[test]
    fn a_dead_letter_splits_into_provenance_and_the_original_bytes() {
        let dl = DeadLetter::from_record(&dead_letter_record(&[])).unwrap();
        assert_eq!(
            (
                dl.original_topic.as_str(),
                dl.original_partition,
                dl.original_offset
            ),
            ("orders", 1, 41)
        );
        assert_eq!((dl.attempts, dl.status), (Some(3), Some(422)));
        assert_eq!(dl.reason.as_deref(), Some("invalid"));
        assert_eq!(
            dl.dead_lettered_at(),
            Some(UNIX_EPOCH + Duration::from_millis(1_764_930_000_000))
        );
        let names: Vec<&[u8]> = dl.headers.iter().map(|h| &h.key[..]).collect();
        assert_eq!(
            names,
            [&b"authorization"[..], b"kt-redrive-note", b"nul\xff"]
        );
        assert!(!dl.omitted);
        let shown = format!("{dl:?}");
        assert!(!shown.contains("s3cr3t"), "{shown}");
    }

    #[test]
    fn a_record_without_provenance_or_with_a_malformed_one_is_named() {
        let plain = ConsumedRecord::builder("orders.dlq", 0, 3).build();
        let err = DeadLetter::from_record(&plain).unwrap_err();
        assert_eq!(err.problem, "no `kt-dlq-original-topic` header");
        assert_eq!((err.partition, err.offset), (0, 3));
        let bad = dead_letter_record(&[("kt-dlq-attempts", "many")]);
        let err = DeadLetter::from_record(&bad).unwrap_err();
        assert_eq!(err.problem, "`kt-dlq-attempts` is not a number: \"many\"");
    }

    #[test]
    fn the_copy_keeps_the_original_bytes_and_replaces_earlier_redrive_headers() {
        let dl = DeadLetter::from_record(&dead_letter_record(&[])).unwrap();
        let copy = dl.redrive_record("orders", Some("fix 12"));
        assert_eq!(copy.topic, "orders");
        assert_eq!(copy.key, dl.key);
        assert_eq!(copy.payload.as_deref(), Some(&b"\xff\x00payload"[..]));
        let pairs: Vec<(&[u8], Option<&[u8]>)> = copy
            .headers
            .iter()
            .map(|h| (&h.key[..], h.value.as_deref()))
            .collect();
        assert_eq!(
            pairs[0],
            (&b"authorization"[..], Some(&b"Bearer s3cr3t"[..]))
        );
        assert_eq!(pairs[1], (&b"nul\xff"[..], None));
        let redrive: HashMap<&[u8], &[u8]> =
            pairs[2..].iter().map(|(k, v)| (*k, v.unwrap())).collect();
        assert_eq!(redrive[&b"kt-redrive-source-topic"[..]], b"orders.dlq");
        assert_eq!(redrive[&b"kt-redrive-source-partition"[..]], b"2");
        assert_eq!(redrive[&b"kt-redrive-source-offset"[..]], b"9");
        assert_eq!(redrive[&b"kt-redrive-note"[..]], b"fix 12");
        assert_eq!(redrive[&b"kt-redrive-reason"[..]], b"invalid");
        assert_eq!(redrive[&b"kt-redrive-attempts"[..]], b"3");
        assert!(pairs[2..]
            .iter()
            .all(|(k, _)| k.starts_with(b"kt-redrive-")));
        assert_eq!(
            pairs
                .iter()
                .filter(|(k, _)| *k == b"kt-redrive-note")
                .count(),
            1,
            "the earlier note is replaced"
        );
    }

    #[test]
    fn filters_select_by_every_field_set() {
        let dl = DeadLetter::from_record(&dead_letter_record(&[])).unwrap();
        let at = dl.dead_lettered_at().unwrap();
        let f = |f: Filter| f.matches(&dl);
        assert!(f(Filter::default()));
        assert!(f(Filter {
            reason: Some("invalid".into()),
            failed_by: Some("schema".into()),
            original_topic: Some("orders".into()),
            since: Some(at),
            until: Some(at + Duration::from_millis(1)),
        }));
        assert!(!f(Filter {
            reason: Some("expired".into()),
            ..Filter::default()
        }));
        assert!(!f(Filter {
            original_topic: Some("payments".into()),
            ..Filter::default()
        }));
        assert!(!f(Filter {
            until: Some(at),
            ..Filter::default()
        }));
        assert!(!f(Filter {
            since: Some(at + Duration::from_millis(1)),
            ..Filter::default()
        }));
    }

    #[test]
    fn the_derived_group_is_stable_and_differs_by_filter_and_destination() {
        let p = Properties::new();
        let invalid = Filter {
            reason: Some("invalid".into()),
            ..Filter::default()
        };
        let a = Redrive::new(p.clone(), "orders.dlq").filter(invalid.clone());
        assert_eq!(a.group_id(), a.clone().group_id());
        assert!(a.group_id().starts_with("kafka-tower-redrive.orders.dlq."));
        assert_ne!(
            a.group_id(),
            Redrive::new(p.clone(), "orders.dlq").group_id()
        );
        assert_ne!(a.group_id(), a.clone().to("orders.retry").group_id());
        assert_eq!(a.clone().group("mine").group_id(), "mine");
        // Pinned (FNV-1a of six absent fields, computed independently): a
        // release that derived another group would redrive again what an
        // earlier one did.
        assert_eq!(
            Redrive::new(p, "orders.dlq").group_id(),
            "kafka-tower-redrive.orders.dlq.d7e4fcfa299d713d"
        );
    }
}
