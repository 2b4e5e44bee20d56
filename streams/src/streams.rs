//! [`Streams`]: the stores of one application instance, wired into the
//! exactly-once runtime.

use kafka_tower::runtime::Properties;
use std::collections::HashMap;
use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Request, Response};
use kafka_tower::runtime::{ExactlyOnce, Outbox, ProducerConfig};
use kafka_tower::{BoxError, Consumer, ConsumerError, OutgoingRecord, RecordBody, RecordMeta};
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::consumer::{BaseConsumer, Consumer as _};
use rdkafka::types::RDKafkaErrorCode;
use rdkafka::ClientConfig;
use tower::{Layer, Service};

use crate::hosts::Hosts;
use crate::partitioner::partition_for;
use crate::restore::restore_partition;
use crate::store::{lock, PartitionData, SharedPartition, StateStore, StoreKind, StoreStats};

/// Why setting up or running the streams failed: what was being done,
/// and the underlying error as [`source`](std::error::Error::source) when
/// there is one.
#[derive(Debug)]
pub struct StreamsError {
    message: String,
    source: Option<BoxError>,
}

impl StreamsError {
    /// An error described by `message` alone.
    fn msg(message: impl Into<String>) -> Self {
        StreamsError {
            message: message.into(),
            source: None,
        }
    }

    /// `doing` failed because of `source`.
    fn caused(doing: impl Into<String>, source: impl Into<BoxError>) -> Self {
        StreamsError {
            message: doing.into(),
            source: Some(source.into()),
        }
    }
}

impl fmt::Display for StreamsError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.source {
            Some(s) => write!(f, "{}: {s}", self.message),
            None => f.write_str(&self.message),
        }
    }
}

impl std::error::Error for StreamsError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.source.as_deref().map(|e| e as _)
    }
}

impl From<ConsumerError> for StreamsError {
    fn from(e: ConsumerError) -> Self {
        StreamsError::caused("the streams' consumer stopped", e)
    }
}

struct OwnedPartition {
    data: SharedPartition,
    #[cfg(feature = "redb")]
    persistent: Option<crate::store::persistent::PersistentPartition>,
}

struct StoreEntry {
    name: Arc<str>,
    source: String,
    changelog: String,
    partitions: Mutex<HashMap<i32, OwnedPartition>>,
}

struct Inner {
    application: String,
    bootstrap: String,
    properties: Properties,
    kind: StoreKind,
    stats: Arc<StoreStats>,
    /// By source topic.
    stores: HashMap<String, Arc<StoreEntry>>,
    internal_topics: Vec<(String, Option<i32>, bool)>,
    create_topics: bool,
    partition_counts: Mutex<HashMap<String, i32>>,
    hosts: Hosts,
    checkpoint_interval: Duration,
    last_checkpoint: Mutex<Instant>,
    replication: i32,
}

/// The stores of one application instance and everything that keeps them
/// in step with Kafka: restoration on assignment, changelog records,
/// commit / roll-back with the batch's transaction, checkpoints, host
/// announcements, and the local query API. Cheap to clone.
///
/// Build it with [`Streams::builder`], create the internal topics with
/// [`Streams::prepare`], and run a processor with [`Streams::serve`] (or
/// wire [`Streams::layer`] and [`Streams::exactly_once`] yourself).
#[derive(Clone)]
pub struct Streams {
    inner: Arc<Inner>,
}

impl fmt::Debug for Streams {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Streams")
            .field("application", &self.inner.application)
            .field("stores", &self.inner.stores.keys().collect::<Vec<_>>())
            .finish_non_exhaustive()
    }
}

/// Settings of a [`Streams`]; see [`Streams::builder`].
#[derive(Debug)]
pub struct StreamsBuilder {
    application: String,
    bootstrap: String,
    properties: Properties,
    kind: StoreKind,
    stores: Vec<(String, String)>,
    internal_topics: Vec<(String, Option<i32>, bool)>,
    advertised_host: Option<String>,
    instance_id: Option<String>,
    checkpoint_interval: Duration,
    replication: i32,
    create_topics: bool,
}

