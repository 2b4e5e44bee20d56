//! Dead-letter operations (`kafka_tower::dlq` and the `kafka-tower`
//! command) against a real Apache Kafka broker.

use std::collections::HashMap;
use std::io::{BufRead, BufReader};
use std::process::{Command, Output, Stdio};

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use kafka_tower::dlq::{DeadLetter, DeadLetters, Filter, Redrive};
use kafka_tower::runtime::Properties;
use kafka_tower::{
    BoxError, ConsumedRecord, RawHeader, RawHeaders, RecordBody, RecordMeta, Refusal,
};
use kafka_tower_testkit::*;

const BIN: &str = env!("CARGO_BIN_EXE_kafka-tower");

fn cli(args: &[&str]) -> Command {
    let mut c = Command::new(BIN);
    c.args(["--bootstrap-servers", &bootstrap()]).args(args);
    c
}

fn run_cli(args: &[&str]) -> Output {
    let out = cli(args).output().expect("run kafka-tower");
    assert!(
        out.status.success(),
        "kafka-tower {args:?} failed ({}): {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

fn properties() -> Properties {
    let mut p = Properties::new();
    p.set("bootstrap.servers", bootstrap());
    p
}

/// The awkward headers every original carries: a non-UTF-8 name, a null
/// value, a name twice, a NUL in a value.
fn awkward_headers(i: usize) -> RawHeaders {
    let mut h = RawHeaders::new();
    h.push(RawHeader::new(&b"k\xff\xfe"[..], format!("v{i}")));
    h.push(RawHeader {
        key: Bytes::from_static(b"null-value"),
        value: None,
    });
    h.push(RawHeader::new("dup", "first"));
    h.push(RawHeader::new("dup", "second"));
    h.push(RawHeader::new("nul", &b"a\0b"[..]));
    h
}

/// A consumer whose service refuses keys `invalid-*` (schema / invalid,
/// 422) and `denied-*` (jwt / unauthorized, 403) and accepts the rest,
/// except that a redriven record (one with `kt-redrive-source-offset`)
/// succeeds unless its key is in `still_failing`.
fn refusing_service(
    still_failing: &'static [&'static str],
) -> impl tower::Service<
    Request<RecordBody>,
    Response = Response<String>,
    Error = BoxError,
    Future = impl std::future::Future<Output = Result<Response<String>, BoxError>> + Send,
> + Clone
       + Send
       + 'static {
    tower::service_fn(move |req: Request<RecordBody>| {
        let meta = req.extensions().get::<RecordMeta>().unwrap();
        let key = String::from_utf8(meta.key().cloned().unwrap_or_default().to_vec()).unwrap();
        let redriven = req
            .extensions()
            .get::<RawHeaders>()
            .unwrap()
            .iter()
            .any(|h| &h.key[..] == b"kt-redrive-source-offset");
        async move {
            let mut res = Response::new(String::new());
            let refuse = |res: &mut Response<String>, status, layer, reason| {
                *res.status_mut() = status;
                res.extensions_mut()
                    .insert(Refusal::new(layer, reason, format!("refused {key}")));
            };
            if redriven && !still_failing.contains(&key.as_str()) {
                return Ok(res);
            }
            if key.starts_with("invalid") {
                refuse(
                    &mut res,
                    StatusCode::UNPROCESSABLE_ENTITY,
                    "schema",
                    "invalid",
                );
            } else if key.starts_with("denied") {
                refuse(&mut res, StatusCode::FORBIDDEN, "jwt", "unauthorized");
            }
            Ok(res)
        }
    })
}

