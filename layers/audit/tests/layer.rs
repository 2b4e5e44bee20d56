//! The layer end to end without a broker: queue policies with a slow sink,
//! `must_audit`, panics and cancellations, chains written to a file.

use std::convert::Infallible;
use std::future::Future;
use std::pin::pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll, Waker};

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use kafka_tower::{RecordBody, RecordMeta, Refusal};
use kafka_tower_audit::chain::{verify, verify_json_lines, BreakKind};
use kafka_tower_audit::{
    AuditRecord, AuditSink, Auditor, FileSink, MemorySink, Outcome, QueueFullPolicy, SinkError,
    SinkFuture,
};
use tokio::sync::{mpsc, Semaphore};
use tower::{service_fn, Layer, Service, ServiceExt};

fn record(offset: i64) -> Request<RecordBody> {
    let mut req = Request::post("/orders")
        .body(RecordBody::from(Bytes::from_static(b"{}")))
        .unwrap();
    req.extensions_mut()
        .insert(RecordMeta::new("orders", 0, offset));
    req
}

fn ok_service(
) -> impl Service<Request<RecordBody>, Response = Response<String>, Error = Infallible, Future: Send>
       + Clone {
    service_fn(|_req: Request<RecordBody>| async { Ok(Response::new(String::new())) })
}

/// A sink that announces each batch (its offsets) and then waits for a
/// permit of `gate` before writing it to `written`.
#[derive(Clone)]
struct GatedSink {
    started: mpsc::UnboundedSender<Vec<i64>>,
    gate: Arc<Semaphore>,
    written: MemorySink,
}

impl GatedSink {
    fn new() -> (Self, mpsc::UnboundedReceiver<Vec<i64>>) {
        let (started, rx) = mpsc::unbounded_channel();
        let sink = GatedSink {
            started,
            gate: Arc::new(Semaphore::new(0)),
            written: MemorySink::new(),
        };
        (sink, rx)
    }
}

impl AuditSink for GatedSink {
    fn write<'a>(&'a self, batch: &'a [AuditRecord]) -> SinkFuture<'a> {
        Box::pin(async move {
            let _ = self
                .started
                .send(batch.iter().map(|r| r.offset.unwrap()).collect());
            self.gate.acquire().await.unwrap().forget();
            self.written.write(batch).await
        })
    }
}

fn offsets(records: &[AuditRecord]) -> Vec<i64> {
    records.iter().map(|r| r.offset.unwrap()).collect()
}

/// Polls `fut` once, without a real waker.
fn poll_once<F: Future + Unpin>(fut: &mut F) -> Poll<F::Output> {
    std::pin::Pin::new(fut).poll(&mut Context::from_waker(Waker::noop()))
}

#[tokio::test]
async fn a_full_queue_blocks_the_call_until_there_is_room() {
    let (sink, mut started) = GatedSink::new();
    let auditor = Auditor::builder()
        .sink(sink.clone())
        .queue_capacity(1)
        .batch_size(1)
        .when_full(QueueFullPolicy::Block)
        .build()
        .unwrap();
    let mut svc = auditor.layer().layer(ok_service());

    // Record 0 is taken by the writer, which then waits in the sink.
    svc.ready().await.unwrap().call(record(0)).await.unwrap();
    assert_eq!(started.recv().await.unwrap(), vec![0]);
    // Record 1 fills the queue; the call still answers at once.
    svc.ready().await.unwrap().call(record(1)).await.unwrap();
    // Record 2 finds the queue full: its call waits.
    let mut third = Box::pin(svc.ready().await.unwrap().call(record(2)));
    assert!(
        poll_once(&mut third).is_pending(),
        "the call must wait for room"
    );
    assert_eq!(auditor.dropped(), 0);

    sink.gate.add_permits(3);
    let res = third.await.unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    auditor.flush().await.unwrap();
    assert_eq!(offsets(&sink.written.records()), vec![0, 1, 2]);
    assert_eq!((auditor.dropped(), auditor.written()), (0, 3));
}

