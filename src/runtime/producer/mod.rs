//! See [`Producer`].

use std::collections::HashMap;
use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::{Buf as _, Bytes, BytesMut};
use http::{Method, Request};
use http_body_util::BodyExt as _;
use rdkafka::error::KafkaError;
use rdkafka::producer::future_producer::{DeliveryFuture, OwnedDeliveryResult};
use rdkafka::producer::{FutureProducer, FutureRecord, Producer as _};
use rdkafka::types::RDKafkaErrorCode;
use tower::Service;

mod config;

pub use config::ProducerConfig;

use super::access::{AccessWatch, ClusterRefused, WatchedContext};
use super::native::write_headers;
use crate::context::DEFAULT_HEADERS;
use crate::mapping::{is_valid_topic_name, MappingError};
use crate::{BoxError, OutgoingRecord};

/// Where the broker stored a record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Delivery {
    /// The topic.
    pub topic: String,
    /// The partition.
    pub partition: i32,
    /// The offset within the partition.
    pub offset: i64,
}

/// Why a record was not produced. Nothing was sent unless the variant says
/// the broker refused it.
#[derive(Debug)]
#[non_exhaustive]
pub enum ProduceError {
    /// The configuration is unusable (names the property).
    Config(String),
    /// The request path does not name a legal topic.
    InvalidTopic(String),
    /// A propagated header (Authorization, correlation id, trace context …)
    /// has a value HTTP forbids (CR, LF, NUL, …): refused, not altered.
    InvalidHeader {
        /// The header name.
        name: String,
    },
    /// The payload is larger than the producer's `message.max.bytes`.
    MessageTooLarge {
        /// The record's size in bytes (payload, or payload so far).
        size: usize,
        /// The producer's `message.max.bytes`.
        limit: usize,
    },
    /// The topic does not exist (and the broker does not create it).
    UnknownTopic(String),
    /// The request body could not be read.
    Body(BoxError),
    /// The record was not acknowledged within the producer's delivery
    /// timeout (`delivery.timeout.ms`, alias `message.timeout.ms`): the
    /// broker was unreachable, or the partition had no leader, that long.
    /// librdkafka retried it until then (idempotently: no duplicate from
    /// those retries). Whether the broker wrote it is unknown; sending it
    /// again may duplicate it.
    DeliveryTimedOut {
        /// The record's topic.
        topic: String,
    },
    /// librdkafka or the broker refused the record.
    Kafka(KafkaError),
    /// The cluster refused this producer (credentials, TLS); no record can
    /// be sent with this configuration. Records queued when the refusal was
    /// noticed are purged from the producer's queue: none of them is sent
    /// later behind the caller's back.
    Refused(ClusterRefused),
}

impl fmt::Display for ProduceError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ProduceError::Config(m) => write!(f, "invalid producer configuration: {m}"),
            ProduceError::InvalidTopic(t) => write!(f, "invalid topic: {t}"),
            ProduceError::InvalidHeader { name } => write!(
                f,
                "header `{name}` has a value HTTP forbids (CR, LF, NUL or another control byte); nothing was sent"
            ),
            ProduceError::MessageTooLarge { size, limit } => write!(
                f,
                "record of {size} bytes exceeds the producer's message.max.bytes of {limit} bytes; nothing was sent"
            ),
            ProduceError::UnknownTopic(t) => write!(f, "topic {t:?} does not exist; nothing was sent"),
            ProduceError::Body(e) => write!(f, "cannot read the request body: {e}"),
            ProduceError::DeliveryTimedOut { topic } => write!(
                f,
                "record to {topic:?} not acknowledged within the producer's delivery.timeout.ms \
                 (broker unreachable or no partition leader); it may or may not have been written"
            ),
            ProduceError::Kafka(e) => write!(f, "Kafka refused the record: {e}"),
            ProduceError::Refused(e) => write!(f, "nothing was sent: {e}"),
        }
    }
}