impl StreamsBuilder {
    /// Whether [`Streams::prepare`] creates the internal topics (default
    /// `true`). Turn it off where the admin API is unavailable (librdkafka's
    /// mock cluster) or topics are managed elsewhere; they must then exist:
    /// the changelogs and `<application>-hosts` compacted, each changelog
    /// with its source's partition count.
    pub fn create_topics(mut self, yes: bool) -> Self {
        self.create_topics = yes;
        self
    }

    /// A store named `name` holding state per partition of `source_topic`;
    /// its changelog is `<application>-<name>-changelog`. One store per
    /// source topic.
    pub fn store(mut self, name: impl Into<String>, source_topic: impl Into<String>) -> Self {
        self.stores.push((name.into(), source_topic.into()));
        self
    }

    /// Where stores keep their data (default: [`StoreKind::InMemory`]).
    pub fn store_kind(mut self, kind: StoreKind) -> Self {
        self.kind = kind;
        self
    }

    /// A librdkafka property for the restore, admin and hosts clients
    /// (security settings, typically).
    pub fn property(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.properties.set(key, value.into());
        self
    }

    /// The `host:port` at which this instance answers queries; announced in
    /// `<application>-hosts` with the partitions it owns.
    pub fn advertised_host(mut self, host: impl Into<String>) -> Self {
        self.advertised_host = Some(host.into());
        self
    }

    /// A stable id of this instance (default: the advertised host, else a
    /// random id).
    pub fn instance_id(mut self, id: impl Into<String>) -> Self {
        self.instance_id = Some(id.into());
        self
    }

    /// An internal repartition topic `<application>-<name>-repartition`
    /// that [`Streams::prepare`] creates, with `partitions` partitions
    /// (default: those of the first store's source topic).
    pub fn repartition_topic(mut self, name: &str, partitions: Option<i32>) -> Self {
        let topic = format!("{}-{name}-repartition", self.application);
        self.internal_topics.push((topic, partitions, false));
        self
    }

    /// How often, at most, a committed batch also moves the persistent
    /// stores' checkpoints to the changelog end (default 30 s; they also
    /// move at assignment and revocation).
    pub fn checkpoint_interval(mut self, every: Duration) -> Self {
        self.checkpoint_interval = every;
        self
    }

    /// The replication factor of the internal topics (default 1).
    pub fn replication_factor(mut self, n: i32) -> Self {
        self.replication = n;
        self
    }

    /// Builds the instance. Nothing is contacted until [`Streams::prepare`].
    pub fn build(self) -> Result<Streams, StreamsError> {
        let mut stores = HashMap::new();
        for (name, source) in &self.stores {
            let entry = StoreEntry {
                name: name.as_str().into(),
                source: source.clone(),
                changelog: format!("{}-{name}-changelog", self.application),
                partitions: Mutex::new(HashMap::new()),
            };
            if stores.insert(source.clone(), Arc::new(entry)).is_some() {
                return Err(StreamsError::msg(format!(
                    "two stores on the source topic {source}: one store per source topic"
                )));
            }
        }
        let instance_id = self
            .instance_id
            .or_else(|| self.advertised_host.clone())
            .unwrap_or_else(|| format!("instance-{}-{}", std::process::id(), rand_suffix()));
        let hosts = Hosts::new(
            format!("{}-hosts", self.application),
            instance_id,
            self.advertised_host,
            self.bootstrap.clone(),
            self.properties.clone(),
        );
        Ok(Streams {
            inner: Arc::new(Inner {
                application: self.application,
                bootstrap: self.bootstrap,
                properties: self.properties,
                kind: self.kind,
                stats: Arc::default(),
                stores,
                internal_topics: self.internal_topics,
                create_topics: self.create_topics,
                partition_counts: Mutex::default(),
                hosts,
                checkpoint_interval: self.checkpoint_interval,
                last_checkpoint: Mutex::new(Instant::now()),
                replication: self.replication,
            }),
        })
    }
}

