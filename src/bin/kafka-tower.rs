//! `kafka-tower`: inspect, count and redrive the dead letters a
//! kafka-tower consumer wrote.
//!
//! ```text
//! kafka-tower dlq inspect orders.dlq --reason invalid --since 2h
//! kafka-tower dlq show orders.dlq 0 42
//! kafka-tower dlq stats orders.dlq
//! kafka-tower dlq redrive orders.dlq --reason invalid --dry-run
//! kafka-tower dlq redrive orders.dlq --reason invalid --rate 200 --note "fix #123"
//! ```
//!
//! Exit codes: 0 done; 1 the cluster failed or refused a call (the message
//! says which); 2 bad usage or configuration; 3 no such record, or the
//! record is not a dead letter (`show`).

use std::collections::BTreeMap;
use std::io::{IsTerminal, Write};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, SystemTime};

use clap::{Args, Parser, Subcommand};
use kafka_tower::dlq::{self, DeadLetter, DeadLetters, DlqError, Filter, Redrive};
use kafka_tower::runtime::{ConsumerConfig, Properties};

/// Operate the dead letters of kafka-tower consumers.
#[derive(Debug, Parser)]
#[command(name = "kafka-tower", version, about)]
struct Cli {
    /// A consumer configuration file (.yml, .yaml or .toml): its
    /// `properties` connect to the cluster (`KAFKA_TOWER_*` variables
    /// apply, as for the consumer).
    #[arg(long, global = true, value_name = "FILE")]
    config: Option<PathBuf>,
    /// `bootstrap.servers` (overrides the file's).
    #[arg(
        long,
        short = 'b',
        global = true,
        env = "KAFKA_BOOTSTRAP_SERVERS",
        value_name = "HOST:PORT,..."
    )]
    bootstrap_servers: Option<String>,
    /// A librdkafka property, `name=value` (repeatable; overrides the
    /// file's).
    #[arg(short = 'X', long = "property", global = true, value_name = "NAME=VALUE", value_parser = name_value)]
    properties: Vec<(String, String)>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Dead-letter topics.
    #[command(subcommand)]
    Dlq(DlqCommand),
}