#[tokio::test]
async fn a_full_queue_drops_and_counts_without_delaying_the_call() {
    let (sink, mut started) = GatedSink::new();
    let auditor = Auditor::builder()
        .sink(sink.clone())
        .queue_capacity(1)
        .batch_size(1)
        .when_full(QueueFullPolicy::DropAndCount)
        .build()
        .unwrap();
    let mut svc = auditor.layer().layer(ok_service());

    svc.ready().await.unwrap().call(record(0)).await.unwrap();
    assert_eq!(started.recv().await.unwrap(), vec![0]);
    svc.ready().await.unwrap().call(record(1)).await.unwrap();
    let mut third = Box::pin(svc.ready().await.unwrap().call(record(2)));
    match poll_once(&mut third) {
        Poll::Ready(Ok(res)) => assert_eq!(res.status(), StatusCode::OK),
        other => panic!(
            "the call must answer at once, got {:?}",
            other.map(|r| r.map(|r| r.status()))
        ),
    }
    assert_eq!(auditor.dropped(), 1);

    sink.gate.add_permits(2);
    auditor.flush().await.unwrap();
    assert_eq!(offsets(&sink.written.records()), vec![0, 1]);
    assert_eq!((auditor.dropped(), auditor.written()), (1, 2));
}

/// Fails every write.
struct BrokenSink;

impl AuditSink for BrokenSink {
    fn write<'a>(&'a self, _batch: &'a [AuditRecord]) -> SinkFuture<'a> {
        Box::pin(async { Err(SinkError::new("disk full")) })
    }
    fn name(&self) -> &str {
        "broken"
    }
}

fn counting_service(
    calls: Arc<AtomicUsize>,
) -> impl Service<Request<RecordBody>, Response = Response<String>, Error = Infallible, Future: Send>
       + Clone {
    service_fn(move |_req: Request<RecordBody>| {
        calls.fetch_add(1, Ordering::SeqCst);
        async { Ok(Response::new("handled".to_owned())) }
    })
}

#[tokio::test]
async fn must_audit_answers_503_with_a_refusal_when_a_sink_fails() {
    let calls = Arc::new(AtomicUsize::new(0));
    let auditor = Auditor::builder()
        .sink(MemorySink::new())
        .sink(BrokenSink)
        .must_audit(true)
        .build()
        .unwrap();
    let res = auditor
        .layer()
        .layer(counting_service(calls.clone()))
        .oneshot(record(0))
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::SERVICE_UNAVAILABLE);
    let refusal = res.extensions().get::<Refusal>().expect("a Refusal");
    assert_eq!(
        (refusal.layer(), refusal.reason()),
        ("audit", "sink_failed")
    );
    assert!(refusal.detail().contains("broken: disk full"), "{refusal}");
    assert!(
        res.into_body().into_inner().is_none(),
        "the 503 has an empty body"
    );
    assert_eq!(calls.load(Ordering::SeqCst), 1, "the service did run");
    assert_eq!(auditor.sink_errors(), 1);
}

#[tokio::test]
async fn without_must_audit_a_sink_failure_never_fails_the_call() {
    let auditor = Auditor::builder().sink(BrokenSink).build().unwrap();
    let res = auditor
        .layer()
        .layer(ok_service())
        .oneshot(record(0))
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    auditor.flush().await.unwrap();
    assert_eq!((auditor.sink_errors(), auditor.written()), (1, 0));
}

#[tokio::test]
async fn must_audit_answers_only_once_the_record_is_written() {
    let sink = MemorySink::new();
    let auditor = Auditor::builder()
        .sink(sink.clone())
        .must_audit(true)
        .build()
        .unwrap();
    let res = auditor
        .layer()
        .layer(ok_service())
        .oneshot(record(5))
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    // No flush: the response itself waited for the sink.
    assert_eq!(offsets(&sink.records()), vec![5]);
}

#[tokio::test]
async fn must_audit_with_drop_policy_answers_503_when_the_queue_is_full() {
    let (sink, mut started) = GatedSink::new();
    let auditor = Auditor::builder()
        .sink(sink.clone())
        .queue_capacity(1)
        .batch_size(1)
        .when_full(QueueFullPolicy::DropAndCount)
        .must_audit(true)
        .build()
        .unwrap();
    let svc = auditor.layer().layer(ok_service());
    let first = tokio::spawn(svc.clone().oneshot(record(0)));
    assert_eq!(started.recv().await.unwrap(), vec![0]);
    // Record 1 is queued; its call waits for the sink. Wait until it is
    // queued (the queue has no room left) before record 2.
    let mut second = Box::pin(svc.clone().oneshot(record(1)));
    assert!(poll_once(&mut second).is_pending());
    let res = svc.clone().oneshot(record(2)).await.unwrap();
    assert_eq!(res.status(), StatusCode::SERVICE_UNAVAILABLE);
    let refusal = res.extensions().get::<Refusal>().unwrap();
    assert_eq!((refusal.layer(), refusal.reason()), ("audit", "queue_full"));

    sink.gate.add_permits(2);
    assert_eq!(first.await.unwrap().unwrap().status(), StatusCode::OK);
    assert_eq!(second.await.unwrap().status(), StatusCode::OK);
    assert_eq!(auditor.dropped(), 1);
}