fn rand_suffix() -> u64 {
    use std::hash::{BuildHasher, RandomState};
    RandomState::new().hash_one(Instant::now())
}

/// The answer of a local query.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Lookup {
    /// This instance owns the key's partition and holds a committed value.
    Found(Bytes),
    /// This instance owns the key's partition and the key has no value.
    Absent,
    /// Another instance owns (or is restoring) the key's partition; `owner`
    /// is its advertised host when announced.
    Elsewhere {
        /// The partition of the store's source topic the key belongs to.
        partition: i32,
        /// The owner's advertised `host:port`, if known.
        owner: Option<String>,
    },
}

impl Streams {
    /// Starts the settings of application `application` (the prefix of its
    /// internal topics) on the cluster at `bootstrap`.
    pub fn builder(application: impl Into<String>, bootstrap: impl Into<String>) -> StreamsBuilder {
        StreamsBuilder {
            application: application.into(),
            bootstrap: bootstrap.into(),
            properties: Properties::new(),
            kind: StoreKind::InMemory,
            stores: Vec::new(),
            internal_topics: Vec::new(),
            advertised_host: None,
            instance_id: None,
            checkpoint_interval: Duration::from_secs(30),
            replication: 1,
            create_topics: true,
        }
    }

    /// The application id.
    pub fn application(&self) -> &str {
        &self.inner.application
    }

    /// The counters of restoration and changelog traffic.
    pub fn stats(&self) -> &Arc<StoreStats> {
        &self.inner.stats
    }

    /// The changelog topic of store `name`.
    pub fn changelog_topic(&self, name: &str) -> Option<&str> {
        self.entry_by_name(name).map(|e| e.changelog.as_str())
    }

    /// The repartition topic called `name`: `<application>-<name>-repartition`.
    pub fn repartition_topic(&self, name: &str) -> String {
        format!("{}-{name}-repartition", self.inner.application)
    }

    /// The partition count of `topic`, as [`Streams::prepare`] found it.
    pub fn partitions_of(&self, topic: &str) -> Option<i32> {
        self.inner
            .partition_counts
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(topic)
            .copied()
    }

    fn client_config(&self) -> ClientConfig {
        let mut cc = ClientConfig::new();
        for (k, v) in &self.inner.properties {
            cc.set(k, &v.0);
        }
        cc.set("bootstrap.servers", &self.inner.bootstrap);
        cc
    }

    /// Reads the partition counts of the source topics (which must exist),
    /// creates the changelog topics (compacted, as many partitions as their
    /// source), the repartition topics and the compacted hosts topic when
    /// missing, and starts the hosts reader.
    pub async fn prepare(&self) -> Result<(), StreamsError> {
        let sources: Vec<String> = self.inner.stores.keys().cloned().collect();
        let cc = self.client_config();
        let properties = self.inner.properties.clone();
        let counts =
            tokio::task::spawn_blocking(move || -> Result<HashMap<String, i32>, StreamsError> {
                let consumer: BaseConsumer = cc
                    .create()
                    .map_err(|e| StreamsError::msg(properties.redact(&e.to_string())))?;
                let mut counts = HashMap::new();
                for t in sources {
                    let md = consumer
                        .fetch_metadata(Some(&t), Duration::from_secs(30))
                        .map_err(|e| {
                            StreamsError::caused(format!("cannot read the metadata of {t}"), e)
                        })?;
                    let n = md
                        .topics()
                        .first()
                        .map_or(0, |m| m.partitions().len() as i32);
                    if n == 0 {
                        return Err(StreamsError::msg(format!(
                            "source topic {t} does not exist: create it first"
                        )));
                    }
                    counts.insert(t, n);
                }
                Ok(counts)
            })
            .await
            .map_err(|e| StreamsError::caused("the metadata task failed", e))??;
        let default_count = self
            .inner
            .stores
            .keys()
            .filter_map(|t| counts.get(t))
            .copied()
            .next()
            .unwrap_or(1);
        let mut wanted: Vec<(String, i32, bool)> = Vec::new();
        for e in self.inner.stores.values() {
            wanted.push((e.changelog.clone(), counts[&e.source], true));
        }
        for (t, n, compact) in &self.inner.internal_topics {
            wanted.push((t.clone(), n.unwrap_or(default_count), *compact));
        }
        wanted.push((self.inner.hosts.topic().to_owned(), 1, true));
        {
            let mut pc = self
                .inner
                .partition_counts
                .lock()
                .unwrap_or_else(|e| e.into_inner());
            pc.extend(counts);
            for (t, n, _) in &wanted {
                pc.insert(t.clone(), *n);
            }
        }
        if self.inner.create_topics {
            self.create_internal_topics(&wanted).await?;
        }
        let hosts = self.clone();
        tokio::task::spawn_blocking(move || hosts.inner.hosts.start())
            .await
            .map_err(|e| StreamsError::caused("the hosts server task failed", e))?
            .map_err(StreamsError::msg)?;
        Ok(())
    }

