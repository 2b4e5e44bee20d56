//! End-to-end consume throughput against a real broker, side by side on one
//! pre-filled topic:
//!
//! * `raw` — an rdkafka `BaseConsumer` loop that touches each payload: the
//!   ceiling;
//! * `runtime` — `kafka_tower::Consumer` with a no-op service, at-least-once
//!   commits on (the default configuration);
//! * `stack` — the same runtime with the full layer stack (tracing without
//!   a subscriber, audit to a null sink, JWT with the cache on, Prometheus
//!   metrics, JSON Schema, context capture);
//! * `raw-eos` — a raw rust-rdkafka consume-transform-produce loop: one
//!   transaction per batch of up to 500 records (or 100 ms), one output
//!   record per input, the batch's offsets sent to the transaction;
//! * `eos` — `Consumer::serve_exactly_once` with the same batch limits and
//!   a handler that puts one output per input into its `Outbox`.
//!
//! The two exactly-once variants read the first `BENCH_E2E_EOS_RECORDS`
//! (default 50000) records of the same topic and write to a topic of
//! their own per run. Their rate is bound by the transaction round trips
//! (a few per batch), not by CPU.
//!
//! ```text
//! KAFKA_BOOTSTRAP_SERVERS=127.0.0.1:9092 cargo bench --bench e2e
//! ```
//!
//! Knobs: `BENCH_E2E_RECORDS` (default 1000000), `BENCH_E2E_SIZE` (512),
//! `BENCH_E2E_PARTITIONS` (16), `BENCH_E2E_ROUNDS` (3), `BENCH_E2E_TIMEOUT`
//! (seconds per variant, 600), `BENCH_E2E_BUFFER_PER_PARTITION` and
//! `BENCH_E2E_MAX_IN_FLIGHT` and `BENCH_E2E_PROPERTIES` (`k=v,k=v`
//! librdkafka properties) (runtime settings, for diagnosis; the defaults
//! otherwise), `BENCH_E2E_RAW_PROPERTIES` (the same for the raw loop),
//! `BENCH_E2E_EOS_RECORDS` (50000), `BENCH_RESULTS_DIR` (where `e2e.json` and
//! `e2e.md` go; default `results/`). The topic is named after the sizes and
//! re-used when it already holds enough records.
//!
//! Each variant runs as a child process (this binary re-executed with
//! `--variant`), so its peak RSS (`VmHWM`) is its own; rounds alternate the
//! variants (raw, runtime, stack, raw, …) so that drift on a shared machine
//! hits all of them, and the table reports medians. Every consumer uses a
//! fresh group reading from the beginning; its rate is counted from its
//! first record to its last, so group join time is left out. Latency is the
//! service call (`call` to response) as seen around the whole service; the
//! raw loop has none.

#[path = "support/fixtures.rs"]
mod fixtures;

use std::future::Future;
use std::pin::Pin;
use std::process::Command;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use http::{Request, Response};
use kafka_tower::context::CaptureContextLayer;
use kafka_tower::{Consumer, RecordBody};
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::consumer::{BaseConsumer, Consumer as _};
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{BaseRecord, DefaultProducerContext, Producer as _, ThreadedProducer};
use rdkafka::{ClientConfig, Message as _};
use serde_json::json;
use tower::{Service, ServiceBuilder};

const VARIANTS: [&str; 3] = ["raw", "runtime", "stack"];
const EOS_VARIANTS: [&str; 2] = ["raw-eos", "eos"];
/// Records per transaction at most, and how long a batch waits for them:
/// the same for both exactly-once variants (the runtime's defaults).
const EOS_MAX_BATCH: usize = 500;
const EOS_MAX_DELAY: Duration = Duration::from_millis(100);

fn env_u64(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn arg(args: &[String], name: &str) -> Option<String> {
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1).cloned())
}

/// Peak resident set size of this process, in KiB.
fn peak_rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmHWM:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse().ok())
        })
        .unwrap_or(0)
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if let Some(variant) = arg(&args, "--variant") {
        child(&args, &variant);
        return;
    }
    // `cargo test --benches` runs bench targets without `--bench`: do
    // nothing then.
    if !args.iter().any(|a| a == "--bench") {
        return;
    }
    let Ok(bootstrap) = std::env::var("KAFKA_BOOTSTRAP_SERVERS") else {
        eprintln!(
            "e2e bench: set KAFKA_BOOTSTRAP_SERVERS (scripts/bench starts a broker); skipped"
        );
        return;
    };
    parent(&bootstrap);
}

