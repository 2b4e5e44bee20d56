//! [`RuntimeCollector`] (feature `runtime`): the consumer runtime's own
//! counters, read from [`RuntimeStats`] at scrape time.

use std::sync::Arc;

use kafka_tower::runtime::RuntimeStats;
use prometheus::core::{Collector, Desc};
use prometheus::proto::MetricFamily;
use prometheus::{IntCounter, IntGauge, IntGaugeVec, Opts};

/// Reads a counter from the stats.
type ReadCounter = fn(&RuntimeStats) -> u64;
/// Reads a gauge from the stats.
type ReadGauge = fn(&RuntimeStats) -> i64;

/// A Prometheus collector over a consumer's [`RuntimeStats`]; register it
/// with [`Metrics::register_runtime`](crate::Metrics::register_runtime).
///
/// | metric | type | meaning |
/// |---|---|---|
/// | `<prefix>_consumer_attempts_total` | counter | calls made to the service, retries included |
/// | `<prefix>_consumer_retries_total` | counter | retries scheduled after retryable failures |
/// | `<prefix>_consumer_dead_letters_total` | counter | records written to a dead-letter topic and acknowledged |
/// | `<prefix>_consumer_dead_letter_write_failures_total` | counter | dead-letter writes that failed and are retried (topic missing, writes refused); the partition waits |
/// | `<prefix>_consumer_holds_total` | counter | records that spent their retries on retryable failures and held their partition (downstream outages) |
/// | `<prefix>_consumer_commits_total` | counter | offset commits issued |
/// | `<prefix>_consumer_pauses_total` | counter | partitions paused for backpressure |
/// | `<prefix>_consumer_records_in_flight` | gauge | records handed to the service, not finished |
/// | `<prefix>_consumer_records_buffered` | gauge | records fetched, not yet handed over |
/// | `<prefix>_consumer_paused_partitions` | gauge | partitions paused right now |
/// | `<prefix>_consumer_records_held` | gauge | records holding their partition right now |
/// | `<prefix>_consumer_lag_records{topic,partition}` | gauge | records between the consumer's position and the partition's end (needs `statistics.interval.ms`) |
pub struct RuntimeCollector {
    stats: Arc<RuntimeStats>,
    counters: Vec<(Opts, ReadCounter)>,
    gauges: Vec<(Opts, ReadGauge)>,
    lag: Opts,
    descs: Vec<Desc>,
}

impl std::fmt::Debug for RuntimeCollector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RuntimeCollector").finish_non_exhaustive()
    }
}

impl RuntimeCollector {
    /// A collector naming its metrics `<prefix>_consumer_*`, labelled
    /// `service = service_id`.
    pub fn new(
        prefix: &str,
        service_id: &str,
        stats: Arc<RuntimeStats>,
    ) -> Result<Self, prometheus::Error> {
        let opts = |name: &str, help: &str| {
            Opts::new(format!("{prefix}_consumer_{name}"), help).const_label("service", service_id)
        };
        let counters: Vec<(Opts, ReadCounter)> = vec![
            (
                opts(
                    "attempts_total",
                    "Calls made to the service, retries included.",
                ),
                RuntimeStats::attempts,
            ),
            (
                opts(
                    "retries_total",
                    "Retries scheduled after retryable failures.",
                ),
                RuntimeStats::retries,
            ),
            (
                opts(
                    "dead_letters_total",
                    "Records written to a dead-letter topic and acknowledged.",
                ),
                RuntimeStats::dead_lettered,
            ),
            (
                opts(
                    "dead_letter_write_failures_total",
                    "Dead-letter writes that failed and are retried while the partition waits.",
                ),
                RuntimeStats::dead_letter_write_failures,
            ),
            (
                opts(
                    "holds_total",
                    "Records that spent their retries on retryable failures and held their partition.",
                ),
                RuntimeStats::holds,
            ),
            (
                opts("commits_total", "Offset commits issued."),
                RuntimeStats::commits,
            ),
            (
                opts("pauses_total", "Partitions paused for backpressure."),
                RuntimeStats::pauses,
            ),
        ];
        let gauges: Vec<(Opts, ReadGauge)> = vec![
            (
                opts(
                    "records_in_flight",
                    "Records handed to the service and not finished.",
                ),
                |s| s.in_flight() as i64,
            ),
            (
                opts(
                    "records_buffered",
                    "Records fetched from Kafka, not yet handed to the service.",
                ),
                |s| s.buffered() as i64,
            ),
            (
                opts("paused_partitions", "Partitions paused right now."),
                |s| s.paused_partitions() as i64,
            ),
            (
                opts("records_held", "Records holding their partition right now."),
                |s| s.held() as i64,
            ),
        ];
        let lag = opts(
            "lag_records",
            "Records between the consumer's position and the end of the partition.",
        );
        let mut descs = Vec::new();
        for (o, _) in &counters {
            descs.extend(
                IntCounter::with_opts(o.clone())?
                    .desc()
                    .into_iter()
                    .cloned(),
            );
        }
        for (o, _) in &gauges {
            descs.extend(IntGauge::with_opts(o.clone())?.desc().into_iter().cloned());
        }
        descs.extend(
            IntGaugeVec::new(lag.clone(), &["topic", "partition"])?
                .desc()
                .into_iter()
                .cloned(),
        );
        Ok(RuntimeCollector {
            stats,
            counters,
            gauges,
            lag,
            descs,
        })
    }
}

impl Collector for RuntimeCollector {
    fn desc(&self) -> Vec<&Desc> {
        self.descs.iter().collect()
    }

    fn collect(&self) -> Vec<MetricFamily> {
        let mut out = Vec::with_capacity(self.counters.len() + self.gauges.len() + 1);
        for (o, read) in &self.counters {
            let c = IntCounter::with_opts(o.clone()).expect("validated in new");
            c.inc_by(read(&self.stats));
            out.extend(c.collect());
        }
        for (o, read) in &self.gauges {
            let g = IntGauge::with_opts(o.clone()).expect("validated in new");
            g.set(read(&self.stats));
            out.extend(g.collect());
        }
        let lag =
            IntGaugeVec::new(self.lag.clone(), &["topic", "partition"]).expect("validated in new");
        for p in self.stats.consumer_lag() {
            lag.with_label_values(&[p.topic.as_str(), &p.partition.to_string()])
                .set(p.lag);
        }
        out.extend(lag.collect());
        out
    }
}