    /// The internal topics [`Streams::prepare`] creates: name, partitions,
    /// compacted. Known once the source topics' partition counts are read,
    /// i.e. after `prepare` (which fills them even when it does not create
    /// topics).
    pub fn internal_topics(&self) -> Vec<(String, i32, bool)> {
        let pc = self
            .inner
            .partition_counts
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        let mut v: Vec<(String, i32, bool)> = self
            .inner
            .stores
            .values()
            .filter_map(|e| pc.get(&e.source).map(|n| (e.changelog.clone(), *n, true)))
            .collect();
        for (t, n, c) in &self.inner.internal_topics {
            if let Some(n) = n.or_else(|| pc.get(t).copied()) {
                v.push((t.clone(), n, *c));
            }
        }
        v.push((self.inner.hosts.topic().to_owned(), 1, true));
        v
    }

    async fn create_internal_topics(
        &self,
        wanted: &[(String, i32, bool)],
    ) -> Result<(), StreamsError> {
        let admin: AdminClient<DefaultClientContext> = self
            .client_config()
            .create()
            .map_err(|e| StreamsError::msg(self.inner.properties.redact(&e.to_string())))?;
        let new: Vec<NewTopic<'_>> = wanted
            .iter()
            .map(|(t, n, compact)| {
                let nt = NewTopic::new(t, *n, TopicReplication::Fixed(self.inner.replication));
                if *compact {
                    nt.set("cleanup.policy", "compact")
                } else {
                    nt
                }
            })
            .collect();
        let results = admin
            .create_topics(&new, &AdminOptions::new())
            .await
            .map_err(|e| StreamsError::caused("cannot create the internal topics", e))?;
        for r in results {
            match r {
                Ok(_) | Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
                Err((t, e)) => {
                    return Err(StreamsError::caused(format!("cannot create topic {t}"), e))
                }
            }
        }
        Ok(())
    }

    fn entry_by_name(&self, name: &str) -> Option<&Arc<StoreEntry>> {
        self.inner.stores.values().find(|e| &*e.name == name)
    }

    /// The layer that gives each request its [`StateStore`] and turns
    /// successful writes into changelog records.
    pub fn layer(&self) -> StatefulLayer {
        StatefulLayer {
            streams: self.clone(),
        }
    }

    /// Exactly-once settings for `producer` with this instance's callbacks:
    /// restore on assignment, checkpoint and drop on revocation, keep or
    /// roll back pending writes when a batch's transaction ends.
    pub fn exactly_once(&self, producer: ProducerConfig) -> ExactlyOnce {
        let (a, r, b) = (self.clone(), self.clone(), self.clone());
        ExactlyOnce::new(producer)
            .on_partitions_assigned(move |tps| a.assigned(tps))
            .on_partitions_revoked(move |tps| r.revoked(tps))
            .on_batch_end(move |committed| b.batch_end(committed))
    }

