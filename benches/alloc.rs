//! Heap allocations per record on the runtime's serving path, counted by a
//! counting global allocator (no broker).
//!
//! ```text
//! cargo bench --bench alloc              # counts per record, a Markdown table
//! cargo bench --bench alloc -- --sites   # also: a backtrace per allocation of one record
//! ```
//!
//! Each record is a fresh copy made the way the poll thread makes it
//! (key, payload and every header copied into one buffer): those
//! copies are "the owned record" and are counted apart. The serving path
//! is then run once per record with a no-op service, single-threaded,
//! polled with a no-op waker, so every allocation counted is the record's.
//! `BENCH_ALLOC_JSON=path` also writes the counts as JSON for the report.

#[path = "support/fixtures.rs"]
mod fixtures;

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};

use fixtures::{fresh, jwt_layer, metrics_layer, ready, record, schema_layer, Noop};
use kafka_tower::context::CaptureContextLayer;
use kafka_tower::runtime::bench_support::ServingPath;
use tower::ServiceBuilder;

/// Counts every allocation and reallocation; optionally prints where each
/// one comes from.
struct CountingAlloc;

static ALLOCS: AtomicU64 = AtomicU64::new(0);
static BYTES: AtomicU64 = AtomicU64::new(0);
static TRACE: AtomicBool = AtomicBool::new(false);

thread_local! {
    // Set while a backtrace is being taken, so its own allocations are not
    // traced (and do not recurse).
    static IN_TRACE: Cell<bool> = const { Cell::new(false) };
}

fn counted(size: usize) {
    ALLOCS.fetch_add(1, Relaxed);
    BYTES.fetch_add(size as u64, Relaxed);
    if TRACE.load(Relaxed) && !IN_TRACE.with(Cell::get) {
        IN_TRACE.with(|t| t.set(true));
        print_site(size);
        IN_TRACE.with(|t| t.set(false));
    }
}

/// Prints the first frames of the allocation's backtrace outside the
/// allocator and the standard library's allocation plumbing.
fn print_site(size: usize) {
    let bt = std::backtrace::Backtrace::force_capture().to_string();
    let frames: Vec<&str> = bt
        .lines()
        .map(str::trim)
        .filter(|l| !l.starts_with("at "))
        .filter_map(|l| l.split_once(": ").map(|(_, f)| f))
        .skip_while(|f| {
            f.contains("backtrace")
                || f.contains("alloc::counted")
                || f.contains("print_site")
                || f.contains("CountingAlloc")
                || f.starts_with("alloc::")
                || f.contains("__rust")
                || f.contains("std::alloc")
                || f.contains("raw_vec")
        })
        .take(6)
        .collect();
    println!("- {size} B: {}", frames.join(" ← "));
}

// SAFETY: delegates to the system allocator; only counts.
unsafe impl GlobalAlloc for CountingAlloc {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        counted(layout.size());
        // SAFETY: the caller's contract is passed on unchanged.
        unsafe { System.alloc(layout) }
    }
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        counted(layout.size());
        // SAFETY: as above.
        unsafe { System.alloc_zeroed(layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        counted(new_size);
        // SAFETY: as above.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: as above.
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static GLOBAL: CountingAlloc = CountingAlloc;

const N: u64 = 10_000;

/// Allocations and bytes per call of `f`, averaged over `N` calls (after
/// one warm-up call).
fn per_call(mut f: impl FnMut()) -> (f64, f64) {
    f();
    let (a0, b0) = (ALLOCS.load(Relaxed), BYTES.load(Relaxed));
    for _ in 0..N {
        f();
    }
    let (a1, b1) = (ALLOCS.load(Relaxed), BYTES.load(Relaxed));
    ((a1 - a0) as f64 / N as f64, (b1 - b0) as f64 / N as f64)
}

/// Prints where each allocation of one call of `f` comes from.
fn sites(name: &str, mut f: impl FnMut()) {
    f();
    println!("\n### {name}: allocation sites of one record\n");
    TRACE.store(true, Relaxed);
    f();
    TRACE.store(false, Relaxed);
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let want_sites = args.iter().any(|a| a == "--sites");
    // `cargo test --benches` runs bench targets without `--bench`: do
    // nothing then.
    if !want_sites && !args.iter().any(|a| a == "--bench") {
        return;
    }
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let _enter = rt.enter();
    let token = fixtures::hs256_token();
    let template = record(&token);
    let group: std::sync::Arc<str> = "bench".into();

    let path = ServingPath::new();
    let path_no_ctx = ServingPath::with_context_capture(false);
    let audit = fixtures::auditor(true);
    let mut stack = ServiceBuilder::new()
        .layer(kafka_tower_trace::TraceLayer::new())
        .layer(audit.layer())
        .layer(jwt_layer(1000))
        .layer(audit.caller_layer())
        .layer(metrics_layer())
        .layer(schema_layer())
        .layer(CaptureContextLayer::new())
        .service(Noop);
    // Each case: (name, what it runs). The record copy is made inside the
    // counted call and its allocations subtracted with `owned`.
    type Case<'a> = (&'static str, Box<dyn FnMut() + 'a>);
    let mut cases: Vec<Case<'_>> = vec![
        (
            "owned record (poll thread's copy; baseline)",
            Box::new(|| drop(fresh(&template))),
        ),
        (
            "into_request",
            Box::new(|| drop(fresh(&template).into_request(Some(group.clone()), 1))),
        ),
        (
            "serving path, no-op service, context capture off",
            Box::new(|| {
                let r = fresh(&template);
                assert!(ready(path_no_ctx.serve(&mut Noop, &r)));
            }),
        ),
        (
            "serving path, no-op service (default config)",
            Box::new(|| {
                let r = fresh(&template);
                assert!(ready(path.serve(&mut Noop, &r)));
            }),
        ),
        (
            "serving path, full stack (trace, audit, JWT cache hit, metrics, schema, context)",
            Box::new(|| {
                let r = fresh(&template);
                assert!(ready(path.serve(&mut stack, &r)));
            }),
        ),
    ];
    let mut rows = Vec::new();
    let mut owned = (0.0, 0.0);
    for (i, (name, f)) in cases.iter_mut().enumerate() {
        let (a, b) = per_call(f);
        if i == 0 {
            owned = (a, b);
            rows.push((*name, a, b));
        } else {
            rows.push((*name, a - owned.0, b - owned.1));
        }
    }
    println!("heap allocations per record ({N} records each; the owned record's own copies subtracted below the baseline row)\n");
    println!("| path | allocations / record | bytes / record |");
    println!("|---|---|---|");
    for (name, a, b) in &rows {
        println!("| {name} | {a:.2} | {b:.0} |");
    }
    if let Ok(path) = std::env::var("BENCH_ALLOC_JSON") {
        let json = serde_json::json!(rows
            .iter()
            .map(|(n, a, b)| serde_json::json!({"path": n, "allocs": a, "bytes": b}))
            .collect::<Vec<_>>());
        std::fs::write(path, serde_json::to_string_pretty(&json).unwrap()).unwrap();
    }
    if want_sites {
        for (name, f) in cases.iter_mut().skip(1) {
            sites(name, f);
        }
    }
}