// ---------------------------------------------------------------- parent

fn parent(bootstrap: &str) {
    let n = env_u64("BENCH_E2E_RECORDS", 1_000_000);
    let size = env_u64("BENCH_E2E_SIZE", 512) as usize;
    let partitions = env_u64("BENCH_E2E_PARTITIONS", 16) as i32;
    let rounds = env_u64("BENCH_E2E_ROUNDS", 3);
    let dir = std::env::var("BENCH_RESULTS_DIR")
        .unwrap_or_else(|_| concat!(env!("CARGO_MANIFEST_DIR"), "/results").to_owned());
    let topic = format!("bench-e2e-{n}x{size}B-{partitions}p");
    let fill_secs = fill(bootstrap, &topic, n, size, partitions);

    let eos_n = env_u64("BENCH_E2E_EOS_RECORDS", 50_000).min(n);
    let exe = std::env::current_exe().unwrap();
    let mut results: Vec<(u64, serde_json::Value)> = Vec::new();
    for round in 1..=rounds {
        for variant in VARIANTS.iter().chain(&EOS_VARIANTS) {
            let records = if EOS_VARIANTS.contains(variant) {
                eos_n
            } else {
                n
            };
            let group = format!("bench-e2e-{variant}-{}-{round}", std::process::id());
            let out = Command::new(&exe)
                .args(["--variant", variant, "--topic", &topic, "--group", &group])
                .args(["--records", &records.to_string()])
                .output()
                .expect("re-exec the bench binary");
            eprint!("{}", String::from_utf8_lossy(&out.stderr));
            let stdout = String::from_utf8_lossy(&out.stdout);
            let Some(line) = stdout.lines().find_map(|l| l.strip_prefix("E2E_RESULT ")) else {
                panic!("variant {variant} failed ({}): {stdout}", out.status);
            };
            let v: serde_json::Value = serde_json::from_str(line).unwrap();
            eprintln!("round {round} {variant}: {line}");
            results.push((round, v));
        }
    }

    let median = |variant: &str, key: &str| -> f64 {
        let mut v: Vec<f64> = results
            .iter()
            .filter(|(_, r)| r["variant"] == variant)
            .filter_map(|(_, r)| r[key].as_f64())
            .collect();
        v.sort_by(|a, b| a.partial_cmp(b).unwrap());
        if v.is_empty() {
            f64::NAN
        } else {
            v[v.len() / 2]
        }
    };
    let rate = |round: u64, variant: &str| -> f64 {
        results
            .iter()
            .find(|(r, v)| *r == round && v["variant"] == variant)
            .and_then(|(_, v)| v["records_per_sec"].as_f64())
            .unwrap_or(f64::NAN)
    };
    let mut md = String::new();
    md.push_str(&format!(
        "e2e consume: {n} records of {size} B (+5 headers) over {partitions} partitions, \
         one topic, {rounds} alternating rounds (fill: {fill_secs:.0} s)\n\n"
    ));
    md.push_str("| round | raw BaseConsumer rec/s | runtime, no-op rec/s | runtime, full stack rec/s | b/a | c/a |\n");
    md.push_str("|---|---|---|---|---|---|\n");
    for round in 1..=rounds {
        let (a, b, c) = (
            rate(round, "raw"),
            rate(round, "runtime"),
            rate(round, "stack"),
        );
        md.push_str(&format!(
            "| {round} | {a:.0} | {b:.0} | {c:.0} | {:.3} | {:.3} |\n",
            b / a,
            c / a
        ));
    }
    let (ma, mb, mc) = (
        median("raw", "records_per_sec"),
        median("runtime", "records_per_sec"),
        median("stack", "records_per_sec"),
    );
    md.push_str(&format!(
        "| **median** | **{ma:.0}** | **{mb:.0}** | **{mc:.0}** | **{:.3}** | **{:.3}** |\n\n",
        mb / ma,
        mc / ma
    ));
    let (ca, cb, cc) = (
        median("raw", "cpu_ns_per_record"),
        median("runtime", "cpu_ns_per_record"),
        median("stack", "cpu_ns_per_record"),
    );
    md.push_str(&format!(
        "CPU per record (user + sys of each consumer process over its first → last record, median): \
         raw {:.2} µs, runtime {:.2} µs (**{:.2}×** raw), full stack {:.2} µs ({:.2}× raw). \
         The harness reads no clock per record: service-call latencies are \
         sampled, one call in {LATENCY_SAMPLE} per thread.\n\n",
        ca / 1e3,
        cb / 1e3,
        cb / ca,
        cc / 1e3,
        cc / ca
    ));
    md.push_str("| variant | records/s (median) | CPU µs/record (median) | service-call p50 | service-call p99 | peak RSS (median) | pauses |\n");
    md.push_str("|---|---|---|---|---|---|---|\n");
    for (variant, label) in [
        ("raw", "(a) raw rdkafka BaseConsumer"),
        ("runtime", "(b) kafka-tower runtime, no-op service"),
        (
            "stack",
            "(c) runtime + trace + audit + JWT (cache) + metrics + schema + context",
        ),
    ] {
        let lat = |k: &str| {
            let v = median(variant, k);
            if v.is_nan() {
                "—".to_owned()
            } else {
                format!("{v:.1} µs")
            }
        };
        let pauses = median(variant, "pauses");
        md.push_str(&format!(
            "| {label} | {:.0} | {:.2} | {} | {} | {:.1} MiB | {} |\n",
            median(variant, "records_per_sec"),
            median(variant, "cpu_ns_per_record") / 1e3,
            lat("p50_us"),
            lat("p99_us"),
            median(variant, "peak_rss_kib") / 1024.0,
            if pauses.is_nan() {
                "—".to_owned()
            } else {
                format!("{pauses:.0}")
            }
        ));
    }
    let (me_raw, me_rt) = (
        median("raw-eos", "records_per_sec"),
        median("eos", "records_per_sec"),
    );
    let (ce_raw, ce_rt) = (
        median("raw-eos", "cpu_ns_per_record"),
        median("eos", "cpu_ns_per_record"),
    );
    md.push_str(&format!(
        "\nExactly-once consume-transform-produce: the first {eos_n} records, one output \
         per input, a transaction per batch of up to {EOS_MAX_BATCH} records or {} ms \
         (median of {rounds} rounds)\n\n",
        EOS_MAX_DELAY.as_millis()
    ));
    md.push_str("| variant | records/s | ÷ raw | CPU µs/record | ÷ raw CPU | peak RSS |\n|---|---|---|---|---|---|\n");
    for (variant, label, rate, cpu) in [
        (
            "raw-eos",
            "(d) raw rdkafka transactional loop",
            me_raw,
            ce_raw,
        ),
        (
            "eos",
            "(e) runtime exactly-once, one-output handler",
            me_rt,
            ce_rt,
        ),
    ] {
        md.push_str(&format!(
            "| {label} | {rate:.0} | {:.3} | {:.2} | {:.2} | {:.1} MiB |\n",
            rate / me_raw,
            cpu / 1e3,
            cpu / ce_raw,
            median(variant, "peak_rss_kib") / 1024.0,
        ));
    }
    md.push('\n');
    print!("{md}");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(format!("{dir}/e2e.md"), &md).unwrap();
    let json = json!({
        "records": n, "size": size, "partitions": partitions, "rounds": rounds,
        "fill_secs": fill_secs,
        "median": {"raw": ma, "runtime": mb, "stack": mc},
        "ratios": {"b_over_a": mb / ma, "c_over_a": mc / ma},
        "cpu_ns_per_record": {"raw": ca, "runtime": cb, "stack": cc},
        "cpu_ratios": {"b_over_a": cb / ca, "c_over_a": cc / ca},
        "eos": {"records": eos_n, "raw": me_raw, "runtime": me_rt,
            "ratio": me_rt / me_raw, "cpu_ns_per_record": {"raw": ce_raw, "runtime": ce_rt}},
        "pauses": {"runtime": median("runtime", "pauses")},
        "peak_rss_kib": {"raw": median("raw", "peak_rss_kib"), "runtime": median("runtime", "peak_rss_kib")},
        "runs": results.iter().map(|(r, v)| { let mut v = v.clone(); v["round"] = json!(r); v }).collect::<Vec<_>>(),
    });
    std::fs::write(
        format!("{dir}/e2e.json"),
        serde_json::to_string_pretty(&json).unwrap(),
    )
    .unwrap();
}