#[tokio::test]
async fn errors_panics_and_cancellations_are_audited() {
    let sink = MemorySink::new();
    let auditor = Auditor::builder().sink(sink.clone()).build().unwrap();

    let failing = service_fn(|_req: Request<RecordBody>| async {
        Err::<Response<String>, _>("downstream timed out")
    });
    let err = auditor.layer().layer(failing).oneshot(record(0)).await;
    assert!(err.is_err());

    let panicking = service_fn(|req: Request<RecordBody>| async move {
        if req.extensions().get::<RecordMeta>().is_some() {
            panic!("handler bug");
        }
        Ok::<_, Infallible>(Response::new(String::new()))
    });
    let joined = tokio::spawn(auditor.layer().layer(panicking).oneshot(record(1))).await;
    assert!(joined.unwrap_err().is_panic());

    let stuck = service_fn(|_req: Request<RecordBody>| {
        std::future::pending::<Result<Response<String>, Infallible>>()
    });
    {
        let mut fut = pin!(auditor.layer().layer(stuck).oneshot(record(2)));
        assert!(fut
            .as_mut()
            .poll(&mut Context::from_waker(Waker::noop()))
            .is_pending());
    } // dropped: cancelled

    auditor.flush().await.unwrap();
    let records = sink.records();
    let class = |i: usize| records[i].error_class.as_deref();
    assert_eq!(offsets(&records), vec![0, 1, 2]);
    assert!(records.iter().all(|r| r.outcome == Outcome::Retryable));
    assert_eq!(class(0), Some("service-error"));
    assert_eq!(records[0].error.as_deref(), Some("downstream timed out"));
    assert_eq!(class(1), Some("panic"));
    assert_eq!(class(2), Some("cancelled"));
    assert!(records.iter().all(|r| r.status.is_none()));
}

#[tokio::test]
async fn chained_http_records_in_a_file_verify_and_a_tampered_line_is_named() {
    let path = std::env::temp_dir().join(format!(
        "kafka-tower-audit-chain-{}.jsonl",
        std::process::id()
    ));
    let _ = std::fs::remove_file(&path);
    let auditor = Auditor::builder()
        .service_id("accounts-api")
        .sink(FileSink::open(&path).unwrap())
        .chain(true)
        .build()
        .unwrap();
    let svc = auditor
        .layer()
        .layer(service_fn(|req: Request<String>| async move {
            let status = if req.uri().path() == "/accounts/bad" {
                StatusCode::BAD_REQUEST
            } else {
                StatusCode::OK
            };
            Ok::<_, Infallible>(
                Response::builder()
                    .status(status)
                    .body(String::new())
                    .unwrap(),
            )
        }));
    for path in ["/accounts/1", "/accounts/bad", "/accounts/2", "/accounts/3"] {
        let req = Request::get(path).body(String::new()).unwrap();
        svc.clone().oneshot(req).await.unwrap();
    }
    auditor.flush().await.unwrap();
    let text = std::fs::read_to_string(&path).unwrap();
    std::fs::remove_file(&path).unwrap();

    let summary = verify_json_lines(&text).unwrap();
    assert_eq!((summary.records, summary.chains), (4, 1));
    let records: Vec<AuditRecord> = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert!(records[0].chain.as_ref().unwrap().id.ends_with(":http"));
    assert_eq!(records[1].status, Some(400));
    assert_eq!(records[1].outcome, Outcome::Failed);

    // Someone turns the failure into a success.
    let tampered = text.replacen("\"status\":400", "\"status\":200", 1);
    let broken = verify_json_lines(&tampered).unwrap_err();
    assert_eq!(broken.index, 1);
    assert!(
        matches!(broken.kind, BreakKind::HashMismatch { .. }),
        "{broken}"
    );
    // And deleting that line instead breaks the next one's link.
    let mut lines: Vec<&str> = text.lines().collect();
    lines.remove(1);
    let parsed: Vec<AuditRecord> = lines
        .iter()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(verify(&parsed).unwrap_err().index, 1);
}