impl std::error::Error for ProduceError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            ProduceError::Body(e) => Some(&**e),
            ProduceError::Kafka(e) => Some(e),
            ProduceError::Refused(e) => Some(e),
            _ => None,
        }
    }
}

impl From<MappingError> for ProduceError {
    fn from(e: MappingError) -> Self {
        ProduceError::InvalidTopic(e.to_string())
    }
}

/// [`Producer`]: producing is a `tower::Service` over `http::Request` too.
///
/// The request's path names the topic (`/<topic>`), the body is the
/// payload (`DELETE` with an empty body produces a tombstone), headers become
/// record headers — the [`RawHeaders`](crate::RawHeaders) extension wins where
/// present, so a forwarded record is byte-exact — and the key, partition and
/// timestamp come from an [`OutgoingRecord`] or [`RecordMeta`](crate::RecordMeta)
/// extension (see [`OutgoingRecord::from_parts`]). The response — sent once
/// the broker acknowledged the record — is `201 Created` with the
/// [`Delivery`] (topic, partition, offset) in its extensions and in the
/// `kafka-partition` / `kafka-offset` headers; its body is empty. An
/// `http::Response` keeps every tower-http layer applicable.
///
/// Because it is a `Service`, tower layers apply to producing unchanged:
/// timeouts, retries, rate limits, `SetRequestHeader`, and
/// [`InjectContextLayer`](crate::context::InjectContextLayer), which puts the
/// caller's JWT, correlation id and trace context into the record headers.
///
/// ```no_run
/// use kafka_tower::context::InjectContextLayer;
/// use kafka_tower::runtime::{Producer, ProducerConfig};
/// use tower::{Layer, ServiceExt};
///
/// # async fn run() -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
/// let producer = Producer::new(ProducerConfig::new("127.0.0.1:9092"))?;
/// let producer = InjectContextLayer::new().layer(producer);
/// let req = http::Request::post("/orders")
///     .header("content-type", "application/json")
///     .extension(kafka_tower::OutgoingRecord { key: Some("order-7".into()), ..Default::default() })
///     .body(String::from(r#"{"total":10}"#))?;
/// let res = producer.oneshot(req).await?;
/// let delivery = res.extensions().get::<kafka_tower::runtime::Delivery>().unwrap();
/// println!("stored at {}[{}]@{}", delivery.topic, delivery.partition, delivery.offset);
/// # Ok(()) }
/// ```
///
/// Produces records; a cheap-to-clone handle (the librdkafka producer is
/// shared). See above.
#[derive(Clone)]
pub struct Producer {
    inner: Arc<Inner>,
}

struct Inner {
    producer: FutureProducer<WatchedContext>,
    access: Arc<AccessWatch>,
    max_message_bytes: usize,
    check_topics: bool,
    send_timeout: Duration,
    // One check per topic, shared by concurrent first sends: they all wait
    // for the same lookup and then enqueue in the order they are polled, so
    // the check never reorders records (separate lookups finishing in any
    // order did).
    known_topics: Mutex<HashMap<String, Arc<tokio::sync::OnceCell<()>>>>,
}

impl fmt::Debug for Producer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Producer")
            .field("max_message_bytes", &self.inner.max_message_bytes)
            .finish()
    }
}

impl Producer {
    /// A producer for `config` (idempotent unless configured otherwise).
    pub fn new(config: ProducerConfig) -> Result<Producer, ProduceError> {
        config
            .validate()
            .map_err(|e| ProduceError::Config(e.to_string()))?;
        let context = WatchedContext::default();
        let access = context.access.clone();
        let producer: FutureProducer<WatchedContext> = config
            .client_config()
            .create_with_context(context)
            .map_err(|e| ProduceError::Config(config.properties.redact(&e.to_string())))?;
        Ok(Producer {
            inner: Arc::new(Inner {
                producer,
                access,
                max_message_bytes: config.max_message_bytes(),
                check_topics: config.check_topics,
                send_timeout: config.send_timeout,
                known_topics: Mutex::new(HashMap::new()),
            }),
        })
    }

