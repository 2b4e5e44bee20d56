//! Gathers the results of the other benches into `results/latest.md` (a
//! Markdown report with the machine it ran on and the targets) and
//! `results/latest.svg` (a chart drawn with plotters' SVG backend, text
//! left to the viewer's fonts: no fontconfig or system font needed).
//!
//! ```text
//! cargo bench --bench report    # after layers, alloc, e2e, producer (see scripts/bench)
//! ```
//!
//! Inputs (all optional; a missing one leaves its section out):
//! `$BENCH_CRITERION_DIR` (default `target/criterion`) for the in-process
//! benches, and in `$BENCH_RESULTS_DIR` (default `results/`): `e2e.json`,
//! `alloc.json`, `alloc.md`, `producer.md`.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use plotters::prelude::*;
use serde_json::Value;

/// In-process benches, in report order: (criterion id, label).
const IN_PROCESS: &[(&str, &str)] = &[
    (
        "record/into_request_512B_5_headers",
        "record → request (512 B, 5 headers)",
    ),
    (
        "record/serving_path_noop_no_context",
        "serving path, no-op, context capture off",
    ),
    (
        "record/serving_path_noop",
        "serving path, no-op (default config)",
    ),
    (
        "layer/none_noop_service_alone",
        "no layer: no-op service alone",
    ),
    ("layer/capture_context", "CaptureContextLayer"),
    ("layer/jwt_cache_hit", "JWT, cache hit"),
    ("layer/jwt_cold_HS256", "JWT cold HS256"),
    ("layer/jwt_cold_RS256", "JWT cold RS256"),
    ("layer/jwt_cold_PS256", "JWT cold PS256"),
    ("layer/jwt_cold_ES256", "JWT cold ES256"),
    ("layer/jwt_cold_EdDSA", "JWT cold EdDSA"),
    ("layer/schema_512B_order", "JSON Schema, 512 B order"),
    ("layer/schema_1KB_20_props", "JSON Schema, 1 KB / 20 props"),
    ("layer/trace_no_subscriber", "TraceLayer, no subscriber"),
    (
        "layer/trace_exported_span",
        "TraceLayer, span exported (in-memory)",
    ),
    ("layer/metrics", "metrics layer"),
    (
        "layer/audit_null_sink_drop",
        "AuditLayer, null sink, drop when full",
    ),
    (
        "layer/audit_null_sink_block",
        "AuditLayer, null sink, block (default)",
    ),
    ("stack/full_stack", "full stack (layers only)"),
    ("stack/serving_path_full_stack", "serving path + full stack"),
    ("reference/tower_timeout", "ref: tower TimeoutLayer"),
    (
        "reference/tower_http_trace_no_subscriber",
        "ref: tower-http TraceLayer",
    ),
    (
        "reference/tower_http_set_request_id_uuid",
        "ref: tower-http SetRequestId (UUID)",
    ),
    (
        "reference/tower_http_catch_panic",
        "ref: tower-http CatchPanic",
    ),
];

fn read_json(path: &Path) -> Option<Value> {
    serde_json::from_str(&std::fs::read_to_string(path).ok()?).ok()
}

/// Median ns per iteration of a criterion bench, if it ran.
fn criterion_ns(dir: &Path, id: &str) -> Option<f64> {
    let v = read_json(&dir.join(id).join("new/estimates.json"))?;
    v["median"]["point_estimate"].as_f64()
}

fn sh(cmd: &str, args: &[&str]) -> String {
    std::process::Command::new(cmd)
        .args(args)
        .output()
        .ok()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
        .unwrap_or_default()
}

fn machine() -> String {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let model = cpuinfo
        .lines()
        .find(|l| l.starts_with("model name"))
        .and_then(|l| l.split_once(':'))
        .map(|(_, m)| m.trim().to_owned())
        .unwrap_or_else(|| "unknown".into());
    let mem_gib = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("MemTotal:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse::<f64>().ok())
        })
        .map(|kib| kib / 1024.0 / 1024.0)
        .unwrap_or(0.0);
    let dirty = if sh("git", &["status", "--porcelain", "--untracked-files=no"]).is_empty() {
        ""
    } else {
        " (with uncommitted changes)"
    };
    format!(
        "| | |\n|---|---|\n| CPUs (`nproc`) | {} |\n| CPU | {model} |\n| memory | {mem_gib:.1} GiB |\n\
         | kernel | {} |\n| rustc | {} |\n| date | {} |\n| git revision | `{}`{dirty} |\n\
         | load average at report time (1, 5, 15 min) | {} |\n",
        sh("nproc", &[]),
        sh("uname", &["-r"]),
        sh("rustc", &["--version"]),
        sh("date", &["-u", "+%Y-%m-%d %H:%M UTC"]),
        sh("git", &["rev-parse", "--short", "HEAD"]),
        std::fs::read_to_string("/proc/loadavg")
            .unwrap_or_default()
            .split_whitespace()
            .take(3)
            .collect::<Vec<_>>()
            .join(", "),
    )
}