/// Creates the topic and fills it with `n` records unless it already holds
/// them. Returns the seconds the fill took (0 when re-used).
fn fill(bootstrap: &str, topic: &str, n: u64, size: usize, partitions: i32) -> f64 {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .create()
        .unwrap();
    let created = rt
        .block_on(admin.create_topics(
            &[NewTopic::new(topic, partitions, TopicReplication::Fixed(1))],
            &AdminOptions::new(),
        ))
        .unwrap();
    drop(created); // "already exists" is fine: counted below
    let probe: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("group.id", "bench-e2e-probe")
        .create()
        .unwrap();
    let count = |probe: &BaseConsumer| -> u64 {
        (0..partitions)
            .map(|p| {
                probe
                    .fetch_watermarks(topic, p, Duration::from_secs(10))
                    .map(|(lo, hi)| (hi - lo) as u64)
                    .unwrap_or(0)
            })
            .sum()
    };
    let have = count(&probe);
    if have >= n {
        eprintln!("e2e bench: re-using topic {topic} ({have} records)");
        return 0.0;
    }
    eprintln!("e2e bench: filling {topic} with {} records", n - have);
    let producer: ThreadedProducer<DefaultProducerContext> = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("linger.ms", "20")
        .set("batch.size", "1000000")
        .set("queue.buffering.max.messages", "500000")
        .set("acks", "1")
        .create()
        .unwrap();
    let payload = fixtures::order_payload(size);
    // Tokens valid for a year, so that a re-used topic still passes the
    // JWT layer.
    let token = jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
        &{
            let mut c = fixtures::claims();
            c["exp"] = json!(c["exp"].as_u64().unwrap() + 364 * 86_400);
            c
        },
        &jsonwebtoken::EncodingKey::from_secret(fixtures::SECRET).unwrap(),
    )
    .unwrap();
    let headers = fixtures::headers(&token);
    let start = Instant::now();
    for i in have..n {
        let key = format!("order-{i}");
        let mut h = OwnedHeaders::new_with_capacity(headers.len());
        for (k, v) in &headers {
            h = h.insert(Header {
                key: k,
                value: Some(v.as_bytes()),
            });
        }
        let mut record = BaseRecord::to(topic)
            .key(key.as_bytes())
            .payload(&payload[..])
            .headers(h);
        loop {
            match producer.send(record) {
                Ok(()) => break,
                Err((_, r)) => {
                    record = r;
                    std::thread::sleep(Duration::from_millis(5));
                }
            }
        }
    }
    producer.flush(Duration::from_secs(300)).unwrap();
    let secs = start.elapsed().as_secs_f64();
    let now = count(&probe);
    assert!(
        now >= n,
        "topic holds {now} records after the fill, want {n}"
    );
    eprintln!(
        "e2e bench: filled in {secs:.1} s ({:.0} rec/s)",
        (n - have) as f64 / secs
    );
    secs
}