    /// The underlying rdkafka producer.
    pub fn rdkafka(&self) -> &FutureProducer<WatchedContext> {
        &self.inner.producer
    }

    /// Sends one record and waits for the broker's acknowledgement.
    ///
    /// Fails at once with [`ProduceError::Refused`] when the cluster
    /// refuses the producer's credentials or TLS handshake, instead of
    /// waiting for `message.timeout.ms`.
    pub async fn send(&self, record: OutgoingRecord) -> Result<Delivery, ProduceError> {
        validate_record(&record, self.inner.max_message_bytes)?;
        let access = &self.inner.access;
        let refused_or = |e: ProduceError| match access.refused() {
            // A lookup or delivery that failed because of the refusal.
            Some(r) => ProduceError::Refused(r),
            None => e,
        };
        if let Some(r) = access.refused() {
            return Err(ProduceError::Refused(r));
        }
        if self.inner.check_topics {
            tokio::select! {
                biased;
                checked = self.ensure_topic(&record.topic) => checked.map_err(refused_or)?,
                // Nothing was queued yet.
                refused = access.wait_refused() => return Err(ProduceError::Refused(refused)),
            }
        }
        let delivery = enqueue(&self.inner.producer, &record, self.inner.send_timeout)
            .await
            .map_err(refused_or)?;
        let mut delivery = std::pin::pin!(delivery);
        let answer = tokio::select! {
            biased;
            answer = &mut delivery => answer,
            _ = access.wait_refused() => {
                // Records still queued are purged, so that none is sent
                // later behind the caller's back; one already in flight
                // gets the broker's answer, which is what is returned.
                self.inner.producer.purge(
                    rdkafka::producer::PurgeConfig::default().queue().non_blocking(),
                );
                delivery.await
            }
        };
        delivered(answer, &record).map_err(refused_or)
    }

    /// Waits until every queued record is delivered (or `timeout` passes).
    pub fn flush(&self, timeout: Duration) -> Result<(), ProduceError> {
        self.inner
            .producer
            .flush(timeout)
            .map_err(ProduceError::Kafka)
    }

    async fn ensure_topic(&self, topic: &str) -> Result<(), ProduceError> {
        let cell = {
            let mut known = self
                .inner
                .known_topics
                .lock()
                .unwrap_or_else(|p| p.into_inner());
            match known.get(topic) {
                Some(cell) if cell.initialized() => return Ok(()),
                Some(cell) => cell.clone(),
                None => {
                    let cell = Arc::new(tokio::sync::OnceCell::new());
                    known.insert(topic.to_owned(), cell.clone());
                    cell
                }
            }
        };
        // A missing topic is an error, which the cell does not keep: the
        // next send looks again (the topic may have been created since).
        cell.get_or_try_init(|| async {
            let producer = self.inner.producer.clone();
            let t = topic.to_owned();
            let exists = tokio::task::spawn_blocking(move || topic_exists(&producer, &t))
                .await
                .map_err(|e| ProduceError::Config(format!("metadata lookup failed: {e}")))??;
            if exists {
                Ok(())
            } else {
                Err(ProduceError::UnknownTopic(topic.to_owned()))
            }
        })
        .await
        .map(|_| ())
    }
}

fn topic_exists<C: rdkafka::ClientContext>(
    producer: &rdkafka::producer::FutureProducer<C>,
    topic: &str,
) -> Result<bool, ProduceError> {
    let md = producer
        .client()
        .fetch_metadata(Some(topic), Duration::from_secs(10))
        .map_err(ProduceError::Kafka)?;
    Ok(md
        .topics()
        .iter()
        .any(|t| t.name() == topic && t.error().is_none() && !t.partitions().is_empty()))
}

