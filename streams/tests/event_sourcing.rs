//! Aggregates and projections against a real broker: optimistic
//! concurrency, aborted events, SIGKILL of the projector, rebalance.

use std::collections::BTreeMap;
use std::io::{BufRead as _, BufReader};
use std::process::{Child, Command, Stdio};
use std::time::Instant;

use kafka_tower::runtime::TransactionalProducer;
use kafka_tower::OutgoingRecord;
use kafka_tower_streams::aggregate::{Aggregate, AggregateService, EventEnvelope};
use kafka_tower_streams::partitioner::partition_for;
use kafka_tower_streams::projection::Projection;
use kafka_tower_streams::{Lookup, Streams};
use kafka_tower_testkit::*;
use serde::{Deserialize, Serialize};

#[derive(Default, Serialize, Deserialize)]
struct Counter {
    value: i64,
}
#[derive(Deserialize)]
struct Add {
    by: i64,
}
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(tag = "type", rename_all = "snake_case")]
enum Ev {
    Deposited { amount: i64 },
}
struct CounterAggregate;
impl Aggregate for CounterAggregate {
    type State = Counter;
    type Command = Add;
    type Event = Ev;
    fn decide(_: &Counter, c: &Add) -> Result<Vec<Ev>, String> {
        Ok(vec![Ev::Deposited { amount: c.by }])
    }
    fn apply(s: &mut Counter, e: &Ev) {
        let Ev::Deposited { amount } = e;
        s.value += amount;
    }
}

