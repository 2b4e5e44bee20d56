//! [`Metrics`]: the metric families of one service, registered in a
//! Prometheus registry, and the layers and endpoint that use them.

use std::fmt;
use std::sync::Arc;

use prometheus::{HistogramOpts, HistogramVec, IntCounterVec, IntGaugeVec, Opts, Registry};

use crate::endpoint::MetricsEndpoint;
use crate::labels::{LabelCache, LabelLimit};
use crate::outcome::Outcome;
use crate::producer::{ProducerHandles, ProducerMetricsLayer};
use crate::service::{ClientHandles, ServiceMetricsLayer, TopicHandles};

/// The default metric name prefix.
pub const DEFAULT_PREFIX: &str = "kafka_tower";

/// Default handling-latency buckets, in seconds: 100 µs to 10 s.
pub const DEFAULT_BUCKETS: &[f64] = &[
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
    5.0, 10.0,
];

/// A metric could not be created or registered (a bad prefix, a name
/// already registered with another shape). The message names it.
#[derive(Debug)]
pub struct MetricsError {
    message: String,
}

impl MetricsError {
    pub(crate) fn new(message: impl fmt::Display) -> Self {
        MetricsError {
            message: message.to_string(),
        }
    }
}

impl fmt::Display for MetricsError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for MetricsError {}

impl From<prometheus::Error> for MetricsError {
    fn from(e: prometheus::Error) -> Self {
        MetricsError::new(e)
    }
}

/// Configures [`Metrics`]. See the configuration table in the [crate
/// docs](crate).
#[derive(Debug, Clone)]
pub struct MetricsBuilder {
    prefix: String,
    service_id: String,
    clients: LabelLimit,
    topics: LabelLimit,
    buckets: Vec<f64>,
    registry: Option<Registry>,
}

impl Default for MetricsBuilder {
    fn default() -> Self {
        MetricsBuilder {
            prefix: DEFAULT_PREFIX.into(),
            service_id: "unknown".into(),
            clients: LabelLimit::cap(100),
            topics: LabelLimit::cap(1000),
            buckets: DEFAULT_BUCKETS.to_vec(),
            registry: None,
        }
    }
}

impl MetricsBuilder {
    /// The common prefix of every metric name (default `kafka_tower`).
    pub fn prefix(mut self, prefix: impl Into<String>) -> Self {
        self.prefix = prefix.into();
        self
    }

    /// The `service` label of every metric: the service view's id.
    pub fn service_id(mut self, id: impl Into<String>) -> Self {
        self.service_id = id.into();
        self
    }

    /// Bounds the `client` label of the client view (default: the first
    /// 100 client ids; the rest count as `other`).
    pub fn client_labels(mut self, limit: LabelLimit) -> Self {
        self.clients = limit;
        self
    }

    /// Bounds the `topic` label (default: the first 1000 topics or route
    /// segments; the rest count as `other`).
    pub fn topic_labels(mut self, limit: LabelLimit) -> Self {
        self.topics = limit;
        self
    }

    /// Buckets of the latency histograms, in seconds.
    pub fn buckets(mut self, buckets: impl Into<Vec<f64>>) -> Self {
        self.buckets = buckets.into();
        self
    }

    /// Registers into `registry` instead of a new one.
    pub fn registry(mut self, registry: Registry) -> Self {
        self.registry = Some(registry);
        self
    }