fn fmt_ns(ns: f64) -> String {
    if ns >= 1000.0 {
        format!("{:.2} µs", ns / 1000.0)
    } else {
        format!("{ns:.0} ns")
    }
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    // `cargo test --benches` runs bench targets without `--bench`.
    if !args.iter().any(|a| a == "--bench") {
        return;
    }
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let results = std::env::var("BENCH_RESULTS_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|_| root.join("results"));
    let criterion = std::env::var("BENCH_CRITERION_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|_| {
            std::env::var("CARGO_TARGET_DIR")
                .map(PathBuf::from)
                .unwrap_or_else(|_| root.join("target"))
                .join("criterion")
        });
    std::fs::create_dir_all(&results).unwrap();

    let in_process: Vec<(&str, &str, f64)> = IN_PROCESS
        .iter()
        .filter_map(|(id, label)| criterion_ns(&criterion, id).map(|ns| (*id, *label, ns)))
        .collect();
    let e2e = read_json(&results.join("e2e.json"));
    let alloc = read_json(&results.join("alloc.json"));

    let mut md = String::new();
    md.push_str("# kafka-tower benchmarks\n\nGenerated by `scripts/bench`. The machine is shared with other work, so numbers are noisy; ratios come from one run, side by side.\n\n## Machine\n\n");
    md.push_str(&machine());

    md.push_str("\n## Targets\n\n| target | goal | measured | met |\n|---|---|---|---|\n");
    let yes = |ok: bool| if ok { "yes" } else { "**no**" };
    // The runtime core's targets, measured side by side in one run.
    if let Some(e) = &e2e {
        let f = |v: &Value| v.as_f64().unwrap_or(f64::NAN);
        let cpu = f(&e["cpu_ratios"]["b_over_a"]);
        let (b, c) = (f(&e["ratios"]["b_over_a"]), f(&e["ratios"]["c_over_a"]));
        let eos = f(&e["eos"]["ratio"]);
        let pauses = f(&e["pauses"]["runtime"]);
        let rss = f(&e["peak_rss_kib"]["runtime"]) / f(&e["peak_rss_kib"]["raw"]);
        let rows = [
            (
                "runtime (no-op): CPU per record ÷ raw rdkafka",
                "≤ 2.0",
                cpu,
                cpu <= 2.0,
            ),
            ("runtime (no-op): records/s ÷ raw", "≥ 0.5", b, b >= 0.5),
            (
                "runtime + full stack (JWT cache on): records/s ÷ raw",
                "≥ 0.3",
                c,
                c >= 0.3,
            ),
            (
                "exactly-once mode: records/s ÷ raw transactional loop",
                "≥ 0.7",
                eos,
                eos >= 0.7,
            ),
            (
                "pause cycles of the no-op runtime (keeping up)",
                "0",
                pauses,
                pauses == 0.0,
            ),
            (
                "peak RSS of the no-op runtime ÷ raw",
                "≤ 1.5",
                rss,
                rss <= 1.5,
            ),
        ];
        for (what, goal, measured, met) in rows {
            let _ = writeln!(md, "| {what} | {goal} | {measured:.3} | {} |", yes(met));
        }
    }
    if let Some(rows) = alloc.as_ref().and_then(Value::as_array) {
        if let Some(r) = rows.iter().find(|r| {
            r["path"]
                .as_str()
                .is_some_and(|p| p.contains("default config"))
        }) {
            let n = r["allocs"].as_f64().unwrap_or(f64::NAN);
            let _ = writeln!(
                md,
                "| heap allocations / record, serving path, no-op service (default config) | ≤ 6 | {n:.0} | {} |",
                yes(n <= 6.0)
            );
        }
    }

    if !in_process.is_empty() {
        md.push_str("\n## In-process, ns per record (criterion median, no broker)\n\n| bench | ns / record |\n|---|---|\n");
        for (id, label, ns) in &in_process {
            let _ = writeln!(md, "| {label} (`{id}`) | {} |", fmt_ns(*ns));
        }
    }
    if let Ok(s) = std::fs::read_to_string(results.join("alloc.md")) {
        md.push_str("\n## Heap allocations per record (counting allocator)\n\n");
        md.push_str(&s);
        md.push_str("\nThe call site of each allocation of one record: `alloc-sites.txt`.\n");
    }
    if let Ok(s) = std::fs::read_to_string(results.join("e2e.md")) {
        md.push_str("\n## End to end against the broker (consume)\n\n");
        md.push_str(&s);
    }
    if let Ok(s) = std::fs::read_to_string(results.join("producer.md")) {
        md.push_str("\n## Producing\n\n");
        md.push_str(&s);
    }
    std::fs::write(results.join("latest.md"), &md).unwrap();
    chart(&results.join("latest.svg"), &in_process, e2e.as_ref()).unwrap();
    println!(
        "wrote {} and latest.svg",
        results.join("latest.md").display()
    );
}