fn sum_committed(group: &str, topic: &str, partitions: i32) -> i64 {
    committed(group, topic, partitions)
        .iter()
        .map(|o| (*o).max(0))
        .sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn of_two_commands_with_the_same_expected_version_exactly_one_succeeds() {
    init_tracing();
    let app = unique("occ");
    let commands = unique("occ-cmd");
    let events = unique("occ-ev");
    create_topic_with_dlq(&commands, 2).await;
    create_topic(&events, 2).await;
    let streams = Streams::builder(&app, bootstrap())
        .store("aggregates", &commands)
        .build()
        .unwrap();
    streams.prepare().await.unwrap();
    let aggregates = 20;
    // For every aggregate: two commands expecting version 0, sent at once.
    let sends = (0..aggregates).map(|a| {
        let commands = commands.clone();
        async move {
            let key = format!("agg-{a}");
            let p = partition_for(key.as_bytes(), 2);
            let one = produce(
                &commands,
                [Rec::payload(r#"{"expected_version":0,"command":{"by":1}}"#)
                    .key(key.clone())
                    .partition(p)],
            );
            let two = produce(
                &commands,
                [Rec::payload(r#"{"expected_version":0,"command":{"by":2}}"#)
                    .key(key)
                    .partition(p)],
            );
            tokio::join!(one, two);
        }
    });
    futures_join(sends).await;
    let consumer = consumer(&app, &[&commands]).build().unwrap();
    let settings = streams.exactly_once(txn_producer(&unique("tx")));
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    let s = streams.clone();
    let service = AggregateService::<CounterAggregate>::new(events.as_str());
    let join = tokio::spawn(async move {
        s.serve(consumer, service, settings, async move {
            let _ = rx.await;
        })
        .await
    });
    let n = 2 * aggregates;
    let deadline = Instant::now() + WAIT;
    while sum_committed(&app, &commands, 2) < n as i64 {
        assert!(Instant::now() < deadline, "commands not all handled");
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    let _ = tx.send(());
    join.await.unwrap().unwrap();

    let evs = read_all(&events, "read_committed").await;
    let mut per_key: BTreeMap<String, Vec<EventEnvelope<Ev>>> = BTreeMap::new();
    for r in &evs {
        let e: EventEnvelope<Ev> = serde_json::from_slice(r.payload.as_ref().unwrap()).unwrap();
        per_key
            .entry(String::from_utf8_lossy(r.key.as_ref().unwrap()).into_owned())
            .or_default()
            .push(e);
    }
    assert_eq!(per_key.len(), aggregates, "every aggregate got an event");
    for (k, v) in &per_key {
        assert_eq!(v.len(), 1, "{k}: exactly one of the two commands applied");
        assert_eq!(v[0].version, 1, "{k}");
    }
    let dlq = read_all(&format!("{commands}.dlq"), "read_committed").await;
    assert_eq!(dlq.len(), aggregates, "the loser of each pair is refused");
    for r in &dlq {
        assert_eq!(
            header_text(&r.headers, "kt-dlq-failed-by").as_deref(),
            Some("aggregate")
        );
        assert_eq!(
            header_text(&r.headers, "kt-dlq-status").as_deref(),
            Some("409")
        );
    }
}

async fn futures_join<F: std::future::Future<Output = ()>>(fs: impl Iterator<Item = F>) {
    let handles: Vec<_> = fs.collect();
    for f in handles {
        f.await;
    }
}

fn envelope(id: &str, version: u64, amount: i64) -> String {
    serde_json::to_string(&EventEnvelope {
        aggregate_id: id.to_owned(),
        version,
        event: Ev::Deposited { amount },
    })
    .unwrap()
}

/// The by-account fold of `records` (events read with read_committed).
fn fold_events(records: &[kafka_tower::ConsumedRecord]) -> BTreeMap<String, i64> {
    let mut m = BTreeMap::new();
    for r in records {
        let e: EventEnvelope<Ev> = serde_json::from_slice(r.payload.as_ref().unwrap()).unwrap();
        let Ev::Deposited { amount } = e.event;
        *m.entry(e.aggregate_id).or_insert(0) += amount;
    }
    m
}

fn balances(entries: Vec<(bytes::Bytes, bytes::Bytes)>) -> BTreeMap<String, i64> {
    entries
        .into_iter()
        .map(|(k, v)| {
            (
                String::from_utf8_lossy(&k).into_owned(),
                serde_json::from_slice(&v).unwrap(),
            )
        })
        .collect()
}

fn projector(app: &str, events: &str, host: &str) -> Streams {
    Streams::builder(app, bootstrap())
        .store("balances", events)
        .advertised_host(host)
        .build()
        .unwrap()
}

struct Instance {
    stop: tokio::sync::oneshot::Sender<()>,
    join: tokio::task::JoinHandle<Result<(), kafka_tower_streams::StreamsError>>,
}

async fn run_projector(streams: &Streams, group: &str, events: &str) -> Instance {
    streams.prepare().await.unwrap();
    let fold = Projection::new(|b: &mut i64, e: &EventEnvelope<Ev>| {
        let Ev::Deposited { amount } = e.event;
        *b += amount;
    });
    let consumer = consumer(group, &[events])
        .property("session.timeout.ms", "6000")
        .build()
        .unwrap();
    let mut settings = streams.exactly_once(txn_producer(&unique("tx")));
    settings.max_batch = 50;
    let (stop, rx) = tokio::sync::oneshot::channel::<()>();
    let s = streams.clone();
    let join = tokio::spawn(async move {
        s.serve(consumer, fold, settings, async move {
            let _ = rx.await;
        })
        .await
    });
    Instance { stop, join }
}

impl Instance {
    async fn stop(self) {
        let _ = self.stop.send(());
        tokio::time::timeout(WAIT, self.join)
            .await
            .expect("stops")
            .unwrap()
            .unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_of_aborted_transactions_never_appear_in_the_view() {
    init_tracing();
    let app = unique("aborted");
    let events = unique("aborted-ev");
    create_topic_with_dlq(&events, 2).await;
    let producer = TransactionalProducer::new(txn_producer(&unique("writer")))
        .await
        .unwrap();
    let ev = |id: &str, v: u64, amount: i64| OutgoingRecord {
        topic: events.clone(),
        partition: Some(partition_for(id.as_bytes(), 2)),
        key: Some(id.to_owned().into()),
        payload: Some(envelope(id, v, amount).into()),
        ..Default::default()
    };
    for round in 0..10u64 {
        // A committed transaction, then an aborted one with huge amounts.
        producer.begin().unwrap();
        for a in 0..5 {
            producer
                .send(&ev(&format!("acc-{a}"), round + 1, 10))
                .await
                .unwrap();
        }
        producer.commit().await.unwrap();
        producer.begin().unwrap();
        for a in 0..5 {
            producer
                .send(&ev(&format!("acc-{a}"), 999, 1_000_000))
                .await
                .unwrap();
        }
        producer.abort().await.unwrap();
    }
    let streams = projector(&app, &events, "127.0.0.1:1");
    let inst = run_projector(&streams, &app, &events).await;
    let committed_events = read_all(&events, "read_committed").await;
    assert_eq!(committed_events.len(), 50);
    let expected = fold_events(&committed_events);
    let deadline = Instant::now() + WAIT;
    while balances(streams.local_entries("balances")) != expected {
        assert!(
            Instant::now() < deadline,
            "view never matched: {:?}",
            balances(streams.local_entries("balances"))
        );
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    inst.stop().await;
    assert!(expected.values().all(|b| *b == 100), "{expected:?}");
    let changelog = changelog_state(streams.changelog_topic("balances").unwrap()).await;
    assert_eq!(balances(changelog.into_iter().collect()), expected);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_a_rebalance_the_two_instances_views_are_the_fold_of_all_events() {
    init_tracing();
    let app = unique("rebalance");
    let events = unique("rebalance-ev");
    create_topic_with_dlq(&events, 4).await;
    let produce_events = |from: u64, to: u64| {
        let events = events.clone();
        async move {
            let recs = (from..to).map(|i| {
                let id = format!("acc-{}", i % 40);
                Rec::payload(envelope(&id, i / 40 + 1, (i % 7) as i64 + 1))
                    .key(id.clone())
                    .partition(partition_for(id.as_bytes(), 4))
            });
            produce(&events, recs).await;
        }
    };
    produce_events(0, 2000).await;
    let a = projector(&app, &events, "10.0.0.1:8080");
    let ia = run_projector(&a, &app, &events).await;
    eventually("A owns all 4 partitions", || {
        a.local_partitions("balances").len() == 4
    })
    .await;
    let b = projector(&app, &events, "10.0.0.2:8080");
    let ib = run_projector(&b, &app, &events).await;
    eventually("B took some partitions", || {
        let (pa, pb) = (
            a.local_partitions("balances"),
            b.local_partitions("balances"),
        );
        !pb.is_empty() && pa.len() + pb.len() == 4
    })
    .await;
    produce_events(2000, 4000).await;
    let deadline = Instant::now() + WAIT;
    while sum_committed(&app, &events, 4) < 4000 {
        assert!(Instant::now() < deadline, "not all events projected");
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    let (pa, pb) = (
        a.local_partitions("balances"),
        b.local_partitions("balances"),
    );
    eprintln!("rebalance: A owns {pa:?}, B owns {pb:?}");
    assert!(
        pa.iter().all(|p| !pb.contains(p)),
        "no partition owned twice"
    );
    assert_eq!(pa.len(), 2, "half the partitions moved: A {pa:?} B {pb:?}");
    let mut union = balances(a.local_entries("balances"));
    union.extend(balances(b.local_entries("balances")));
    let expected = fold_events(&read_all(&events, "read_committed").await);
    assert_eq!(
        union, expected,
        "the two views together are the fold of every event"
    );
    // A query on A for a key held by B names B.
    let key_on_b = expected
        .keys()
        .find(|k| pb.contains(&partition_for(k.as_bytes(), 4)))
        .unwrap()
        .clone();
    eventually("the hosts topic names B", || {
        matches!(a.get("balances", key_on_b.as_bytes()), Ok(Lookup::Elsewhere { owner: Some(ref h), .. }) if h == "10.0.0.2:8080")
    })
    .await;
    match b.get("balances", key_on_b.as_bytes()).unwrap() {
        Lookup::Found(v) => assert_eq!(
            serde_json::from_slice::<i64>(&v).unwrap(),
            expected[&key_on_b]
        ),
        other => panic!("B must hold {key_on_b}: {other:?}"),
    }
    ib.stop().await;
    ia.stop().await;
}

fn example_binary() -> std::path::PathBuf {
    let features = enabled_features!(
        "redb",
        "axum",
        "ssl",
        "ssl-vendored",
        "gssapi",
        "zstd",
        "oidc"
    );
    build_example("kafka-tower-streams", "event_sourcing", features)
}

fn start_projector_child(bin: &std::path::Path, app: &str, addr: &str) -> (Child, String) {
    start_projector_child_with_delay(bin, app, addr, 0)
}

/// The projector, pausing `delay_ms` per projected record so that a test
/// can kill it mid-stream whatever the machine's speed.
fn start_projector_child_with_delay(
    bin: &std::path::Path,
    app: &str,
    addr: &str,
    delay_ms: u64,
) -> (Child, String) {
    let mut child = Command::new(bin)
        .env("PROJECTION_DELAY_MS", delay_ms.to_string())
        .env("KAFKA_BOOTSTRAP_SERVERS", bootstrap())
        .env("APP", app)
        .env("ROLE", "projector")
        .env("HTTP_ADDR", addr)
        .env("SESSION_TIMEOUT_MS", "6000")
        .env("RUST_LOG", "warn")
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("start the example");
    let mut out = BufReader::new(child.stdout.take().unwrap());
    let mut line = String::new();
    out.read_line(&mut line).expect("ready line");
    assert!(line.starts_with("ready "), "unexpected: {line}");
    (child, line.trim().trim_start_matches("ready ").to_owned())
}

fn sigkill(mut child: Child) {
    // SAFETY: kill(2) on our own child.
    assert_eq!(unsafe { libc::kill(child.id() as i32, libc::SIGKILL) }, 0);
    let status = child.wait().unwrap();
    assert!(!status.success(), "killed, not exited");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_projector_killed_mid_stream_and_restarted_ends_with_the_fold_of_all_events() {
    init_tracing();
    let app = unique("kill");
    let events = format!("{app}-events");
    let partitions = 4;
    create_topic_with_dlq(&events, partitions).await;
    create_topic_with_dlq(&format!("{app}-commands"), partitions).await;
    let n = 6000u64;
    let recs = (0..n).map(|i| {
        let id = format!("acc-{}", i % 60);
        let body = format!(
            r#"{{"aggregate_id":"{id}","version":{},"event":{{"type":"deposited","amount":{}}}}}"#,
            i / 60 + 1,
            i % 5 + 1
        );
        Rec::payload(body)
            .key(id.clone())
            .partition(partition_for(id.as_bytes(), partitions))
    });
    produce(&events, recs).await;
    let bin = example_binary();
    let group = format!("{app}-projector");

    // 2 ms per record: thousands of records take seconds, so the kill
    // lands mid-stream.
    let (child, _) = start_projector_child_with_delay(&bin, &app, "127.0.0.1:0", 2);
    let deadline = Instant::now() + WAIT;
    while sum_committed(&group, &events, partitions) < 500 {
        assert!(Instant::now() < deadline, "the projector made no progress");
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    sigkill(child);
    let at_kill = sum_committed(&group, &events, partitions);
    assert!(at_kill < n as i64, "killed mid-stream ({at_kill} of {n})");

    let (child, url) = start_projector_child(&bin, &app, "127.0.0.1:0");
    let deadline = Instant::now() + WAIT;
    while sum_committed(&group, &events, partitions) < n as i64 {
        assert!(
            Instant::now() < deadline,
            "not all events projected after the restart"
        );
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    let committed_events = read_all(&events, "read_committed").await;
    let expected = fold_events(&committed_events);
    let changelog = changelog_state(&format!("{app}-by-account-changelog")).await;
    let views: BTreeMap<String, i64> = changelog
        .iter()
        .map(|(k, v)| {
            let view: serde_json::Value = serde_json::from_slice(v).unwrap();
            (
                String::from_utf8_lossy(k).into_owned(),
                view["balance"].as_i64().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        views, expected,
        "by-account view = fold of every committed event"
    );
    // The restarted instance answers queries from its restored store.
    let body = http_get(&format!("{url}/stores/by-account/acc-7")).await;
    let view: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(view["balance"].as_i64(), Some(expected["acc-7"]));
    let _ = unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    let mut child = child;
    assert!(child.wait().unwrap().success(), "clean shutdown on SIGTERM");
}

async fn http_get(url: &str) -> String {
    use http_body_util::BodyExt as _;
    let client = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .build_http::<http_body_util::Empty<bytes::Bytes>>();
    let res = client.get(url.parse().unwrap()).await.expect("GET");
    assert_eq!(res.status(), 200, "GET {url}");
    let body = res.into_body().collect().await.unwrap().to_bytes();
    String::from_utf8(body.to_vec()).unwrap()
}