    /// Runs `service` behind [`Streams::layer`] in exactly-once mode until
    /// `shutdown`, with `settings` made by [`Streams::exactly_once`] (tune
    /// `max_batch` / `max_delay` on them); [`Streams::prepare`] must have
    /// run. On the way out the persistent stores still owned are
    /// checkpointed.
    pub async fn serve<S, B, F>(
        &self,
        consumer: Consumer,
        service: S,
        settings: ExactlyOnce,
        shutdown: F,
    ) -> Result<(), StreamsError>
    where
        S: Service<Request<RecordBody>, Response = Response<B>> + Clone + Send + 'static,
        S::Future: Send + 'static,
        S::Error: Into<BoxError>,
        B: http_body::Body + Send + 'static,
        B::Data: Send,
        B::Error: Into<BoxError>,
        F: Future<Output = ()> + Send,
    {
        let result = consumer
            .serve_exactly_once(self.layer().layer(service), settings, shutdown)
            .await;
        // Whatever is still owned: persist with a checkpoint.
        let me = self.clone();
        let _ = tokio::task::spawn_blocking(move || me.checkpoint_all()).await;
        result.map_err(Into::into)
    }

    fn assigned(&self, tps: &[(String, i32)]) {
        let mut added = Vec::new();
        for (topic, partition) in tps {
            let Some(entry) = self.inner.stores.get(topic) else {
                continue;
            };
            if entry
                .partitions
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .contains_key(partition)
            {
                continue;
            }
            match self.open_partition(entry, *partition) {
                Ok(owned) => {
                    entry
                        .partitions
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .insert(*partition, owned);
                    added.push((topic.clone(), *partition));
                }
                // The record handler answers "not restored" (retryable) and
                // the batch is retried; the next assignment tries again.
                Err(e) => {
                    tracing::error!(store = %entry.name, partition, error = %e, "cannot restore store partition")
                }
            }
        }
        self.inner.hosts.update(&added, &[]);
    }

    fn open_partition(&self, entry: &StoreEntry, partition: i32) -> Result<OwnedPartition, String> {
        let mut data = PartitionData::default();
        #[allow(unused_mut)]
        let mut from = None;
        #[cfg(feature = "redb")]
        let persistent = match &self.inner.kind {
            StoreKind::Redb { dir } => {
                let path = dir.join(format!("{}-{partition}.redb", entry.name));
                let p = crate::store::persistent::PersistentPartition::open(path)?;
                from = p.load(&mut data.map)?;
                tracing::info!(store = %entry.name, partition, entries = data.map.len(), checkpoint = ?from, path = %p.path.display(), "loaded the local store");
                Some(p)
            }
            StoreKind::InMemory => None,
        };
        let end = restore_partition(
            &self.inner.bootstrap,
            &self.inner.properties,
            &entry.changelog,
            partition,
            from,
            &mut data,
            &self.inner.stats,
        )?;
        #[cfg(feature = "redb")]
        if let Some(p) = &persistent {
            p.persist(&mut data, Some(end))?;
        }
        let _ = end;
        data.dirty.clear();
        Ok(OwnedPartition {
            data: Arc::new(Mutex::new(data)),
            #[cfg(feature = "redb")]
            persistent,
        })
    }

    fn revoked(&self, tps: &[(String, i32)]) {
        let mut removed = Vec::new();
        for (topic, partition) in tps {
            let Some(entry) = self.inner.stores.get(topic) else {
                continue;
            };
            let owned = entry
                .partitions
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .remove(partition);
            if let Some(owned) = owned {
                self.checkpoint(entry, *partition, &owned);
                removed.push((topic.clone(), *partition));
            }
        }
        self.inner.hosts.update(&[], &removed);
    }

