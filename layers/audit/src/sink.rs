//! See [`AuditSink`].

use std::fmt;
use std::fs::{File, OpenOptions};
use std::future::Future;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::{Arc, Mutex};

use crate::record::AuditRecord;

/// The future of [`AuditSink::write`].
pub type SinkFuture<'a> = Pin<Box<dyn Future<Output = Result<(), SinkError>> + Send + 'a>>;

/// Where audit records go: the [`AuditSink`] trait and the built-in
/// [`TracingSink`], [`FileSink`], [`MemorySink`] and [`NullSink`]
/// (and, with feature `kafka`, [`KafkaSink`](crate::KafkaSink)).
///
/// Sinks run on the auditor's writer thread, never on the request path:
/// each receives batches of records in queue order, and may take its time
/// (the queue in front of it absorbs bursts; see
/// [`QueueFullPolicy`](crate::QueueFullPolicy)). A custom sink implements
/// one method:
///
/// ```
/// use kafka_tower_audit::{AuditRecord, AuditSink, SinkError, SinkFuture};
///
/// /// Counts refusals per layer.
/// #[derive(Default)]
/// struct Refusals(std::sync::Mutex<std::collections::HashMap<String, u64>>);
///
/// impl AuditSink for Refusals {
///     fn write<'a>(&'a self, batch: &'a [AuditRecord]) -> SinkFuture<'a> {
///         Box::pin(async move {
///             let mut counts = self.0.lock().map_err(|_| SinkError::new("poisoned"))?;
///             for r in batch.iter().filter_map(|r| r.refused_by.clone()) {
///                 *counts.entry(r).or_default() += 1;
///             }
///             Ok(())
///         })
///     }
/// }
/// ```
///
/// A destination of audit records.
///
/// `write` is called on the auditor's writer thread (inside a Tokio
/// current-thread runtime) with the next batch of records, in the order
/// they were handed to the auditor, chain links already set. It is not
/// called again before its future finished. An `Err` (or a panic) is
/// counted in [`Auditor::sink_errors`](crate::Auditor::sink_errors) and,
/// with [`must_audit`](crate::AuditorBuilder::must_audit), fails every
/// call whose record was in the batch.
pub trait AuditSink: Send + Sync + 'static {
    /// Writes `batch`.
    fn write<'a>(&'a self, batch: &'a [AuditRecord]) -> SinkFuture<'a>;

    /// A short name for logs (`tracing`, `file`, `kafka`, …).
    fn name(&self) -> &str {
        "custom"
    }
}

/// A sink could not write a batch.
#[derive(Debug)]
pub struct SinkError {
    message: String,
    source: Option<Box<dyn std::error::Error + Send + Sync>>,
}

impl SinkError {
    /// An error with a message.
    pub fn new(message: impl Into<String>) -> Self {
        SinkError {
            message: message.into(),
            source: None,
        }
    }

    /// An error caused by `source`.
    pub fn with_source(
        message: impl Into<String>,
        source: impl Into<Box<dyn std::error::Error + Send + Sync>>,
    ) -> Self {
        SinkError {
            message: message.into(),
            source: Some(source.into()),
        }
    }
}

impl fmt::Display for SinkError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.source {
            Some(s) => write!(f, "{}: {s}", self.message),
            None => f.write_str(&self.message),
        }
    }
}

impl std::error::Error for SinkError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.source.as_deref().map(|e| e as _)
    }
}

/// Discards every record: for benchmarks, and for running the layer with
/// chaining or counting only.
#[derive(Debug, Clone, Copy, Default)]
pub struct NullSink;

impl AuditSink for NullSink {
    fn write<'a>(&'a self, _batch: &'a [AuditRecord]) -> SinkFuture<'a> {
        Box::pin(std::future::ready(Ok(())))
    }
    fn name(&self) -> &str {
        "null"
    }
}

/// The `tracing` target of [`TracingSink`] events.
pub const AUDIT_TARGET: &str = "kafka_tower_audit";

/// Emits each record as an `INFO` event of target [`AUDIT_TARGET`] whose
/// message is the record's JSON line, so a subscriber that prints
/// messages writes JSON lines. Install the subscriber globally: events are
/// emitted on the auditor's writer thread.
#[derive(Debug, Clone, Copy, Default)]
pub struct TracingSink;

impl AuditSink for TracingSink {
    fn write<'a>(&'a self, batch: &'a [AuditRecord]) -> SinkFuture<'a> {
        for r in batch {
            tracing::info!(target: AUDIT_TARGET, "{}", r.to_json_line());
        }
        Box::pin(std::future::ready(Ok(())))
    }
    fn name(&self) -> &str {
        "tracing"
    }
}