// ----------------------------------------------------------------- child

/// Counts served records, times them and wakes the waiter at the target.
struct Tally {
    base: Instant,
    target: u64,
    count: AtomicU64,
    failed: AtomicU64,
    first_ns: AtomicU64,
    last_ns: AtomicU64,
    /// CPU time of the whole process (user + sys, every thread) at the
    /// first record and at the last.
    cpu_first_ns: AtomicU64,
    cpu_last_ns: AtomicU64,
    hist: Histogram,
    done: tokio::sync::Notify,
}

/// CPU time consumed by this process so far, user + system, all threads.
fn process_cpu_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes one timespec into `ts`.
    let rc = unsafe { libc::clock_gettime(libc::CLOCK_PROCESS_CPUTIME_ID, &mut ts) };
    assert_eq!(rc, 0, "clock_gettime(CLOCK_PROCESS_CPUTIME_ID)");
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

/// One service call in this many (per thread) is timed for the latency
/// columns.
const LATENCY_SAMPLE: u64 = 16;

thread_local! {
    static SAMPLE_TURN: std::cell::Cell<u64> = const { std::cell::Cell::new(0) };
}

impl Tally {
    fn new(target: u64) -> Tally {
        Tally {
            base: Instant::now(),
            target,
            count: AtomicU64::new(0),
            failed: AtomicU64::new(0),
            first_ns: AtomicU64::new(u64::MAX),
            last_ns: AtomicU64::new(0),
            cpu_first_ns: AtomicU64::new(0),
            cpu_last_ns: AtomicU64::new(0),
            hist: Histogram::new(),
            done: tokio::sync::Notify::new(),
        }
    }
    fn now_ns(&self) -> u64 {
        self.base.elapsed().as_nanos() as u64
    }
    /// A record is starting: the first one opens the measured window.
    /// Returns the time to measure its service call from, for one call in
    /// [`LATENCY_SAMPLE`] per thread (the others read no clock: a clock
    /// read costs about as much as a raw consumer's whole poll here, and
    /// the harness should not weigh on what it measures).
    fn start(&self) -> Option<u64> {
        if self.first_ns.load(Relaxed) == u64::MAX {
            let t = self.now_ns();
            if self.first_ns.fetch_min(t, Relaxed) == u64::MAX {
                self.cpu_first_ns.store(process_cpu_ns(), Relaxed);
            }
        }
        SAMPLE_TURN.with(|turn| {
            let n = turn.get().wrapping_add(1);
            turn.set(n);
            (n % LATENCY_SAMPLE == 0).then(|| self.now_ns())
        })
    }
    /// A record finished; the last one closes the window. Counting is the
    /// only per-record write all threads share.
    fn finish(&self, started: Option<u64>, ok: bool) {
        if let Some(s) = started {
            self.hist.record(self.now_ns().saturating_sub(s));
        }
        if !ok {
            self.failed.fetch_add(1, Relaxed);
        }
        if self.count.fetch_add(1, Relaxed) + 1 == self.target {
            self.last_ns.store(self.now_ns(), Relaxed);
            self.cpu_last_ns.store(process_cpu_ns(), Relaxed);
            self.done.notify_one();
        }
    }
    /// CPU nanoseconds per record over the first → last window.
    fn cpu_ns_per_record(&self) -> f64 {
        let cpu = self
            .cpu_last_ns
            .load(Relaxed)
            .saturating_sub(self.cpu_first_ns.load(Relaxed));
        // The window closes at the target-th record; records finished
        // after it (the rest of a transaction's batch) are not in it.
        cpu as f64 / self.target.max(1) as f64
    }
    fn rate(&self) -> f64 {
        let n = self.target;
        let span = self
            .last_ns
            .load(Relaxed)
            .saturating_sub(self.first_ns.load(Relaxed));
        n as f64 / (span as f64 / 1e9)
    }
}