/// Produces 12 originals to `topic` (keys ok-/invalid-/denied-, two
/// tombstones among the invalid ones) and lets a consumer dead-letter
/// eight of them; returns the originals by key.
async fn dead_letter_a_mix(topic: &str, group: &str) -> HashMap<String, Rec> {
    create_topic_with_dlq(topic, 2).await;
    let mut originals = HashMap::new();
    let mut recs = Vec::new();
    for i in 0..12 {
        let key = match i % 3 {
            0 => format!("ok-{i}"),
            1 => format!("invalid-{i}"),
            _ => format!("denied-{i}"),
        };
        let mut rec = Rec::payload(format!("{{\"n\":{i}}}"))
            .key(key.clone())
            .headers(awkward_headers(i));
        if i == 1 || i == 7 {
            rec.payload = None; // a tombstone
        }
        originals.insert(key, rec.clone());
        recs.push(rec);
    }
    produce(topic, recs).await;
    let running = spawn(
        consumer(group, &[topic])
            .service_id("orders")
            .build()
            .unwrap(),
        refusing_service(&[]),
    );
    let dlq = format!("{topic}.dlq");
    eventually("eight dead letters", || end_offsets(&dlq, 1)[0] >= 8).await;
    running.stop().await;
    assert_eq!(end_offsets(&dlq, 1)[0], 8, "exactly the refused records");
    originals
}

fn header<'a>(h: &'a RawHeaders, name: &str) -> Option<&'a [u8]> {
    h.iter()
        .find(|x| &x.key[..] == name.as_bytes())
        .and_then(|x| x.value.as_deref())
}