    /// Persists a partition with the changelog end as its checkpoint. Only
    /// between transactions: every changelog record below the end is then
    /// either applied here or aborted.
    #[allow(unused_variables)]
    fn checkpoint(&self, entry: &StoreEntry, partition: i32, owned: &OwnedPartition) {
        #[cfg(feature = "redb")]
        if let Some(p) = &owned.persistent {
            let end = self
                .client_config()
                .create::<BaseConsumer>()
                .map_err(|e| e.to_string())
                .and_then(|c| {
                    c.fetch_watermarks(&entry.changelog, partition, Duration::from_secs(10))
                        .map_err(|e| e.to_string())
                });
            let mut d = lock(&owned.data);
            let r = match end {
                Ok((_, high)) => p.persist(&mut d, Some(high)),
                Err(e) => {
                    tracing::warn!(error = %e, "no changelog end: persisting without moving the checkpoint");
                    p.persist(&mut d, None)
                }
            };
            if let Err(e) = r {
                tracing::warn!(store = %entry.name, partition, error = %e, "cannot persist the store");
            }
        }
    }

    fn checkpoint_all(&self) {
        for entry in self.inner.stores.values() {
            let parts = entry.partitions.lock().unwrap_or_else(|e| e.into_inner());
            for (p, owned) in parts.iter() {
                self.checkpoint(entry, *p, owned);
            }
        }
    }

    fn batch_end(&self, committed: bool) {
        let stats = &self.inner.stats;
        if committed {
            stats.batches_committed.fetch_add(1, Relaxed);
        } else {
            stats.batches_aborted.fetch_add(1, Relaxed);
        }
        for entry in self.inner.stores.values() {
            let parts = entry.partitions.lock().unwrap_or_else(|e| e.into_inner());
            for (partition, owned) in parts.iter() {
                let mut d = lock(&owned.data);
                if committed {
                    d.undo.clear();
                    #[cfg(feature = "redb")]
                    if let Some(p) = &owned.persistent {
                        if let Err(e) = p.persist(&mut d, None) {
                            tracing::warn!(store = %entry.name, partition, error = %e, "cannot persist the store");
                        }
                    }
                } else {
                    let n = d.roll_back();
                    if n > 0 {
                        tracing::info!(store = %entry.name, partition, writes = n, "transaction aborted: store writes rolled back");
                    }
                    stats.rolled_back_writes.fetch_add(n as u64, Relaxed);
                }
            }
        }
        if committed {
            let due = {
                let mut last = self
                    .inner
                    .last_checkpoint
                    .lock()
                    .unwrap_or_else(|e| e.into_inner());
                let due = last.elapsed() >= self.inner.checkpoint_interval;
                if due {
                    *last = Instant::now();
                }
                due
            };
            if due && self.inner.kind != StoreKind::InMemory {
                self.checkpoint_all();
            }
        }
    }

    /// Looks `key` up in store `name`: the committed value when this
    /// instance owns the key's partition, else where to ask. Pending writes
    /// of a batch whose transaction has not committed are not visible.
    pub fn get(&self, name: &str, key: &[u8]) -> Result<Lookup, StreamsError> {
        let entry = self
            .entry_by_name(name)
            .ok_or_else(|| StreamsError::msg(format!("no store named {name}")))?;
        let n = self.partitions_of(&entry.source).ok_or_else(|| {
            StreamsError::msg("partition counts unknown: call Streams::prepare first")
        })?;
        let partition = partition_for(key, n);
        let data = entry
            .partitions
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(&partition)
            .map(|o| o.data.clone());
        let Some(data) = data else {
            return Ok(Lookup::Elsewhere {
                partition,
                owner: self.inner.hosts.owner(&entry.source, partition),
            });
        };
        let d = lock(&data);
        // The oldest undo entry of a key holds its committed value.
        let committed = match d.undo.iter().find(|(k, _)| k[..] == *key) {
            Some((_, old)) => old.clone(),
            None => d.map.get(key).cloned(),
        };
        Ok(committed.map_or(Lookup::Absent, Lookup::Found))
    }