    /// Creates and registers the metric families.
    pub fn build(self) -> Result<Metrics, MetricsError> {
        let registry = self.registry.clone().unwrap_or_default();
        let p = &self.prefix;
        let opts = |name: &str, help: &str| {
            Opts::new(format!("{p}_{name}"), help).const_label("service", &self.service_id)
        };
        let records = IntCounterVec::new(
            opts(
                "records_total",
                "Records (or HTTP requests) handled, by topic and outcome.",
            ),
            &["topic", "outcome"],
        )?;
        let duration = HistogramVec::new(
            HistogramOpts::from(opts(
                "handling_duration_seconds",
                "Time the service took to answer, by topic.",
            ))
            .buckets(self.buckets.clone()),
            &["topic"],
        )?;
        let in_flight = IntGaugeVec::new(
            opts(
                "records_in_flight",
                "Records (or requests) being handled right now, by topic.",
            ),
            &["topic"],
        )?;
        let client_records = IntCounterVec::new(
            opts(
                "client_records_total",
                "Records (or requests) handled, by client id (from the caller's token) and outcome.",
            ),
            &["client", "outcome"],
        )?;
        let sends = IntCounterVec::new(
            opts("producer_sends_total", "Records handed to the producer."),
            &["topic"],
        )?;
        let acks = IntCounterVec::new(
            opts("producer_acks_total", "Records the broker acknowledged."),
            &["topic"],
        )?;
        let errors = IntCounterVec::new(
            opts(
                "producer_errors_total",
                "Records the producer failed to deliver.",
            ),
            &["topic"],
        )?;
        let send_duration = HistogramVec::new(
            HistogramOpts::from(opts(
                "producer_send_duration_seconds",
                "Time from send to acknowledgement (or error).",
            ))
            .buckets(self.buckets.clone()),
            &["topic"],
        )?;
        for c in [
            Box::new(records.clone()) as Box<dyn prometheus::core::Collector>,
            Box::new(duration.clone()),
            Box::new(in_flight.clone()),
            Box::new(client_records.clone()),
            Box::new(sends.clone()),
            Box::new(acks.clone()),
            Box::new(errors.clone()),
            Box::new(send_duration.clone()),
        ] {
            registry.register(c)?;
        }

        let topics = {
            let (records, duration, in_flight) =
                (records.clone(), duration.clone(), in_flight.clone());
            LabelCache::new(self.topics.clone(), move |topic: &str| TopicHandles {
                outcomes: Outcome::ALL.map(|o| records.with_label_values(&[topic, o.as_str()])),
                duration: duration.with_label_values(&[topic]),
                in_flight: in_flight.with_label_values(&[topic]),
            })
        };
        let clients = {
            let client_records = client_records.clone();
            LabelCache::new(self.clients.clone(), move |client: &str| ClientHandles {
                outcomes: Outcome::ALL
                    .map(|o| client_records.with_label_values(&[client, o.as_str()])),
            })
        };
        let producer_topics =
            LabelCache::new(self.topics.clone(), move |topic: &str| ProducerHandles {
                sends: sends.with_label_values(&[topic]),
                acks: acks.with_label_values(&[topic]),
                errors: errors.with_label_values(&[topic]),
                duration: send_duration.with_label_values(&[topic]),
            });
        Ok(Metrics {
            inner: Arc::new(Inner {
                registry,
                prefix: self.prefix,
                service_id: self.service_id,
                topics,
                clients,
                producer_topics,
            }),
        })
    }
}

/// The metric families of one service, registered in a [`Registry`].
/// Cheap to clone; every layer made from it counts into the same series.
#[derive(Clone)]
pub struct Metrics {
    pub(crate) inner: Arc<Inner>,
}

pub(crate) struct Inner {
    pub(crate) registry: Registry,
    #[cfg_attr(not(feature = "runtime"), allow(dead_code))]
    pub(crate) prefix: String,
    pub(crate) service_id: String,
    pub(crate) topics: LabelCache<TopicHandles>,
    pub(crate) clients: LabelCache<ClientHandles>,
    pub(crate) producer_topics: LabelCache<ProducerHandles>,
}

/// A handle from a borrowed one (an `Arc` clone), so that constructors take
/// `Metrics` or `&Metrics` alike.
impl From<&Metrics> for Metrics {
    fn from(m: &Metrics) -> Self {
        m.clone()
    }
}

impl fmt::Debug for Metrics {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Metrics")
            .field("service_id", &self.inner.service_id)
            .finish_non_exhaustive()
    }
}

impl Metrics {
    /// Starts a configuration.
    pub fn builder() -> MetricsBuilder {
        MetricsBuilder::default()
    }

    /// The registry the metrics live in.
    pub fn registry(&self) -> &Registry {
        &self.inner.registry
    }

    /// The service view and client view of a consumer's (or an HTTP
    /// route's) service.
    pub fn layer(&self) -> ServiceMetricsLayer {
        ServiceMetricsLayer {
            metrics: self.clone(),
        }
    }

    /// Sends, acknowledgements and errors of a [`Producer`]-like service
    /// (`POST /<topic>`, `2xx` once acknowledged).
    ///
    /// [`Producer`]: https://docs.rs/kafka-tower/latest/kafka_tower/runtime/struct.Producer.html
    pub fn producer_layer(&self) -> ProducerMetricsLayer {
        ProducerMetricsLayer {
            metrics: self.clone(),
        }
    }

    /// A `tower::Service` answering every request with the registry in the
    /// Prometheus text exposition format (mount it at `/metrics`).
    pub fn endpoint(&self) -> MetricsEndpoint {
        MetricsEndpoint::new(self.inner.registry.clone())
    }

    /// The registry in the text exposition format.
    pub fn render(&self) -> String {
        crate::endpoint::render(&self.inner.registry)
    }

    /// Registers a collector of the consumer runtime's
    /// [`RuntimeStats`](kafka_tower::runtime::RuntimeStats): dead letters,
    /// retries, attempts, in-flight, buffered, paused partitions, pauses,
    /// commits and consumer lag per partition.
    #[cfg(feature = "runtime")]
    pub fn register_runtime(
        &self,
        stats: Arc<kafka_tower::runtime::RuntimeStats>,
    ) -> Result<(), MetricsError> {
        let c = crate::runtime::RuntimeCollector::new(
            &self.inner.prefix,
            &self.inner.service_id,
            stats,
        )?;
        self.inner.registry.register(Box::new(c))?;
        Ok(())
    }
}