/// A log-linear histogram of nanoseconds (16 sub-buckets per power of two,
/// ~6 % resolution), lock-free and allocation-free per record.
struct Histogram {
    buckets: Vec<AtomicU64>,
}

impl Histogram {
    fn new() -> Histogram {
        Histogram {
            buckets: (0..64 * 16).map(|_| AtomicU64::new(0)).collect(),
        }
    }
    fn index(v: u64) -> usize {
        if v < 16 {
            return v as usize;
        }
        let e = 63 - v.leading_zeros() as usize; // >= 4
        let sub = ((v >> (e - 4)) & 15) as usize;
        (e - 3) * 16 + sub
    }
    fn value(i: usize) -> u64 {
        if i < 16 {
            return i as u64;
        }
        let (e, sub) = (i / 16 + 3, (i % 16) as u64);
        (16 + sub) << (e - 4)
    }
    fn record(&self, ns: u64) {
        self.buckets[Self::index(ns)].fetch_add(1, Relaxed);
    }
    fn quantile(&self, q: f64) -> Option<f64> {
        let counts: Vec<u64> = self.buckets.iter().map(|b| b.load(Relaxed)).collect();
        let total: u64 = counts.iter().sum();
        if total == 0 {
            return None;
        }
        let want = (q * total as f64).ceil() as u64;
        let mut seen = 0;
        for (i, c) in counts.iter().enumerate() {
            seen += c;
            if seen >= want {
                return Some(Self::value(i) as f64 / 1000.0);
            }
        }
        None
    }
}

/// Wraps the whole service: times each call and counts it.
#[derive(Clone)]
struct Probe<S> {
    inner: S,
    tally: &'static Tally,
}

impl<S, B> Service<Request<RecordBody>> for Probe<S>
where
    S: Service<Request<RecordBody>, Response = Response<B>>,
{
    type Response = Response<B>;
    type Error = S::Error;
    type Future = ProbeFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<RecordBody>) -> Self::Future {
        let started = self.tally.start();
        ProbeFuture {
            inner: self.inner.call(req),
            started,
            tally: self.tally,
        }
    }
}

