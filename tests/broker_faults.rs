//! Broker faults, against a real Apache Kafka broker of each test's own
//! (started by the test kit, SIGKILLed and restarted on the same data and
//! ports; the shared broker of the other tests never goes down).
//!
//! Each fault lands at a known point: the service stops answering at a
//! chosen call until the test has killed the broker, so the consumer is
//! certainly mid-stream, with records still to fetch, when the broker dies.
//! Small fetch sizes make it fetch during the outage, not only commit.
//! The tests take turns, so that three brokers starting at once on a busy
//! machine cannot make a wait run out.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering::SeqCst};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response};
use kafka_tower::runtime::{ExactlyOnce, Outbox, ProduceError, Producer, ProducerConfig};
use kafka_tower::{BoxError, OutgoingRecord, RecordBody, RecordMeta};
use kafka_tower_testkit::*;
use tokio::sync::{Mutex, Semaphore};

/// One of these tests at a time: each runs a broker of its own.
static TURN: Mutex<()> = Mutex::const_new(());

/// Properties that keep little prefetched, so that an outage hits fetching.
const SMALL_FETCHES: &[(&str, &str)] = &[
    ("max.partition.fetch.bytes", "2048"),
    ("queued.min.messages", "20"),
    ("queued.max.messages.kbytes", "16"),
];

/// A fault: at service call `at`, the broker is killed; it comes back
/// after `down`.
struct Fault {
    at: u64,
    down: Duration,
}

/// Makes the service stop at each fault's call until the test released it.
struct Faults {
    calls: AtomicU64,
    at: Vec<u64>,
    reached: Semaphore,
    release: Semaphore,
}

impl Faults {
    fn new(faults: &[Fault]) -> Arc<Self> {
        Arc::new(Faults {
            calls: AtomicU64::new(0),
            at: faults.iter().map(|f| f.at).collect(),
            reached: Semaphore::new(0),
            release: Semaphore::new(0),
        })
    }

    /// Called by the service on every call.
    async fn on_call(&self) {
        let n = self.calls.fetch_add(1, SeqCst) + 1;
        if self.at.contains(&n) {
            self.reached.add_permits(1);
            self.release.acquire().await.expect("open").forget();
        }
    }

    /// Runs the faults: waits for each call, kills the broker, lets the
    /// service go on (it serves what was prefetched, then the consumer
    /// must fetch from a dead broker), restarts the broker after `down`.
    async fn inject(&self, broker: &OwnBroker, faults: &[Fault]) {
        for f in faults {
            tokio::time::timeout(WAIT, self.reached.acquire())
                .await
                .unwrap_or_else(|_| panic!("service call {} never came", f.at))
                .expect("open")
                .forget();
            broker.kill().await;
            self.release.add_permits(1);
            // The outage's length is the scenario, not a synchronisation.
            tokio::time::sleep(f.down).await;
            broker.restart().await;
        }
    }
}