/// Checks a record before anything is sent: topic name, propagated header
/// values, size.
pub(crate) fn validate_record(
    record: &OutgoingRecord,
    max_message_bytes: usize,
) -> Result<(), ProduceError> {
    if !is_valid_topic_name(&record.topic) {
        return Err(ProduceError::InvalidTopic(format!(
            "{:?} is not a legal topic name (1-249 characters of [a-zA-Z0-9._-])",
            record.topic
        )));
    }
    for h in record.headers.iter() {
        let propagated = DEFAULT_HEADERS
            .iter()
            .any(|n| h.key.eq_ignore_ascii_case(n.as_str().as_bytes()));
        if propagated {
            if let Some(v) = &h.value {
                if http::HeaderValue::from_bytes(v).is_err() {
                    return Err(ProduceError::InvalidHeader {
                        name: String::from_utf8_lossy(&h.key).into_owned(),
                    });
                }
            }
        }
    }
    let size =
        record.payload.as_ref().map_or(0, |p| p.len()) + record.key.as_ref().map_or(0, |k| k.len());
    if size > max_message_bytes {
        return Err(ProduceError::MessageTooLarge {
            size,
            limit: max_message_bytes,
        });
    }
    Ok(())
}

pub(crate) async fn send_with<C>(
    producer: &FutureProducer<C>,
    record: &OutgoingRecord,
    queue_timeout: Duration,
) -> Result<Delivery, ProduceError>
where
    C: rdkafka::ClientContext + 'static,
{
    let delivery = enqueue(producer, record, queue_timeout).await?;
    delivered(delivery.await, record)
}

/// Puts `record` in the producer's queue, waiting up to `queue_timeout`
/// while the queue is full; the future resolves with the broker's answer.
pub(crate) async fn enqueue<C>(
    producer: &FutureProducer<C>,
    record: &OutgoingRecord,
    queue_timeout: Duration,
) -> Result<DeliveryFuture, ProduceError>
where
    C: rdkafka::ClientContext + 'static,
{
    let mut fr: FutureRecord<'_, [u8], [u8]> =
        FutureRecord::to(&record.topic).headers(write_headers(&record.headers));
    if let Some(k) = &record.key {
        fr = fr.key(&k[..]);
    }
    if let Some(p) = &record.payload {
        fr = fr.payload(&p[..]);
    }
    if let Some(p) = record.partition {
        fr = fr.partition(p);
    }
    if let Some(t) = record.timestamp {
        fr = fr.timestamp(t);
    }
    let started = std::time::Instant::now();
    loop {
        match producer.send_result(fr) {
            Ok(delivery) => return Ok(delivery),
            Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), back))
                if started.elapsed() < queue_timeout =>
            {
                fr = back;
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err((e, _)) => return Err(produce_error(e, record)),
        }
    }
}

/// The broker's answer to one record.
fn delivered<Canceled>(
    answer: Result<OwnedDeliveryResult, Canceled>,
    record: &OutgoingRecord,
) -> Result<Delivery, ProduceError> {
    match answer {
        Ok(Ok(d)) => Ok(Delivery {
            topic: record.topic.clone(),
            partition: d.partition,
            offset: d.offset,
        }),
        Ok(Err((e, _))) => Err(produce_error(e, record)),
        // The producer holds the sender until it reports; it cannot go away
        // while a send borrows it.
        Err(_) => Err(ProduceError::Kafka(KafkaError::Canceled)),
    }
}

/// The broker's answer to one record of `topic` with a payload of `size`
/// bytes, when only the answer's outcome matters.
pub(crate) fn acknowledged<Canceled>(
    answer: Result<OwnedDeliveryResult, Canceled>,
    topic: &str,
    size: usize,
) -> Result<(), ProduceError> {
    match answer {
        Ok(Ok(_)) => Ok(()),
        Ok(Err((e, _))) => Err(produce_error_of(e, topic, size)),
        Err(_) => Err(ProduceError::Kafka(KafkaError::Canceled)),
    }
}

