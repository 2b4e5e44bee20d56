//! State stores against a real broker: changelog, restore, roll-back of
//! aborted transactions, the persistent store's checkpoint, restore speed.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicUsize, Ordering::SeqCst};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use kafka_tower::runtime::Outbox;
use kafka_tower::{BoxError, OutgoingRecord, RecordBody, RecordMeta};
use kafka_tower_streams::{StateStore, StoreKind, Streams};
use kafka_tower_testkit::*;

/// Counts records per key in the store; emits `<key>=<count>` to `output`.
/// Records whose payload is in `sabotage` make their batch's transaction
/// abort once (an oversized outbox record is refused before sending).
fn counter(
    output: String,
    sabotage: Arc<Mutex<Vec<String>>>,
) -> impl tower::Service<
    Request<RecordBody>,
    Response = Response<String>,
    Error = BoxError,
    Future = impl std::future::Future<Output = Result<Response<String>, BoxError>> + Send,
> + Clone
       + Send
       + 'static {
    tower::service_fn(move |req: Request<RecordBody>| {
        let output = output.clone();
        let sabotage = sabotage.clone();
        async move {
            let meta = req.extensions().get::<RecordMeta>().unwrap().clone();
            let store = req
                .extensions()
                .get::<StateStore>()
                .expect("StateStore")
                .clone();
            let outbox = req.extensions().get::<Outbox>().expect("Outbox").clone();
            let key = meta.key().cloned().expect("keyed input");
            let n: u64 = store.get_json(&key)?.unwrap_or(0) + 1;
            store.put_json(key.clone(), &n)?;
            let text = String::from_utf8_lossy(req.body().payload().map_or(&[][..], |b| &b[..]))
                .into_owned();
            outbox.send(OutgoingRecord {
                topic: output.clone(),
                key: Some(key.clone()),
                payload: Some(format!("{}={n}", String::from_utf8_lossy(&key)).into()),
                ..Default::default()
            });
            let poison = {
                let mut s = sabotage.lock().unwrap();
                let found = s.iter().position(|p| *p == text);
                found.map(|i| s.remove(i)).is_some()
            };
            if poison {
                outbox.send(OutgoingRecord {
                    topic: output,
                    payload: Some(Bytes::from(vec![0u8; 3_000_000])),
                    ..Default::default()
                });
            }
            Ok::<_, BoxError>(
                Response::builder()
                    .status(StatusCode::OK)
                    .body(String::new())?,
            )
        }
    })
}

struct Running {
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    join: tokio::task::JoinHandle<Result<(), kafka_tower_streams::StreamsError>>,
}

impl Running {
    async fn stop(mut self) {
        let _ = self.stop.take().unwrap().send(());
        tokio::time::timeout(WAIT, &mut self.join)
            .await
            .expect("stops in time")
            .expect("task")
            .expect("serve result");
    }
}

async fn start_counter(
    streams: &Streams,
    input: &str,
    output: &str,
    group: &str,
    txn: &str,
    sabotage: Arc<Mutex<Vec<String>>>,
) -> Running {
    streams.prepare().await.expect("prepare");
    let consumer = consumer(group, &[input]).build().expect("consumer");
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    let streams = streams.clone();
    let service = counter(output.to_owned(), sabotage);
    let mut settings = streams.exactly_once(txn_producer(txn));
    settings.max_batch = 40;
    let join = tokio::spawn(async move {
        streams
            .serve(consumer, service, settings, async move {
                let _ = rx.await;
            })
            .await
    });
    Running {
        stop: Some(tx),
        join,
    }
}