fn payloads(records: &[kafka_tower::ConsumedRecord]) -> Vec<Bytes> {
    records.iter().filter_map(|r| r.payload.clone()).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn at_least_once_loses_nothing_across_two_broker_crashes_and_a_long_outage() {
    let _turn = TURN.lock().await;
    init_tracing();
    let broker = OwnBroker::start().await;
    let bootstrap = broker.bootstrap().to_owned();
    let topic = unique("crash");
    let group = unique("g");
    const N: usize = 3000;
    create_topic_on(&bootstrap, &topic, 2, &[]).await;
    produce_on(
        &bootstrap,
        &topic,
        (0..N).map(|i| Rec::payload(format!("r-{i}")).partition((i % 2) as i32)),
    )
    .await;

    // A short crash, then an outage longer than session.timeout.ms (10 s):
    // the group's member has expired when the broker is back.
    let faults = [
        Fault {
            at: 500,
            down: Duration::from_secs(2),
        },
        Fault {
            at: 1500,
            down: Duration::from_secs(13),
        },
    ];
    let injector = Faults::new(&faults);
    let rec = Recorder::default();
    let service = {
        let (rec, injector) = (rec.clone(), injector.clone());
        tower::service_fn(move |req: Request<RecordBody>| {
            rec.record(&req);
            let injector = injector.clone();
            async move {
                injector.on_call().await;
                Ok::<_, BoxError>(Response::new(String::new()))
            }
        })
    };
    let mut builder = consumer_on(&bootstrap, &group, &[&topic]);
    for (k, v) in SMALL_FETCHES {
        builder = builder.property(*k, *v);
    }
    let running = spawn(builder.build().unwrap(), service);
    injector.inject(&broker, &faults).await;

    rec.wait_until("every record served", |seen| {
        let distinct: std::collections::HashSet<&Option<Bytes>> =
            seen.iter().map(|s| &s.payload).collect();
        distinct.len() == N
    })
    .await;
    eventually("committed to the end of both partitions", || {
        committed_on(&bootstrap, &group, &topic, 2) == end_offsets_on(&bootstrap, &topic, 2)
    })
    .await;
    let stats = running.stats.clone();
    running.stop().await; // the consumer stayed up: stop() fails otherwise

    let seen = rec.all();
    let by_payload = counts(&seen.iter().map(|s| s.payload.clone()).collect::<Vec<_>>());
    assert_eq!(by_payload.len(), N, "0 lost");
    let duplicates = seen.len() - N;
    eprintln!(
        "{N} records, 2 crashes: {duplicates} served twice or more (at-least-once), {} commits",
        stats.commits()
    );
    assert_eq!(stats.dead_lettered(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exactly_once_emits_one_output_per_input_across_two_crashes_and_a_long_outage() {
    let _turn = TURN.lock().await;
    init_tracing();
    let broker = OwnBroker::start().await;
    let bootstrap = broker.bootstrap().to_owned();
    let input = unique("eos-in");
    let output = unique("eos-out");
    let group = unique("g");
    const N: usize = 2000;
    create_topic_on(&bootstrap, &input, 2, &[]).await;
    create_topic_on(&bootstrap, &output, 2, &[]).await;
    produce_on(
        &bootstrap,
        &input,
        (0..N).map(|i| Rec::payload(format!("{i}")).partition((i % 2) as i32)),
    )
    .await;

    // A short crash, then an outage longer than each transactional call's
    // timeout (5 s): the open transaction's commit or abort times out and
    // must be resumed, not abandoned (0.1 then failed every batch with
    // "Conflicting abort_transaction API call is already in progress").
    // The transaction coordinator is the broker that is down, so the
    // transaction cannot expire meanwhile: that case is not exercised.
    let faults = [
        Fault {
            at: 400,
            down: Duration::from_secs(2),
        },
        Fault {
            at: 1000,
            down: Duration::from_secs(15),
        },
    ];
    let injector = Faults::new(&faults);
    let mut builder = consumer_on(&bootstrap, &group, &[&input]);
    for (k, v) in SMALL_FETCHES {
        builder = builder.property(*k, *v);
    }
    let consumer = builder.build().unwrap();
    let stats = consumer.stats();
    // Re-creations counted when the fatal error was injected (the long
    // outage may have caused one of its own before).
    let before_injection = Arc::new(AtomicU64::new(u64::MAX));
    let service = {
        let (output, injector) = (output.clone(), injector.clone());
        let (stats, before_injection) = (stats.clone(), before_injection.clone());
        tower::service_fn(move |req: Request<RecordBody>| {
            let output = output.clone();
            let injector = injector.clone();
            let (stats, before_injection) = (stats.clone(), before_injection.clone());
            async move {
                let meta = req.extensions().get::<RecordMeta>().unwrap().clone();
                let outbox = req.extensions().get::<Outbox>().unwrap().clone();
                injector.on_call().await;
                // After both faults, a fatal producer error: the producer
                // must be re-created and the batch served again.
                #[cfg(feature = "fault-injection")]
                if injector.calls.load(SeqCst) == 1500 {
                    before_injection.store(stats.producer_recreations(), SeqCst);
                    kafka_tower::runtime::fault_injection::make_next_transaction_fatal();
                }
                #[cfg(not(feature = "fault-injection"))]
                let _ = (&stats, &before_injection);
                outbox.send(OutgoingRecord {
                    topic: output,
                    partition: Some(meta.partition()),
                    payload: req.into_body().into_payload(),
                    ..Default::default()
                });
                Ok::<_, BoxError>(Response::new(String::new()))
            }
        })
    };
    let mut producer = ProducerConfig::new(&bootstrap).property("transaction.timeout.ms", "10000");
    producer.transactional_id = Some(unique("eos-crash"));
    producer.transaction_call_timeout = Duration::from_secs(5);
    let mut settings = ExactlyOnce::new(producer);
    settings.max_batch = 50;
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let processor = tokio::spawn(consumer.serve_exactly_once(service, settings, async move {
        let _ = stopped.await;
    }));
    injector.inject(&broker, &faults).await;

    eventually("every input's offset committed", || {
        assert!(!processor.is_finished(), "the processor stopped");
        committed_on(&bootstrap, &group, &input, 2) == end_offsets_on(&bootstrap, &input, 2)
    })
    .await;
    let _ = stop.send(());
    tokio::time::timeout(WAIT, processor)
        .await
        .expect("the processor stops in time")
        .expect("processor task")
        .expect("the processor ran to its shutdown");

    let out = read_all_on(&bootstrap, &output, "read_committed").await;
    let per_input = counts(&payloads(&out));
    let twice: Vec<_> = per_input.iter().filter(|(_, n)| **n > 1).collect();
    assert!(twice.is_empty(), "inputs emitted more than once: {twice:?}");
    assert_eq!(per_input.len(), N, "one output per input");
    eprintln!(
        "{N} inputs, 2 faults: {} service calls, producer re-created {} times",
        injector.calls.load(SeqCst),
        stats.producer_recreations()
    );
    #[cfg(feature = "fault-injection")]
    assert!(
        stats.producer_recreations() > before_injection.load(SeqCst),
        "the injected fatal error re-created the producer ({} before it, {} at the end)",
        before_injection.load(SeqCst),
        stats.producer_recreations()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_producer_retries_through_a_crash_without_duplicates_and_times_out_typed() {
    let _turn = TURN.lock().await;
    init_tracing();
    let broker = OwnBroker::start().await;
    let bootstrap = broker.bootstrap().to_owned();
    let topic = unique("produce-crash");
    create_topic_on(&bootstrap, &topic, 1, &[]).await;

    // Records in flight when the broker dies are retried by librdkafka
    // after the restart; idempotence drops the copies the broker already
    // had.
    const N: usize = 4000;
    let producer = Producer::new(
        ProducerConfig::new(&bootstrap)
            .property("linger.ms", "2")
            .property("batch.num.messages", "50"),
    )
    .unwrap();
    let acked = Arc::new(AtomicU64::new(0));
    let sending = {
        let (producer, topic, acked) = (producer.clone(), topic.clone(), acked.clone());
        tokio::spawn(async move {
            let mut pending = futures_util::stream::FuturesOrdered::new();
            for i in 0..N {
                let producer = producer.clone();
                let record = OutgoingRecord {
                    topic: topic.clone(),
                    payload: Some(Bytes::from(format!("p-{i}"))),
                    ..Default::default()
                };
                let acked = acked.clone();
                pending.push_back(async move {
                    let r = producer.send(record).await;
                    acked.fetch_add(1, SeqCst);
                    r
                });
                // Keep a window in flight rather than queueing everything
                // before the crash.
                if pending.len() >= 200 {
                    use futures_util::StreamExt as _;
                    pending.next().await.unwrap().expect("delivered");
                }
            }
            use futures_util::StreamExt as _;
            while let Some(r) = pending.next().await {
                r.expect("delivered");
            }
        })
    };
    eventually("a quarter acknowledged", || {
        acked.load(SeqCst) >= (N / 4) as u64
    })
    .await;
    broker.kill().await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    broker.restart().await;
    tokio::time::timeout(WAIT, sending)
        .await
        .expect("every send answered")
        .expect("every record delivered");

    let written = read_all_on(&bootstrap, &topic, "read_uncommitted").await;
    let per_payload = counts(&payloads(&written));
    assert_eq!(per_payload.len(), N, "every record written");
    let dup: HashMap<_, _> = per_payload.into_iter().filter(|(_, n)| *n > 1).collect();
    assert!(dup.is_empty(), "idempotence: no duplicate, got {dup:?}");

    // Broker down longer than the delivery timeout: a typed error.
    let short =
        Producer::new(ProducerConfig::new(&bootstrap).property("delivery.timeout.ms", "3000"))
            .unwrap();
    short
        .send(OutgoingRecord {
            topic: topic.clone(),
            payload: Some(Bytes::from_static(b"warm-up")),
            ..Default::default()
        })
        .await
        .expect("the topic is known before the outage");
    broker.kill().await;
    let err = short
        .send(OutgoingRecord {
            topic: topic.clone(),
            payload: Some(Bytes::from_static(b"late")),
            ..Default::default()
        })
        .await
        .expect_err("nothing acknowledges it");
    assert!(
        matches!(&err, ProduceError::DeliveryTimedOut { topic: t } if *t == topic),
        "{err:?}"
    );
    assert!(err.to_string().contains("delivery.timeout.ms"), "{err}");
}