pin_project_lite::pin_project! {
    struct ProbeFuture<F> {
        #[pin]
        inner: F,
        started: Option<u64>,
        tally: &'static Tally,
    }
}

impl<F, B, E> Future for ProbeFuture<F>
where
    F: Future<Output = Result<Response<B>, E>>,
{
    type Output = F::Output;
    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
        let this = self.project();
        let out = std::task::ready!(this.inner.poll(cx));
        let ok = matches!(&out, Ok(r) if r.status().is_success());
        this.tally.finish(*this.started, ok);
        Poll::Ready(out)
    }
}

fn child(args: &[String], variant: &str) {
    let bootstrap = std::env::var("KAFKA_BOOTSTRAP_SERVERS").expect("KAFKA_BOOTSTRAP_SERVERS");
    let topic = arg(args, "--topic").expect("--topic");
    let group = arg(args, "--group").expect("--group");
    let n: u64 = arg(args, "--records").expect("--records").parse().unwrap();
    let timeout = Duration::from_secs(env_u64("BENCH_E2E_TIMEOUT", 600));
    let tally: &'static Tally = Box::leak(Box::new(Tally::new(n)));
    let mut extra = json!({});
    match variant {
        "raw" => raw(&bootstrap, &topic, &group, tally, timeout),
        "raw-eos" => raw_eos(&bootstrap, &topic, &group, tally, timeout),
        "eos" => {
            let out = eos_output(&bootstrap, &group);
            let rt = tokio::runtime::Runtime::new().unwrap();
            extra = rt.block_on(runtime_eos(
                &bootstrap, &topic, &group, &out, tally, timeout,
            ));
        }
        "runtime" | "stack" => {
            let rt = tokio::runtime::Runtime::new().unwrap();
            extra = rt.block_on(runtime(
                &bootstrap,
                &topic,
                &group,
                tally,
                timeout,
                variant == "stack",
            ));
        }
        other => panic!("unknown variant {other}"),
    }
    let served = tally.count.load(Relaxed);
    let failed = tally.failed.load(Relaxed);
    let (p50, p99) = if variant.starts_with("raw") {
        (None, None)
    } else {
        (tally.hist.quantile(0.5), tally.hist.quantile(0.99))
    };
    let mut result = json!({
        "variant": variant, "records": served, "failed": failed,
        "records_per_sec": tally.rate(),
        "seconds": tally.last_ns.load(Relaxed).saturating_sub(tally.first_ns.load(Relaxed)) as f64 / 1e9,
        "p50_us": p50, "p99_us": p99,
        "cpu_ns_per_record": tally.cpu_ns_per_record(),
        "peak_rss_kib": peak_rss_kib(),
    });
    if let (Some(r), Some(e)) = (result.as_object_mut(), extra.as_object()) {
        r.extend(e.clone());
    }
    println!("E2E_RESULT {result}");
}

fn raw(bootstrap: &str, topic: &str, group: &str, tally: &Tally, timeout: Duration) {
    let mut config = ClientConfig::new();
    config
        .set("bootstrap.servers", bootstrap)
        .set("group.id", group)
        .set("auto.offset.reset", "earliest");
    // Diagnostics only (`BENCH_E2E_RAW_PROPERTIES`); the reported runs use
    // librdkafka's defaults.
    if let Ok(props) = std::env::var("BENCH_E2E_RAW_PROPERTIES") {
        for kv in props.split(',').filter(|kv| !kv.is_empty()) {
            let (k, v) = kv
                .split_once('=')
                .expect("BENCH_E2E_RAW_PROPERTIES: k=v,k=v");
            config.set(k, v);
        }
    }
    let consumer: BaseConsumer = config.create().unwrap();
    consumer.subscribe(&[topic]).unwrap();
    let deadline = Instant::now() + timeout;
    let mut touched = 0u64;
    while tally.count.load(Relaxed) < tally.target {
        assert!(Instant::now() < deadline, "raw consumer: timed out");
        match consumer.poll(Duration::from_millis(100)) {
            Some(Ok(msg)) => {
                tally.start();
                if let Some(p) = msg.payload() {
                    // Touch the payload: its length and first and last bytes.
                    touched = touched.wrapping_add(p.len() as u64);
                    touched = touched.wrapping_add(u64::from(p[0]) + u64::from(p[p.len() - 1]));
                }
                tally.finish(None, true);
            }
            Some(Err(e)) => eprintln!("raw consumer: {e}"),
            None => {}
        }
    }
    std::hint::black_box(touched);
}

