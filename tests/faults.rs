//! Records the runtime cannot handle the ordinary way, against a real
//! Apache Kafka broker: each is dead-lettered with the reason, and the
//! partition moves on past it; and a downstream outage, which must not
//! dead-letter the records that arrive while it lasts.

use std::sync::atomic::{AtomicBool, Ordering::SeqCst};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use kafka_tower::{BoxError, RawHeader, RawHeaders, RecordBody};
use kafka_tower_testkit::*;

/// Answers 200 to records whose payload starts with `ok`, 422 otherwise.
fn ok_or_refuse(rec: Recorder) -> impl kafka_tower::runtime::RecordService {
    tower::service_fn(move |req: Request<RecordBody>| {
        let seen = rec.record(&req);
        async move {
            let mut res = Response::new(String::new());
            if !seen.text().starts_with("ok") {
                *res.status_mut() = StatusCode::UNPROCESSABLE_ENTITY;
            }
            Ok::<_, BoxError>(res)
        }
    })
}

/// Serves `topic` (one partition: `ok-1`, the faulty record, `ok-2` at
/// `last`) until `ok-2` is served and committed; returns what the service
/// saw, the one dead letter and the consumer's counters.
async fn serve_past_the_fault(
    topic: &str,
    group: &str,
    last: i64,
) -> (
    Recorder,
    Vec<kafka_tower::ConsumedRecord>,
    std::sync::Arc<kafka_tower::runtime::RuntimeStats>,
) {
    let rec = Recorder::default();
    let (dlq, stats) =
        serve_past_the_fault_with(topic, group, last, &rec, ok_or_refuse(rec.clone())).await;
    (rec, dlq, stats)
}