#[derive(Debug, Subcommand)]
enum DlqCommand {
    /// List dead letters: where they came from and why they failed.
    Inspect {
        /// The dead-letter topic.
        topic: String,
        #[command(flatten)]
        filter: FilterArgs,
        /// Print at most this many.
        #[arg(long)]
        limit: Option<u64>,
        /// One JSON object per line instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Print one dead letter in full.
    Show {
        /// The dead-letter topic.
        topic: String,
        /// The dead letter's partition.
        partition: i32,
        /// The dead letter's offset.
        offset: i64,
    },
    /// Copy dead letters back to their original topic, exactly once.
    Redrive {
        /// The dead-letter topic.
        topic: String,
        #[command(flatten)]
        filter: FilterArgs,
        /// Produce to this topic instead of each dead letter's original topic.
        #[arg(long, value_name = "TOPIC")]
        to: Option<String>,
        /// Count what would be redriven; produce and commit nothing.
        #[arg(long)]
        dry_run: bool,
        /// At most this many records per second.
        #[arg(long, value_name = "RECORDS_PER_SECOND")]
        rate: Option<f64>,
        /// Redrive at most this many.
        #[arg(long)]
        limit: Option<u64>,
        /// Added to every copy as `kt-redrive-note`.
        #[arg(long)]
        note: Option<String>,
        /// The redrive's consumer group and transactional id (default:
        /// derived from the topic, the filter and `--to`).
        #[arg(long)]
        group: Option<String>,
    },
    /// Count dead letters by original topic, reason and failing layer.
    Stats {
        /// The dead-letter topic.
        topic: String,
        #[command(flatten)]
        filter: FilterArgs,
        /// One JSON object per line instead of a table.
        #[arg(long)]
        json: bool,
    },
}

#[derive(Debug, Args)]
struct FilterArgs {
    /// Only dead letters with this `kt-dlq-reason`.
    #[arg(long)]
    reason: Option<String>,
    /// Only dead letters with this `kt-dlq-failed-by` (a layer, or `service`).
    #[arg(long)]
    failed_by: Option<String>,
    /// Only dead letters of this original topic.
    #[arg(long)]
    original_topic: Option<String>,
    /// Only dead letters written at or after this time: RFC 3339
    /// (`2026-12-05T10:00:00Z`) or an age (`2h`, `30min`).
    #[arg(long, value_parser = point_in_time)]
    since: Option<SystemTime>,
    /// Only dead letters written before this time (same forms as `--since`).
    #[arg(long, value_parser = point_in_time)]
    until: Option<SystemTime>,
}

impl FilterArgs {
    fn filter(&self) -> Filter {
        Filter {
            reason: self.reason.clone(),
            failed_by: self.failed_by.clone(),
            original_topic: self.original_topic.clone(),
            since: self.since,
            until: self.until,
        }
    }
}

fn name_value(s: &str) -> Result<(String, String), String> {
    let (k, v) = s
        .split_once('=')
        .ok_or_else(|| format!("expected NAME=VALUE, got `{s}`"))?;
    if k.trim().is_empty() {
        return Err(format!("empty property name in `{s}`"));
    }
    Ok((k.trim().to_owned(), v.to_owned()))
}

fn point_in_time(s: &str) -> Result<SystemTime, String> {
    if let Ok(t) = humantime::parse_rfc3339_weak(s) {
        return Ok(t);
    }
    match humantime::parse_duration(s) {
        Ok(age) => Ok(SystemTime::now() - age),
        Err(_) => Err(format!(
            "`{s}` is neither an RFC 3339 time (2026-12-05T10:00:00Z) nor an age (2h, 30min)"
        )),
    }
}

/// What ends the program, with its exit code.
enum Failure {
    Usage(String),
    Dlq(DlqError),
}

impl From<DlqError> for Failure {
    fn from(e: DlqError) -> Self {
        Failure::Dlq(e)
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(Failure::Usage(m)) => {
            eprintln!("kafka-tower: {m}");
            ExitCode::from(2)
        }
        Err(Failure::Dlq(e)) => {
            eprintln!("kafka-tower: {e}");
            ExitCode::from(match e {
                DlqError::NotFound { .. } | DlqError::NotADeadLetter(_) => 3,
                DlqError::Config(_) => 2,
                _ => 1,
            })
        }
    }
}

/// The connection properties: the file's, then `--bootstrap-servers`, then
/// `-X`.
fn properties(cli: &Cli) -> Result<Properties, Failure> {
    let mut properties = match &cli.config {
        Some(path) => {
            ConsumerConfig::from_file(path)
                .map_err(|e| Failure::Usage(e.to_string()))?
                .properties
        }
        None => Properties::new(),
    };
    if let Some(b) = &cli.bootstrap_servers {
        properties.set("bootstrap.servers", b.clone());
    }
    for (k, v) in &cli.properties {
        properties.set(k.clone(), v.clone());
    }
    if !properties.contains_key("bootstrap.servers") {
        return Err(Failure::Usage(
            "no cluster: give --bootstrap-servers, KAFKA_BOOTSTRAP_SERVERS or --config".into(),
        ));
    }
    Ok(properties)
}

fn run(cli: Cli) -> Result<(), Failure> {
    let properties = properties(&cli)?;
    let Command::Dlq(command) = cli.command;
    let mut out = std::io::stdout().lock();
    match command {
        DlqCommand::Inspect {
            topic,
            filter,
            limit,
            json,
        } => inspect(&properties, &topic, &filter.filter(), limit, json, &mut out),
        DlqCommand::Show {
            topic,
            partition,
            offset,
        } => {
            let dl = dlq::read_one(&properties, &topic, partition, offset)?;
            show(&dl, &mut out);
            Ok(())
        }
        DlqCommand::Stats {
            topic,
            filter,
            json,
        } => stats(&properties, &topic, &filter.filter(), json, &mut out),
        DlqCommand::Redrive {
            topic,
            filter,
            to,
            dry_run,
            rate,
            limit,
            note,
            group,
        } => {
            let mut redrive = Redrive::new(properties, topic)
                .filter(filter.filter())
                .dry_run(dry_run);
            if let Some(t) = to {
                redrive = redrive.to(t);
            }
            if let Some(r) = rate {
                if !(r > 0.0 && r.is_finite()) {
                    return Err(Failure::Usage(format!(
                        "--rate must be a positive number, got {r}"
                    )));
                }
                redrive = redrive.rate_limit(r);
            }
            if let Some(l) = limit {
                redrive = redrive.limit(l);
            }
            if let Some(n) = note {
                redrive = redrive.note(n);
            }
            if let Some(g) = group {
                redrive = redrive.group(g);
            }
            redrive_with_progress(redrive, dry_run, &mut out)
        }
    }
}

fn each_dead_letter(
    properties: &Properties,
    topic: &str,
    mut f: impl FnMut(DeadLetter) -> bool,
) -> Result<u64, Failure> {
    let mut not_dead_letters = 0;
    for item in DeadLetters::open(properties, topic)? {
        match item? {
            Ok(dl) => {
                if !f(dl) {
                    break;
                }
            }
            Err(not_one) => {
                eprintln!("kafka-tower: skipped: {not_one}");
                not_dead_letters += 1;
            }
        }
    }
    Ok(not_dead_letters)
}

fn time_text(dl: &DeadLetter) -> String {
    dl.dead_lettered_at()
        .map(|t| humantime::format_rfc3339_millis(t).to_string())
        .unwrap_or_else(|| "-".into())
}

fn inspect(
    properties: &Properties,
    topic: &str,
    filter: &Filter,
    limit: Option<u64>,
    json: bool,
    out: &mut impl Write,
) -> Result<(), Failure> {
    let mut shown = 0u64;
    if !json {
        let _ = writeln!(
            out,
            "{:>9} {:>10}  {:<32} {:<10} {:<20} {:>6} {:>8}  {:<24} {:>8}",
            "PARTITION",
            "OFFSET",
            "ORIGINAL",
            "FAILED-BY",
            "REASON",
            "STATUS",
            "ATTEMPTS",
            "TIME",
            "SIZE"
        );
    }
    each_dead_letter(properties, topic, |dl| {
        if limit.is_some_and(|l| shown >= l) {
            return false;
        }
        if !filter.matches(&dl) {
            return true;
        }
        shown += 1;
        let dash = |v: &Option<String>| v.clone().unwrap_or_else(|| "-".into());
        if json {
            let line = serde_json::json!({
                "topic": dl.topic,
                "partition": dl.partition,
                "offset": dl.offset,
                "original_topic": dl.original_topic,
                "original_partition": dl.original_partition,
                "original_offset": dl.original_offset,
                "original_timestamp": dl.original_timestamp,
                "consumer_group": dl.consumer_group,
                "service_id": dl.service_id,
                "failed_by": dl.failed_by,
                "reason": dl.reason,
                "error_class": dl.error_class,
                "error_message": dl.error_message,
                "status": dl.status,
                "attempts": dl.attempts,
                "time": dl.time,
                "omitted": dl.omitted,
                "tombstone": dl.payload.is_none() && !dl.omitted,
                "payload_size": dl.payload.as_ref().map_or(0, |p| p.len()),
                "size": dl.size(),
            });
            let _ = writeln!(out, "{line}");
        } else {
            let original = format!(
                "{}[{}]@{}",
                dl.original_topic, dl.original_partition, dl.original_offset
            );
            let _ = writeln!(
                out,
                "{:>9} {:>10}  {:<32} {:<10} {:<20} {:>6} {:>8}  {:<24} {:>8}",
                dl.partition,
                dl.offset,
                original,
                dash(&dl.failed_by),
                dash(&dl.reason),
                dl.status.map_or("-".into(), |s| s.to_string()),
                dl.attempts.map_or("-".into(), |a| a.to_string()),
                time_text(&dl),
                if dl.omitted {
                    "omitted".to_owned()
                } else {
                    dl.size().to_string()
                },
            );
        }
        true
    })?;
    Ok(())
}

/// `bytes` as text when it is UTF-8 without control characters, else
/// escaped (`\xNN`).
fn text_or_escaped(bytes: &[u8]) -> String {
    match std::str::from_utf8(bytes) {
        Ok(s) if !s.chars().any(char::is_control) => s.to_owned(),
        _ => bytes.escape_ascii().to_string(),
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Header names whose values are credentials: never printed.
fn is_secret_header(name: &[u8]) -> bool {
    name.eq_ignore_ascii_case(b"authorization") || name.eq_ignore_ascii_case(b"proxy-authorization")
}

fn show(dl: &DeadLetter, out: &mut impl Write) {
    let opt = |v: &Option<String>| v.clone().unwrap_or_else(|| "-".into());
    let num = |v: Option<i64>| v.map_or("-".into(), |v| v.to_string());
    let _ = writeln!(
        out,
        "dead letter      {}[{}]@{}",
        dl.topic, dl.partition, dl.offset
    );
    let _ = writeln!(
        out,
        "original         {}[{}]@{}",
        dl.original_topic, dl.original_partition, dl.original_offset
    );
    let _ = writeln!(out, "original time    {}", num(dl.original_timestamp));
    let _ = writeln!(out, "dead-lettered at {}", time_text(dl));
    let _ = writeln!(out, "consumer group   {}", opt(&dl.consumer_group));
    let _ = writeln!(out, "service id       {}", opt(&dl.service_id));
    let _ = writeln!(out, "failed by        {}", opt(&dl.failed_by));
    let _ = writeln!(out, "reason           {}", opt(&dl.reason));
    let _ = writeln!(out, "error class      {}", opt(&dl.error_class));
    let _ = writeln!(
        out,
        "status           {}",
        dl.status.map_or("-".into(), |s| s.to_string())
    );
    let _ = writeln!(
        out,
        "attempts         {}",
        dl.attempts.map_or("-".into(), |a| a.to_string())
    );
    let _ = writeln!(out, "error message    {}", opt(&dl.error_message));
    if dl.omitted {
        let _ = writeln!(
            out,
            "record           omitted (too large to copy): read it at its original coordinates"
        );
        return;
    }
    let _ = writeln!(
        out,
        "key              {}",
        dl.key
            .as_ref()
            .map_or("(none)".into(), |k| text_or_escaped(k))
    );
    let _ = writeln!(out, "headers          {}", dl.headers.len());
    for h in dl.headers.iter() {
        let value = match &h.value {
            None => "(null)".to_owned(),
            Some(_) if is_secret_header(&h.key) => "<redacted>".to_owned(),
            Some(v) => text_or_escaped(v),
        };
        let _ = writeln!(out, "  {}: {}", text_or_escaped(&h.key), value);
    }
    match &dl.payload {
        None => {
            let _ = writeln!(out, "payload          (tombstone)");
        }
        Some(p) => match std::str::from_utf8(p) {
            Ok(text) => {
                let _ = writeln!(out, "payload ({} B, text)\n{text}", p.len());
            }
            Err(_) => {
                let _ = writeln!(out, "payload ({} B, hex)\n{}", p.len(), hex(p));
            }
        },
    }
}

fn stats(
    properties: &Properties,
    topic: &str,
    filter: &Filter,
    json: bool,
    out: &mut impl Write,
) -> Result<(), Failure> {
    let mut counts: BTreeMap<(String, String, String), u64> = BTreeMap::new();
    let not_dead_letters = each_dead_letter(properties, topic, |dl| {
        if filter.matches(&dl) {
            let key = (
                dl.original_topic,
                dl.reason.unwrap_or_else(|| "-".into()),
                dl.failed_by.unwrap_or_else(|| "-".into()),
            );
            *counts.entry(key).or_default() += 1;
        }
        true
    })?;
    let mut rows: Vec<_> = counts.into_iter().collect();
    rows.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
    if json {
        for ((original_topic, reason, failed_by), count) in &rows {
            let line = serde_json::json!({
                "original_topic": original_topic, "reason": reason,
                "failed_by": failed_by, "count": count,
            });
            let _ = writeln!(out, "{line}");
        }
    } else {
        let _ = writeln!(
            out,
            "{:<32} {:<20} {:<12} {:>8}",
            "ORIGINAL-TOPIC", "REASON", "FAILED-BY", "COUNT"
        );
        for ((original_topic, reason, failed_by), count) in &rows {
            let _ = writeln!(
                out,
                "{original_topic:<32} {reason:<20} {failed_by:<12} {count:>8}"
            );
        }
        let total: u64 = rows.iter().map(|r| r.1).sum();
        let _ = writeln!(out, "{:<66} {total:>8}", "total");
    }
    if not_dead_letters > 0 {
        eprintln!("kafka-tower: {not_dead_letters} records of `{topic}` are not dead letters");
    }
    Ok(())
}

fn redrive_with_progress(
    redrive: Redrive,
    dry_run: bool,
    out: &mut impl Write,
) -> Result<(), Failure> {
    let group = redrive.group_id();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .map_err(|e| Failure::Usage(format!("cannot start the async runtime: {e}")))?;
    let terminal = std::io::stderr().is_terminal();
    let bar = indicatif::ProgressBar::hidden();
    if terminal {
        bar.set_draw_target(indicatif::ProgressDrawTarget::stderr());
        bar.set_style(
            indicatif::ProgressStyle::with_template(
                "{spinner} [{elapsed_precise}] {wide_bar} {pos}/{len} read · {msg}",
            )
            .expect("a valid template"),
        );
    }
    let verb = if dry_run { "would redrive" } else { "redriven" };
    let summary = runtime.block_on(redrive.run(|p| {
        let rate = p.redriven as f64 / p.elapsed.as_secs_f64().max(1e-3);
        if terminal {
            bar.set_length(p.total);
            bar.set_position(p.scanned);
            bar.set_message(format!("{} {verb} · {rate:.0} records/s", p.redriven));
        } else {
            eprintln!(
                "progress: read {}/{}, {verb} {}, {rate:.0} records/s",
                p.scanned, p.total, p.redriven
            );
        }
    }));
    bar.finish_and_clear();
    let s = summary?;
    let _ = writeln!(
        out,
        "{verb} {} dead letters of {} read in {:.1} s (not selected {}, reference dead letters left alone {}, not dead letters {}); group {group}",
        s.redriven,
        s.scanned,
        s.elapsed.max(Duration::ZERO).as_secs_f64(),
        s.skipped,
        s.omitted,
        s.not_dead_letters,
    );
    Ok(())
}