/// The output topic of an exactly-once run (one per group: a fresh topic
/// each run, so no run reads another's transactions).
fn eos_output(bootstrap: &str, group: &str) -> String {
    let out = format!("{group}-out");
    let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .create()
        .unwrap();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(admin.create_topics(
        &[NewTopic::new(&out, 16, TopicReplication::Fixed(1))],
        &AdminOptions::new(),
    ))
    .unwrap();
    out
}

fn raw_eos(bootstrap: &str, topic: &str, group: &str, tally: &Tally, timeout: Duration) {
    use rdkafka::TopicPartitionList;
    let out = eos_output(bootstrap, group);
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("group.id", group)
        .set("auto.offset.reset", "earliest")
        .set("enable.auto.commit", "false")
        .set("isolation.level", "read_committed")
        .create()
        .unwrap();
    consumer.subscribe(&[topic]).unwrap();
    // Polled by its own thread, as the runtime's FutureProducer is.
    let producer: ThreadedProducer<DefaultProducerContext> = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("transactional.id", format!("{group}-tx"))
        .create()
        .unwrap();
    let call = Duration::from_secs(30);
    producer.init_transactions(call).unwrap();
    let deadline = Instant::now() + timeout;
    type Copied = (Option<Vec<u8>>, Option<Vec<u8>>);
    while tally.count.load(Relaxed) < tally.target {
        assert!(Instant::now() < deadline, "raw exactly-once: timed out");
        // Read a batch (up to EOS_MAX_BATCH records or EOS_MAX_DELAY),
        // then produce its outputs and offsets in one transaction — the
        // runtime's order too: producing as records arrive would start the
        // next transaction while the broker still completes the previous
        // one, and pay a retry backoff each time.
        let mut batch: Vec<Copied> = Vec::with_capacity(EOS_MAX_BATCH);
        let mut offsets: std::collections::HashMap<i32, i64> = Default::default();
        let mut batch_end: Option<Instant> = None;
        while batch.len() < EOS_MAX_BATCH {
            let left = match batch_end {
                None => Duration::from_millis(100),
                Some(end) => end.saturating_duration_since(Instant::now()),
            };
            match consumer.poll(left) {
                Some(Ok(msg)) => {
                    tally.start();
                    batch_end.get_or_insert_with(|| Instant::now() + EOS_MAX_DELAY);
                    batch.push((
                        msg.key().map(<[u8]>::to_vec),
                        msg.payload().map(<[u8]>::to_vec),
                    ));
                    offsets.insert(msg.partition(), msg.offset() + 1);
                }
                Some(Err(e)) => eprintln!("raw exactly-once: {e}"),
                None if batch_end.is_none() => break,
                None => {}
            }
            if batch_end.is_some_and(|end| Instant::now() >= end) {
                break;
            }
        }
        if batch.is_empty() {
            continue;
        }
        producer.begin_transaction().unwrap();
        for (key, payload) in &batch {
            let mut record = BaseRecord::<[u8], [u8]>::to(&out);
            if let Some(k) = key {
                record = record.key(&k[..]);
            }
            if let Some(p) = payload {
                record = record.payload(&p[..]);
            }
            while let Err((e, r)) = producer.send(record) {
                assert!(
                    matches!(
                        e,
                        rdkafka::error::KafkaError::MessageProduction(
                            rdkafka::types::RDKafkaErrorCode::QueueFull
                        )
                    ),
                    "{e}"
                );
                std::thread::sleep(Duration::from_millis(1));
                record = r;
            }
            tally.finish(None, true);
        }
        // Wait for the outputs' acknowledgements before committing, as the
        // runtime does (its delivery futures): commit_transaction's own
        // flush took ~100 ms per transaction here.
        while producer.in_flight_count() > 0 {
            std::thread::sleep(Duration::from_micros(200));
        }
        let mut tpl = TopicPartitionList::new();
        for (p, o) in &offsets {
            tpl.add_partition_offset(topic, *p, rdkafka::Offset::Offset(*o))
                .unwrap();
        }
        producer
            .send_offsets_to_transaction(&tpl, &consumer.group_metadata().unwrap(), call)
            .unwrap();
        producer.commit_transaction(call).unwrap();
    }
}