/// [`serve_past_the_fault`] with `service`, recording into `rec`.
async fn serve_past_the_fault_with(
    topic: &str,
    group: &str,
    last: i64,
    rec: &Recorder,
    service: impl kafka_tower::runtime::RecordService,
) -> (
    Vec<kafka_tower::ConsumedRecord>,
    std::sync::Arc<kafka_tower::runtime::RuntimeStats>,
) {
    let running = spawn(consumer(group, &[topic]).build().unwrap(), service);
    let dlq = read_topic(&format!("{topic}.dlq"), 1).await;
    rec.wait_until("`ok-2` served", |s| s.iter().any(|x| x.text() == "ok-2"))
        .await;
    eventually("the offset after `ok-2` committed", || {
        committed(group, topic, 1) == vec![last + 1]
    })
    .await;
    let stats = running.stats.clone();
    running.stop().await;
    (dlq, stats)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_record_too_large_for_the_dead_letter_topic_leaves_a_reference_and_the_partition_moves_on(
) {
    let topic = unique("oversized");
    let group = unique("g");
    // The source topic takes 3 MB records; its dead-letter topic 1 MB.
    create_topic_with_config(&topic, 1, &[("max.message.bytes", "3000000")]).await;
    create_topic_with_config(
        &format!("{topic}.dlq"),
        1,
        &[("max.message.bytes", "1000000")],
    )
    .await;
    let big = Bytes::from(vec![b'x'; 1_500_000]);
    let produced = produce(
        &topic,
        [
            Rec::payload("ok-1"),
            Rec::payload(big.clone()).key("big-key").headers(
                [RawHeader::new("x-note", "large")]
                    .into_iter()
                    .collect::<RawHeaders>(),
            ),
            Rec::payload("ok-2"),
        ],
    )
    .await;
    let big_offset = produced[1].1;

    let (rec, dlq, stats) = serve_past_the_fault(&topic, &group, produced[2].1).await;
    assert_eq!(
        rec.all().len(),
        3,
        "each record served once; the large one refused once (a 422 is not retried)"
    );

    assert_eq!(dlq.len(), 1);
    let d = &dlq[0];
    assert_eq!(
        d.payload.as_ref().map(Bytes::len),
        None,
        "the payload is omitted"
    );
    assert_eq!(d.key, None, "the key is omitted");
    let h = &d.headers;
    assert_eq!(header_text(h, "kt-dlq-payload").as_deref(), Some("omitted"));
    let because = header_text(h, "kt-dlq-omitted-because").expect("why it was omitted");
    assert!(because.contains("too large"), "{because}");
    assert_eq!(
        header_text(h, "kt-dlq-original-topic").as_deref(),
        Some(topic.as_str())
    );
    assert_eq!(
        header_text(h, "kt-dlq-original-offset"),
        Some(big_offset.to_string())
    );
    assert_eq!(header_text(h, "kt-dlq-status").as_deref(), Some("422"));
    assert_eq!(header_text(h, "x-note"), None, "original headers omitted");
    assert_eq!(stats.dead_lettered(), 1);
    // The original is still in the source topic at its coordinates.
    let source = read_topic(&topic, 3).await;
    assert_eq!(source[1].offset, big_offset);
    assert!(
        source[1].payload.as_ref() == Some(&big),
        "the original, whole"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_record_with_more_headers_than_http_holds_is_dead_lettered_by_the_mapping() {
    let topic = unique("headers");
    let group = unique("g");
    create_topic_with_dlq(&topic, 1).await;
    // 25,000 headers: about 200 KB, which Kafka accepts; 0.1 panicked here.
    let many: RawHeaders = (0..25_000)
        .map(|i| RawHeader::new(format!("h{i:05}"), "v"))
        .collect();
    let produced = produce(
        &topic,
        [
            Rec::payload("ok-1"),
            Rec::payload("ok-many").headers(many.clone()),
            Rec::payload("ok-2"),
        ],
    )
    .await;

    let (rec, dlq, _) = serve_past_the_fault(&topic, &group, produced[2].1).await;

    assert!(
        !rec.texts().contains(&"ok-many".to_owned()),
        "the service never saw the record"
    );
    let d = &dlq[0];
    assert_eq!(d.payload.as_deref(), Some(&b"ok-many"[..]));
    let h = &d.headers;
    assert_eq!(
        header_text(h, "kt-dlq-failed-by").as_deref(),
        Some("mapping")
    );
    assert_eq!(
        header_text(h, "kt-dlq-reason").as_deref(),
        Some("too_many_headers")
    );
    assert_eq!(header_text(h, "kt-dlq-attempts").as_deref(), Some("0"));
    assert_eq!(
        header_text(h, "kt-dlq-original-offset"),
        Some(produced[1].1.to_string())
    );
    // Byte-exact: the 25,000 original headers come first, in order.
    assert_eq!(
        header_pairs(&h.iter().take(25_000).cloned().collect()),
        header_pairs(&many)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_record_is_dead_lettered_at_once_with_holding_on() {
    let topic = unique("refused");
    let group = unique("g");
    create_topic_with_dlq(&topic, 1).await;
    let produced = produce(
        &topic,
        [
            Rec::payload("ok-1"),
            Rec::payload("bad"),
            Rec::payload("ok-2"),
        ],
    )
    .await;
    let (rec, dlq, stats) = serve_past_the_fault(&topic, &group, produced[2].1).await;
    assert_eq!(
        rec.all().len(),
        3,
        "a 422 is not retried, and does not hold"
    );
    assert_eq!(dlq.len(), 1);
    assert_eq!(dlq[0].payload.as_deref(), Some(&b"bad"[..]));
    let h = &dlq[0].headers;
    assert_eq!(header_text(h, "kt-dlq-status").as_deref(), Some("422"));
    assert_eq!(header_text(h, "kt-dlq-attempts").as_deref(), Some("1"));
    assert_eq!((stats.holds(), stats.held()), (0, 0));
}

/// One call of the outage test: what was served and how it was answered.
#[derive(Clone, Debug)]
struct Call {
    partition: i32,
    offset: i64,
    ok: bool,
    during_outage: bool,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_downstream_outage_holds_the_partition_and_dead_letters_nothing() {
    const N: i64 = 10;
    const OUTAGE: Duration = Duration::from_secs(30);
    let topic = unique("outage");
    let group = unique("g");
    create_topic_with_dlq(&topic, 2).await;
    let records = (0..N).flat_map(|i| {
        [
            Rec::payload(format!("p0-{i}")).partition(0),
            Rec::payload(format!("p1-{i}")).partition(1),
        ]
    });
    produce(&topic, records).await;

    // Partition 0's records need a dependency that is down: 503 until the
    // test ends the outage. Partition 1's do not.
    let down = Arc::new(AtomicBool::new(true));
    let calls: Arc<Mutex<Vec<Call>>> = Arc::default();
    let first_failure: Arc<Mutex<Option<Instant>>> = Arc::default();
    let service = {
        let (down, calls, first_failure) = (down.clone(), calls.clone(), first_failure.clone());
        tower::service_fn(move |req: Request<RecordBody>| {
            let meta = req.extensions().get::<kafka_tower::RecordMeta>().unwrap();
            let during_outage = down.load(SeqCst);
            let ok = meta.partition() == 1 || !during_outage;
            if !ok {
                first_failure
                    .lock()
                    .unwrap()
                    .get_or_insert_with(Instant::now);
            }
            calls.lock().unwrap().push(Call {
                partition: meta.partition(),
                offset: meta.offset(),
                ok,
                during_outage,
            });
            async move {
                let mut res = Response::new(String::new());
                if !ok {
                    *res.status_mut() = StatusCode::SERVICE_UNAVAILABLE;
                }
                Ok::<_, BoxError>(res)
            }
        })
    };
    // Default holding (up to 5 min); backoff capped at 500 ms so that the
    // held record is tried again soon after the outage ends.
    let retry = kafka_tower::RetryPolicy::exponential(
        3,
        Duration::from_millis(10),
        Duration::from_millis(500),
    );
    assert_eq!(
        retry.hold,
        Duration::from_secs(300),
        "holding is on by default"
    );
    let running = spawn(
        consumer(&group, &[&topic]).retry(retry).build().unwrap(),
        service,
    );
    let served = |partition: i32| {
        calls
            .lock()
            .unwrap()
            .iter()
            .filter(|c| c.partition == partition && c.ok)
            .count() as i64
    };
    eventually("partition 1 served while partition 0 fails", || {
        served(1) == N
    })
    .await;
    eventually("partition 0 held", || running.stats.held() == 1).await;
    let started = first_failure.lock().unwrap().expect("partition 0 failed");
    tokio::time::sleep_until((started + OUTAGE).into()).await;
    // The outage is over.
    down.store(false, SeqCst);
    eventually("partition 0 served after the outage", || served(0) == N).await;
    eventually("both partitions committed to their end", || {
        committed(&group, &topic, 2) == vec![N, N]
    })
    .await;
    let stats = running.stats.clone();
    running.stop().await;

    let calls = calls.lock().unwrap().clone();
    let failed: Vec<&Call> = calls.iter().filter(|c| !c.ok).collect();
    assert!(
        failed.len() > 3,
        "retried beyond max_attempts while held: {} failed calls",
        failed.len()
    );
    assert!(
        failed.iter().all(|c| c.partition == 0 && c.offset == 0),
        "the partition was held on its first record: nothing after it started"
    );
    let p0_ok: Vec<i64> = calls
        .iter()
        .filter(|c| c.partition == 0 && c.ok)
        .map(|c| c.offset)
        .collect();
    assert_eq!(p0_ok, (0..N).collect::<Vec<_>>(), "each once, in order");
    assert!(
        calls
            .iter()
            .filter(|c| c.partition == 1)
            .all(|c| c.ok && c.during_outage),
        "partition 1 unaffected: served once each, during the outage"
    );
    assert_eq!(stats.dead_lettered(), 0);
    assert_eq!(
        end_offsets(&format!("{topic}.dlq"), 1),
        vec![0],
        "no dead letter"
    );
    assert_eq!((stats.holds(), stats.held()), (1, 0));
}

/// A service whose clone panics once, when armed: the attempt loop clones
/// the service for every attempt, so arming it in a call makes the next
/// attempt panic in the runtime's own code, below the service (where the
/// service's own panics are not: those are caught per call).
#[derive(Clone)]
struct PanicOnRetry {
    rec: Recorder,
    armed: Arc<AtomicBool>,
}

struct ClonePanics(PanicOnRetry);

impl Clone for ClonePanics {
    fn clone(&self) -> Self {
        if self.0.armed.swap(false, SeqCst) {
            panic!("injected: the runtime failed below the service");
        }
        ClonePanics(self.0.clone())
    }
}

impl tower::Service<Request<RecordBody>> for ClonePanics {
    type Response = Response<String>;
    type Error = BoxError;
    type Future = std::future::Ready<Result<Response<String>, BoxError>>;

    fn poll_ready(
        &mut self,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), BoxError>> {
        std::task::Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: Request<RecordBody>) -> Self::Future {
        let seen = self.0.rec.record(&req);
        let mut res = Response::new(String::new());
        if seen.text() == "trigger" {
            // Retryable: the runtime will clone the service to try again.
            self.0.armed.store(true, SeqCst);
            *res.status_mut() = StatusCode::SERVICE_UNAVAILABLE;
        }
        std::future::ready(Ok(res))
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_panic_below_the_service_dead_letters_the_record_and_the_partition_moves_on() {
    let topic = unique("runtime-panic");
    let group = unique("g");
    create_topic_with_dlq(&topic, 1).await;
    let produced = produce(
        &topic,
        [
            Rec::payload("ok-1"),
            Rec::payload("trigger"),
            Rec::payload("ok-2"),
        ],
    )
    .await;
    let rec = Recorder::default();
    let service = ClonePanics(PanicOnRetry {
        rec: rec.clone(),
        armed: Arc::default(),
    });
    // The consumer stays up: serve_past_the_fault_with stops it cleanly.
    let (dlq, stats) =
        serve_past_the_fault_with(&topic, &group, produced[2].1, &rec, service).await;

    assert_eq!(dlq.len(), 1);
    assert_eq!(dlq[0].payload.as_deref(), Some(&b"trigger"[..]));
    let h = &dlq[0].headers;
    assert_eq!(
        header_text(h, "kt-dlq-failed-by").as_deref(),
        Some("runtime")
    );
    assert_eq!(header_text(h, "kt-dlq-reason").as_deref(), Some("panic"));
    let message = header_text(h, "kt-dlq-error-message").unwrap();
    assert!(
        message.contains("injected: the runtime failed"),
        "{message}"
    );
    let triggers = rec.all().iter().filter(|s| s.text() == "trigger").count();
    assert_eq!(
        triggers, 1,
        "the panic came before the second attempt's call"
    );
    assert_eq!(stats.dead_lettered(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_dead_letter_topic_holds_the_partition_counted_until_it_exists() {
    let topic = unique("no-dlq");
    let group = unique("g");
    // No dead-letter topic, and the broker does not create topics.
    create_topic(&topic, 1).await;
    let produced = produce(
        &topic,
        [
            Rec::payload("ok-1"),
            Rec::payload("bad"),
            Rec::payload("ok-2"),
        ],
    )
    .await;
    let rec = Recorder::default();
    let running = spawn(
        consumer(&group, &[&topic]).build().unwrap(),
        ok_or_refuse(rec.clone()),
    );
    eventually("dead-letter writes failing and counted", || {
        running.stats.dead_letter_write_failures() >= 2
    })
    .await;
    assert!(
        !rec.all().iter().any(|s| s.text() == "ok-2"),
        "nothing after the record is served while its dead letter cannot be written"
    );
    eventually("committed up to the record, not past it", || {
        committed(&group, &topic, 1) == vec![produced[1].1]
    })
    .await;
    assert!(
        !rec.all().iter().any(|s| s.text() == "ok-2"),
        "still waiting for its dead-letter topic"
    );
    // The operator creates the topic: the dead letter lands, the partition moves on.
    create_topic(&format!("{topic}.dlq"), 1).await;
    let dlq = read_topic(&format!("{topic}.dlq"), 1).await;
    assert_eq!(dlq[0].payload.as_deref(), Some(&b"bad"[..]));
    rec.wait_until("`ok-2` served", |s| s.iter().any(|x| x.text() == "ok-2"))
        .await;
    eventually("committed past `ok-2`", || {
        committed(&group, &topic, 1) == vec![produced[2].1 + 1]
    })
    .await;
    let stats = running.stats.clone();
    running.stop().await;
    assert_eq!(stats.dead_lettered(), 1);
}