/// The headers without the `kt-redrive-*` ones.
fn without_redrive(h: &RawHeaders) -> Vec<(Vec<u8>, Option<Vec<u8>>)> {
    header_pairs(h)
        .into_iter()
        .filter(|(k, _)| !k.starts_with(b"kt-redrive-"))
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_filtered_redrive_copies_exactly_the_selected_records_byte_exact_then_a_fixed_service_serves_them(
) {
    init_tracing();
    let topic = unique("dlq-mix");
    let dlq = format!("{topic}.dlq");
    let originals = dead_letter_a_mix(&topic, &unique("g")).await;

    // The library reads the dead letters as typed values.
    let dls: Vec<DeadLetter> = DeadLetters::open(&properties(), &dlq)
        .unwrap()
        .map(|r| r.unwrap().unwrap())
        .collect();
    assert_eq!(dls.len(), 8);
    for dl in &dls {
        let key = String::from_utf8(dl.key.clone().unwrap().to_vec()).unwrap();
        let original = &originals[&key];
        assert_eq!(dl.original_topic, topic);
        assert_eq!(dl.payload, original.payload, "{key}");
        assert_eq!(header_pairs(&dl.headers), header_pairs(&original.headers));
        let (failed_by, reason, status) = if key.starts_with("invalid") {
            ("schema", "invalid", 422)
        } else {
            ("jwt", "unauthorized", 403)
        };
        assert_eq!(dl.failed_by.as_deref(), Some(failed_by));
        assert_eq!(dl.reason.as_deref(), Some(reason));
        assert_eq!(dl.status, Some(status));
        assert_eq!(dl.service_id.as_deref(), Some("orders"));
    }

    // Redrive only `reason=invalid`, with the command.
    let out = run_cli(&[
        "dlq",
        "redrive",
        &dlq,
        "--reason",
        "invalid",
        "--note",
        "schema fixed",
    ]);
    let summary = String::from_utf8(out.stdout).unwrap();
    assert!(
        summary.starts_with("redriven 4 dead letters of 8 read"),
        "{summary}"
    );

    let all = read_all(&topic, "read_committed").await;
    assert_eq!(
        all.len(),
        12 + 4,
        "the originals and four copies, nothing else"
    );
    let copies: Vec<&ConsumedRecord> = all
        .iter()
        .filter(|r| header(&r.headers, "kt-redrive-source-topic").is_some())
        .collect();
    assert_eq!(copies.len(), 4);
    let mut copied_keys: Vec<String> = Vec::new();
    for c in &copies {
        let key = String::from_utf8(c.key.clone().unwrap().to_vec()).unwrap();
        assert!(key.starts_with("invalid"), "{key} was not selected");
        let original = &originals[&key];
        assert_eq!(
            c.payload, original.payload,
            "payload (or tombstone) of {key}"
        );
        assert_eq!(
            without_redrive(&c.headers),
            header_pairs(&original.headers),
            "headers of {key}, byte for byte and in order"
        );
        assert!(!c.headers.iter().any(|h| h.key.starts_with(b"kt-dlq-")));
        assert_eq!(
            header(&c.headers, "kt-redrive-source-topic"),
            Some(dlq.as_bytes())
        );
        assert_eq!(
            header(&c.headers, "kt-redrive-note"),
            Some(&b"schema fixed"[..])
        );
        assert_eq!(
            header(&c.headers, "kt-redrive-reason"),
            Some(&b"invalid"[..])
        );
        assert_eq!(header(&c.headers, "kt-redrive-attempts"), Some(&b"1"[..]));
        copied_keys.push(key);
    }
    copied_keys.sort();
    assert_eq!(
        copied_keys,
        ["invalid-1", "invalid-10", "invalid-4", "invalid-7"]
    );
    assert_eq!(
        copies.iter().filter(|c| c.payload.is_none()).count(),
        2,
        "tombstones stay tombstones"
    );

    // The same redrive again: its group has read everything, nothing is copied twice.
    let again = run_cli(&["dlq", "redrive", &dlq, "--reason", "invalid"]);
    let again = String::from_utf8(again.stdout).unwrap();
    assert!(
        again.starts_with("redriven 0 dead letters of 0 read"),
        "{again}"
    );
    assert_eq!(read_all(&topic, "read_committed").await.len(), 16);

    // The fixed service serves the copies; `invalid-4` still fails and is
    // dead-lettered again, its redrive history kept.
    let group = unique("fixed");
    let running = spawn(
        consumer(&group, &[&topic])
            .service_id("orders")
            .build()
            .unwrap(),
        refusing_service(&["invalid-4"]),
    );
    // The copies' transaction markers take offsets too: done when the
    // commits are past each partition's last record.
    let mut last = [-1i64; 2];
    for r in &all {
        last[r.partition as usize] = last[r.partition as usize].max(r.offset);
    }
    eventually("the fixed consumer commits everything", || {
        let c = committed(&group, &topic, 2);
        c[0] > last[0] && c[1] > last[1]
    })
    .await;
    running.stop().await;
    let dl_all = read_all(&dlq, "read_committed").await;
    // Eight from the first consumer; the fixed one (a new group) refuses
    // the eight originals again, and the copy of invalid-4.
    let fresh: Vec<&ConsumedRecord> = dl_all[8..].iter().collect();
    assert_eq!(fresh.len(), 4 + 4 + 1, "{} new dead letters", fresh.len());
    let again: Vec<DeadLetter> = fresh
        .iter()
        .map(|r| DeadLetter::from_record(r).unwrap())
        .filter(|d| header(&d.headers, "kt-redrive-source-offset").is_some())
        .collect();
    assert_eq!(again.len(), 1, "only the copy that still fails");
    let dl = &again[0];
    assert_eq!(dl.key.as_deref(), Some(&b"invalid-4"[..]));
    assert_eq!(
        header(&dl.headers, "kt-redrive-note"),
        Some(&b"schema fixed"[..])
    );
    assert_eq!(dl.reason.as_deref(), Some("invalid"));
}

/// `n` dead letters written directly in the dead-letter format: reasons
/// alternate `invalid`, `invalid`, `invalid`, `throttled`; original offsets
/// are the index.
async fn synthetic_dead_letters(dlq: &str, original: &str, n: usize) {
    let recs = (0..n).map(|i| {
        let reason = if i % 4 == 3 { "throttled" } else { "invalid" };
        let mut h = RawHeaders::new();
        h.push(RawHeader::new("x-n", i.to_string()));
        for (k, v) in [
            ("kt-dlq-original-topic", original.to_owned()),
            ("kt-dlq-original-partition", "0".to_owned()),
            ("kt-dlq-original-offset", i.to_string()),
            ("kt-dlq-attempts", "3".to_owned()),
            ("kt-dlq-failed-by", "schema".to_owned()),
            ("kt-dlq-reason", reason.to_owned()),
            ("kt-dlq-status", "422".to_owned()),
            ("kt-dlq-time", "1764930000000".to_owned()),
        ] {
            h.push(RawHeader::new(k, v));
        }
        Rec::payload(format!("payload-{i}"))
            .key(format!("k{i}"))
            .headers(h)
    });
    produce(dlq, recs).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_redrive_killed_midway_and_restarted_copies_every_selected_record_exactly_once() {
    init_tracing();
    let original = unique("dlq-kill");
    let dlq = format!("{original}.dlq");
    create_topic(&original, 3).await;
    create_topic(&dlq, 2).await;
    synthetic_dead_letters(&dlq, &original, 2000).await;
    let selected = 1500;

    // Slowed to 100 records/s: the 1,500 copies take 15 s, and it is killed
    // after the first 100.
    let mut child = cli(&[
        "dlq", "redrive", &dlq, "--reason", "invalid", "--rate", "100",
    ])
    .stdout(Stdio::null())
    .stderr(Stdio::piped())
    .spawn()
    .unwrap();
    let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
    let mut seen = 0u64;
    while seen < 100 {
        let line = lines
            .next()
            .expect("progress before the end")
            .expect("stderr");
        if let Some(n) = line
            .strip_prefix("progress: ")
            .and_then(|l| l.split("redriven ").nth(1))
            .and_then(|l| l.split(',').next())
        {
            seen = n.parse().unwrap();
        }
    }
    assert!(
        seen < selected,
        "the first run must still be under way when killed"
    );
    child.kill().unwrap(); // SIGKILL
    let status = child.wait().unwrap();
    assert!(!status.success());

    let out = run_cli(&["dlq", "redrive", &dlq, "--reason", "invalid"]);
    let summary = String::from_utf8(out.stdout).unwrap();
    let second: u64 = summary
        .strip_prefix("redriven ")
        .and_then(|s| s.split(' ').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("summary: {summary}"));
    assert!(
        second > 0 && second < selected,
        "the restart finished the job: {summary}"
    );

    let copies = read_all(&original, "read_committed").await;
    let by_offset = counts(
        &copies
            .iter()
            .map(|c| String::from_utf8(header(&c.headers, "x-n").unwrap().to_vec()).unwrap())
            .collect::<Vec<_>>(),
    );
    assert_eq!(copies.len() as u64, selected, "no copy lost, none twice");
    assert_eq!(by_offset.len() as u64, selected);
    assert!(by_offset.values().all(|n| *n == 1));
    for n in by_offset.keys() {
        let n: usize = n.parse().unwrap();
        assert_ne!(n % 4, 3, "record {n} was not selected");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn dry_run_writes_nothing_and_inspect_stats_and_show_report_the_dead_letters() {
    init_tracing();
    let original = unique("dlq-look");
    let dlq = format!("{original}.dlq");
    create_topic(&original, 1).await;
    create_topic(&dlq, 1).await;
    synthetic_dead_letters(&dlq, &original, 40).await;
    // A record that is not a dead letter is reported, never copied.
    produce(&dlq, [Rec::payload("stray")]).await;

    let out = run_cli(&["dlq", "redrive", &dlq, "--reason", "invalid", "--dry-run"]);
    let summary = String::from_utf8(out.stdout).unwrap();
    assert!(
        summary.starts_with("would redrive 30 dead letters of 41 read"),
        "{summary}"
    );
    assert!(summary.contains("not dead letters 1"), "{summary}");
    assert_eq!(end_offsets(&original, 1), [0], "a dry run produces nothing");
    let group = Redrive::new(properties(), &dlq)
        .filter(Filter {
            reason: Some("invalid".into()),
            ..Filter::default()
        })
        .group_id();
    assert_eq!(committed(&group, &dlq, 1), [-1], "and commits nothing");

    let out = run_cli(&["dlq", "inspect", &dlq, "--reason", "throttled", "--json"]);
    let lines: Vec<serde_json::Value> = String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).expect("a JSON object per line"))
        .collect();
    assert_eq!(lines.len(), 10);
    for (i, l) in lines.iter().enumerate() {
        assert_eq!(l["original_topic"], original.as_str());
        assert_eq!(l["original_offset"], 4 * i as i64 + 3);
        assert_eq!(l["offset"], 4 * i as i64 + 3);
        assert_eq!(l["reason"], "throttled");
        assert_eq!(l["failed_by"], "schema");
        assert_eq!(l["status"], 422);
        assert_eq!(l["attempts"], 3);
        assert_eq!(l["payload_size"], format!("payload-{}", 4 * i + 3).len());
    }
    let out = run_cli(&["dlq", "inspect", &dlq, "--limit", "3"]);
    let table = String::from_utf8(out.stdout).unwrap();
    assert_eq!(table.lines().count(), 1 + 3, "{table}");
    assert!(table.lines().next().unwrap().contains("FAILED-BY"));

    let out = run_cli(&["dlq", "stats", &dlq, "--json"]);
    let rows: Vec<serde_json::Value> = String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(rows.len(), 2);
    assert_eq!(
        (rows[0]["reason"].as_str(), rows[0]["count"].as_u64()),
        (Some("invalid"), Some(30))
    );
    assert_eq!(
        (rows[1]["reason"].as_str(), rows[1]["count"].as_u64()),
        (Some("throttled"), Some(10))
    );

    let out = run_cli(&["dlq", "show", &dlq, "0", "5"]);
    let shown = String::from_utf8(out.stdout).unwrap();
    assert!(
        shown.contains(&format!("original         {original}[0]@5")),
        "{shown}"
    );
    assert!(shown.contains("x-n: 5"), "{shown}");
    assert!(shown.contains("payload (9 B, text)\npayload-5"), "{shown}");

    // Exit codes a script can rely on.
    let missing = cli(&["dlq", "show", &dlq, "0", "999"]).output().unwrap();
    assert_eq!(missing.status.code(), Some(3), "no such record");
    let stray = cli(&["dlq", "show", &dlq, "0", "40"]).output().unwrap();
    assert_eq!(stray.status.code(), Some(3), "not a dead letter");
    assert!(String::from_utf8_lossy(&stray.stderr).contains("not a dead letter"));
    let usage = cli(&["dlq", "redrive", &dlq, "--rate", "-1"])
        .output()
        .unwrap();
    assert_eq!(usage.status.code(), Some(2));
    let unknown = cli(&["dlq", "inspect", &unique("no-such-topic")])
        .output()
        .unwrap();
    assert_eq!(unknown.status.code(), Some(1));
}

#[tokio::test(flavor = "multi_thread")]
async fn redrive_progress_is_a_bar_on_a_terminal_and_lines_otherwise() {
    init_tracing();
    let original = unique("dlq-tty");
    let dlq = format!("{original}.dlq");
    create_topic(&original, 1).await;
    create_topic(&dlq, 1).await;
    synthetic_dead_letters(&dlq, &original, 200).await;

    // On a pseudo-terminal (util-linux `script` allocates one).
    let command = format!(
        "{BIN} --bootstrap-servers {} dlq redrive {dlq} --rate 400",
        bootstrap()
    );
    let out = Command::new("script")
        .args(["-qefc", &command, "/dev/null"])
        .output()
        .expect("script(1) from util-linux");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let screen = String::from_utf8_lossy(&out.stdout);
    assert!(screen.contains("records/s"), "{screen}");
    assert!(
        screen.contains("/200 read"),
        "a bar counting to the total: {screen}"
    );
    assert!(
        screen.contains('\r') || screen.contains("\x1b["),
        "redrawn in place: {screen:?}"
    );
    assert!(
        !screen.contains("progress: read"),
        "no plain lines on a terminal"
    );
    assert!(
        screen.contains("redriven 200 dead letters of 200 read"),
        "{screen}"
    );

    // Piped: plain lines.
    let dlq2 = format!("{original}.dlq2");
    create_topic(&dlq2, 1).await;
    synthetic_dead_letters(&dlq2, &original, 20).await;
    let out = run_cli(&["dlq", "redrive", &dlq2]);
    let err = String::from_utf8(out.stderr).unwrap();
    assert!(err.contains("progress: read 20/20, redriven 20"), "{err}");
}