async fn runtime_eos(
    bootstrap: &str,
    topic: &str,
    group: &str,
    out: &str,
    tally: &'static Tally,
    timeout: Duration,
) -> serde_json::Value {
    use kafka_tower::runtime::{ExactlyOnce, Outbox, ProducerConfig};
    let out = out.to_owned();
    let consumer = Consumer::builder()
        .bootstrap_servers(bootstrap)
        .group_id(group)
        .topics([topic])
        .property("auto.offset.reset", "earliest")
        .build()
        .unwrap();
    let stats = consumer.stats();
    let mut producer = ProducerConfig::new(bootstrap);
    producer.transactional_id = Some(format!("{group}-tx"));
    let mut settings = ExactlyOnce::new(producer);
    settings.max_batch = EOS_MAX_BATCH;
    settings.max_delay = EOS_MAX_DELAY;
    let handler = tower::service_fn(move |req: Request<RecordBody>| {
        let outbox = req.extensions().get::<Outbox>().unwrap().clone();
        let key = req
            .extensions()
            .get::<kafka_tower::RecordMeta>()
            .unwrap()
            .key()
            .cloned();
        outbox.send(kafka_tower::OutgoingRecord {
            topic: out.clone(),
            key,
            payload: req.into_body().into_payload(),
            ..Default::default()
        });
        async { Ok::<_, std::convert::Infallible>(Response::new(String::new())) }
    });
    let shutdown = async {
        tokio::select! {
            _ = tally.done.notified() => {}
            _ = tokio::time::sleep(timeout) => panic!("runtime exactly-once: timed out"),
        }
    };
    consumer
        .serve_exactly_once(
            Probe {
                inner: handler,
                tally,
            },
            settings,
            shutdown,
        )
        .await
        .unwrap();
    json!({"dead_lettered": stats.dead_lettered(), "producer_recreations": stats.producer_recreations()})
}

async fn runtime(
    bootstrap: &str,
    topic: &str,
    group: &str,
    tally: &'static Tally,
    timeout: Duration,
    stack: bool,
) -> serde_json::Value {
    let mut builder = Consumer::builder()
        .bootstrap_servers(bootstrap)
        .group_id(group)
        .topics([topic])
        .property("auto.offset.reset", "earliest");
    // Diagnostics only; the reported runs use the defaults.
    if let Ok(n) = std::env::var("BENCH_E2E_BUFFER_PER_PARTITION") {
        builder = builder.buffer_per_partition(n.parse().unwrap());
    }
    if let Ok(n) = std::env::var("BENCH_E2E_MAX_IN_FLIGHT") {
        builder = builder.max_in_flight(n.parse().unwrap());
    }
    if let Ok(props) = std::env::var("BENCH_E2E_PROPERTIES") {
        for kv in props.split(',').filter(|kv| !kv.is_empty()) {
            let (k, v) = kv.split_once('=').expect("BENCH_E2E_PROPERTIES: k=v,k=v");
            builder = builder.property(k, v);
        }
    }
    let consumer = builder.build().unwrap();
    let stats = consumer.stats();
    let shutdown = async {
        tokio::select! {
            _ = tally.done.notified() => {}
            _ = tokio::time::sleep(timeout) => panic!("runtime consumer: timed out"),
        }
    };
    if stack {
        let audit = fixtures::auditor(true);
        let svc = ServiceBuilder::new()
            .layer(tower::layer::layer_fn(|inner| Probe { inner, tally }))
            .layer(kafka_tower_trace::TraceLayer::new())
            .layer(audit.layer())
            .layer(fixtures::jwt_layer(1000))
            .layer(audit.caller_layer())
            .layer(fixtures::metrics_layer())
            .layer(fixtures::schema_layer_for(topic))
            .layer(CaptureContextLayer::new())
            .service(fixtures::Noop);
        consumer.serve(svc, shutdown).await.unwrap();
    } else {
        let svc = Probe {
            inner: fixtures::Noop,
            tally,
        };
        consumer.serve(svc, shutdown).await.unwrap();
    }
    json!({"commits": stats.commits(), "dead_lettered": stats.dead_lettered(),
        "peak_buffered": stats.peak_buffered(), "pauses": stats.pauses()})
}