type ChartResult = Result<(), Box<dyn std::error::Error>>;

fn chart(path: &Path, in_process: &[(&str, &str, f64)], e2e: Option<&Value>) -> ChartResult {
    let rows = in_process.len().max(1);
    let height = 120 + 24 * rows as u32 + 260;
    let root = SVGBackend::new(path, (1000, height)).into_drawing_area();
    root.fill(&WHITE)?;
    let (top, bottom) = root.split_vertically(80 + 24 * rows as u32);

    // In-process: ns per record, log scale (JWT cold verification is ~100x
    // the rest).
    let max = in_process.iter().map(|r| r.2).fold(1000.0, f64::max) * 2.0;
    let mut c = ChartBuilder::on(&top)
        .caption(
            "in-process cost per record (ns, log scale)",
            ("sans-serif", 18),
        )
        .margin(10)
        .x_label_area_size(30)
        .y_label_area_size(330)
        .build_cartesian_2d((10f64..max).log_scale(), (0..rows).into_segmented())?;
    let labels: Vec<&str> = in_process.iter().map(|r| r.1).collect();
    c.configure_mesh()
        .disable_y_mesh()
        .y_labels(rows)
        .y_label_formatter(&|y| match y {
            SegmentValue::CenterOf(i) if *i < rows => labels[rows - 1 - i].to_owned(),
            _ => String::new(),
        })
        .x_label_formatter(&|x| fmt_ns(*x))
        .draw()?;
    c.draw_series(in_process.iter().enumerate().map(|(i, (id, _, ns))| {
        let y = rows - 1 - i;
        let color = if id.starts_with("reference/") {
            RGBColor(150, 150, 150)
        } else if id.starts_with("stack/") {
            RGBColor(200, 80, 40)
        } else {
            RGBColor(40, 100, 180)
        };
        let mut bar = Rectangle::new(
            [
                (10.0, SegmentValue::Exact(y)),
                (*ns, SegmentValue::Exact(y + 1)),
            ],
            color.filled(),
        );
        bar.set_margin(3, 3, 0, 0);
        bar
    }))?;

    // End to end: records/s of the three consumers (median).
    if let Some(e) = e2e {
        let m = &e["median"];
        let bars = [
            (
                "(a) raw rdkafka BaseConsumer",
                m["raw"].as_f64().unwrap_or(0.0),
            ),
            (
                "(b) runtime, no-op service",
                m["runtime"].as_f64().unwrap_or(0.0),
            ),
            (
                "(c) runtime + full stack",
                m["stack"].as_f64().unwrap_or(0.0),
            ),
        ];
        let top_rate = bars.iter().map(|b| b.1).fold(1.0, f64::max) * 1.1;
        let mut c = ChartBuilder::on(&bottom)
            .caption(
                format!(
                    "end to end: records/s, median of {} rounds (b/a {:.3}, c/a {:.3})",
                    e["rounds"],
                    e["ratios"]["b_over_a"].as_f64().unwrap_or(f64::NAN),
                    e["ratios"]["c_over_a"].as_f64().unwrap_or(f64::NAN)
                ),
                ("sans-serif", 18),
            )
            .margin(10)
            .x_label_area_size(30)
            .y_label_area_size(330)
            .build_cartesian_2d(0f64..top_rate, (0..3usize).into_segmented())?;
        c.configure_mesh()
            .disable_y_mesh()
            .y_labels(3)
            .y_label_formatter(&|y| match y {
                SegmentValue::CenterOf(i) if *i < 3 => bars[2 - i].0.to_owned(),
                _ => String::new(),
            })
            .x_label_formatter(&|x| format!("{:.0}k", x / 1000.0))
            .draw()?;
        c.draw_series(bars.iter().enumerate().map(|(i, (_, v))| {
            let y = 2 - i;
            let mut bar = Rectangle::new(
                [
                    (0.0, SegmentValue::Exact(y)),
                    (*v, SegmentValue::Exact(y + 1)),
                ],
                RGBColor(40, 100, 180).filled(),
            );
            bar.set_margin(8, 8, 0, 0);
            bar
        }))?;
    }
    root.present()?;
    Ok(())
}