    /// A copy of the committed entries of every local partition of store
    /// `name` (for tests and small stores).
    pub fn local_entries(&self, name: &str) -> Vec<(Bytes, Bytes)> {
        let Some(entry) = self.entry_by_name(name) else {
            return Vec::new();
        };
        let parts = entry.partitions.lock().unwrap_or_else(|e| e.into_inner());
        let mut out = Vec::new();
        for owned in parts.values() {
            let d = lock(&owned.data);
            let mut m = d.map.clone();
            for (k, old) in d.undo.iter().rev() {
                match old {
                    Some(v) => m.insert(k.clone(), v.clone()),
                    None => m.remove(k),
                };
            }
            out.extend(m);
        }
        out
    }

    /// The partitions of store `name`'s source topic this instance owns.
    pub fn local_partitions(&self, name: &str) -> Vec<i32> {
        let mut v: Vec<i32> = self
            .entry_by_name(name)
            .map(|e| {
                e.partitions
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .keys()
                    .copied()
                    .collect()
            })
            .unwrap_or_default();
        v.sort_unstable();
        v
    }

    /// This instance's advertised host, if any.
    pub fn advertised_host(&self) -> Option<&str> {
        self.inner.hosts.host()
    }

    /// The source topic of store `name`.
    pub fn source_topic(&self, name: &str) -> Option<&str> {
        self.entry_by_name(name).map(|e| e.source.as_str())
    }
}

/// A [`tower::Layer`] producing [`Stateful`]; see [`Streams::layer`].
#[derive(Clone, Debug)]
pub struct StatefulLayer {
    streams: Streams,
}

impl<S> Layer<S> for StatefulLayer {
    type Service = Stateful<S>;
    fn layer(&self, inner: S) -> Stateful<S> {
        Stateful {
            inner,
            streams: self.streams.clone(),
        }
    }
}

/// Gives each request the [`StateStore`] of its record's partition (when a
/// store is declared on the record's topic) and, when the inner service
/// answers `2xx`, applies the staged writes as pending and appends one
/// changelog record per written key to the request's
/// [`Outbox`](kafka_tower::runtime::Outbox). A failed attempt's writes are
/// discarded.
#[derive(Clone, Debug)]
pub struct Stateful<S> {
    inner: S,
    streams: Streams,
}

impl<S> Stateful<S> {
    /// The wrapped service.
    pub fn get_ref(&self) -> &S {
        &self.inner
    }
}

pin_project_lite::pin_project! {
    /// The future of [`Stateful`]: the inner future, then (on a `2xx` with
    /// writes) the changelog records staged in the [`Outbox`]. Nothing is
    /// boxed or spawned.
    pub struct StatefulFuture<F> {
        #[pin]
        inner: Option<F>,
        // The store and where its changelog goes, when the request has one.
        after: Option<AfterCall>,
        // Answered at once (a partition not restored here).
        error: Option<BoxError>,
    }
}

/// What a call with a store does once the inner service answered.
struct AfterCall {
    store: StateStore,
    changelog: String,
    partition: i32,
    outbox: Option<Outbox>,
    stats: Arc<StoreStats>,
}

impl AfterCall {
    /// Applies the staged writes as pending and stages one changelog record
    /// per written key.
    fn finish(self) -> Result<(), BoxError> {
        let staged = self.store.take_staged();
        if staged.is_empty() {
            return Ok(());
        }
        let outbox = self.outbox.ok_or(
            "no Outbox in the request: run stateful services in exactly-once mode (Streams::serve)",
        )?;
        let mut d = lock(self.store.data());
        let written = staged.len() as u64;
        for (k, v) in staged {
            // As is: the changelog outlives the request, so no
            // Authorization or trace header of the caller goes into it.
            outbox.send_as_is(OutgoingRecord {
                topic: self.changelog.clone(),
                partition: Some(self.partition),
                key: Some(k.clone()),
                payload: v.clone(),
                ..Default::default()
            });
            d.apply(k, v, true);
        }
        self.stats.changelog_records.fetch_add(written, Relaxed);
        Ok(())
    }
}