/// Appends each record to a file as one line of JSON. Each batch is one
/// `write` of whole lines; with [`FileSink::sync`] the data is also
/// `fsync`ed before the batch counts as written.
#[derive(Debug)]
pub struct FileSink {
    file: Mutex<File>,
    path: PathBuf,
    sync: bool,
}

impl FileSink {
    /// Opens `path` for appending, creating it if needed.
    pub fn open(path: impl AsRef<Path>) -> std::io::Result<Self> {
        let path = path.as_ref().to_owned();
        let file = OpenOptions::new().create(true).append(true).open(&path)?;
        Ok(FileSink {
            file: Mutex::new(file),
            path,
            sync: false,
        })
    }

    /// Whether each batch is `fsync`ed (`fdatasync`) before it counts as
    /// written (default `false`).
    pub fn sync(mut self, yes: bool) -> Self {
        self.sync = yes;
        self
    }

    /// The file's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    fn append(&self, batch: &[AuditRecord]) -> std::io::Result<()> {
        let mut buf = Vec::with_capacity(batch.len() * 512);
        for r in batch {
            serde_json::to_writer(&mut buf, r)?;
            buf.push(b'\n');
        }
        let mut file = self
            .file
            .lock()
            .map_err(|_| std::io::Error::other("audit file lock poisoned"))?;
        file.write_all(&buf)?;
        if self.sync {
            file.sync_data()?;
        }
        Ok(())
    }
}

impl AuditSink for FileSink {
    fn write<'a>(&'a self, batch: &'a [AuditRecord]) -> SinkFuture<'a> {
        let res = self.append(batch).map_err(|e| {
            SinkError::with_source(format!("cannot append to {}", self.path.display()), e)
        });
        Box::pin(std::future::ready(res))
    }
    fn name(&self) -> &str {
        "file"
    }
}

/// Keeps records in memory; cloning shares them. For tests and examples.
#[derive(Debug, Clone, Default)]
pub struct MemorySink {
    records: Arc<Mutex<Vec<AuditRecord>>>,
}

impl MemorySink {
    /// An empty sink.
    pub fn new() -> Self {
        Self::default()
    }

    /// The records written so far, in order.
    pub fn records(&self) -> Vec<AuditRecord> {
        self.records.lock().expect("memory sink lock").clone()
    }
}

impl AuditSink for MemorySink {
    fn write<'a>(&'a self, batch: &'a [AuditRecord]) -> SinkFuture<'a> {
        self.records
            .lock()
            .expect("memory sink lock")
            .extend_from_slice(batch);
        Box::pin(std::future::ready(Ok(())))
    }
    fn name(&self) -> &str {
        "memory"
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex as StdMutex;

    fn records() -> Vec<AuditRecord> {
        let mut a = AuditRecord::new("2024-05-01T12:00:00.000000Z", "orders");
        a.topic = Some("orders".into());
        a.partition = Some(0);
        a.offset = Some(1);
        let mut b = a.clone();
        b.offset = Some(2);
        vec![a, b]
    }

    fn block_on<F: Future>(f: F) -> F::Output {
        tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap()
            .block_on(f)
    }

    #[test]
    fn the_file_sink_appends_one_json_line_per_record() {
        let path = std::env::temp_dir().join(format!(
            "kafka-tower-audit-{}.jsonl",
            uuid::Uuid::new_v4().simple()
        ));
        let sink = FileSink::open(&path).unwrap().sync(true);
        block_on(sink.write(&records())).unwrap();
        // Reopening appends rather than truncating.
        let sink = FileSink::open(&path).unwrap();
        block_on(sink.write(&records()[..1])).unwrap();
        let text = std::fs::read_to_string(&path).unwrap();
        std::fs::remove_file(&path).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 3);
        let back: Vec<AuditRecord> = lines
            .iter()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        assert_eq!(back[..2], records()[..]);
        assert_eq!(back[2], records()[0]);
    }

    #[test]
    fn the_file_sink_reports_an_unwritable_path() {
        let dir = std::env::temp_dir();
        assert!(
            FileSink::open(&dir).is_err(),
            "a directory is not appendable"
        );
    }

    /// Captures formatted events in memory.
    #[derive(Clone, Default)]
    struct Captured(Arc<StdMutex<Vec<u8>>>);

    impl std::io::Write for Captured {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn the_tracing_sink_logs_json_lines() {
        let out = Captured::default();
        let writer = out.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_writer(move || writer.clone())
            .without_time()
            .with_level(false)
            .with_target(false)
            .with_ansi(false)
            .finish();
        tracing::subscriber::with_default(subscriber, || {
            block_on(TracingSink.write(&records())).unwrap();
        });
        let text = String::from_utf8(out.0.lock().unwrap().clone()).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 2, "{text}");
        let back: AuditRecord = serde_json::from_str(lines[1].trim()).unwrap();
        assert_eq!(back, records()[1]);
    }
}