fn decode_counts(m: &BTreeMap<Bytes, Bytes>) -> BTreeMap<String, u64> {
    m.iter()
        .map(|(k, v)| {
            (
                String::from_utf8_lossy(k).into_owned(),
                serde_json::from_slice(v).unwrap(),
            )
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn aborted_batches_roll_back_store_writes_and_never_reach_the_changelog() {
    init_tracing();
    let app = unique("abort");
    let input = unique("abort-in");
    let output = unique("abort-out");
    create_topic_with_dlq(&input, 2).await;
    create_topic(&output, 2).await;
    let keys = 10;
    let n = 400;
    produce(
        &input,
        (0..n).map(|i| Rec::payload(format!("r{i}")).key(format!("k{}", i % keys))),
    )
    .await;

    // Three records each abort their batch once.
    let sabotage = Arc::new(Mutex::new(vec![
        "r50".to_owned(),
        "r201".to_owned(),
        "r377".to_owned(),
    ]));
    let streams = Streams::builder(&app, bootstrap())
        .store("counts", &input)
        .build()
        .unwrap();
    let running = start_counter(
        &streams,
        &input,
        &output,
        &app,
        &unique("tx"),
        sabotage.clone(),
    )
    .await;
    eventually("every input committed", || {
        committed(&app, &input, 2)
            .iter()
            .map(|o| (*o).max(0))
            .sum::<i64>()
            == n as i64
    })
    .await;
    let stats = streams.stats().snapshot();
    let local = decode_counts(&streams.local_entries("counts").into_iter().collect());
    running.stop().await;

    assert!(sabotage.lock().unwrap().is_empty(), "every sabotage fired");
    assert!(
        stats.batches_aborted >= 3,
        "three batches aborted: {stats:?}"
    );
    assert!(
        stats.rolled_back_writes > 0,
        "the aborted batches had applied writes to undo: {stats:?}"
    );
    let expected: BTreeMap<String, u64> = (0..keys)
        .map(|k| (format!("k{k}"), (n / keys) as u64))
        .collect();
    assert_eq!(
        local, expected,
        "the store counts every record once, despite the aborts"
    );
    let changelog =
        decode_counts(&changelog_state(streams.changelog_topic("counts").unwrap()).await);
    assert_eq!(changelog, expected, "the committed changelog says the same");
    let outputs = read_all(&output, "read_committed").await;
    assert_eq!(outputs.len(), n, "one committed output per input");
    let uncommitted = read_all(
        streams.changelog_topic("counts").unwrap(),
        "read_uncommitted",
    )
    .await;
    let committed_cl = read_all(streams.changelog_topic("counts").unwrap(), "read_committed").await;
    assert!(
        uncommitted.len() > committed_cl.len(),
        "the aborted transactions did write changelog records ({} > {}), invisible to read_committed",
        uncommitted.len(),
        committed_cl.len()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn in_memory_store_is_restored_from_the_changelog_after_a_restart() {
    init_tracing();
    let app = unique("restart");
    let input = unique("restart-in");
    let output = unique("restart-out");
    create_topic_with_dlq(&input, 3).await;
    create_topic(&output, 3).await;
    produce(
        &input,
        (0..300).map(|i| Rec::payload(format!("a{i}")).key(format!("k{}", i % 7))),
    )
    .await;
    let txn = unique("tx");
    let nobody = Arc::new(Mutex::new(Vec::new()));
    let first = Streams::builder(&app, bootstrap())
        .store("counts", &input)
        .build()
        .unwrap();
    let running = start_counter(&first, &input, &output, &app, &txn, nobody.clone()).await;
    eventually("300 committed", || {
        committed(&app, &input, 3)
            .iter()
            .map(|o| (*o).max(0))
            .sum::<i64>()
            == 300
    })
    .await;
    running.stop().await;

    produce(
        &input,
        (0..70).map(|i| Rec::payload(format!("b{i}")).key(format!("k{}", i % 7))),
    )
    .await;
    let second = Streams::builder(&app, bootstrap())
        .store("counts", &input)
        .build()
        .unwrap();
    let running = start_counter(&second, &input, &output, &app, &txn, nobody).await;
    eventually("370 committed", || {
        committed(&app, &input, 3)
            .iter()
            .map(|o| (*o).max(0))
            .sum::<i64>()
            == 370
    })
    .await;
    let local = decode_counts(&second.local_entries("counts").into_iter().collect());
    let stats = second.stats().snapshot();
    running.stop().await;
    let expected: BTreeMap<String, u64> = (0..7)
        .map(|k| (format!("k{k}"), 370 / 7 + u64::from(k < 370 % 7)))
        .collect();
    assert_eq!(local, expected, "counts continue from the restored state");
    assert!(
        stats.restored_records >= 7,
        "restored from the changelog: {stats:?}"
    );
}

#[cfg(feature = "redb")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redb_store_restores_only_the_tail_and_recovers_when_deleted() {
    init_tracing();
    let app = unique("redb");
    let input = unique("redb-in");
    let output = unique("redb-out");
    create_topic_with_dlq(&input, 2).await;
    create_topic(&output, 2).await;
    let dir = std::env::temp_dir().join(unique("kts-redb"));
    let build = || {
        Streams::builder(&app, bootstrap())
            .store("counts", &input)
            .store_kind(StoreKind::Redb { dir: dir.clone() })
            .build()
            .unwrap()
    };
    let txn = unique("tx");
    let nobody = Arc::new(Mutex::new(Vec::new()));
    produce(
        &input,
        (0..500).map(|i| Rec::payload(format!("a{i}")).key(format!("k{}", i % 50))),
    )
    .await;
    let s1 = build();
    let running = start_counter(&s1, &input, &output, &app, &txn, nobody.clone()).await;
    eventually("500 committed", || {
        committed(&app, &input, 2)
            .iter()
            .map(|o| (*o).max(0))
            .sum::<i64>()
            == 500
    })
    .await;
    running.stop().await;
    let expected: BTreeMap<String, u64> = (0..50).map(|k| (format!("k{k}"), 10)).collect();

    // Restart with the files: the checkpoint covers the whole changelog.
    let s2 = build();
    let running = start_counter(&s2, &input, &output, &app, &txn, nobody.clone()).await;
    eventually("both partitions restored", || {
        s2.local_partitions("counts") == [0, 1]
    })
    .await;
    let stats = s2.stats().snapshot();
    assert_eq!(
        decode_counts(&s2.local_entries("counts").into_iter().collect()),
        expected
    );
    running.stop().await;
    assert_eq!(
        stats.restored_records, 0,
        "nothing after the checkpoint to restore: {stats:?}"
    );

    // Delete the local store: everything comes back from the changelog.
    std::fs::remove_dir_all(&dir).expect("delete the local store");
    produce(
        &input,
        (0..100).map(|i| Rec::payload(format!("b{i}")).key(format!("k{}", i % 50))),
    )
    .await;
    let s3 = build();
    let running = start_counter(&s3, &input, &output, &app, &txn, nobody).await;
    eventually("600 committed", || {
        committed(&app, &input, 2)
            .iter()
            .map(|o| (*o).max(0))
            .sum::<i64>()
            == 600
    })
    .await;
    let local = decode_counts(&s3.local_entries("counts").into_iter().collect());
    let stats = s3.stats().snapshot();
    running.stop().await;
    let expected: BTreeMap<String, u64> = (0..50).map(|k| (format!("k{k}"), 12)).collect();
    assert_eq!(
        local, expected,
        "the view is the fold of every committed input"
    );
    assert!(
        stats.restored_records >= 50,
        "rebuilt from the changelog: {stats:?}"
    );
    assert!(dir.exists(), "the store files were written again");
    assert_eq!(
        decode_counts(&changelog_state(s3.changelog_topic("counts").unwrap()).await),
        expected
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restoring_100k_changelog_records_is_measured() {
    init_tracing();
    let app = unique("bulk");
    let input = unique("bulk-in");
    create_topic_with_dlq(&input, 1).await;
    let streams = Streams::builder(&app, bootstrap())
        .store("big", &input)
        .build()
        .unwrap();
    streams.prepare().await.unwrap();
    let changelog = streams.changelog_topic("big").unwrap().to_owned();
    // 100,000 records over 40,000 keys, every 10th a tombstone.
    let total = 100_000;
    let mut expected: HashMap<String, Option<String>> = HashMap::new();
    let records: Vec<Rec> = (0..total)
        .map(|i| {
            let key = format!("key-{}", i % 40_000);
            if i % 10 == 9 {
                expected.insert(key.clone(), None);
                Rec {
                    key: Some(key.into()),
                    partition: Some(0),
                    ..Default::default()
                }
            } else {
                let v = format!("value-{i}");
                expected.insert(key.clone(), Some(v.clone()));
                Rec::payload(v).key(key).partition(0)
            }
        })
        .collect();
    produce(&changelog, records).await;
    let expected_live = expected.values().filter(|v| v.is_some()).count();

    let started = Instant::now();
    let consumer = consumer(&app, &[&input]).build().unwrap();
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    let s = streams.clone();
    let calls = Arc::new(AtomicUsize::new(0));
    let c = calls.clone();
    let service = tower::service_fn(move |_req: Request<RecordBody>| {
        c.fetch_add(1, SeqCst);
        async { Ok::<_, BoxError>(Response::new(String::new())) }
    });
    let join = tokio::spawn(async move {
        let settings = s.exactly_once(txn_producer(&unique("tx")));
        s.serve(consumer, service, settings, async move {
            let _ = rx.await;
        })
        .await
    });
    eventually("the partition restored", || {
        streams.local_partitions("big") == [0]
    })
    .await;
    let wall = started.elapsed();
    let stats = streams.stats().snapshot();
    let entries = streams.local_entries("big");
    let _ = tx.send(());
    join.await.unwrap().unwrap();

    assert_eq!(stats.restored_records, total as u64, "{stats:?}");
    assert_eq!(
        entries.len(),
        expected_live,
        "tombstones deleted, last value kept"
    );
    for (k, v) in &entries {
        let k = String::from_utf8_lossy(k).into_owned();
        assert_eq!(
            expected[&k].as_deref(),
            Some(&*String::from_utf8_lossy(v)),
            "{k}"
        );
    }
    let secs = stats.restore_micros as f64 / 1e6;
    eprintln!(
        "restore: {total} changelog records in {secs:.2} s = {:.0} records/s (restore alone; {:.2} s from start incl. group join)",
        total as f64 / secs,
        wall.as_secs_f64()
    );
    assert!(secs < 60.0, "restoring 100k records took {secs:.1} s");
    assert_eq!(calls.load(SeqCst), 0, "the empty input served nothing");
}