impl<F, B, E> Future for StatefulFuture<F>
where
    F: Future<Output = Result<Response<B>, E>>,
    E: Into<BoxError>,
{
    type Output = Result<Response<B>, BoxError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        if let Some(e) = this.error.take() {
            return Poll::Ready(Err(e));
        }
        let inner = this
            .inner
            .as_pin_mut()
            .expect("StatefulFuture polled after completion");
        let res = std::task::ready!(inner.poll(cx)).map_err(Into::into)?;
        if res.status().is_success() {
            if let Some(after) = this.after.take() {
                after.finish()?;
            }
        }
        Poll::Ready(Ok(res))
    }
}

/// A request reached a store partition this instance does not hold
/// (restoration failed): retryable.
#[derive(Debug)]
pub struct NotRestored {
    /// The store.
    pub store: String,
    /// The partition.
    pub partition: i32,
}

impl fmt::Display for NotRestored {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "store {} partition {} is not restored here",
            self.store, self.partition
        )
    }
}

impl std::error::Error for NotRestored {}

impl<S, B> Service<Request<RecordBody>> for Stateful<S>
where
    S: Service<Request<RecordBody>, Response = Response<B>>,
    S::Error: Into<BoxError>,
{
    type Response = Response<B>;
    type Error = BoxError;
    type Future = StatefulFuture<S::Future>;

    #[inline]
    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, mut req: Request<RecordBody>) -> Self::Future {
        let pass = |fut| StatefulFuture {
            inner: Some(fut),
            after: None,
            error: None,
        };
        let Some(meta) = req.extensions().get::<RecordMeta>() else {
            return pass(self.inner.call(req));
        };
        let Some(entry) = self.streams.inner.stores.get(meta.topic()).cloned() else {
            return pass(self.inner.call(req));
        };
        let partition = meta.partition();
        let data = entry
            .partitions
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(&partition)
            .map(|o| o.data.clone());
        let Some(data) = data else {
            return StatefulFuture {
                inner: None,
                after: None,
                error: Some(
                    NotRestored {
                        store: entry.name.to_string(),
                        partition,
                    }
                    .into(),
                ),
            };
        };
        let store = StateStore::new(entry.name.clone(), partition, data);
        req.extensions_mut().insert(store.clone());
        let outbox = req.extensions().get::<Outbox>().cloned();
        StatefulFuture {
            inner: Some(self.inner.call(req)),
            after: Some(AfterCall {
                store,
                changelog: entry.changelog.clone(),
                partition,
                outbox,
                stats: self.streams.inner.stats.clone(),
            }),
            error: None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_streams_error_keeps_its_cause() {
        use std::error::Error as _;
        let io = std::io::Error::new(std::io::ErrorKind::TimedOut, "broker gone");
        let e = StreamsError::caused("cannot read the metadata of orders", io);
        assert_eq!(
            e.to_string(),
            "cannot read the metadata of orders: broker gone"
        );
        let cause = e.source().and_then(|s| s.downcast_ref::<std::io::Error>());
        assert_eq!(cause.map(|c| c.kind()), Some(std::io::ErrorKind::TimedOut));
        assert!(StreamsError::msg("no store named x").source().is_none());
    }

    #[test]
    fn the_builder_never_prints_a_secret_property() {
        let builder = Streams::builder("app", "127.0.0.1:9092")
            .property("sasl.username", "svc-streams")
            .property("sasl.password", "streams-hunter2")
            .property("ssl.key.password", "streams-keypass");
        for shown in [format!("{builder:?}"), format!("{builder:#?}")] {
            assert!(shown.contains("svc-streams"), "{shown}");
            assert!(!shown.contains("streams-hunter2"), "{shown}");
            assert!(!shown.contains("streams-keypass"), "{shown}");
        }
    }
}