fn produce_error(e: KafkaError, record: &OutgoingRecord) -> ProduceError {
    produce_error_of(
        e,
        &record.topic,
        record.payload.as_ref().map_or(0, |p| p.len()),
    )
}

fn produce_error_of(e: KafkaError, topic: &str, size: usize) -> ProduceError {
    match e.rdkafka_error_code() {
        Some(RDKafkaErrorCode::MessageSizeTooLarge) => ProduceError::MessageTooLarge {
            size,
            limit: usize::MAX,
        },
        Some(RDKafkaErrorCode::UnknownTopicOrPartition | RDKafkaErrorCode::UnknownTopic) => {
            ProduceError::UnknownTopic(topic.to_owned())
        }
        Some(RDKafkaErrorCode::MessageTimedOut) => ProduceError::DeliveryTimedOut {
            topic: topic.to_owned(),
        },
        _ => ProduceError::Kafka(e),
    }
}

/// Collects a request body, refusing it as soon as it exceeds `limit`.
pub(crate) async fn collect_body<B>(body: B, limit: usize) -> Result<Bytes, ProduceError>
where
    B: http_body::Body,
    B::Error: Into<BoxError>,
{
    let mut body = std::pin::pin!(body);
    let mut buf = BytesMut::new();
    let mut single: Option<Bytes> = None;
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|e| ProduceError::Body(e.into()))?;
        if let Ok(mut data) = frame.into_data() {
            let len = data.remaining();
            let total = buf.len() + single.as_ref().map_or(0, |b| b.len()) + len;
            if total > limit {
                return Err(ProduceError::MessageTooLarge { size: total, limit });
            }
            if single.is_none() && buf.is_empty() {
                single = Some(data.copy_to_bytes(len));
            } else {
                if let Some(first) = single.take() {
                    buf.extend_from_slice(&first);
                }
                while data.has_remaining() {
                    let chunk = data.chunk();
                    buf.extend_from_slice(chunk);
                    let n = chunk.len();
                    data.advance(n);
                }
            }
        }
    }
    Ok(single.unwrap_or_else(|| buf.freeze()))
}

/// Maps a request to a record: the body collected (up to the size limit),
/// `DELETE` with an empty body as a tombstone.
pub(crate) async fn request_to_record<B>(
    req: Request<B>,
    limit: usize,
) -> Result<OutgoingRecord, ProduceError>
where
    B: http_body::Body,
    B::Error: Into<BoxError>,
{
    let (parts, body) = req.into_parts();
    let payload = collect_body(body, limit).await?;
    let payload = if parts.method == Method::DELETE && payload.is_empty() {
        None
    } else {
        Some(payload)
    };
    Ok(OutgoingRecord::from_parts(parts, payload)?)
}

impl<B> Service<Request<B>> for Producer
where
    B: http_body::Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<BoxError>,
{
    type Response = http::Response<http_body_util::Empty<Bytes>>;
    type Error = ProduceError;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, ProduceError>> + Send>>;

    #[inline]
    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), ProduceError>> {
        // librdkafka queues internally; a full queue is waited on in `send`
        // for at most `send_timeout`.
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: Request<B>) -> Self::Future {
        let this = self.clone();
        Box::pin(async move {
            let record = request_to_record(req, this.inner.max_message_bytes).await?;
            let delivery = this.send(record).await?;
            Ok(delivery_response(delivery))
        })
    }
}

/// `201 Created` carrying the delivery in extensions and headers.
pub(crate) fn delivery_response(
    delivery: Delivery,
) -> http::Response<http_body_util::Empty<Bytes>> {
    let mut res = http::Response::new(http_body_util::Empty::new());
    *res.status_mut() = http::StatusCode::CREATED;
    let h = res.headers_mut();
    h.insert(
        "kafka-partition",
        http::HeaderValue::from(delivery.partition),
    );
    h.insert("kafka-offset", http::HeaderValue::from(delivery.offset));
    res.extensions_mut().insert(delivery);
    res
}
