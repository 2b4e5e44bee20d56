//! Which instance serves which partition: a small compacted
//! `<application>-hosts` topic.
//!
//! Each instance that advertises a `host:port` writes, after every change
//! of its assignment (and once its stores are restored), one record keyed
//! by its instance id whose value lists the partitions it owns. Every
//! instance reads the topic from the beginning in a background thread and
//! answers "who owns `topic[partition]`" with the newest announcement that
//! lists it. Why a topic rather than consumer-group member metadata:
//! librdkafka exposes no hook to put user data into the group protocol, and
//! a topic needs no other service; its limit is staleness — during a
//! rebalance an answer may name the previous owner (see the crate docs).

use kafka_tower::runtime::Properties;
use std::collections::{BTreeSet, HashMap};
use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rdkafka::consumer::{BaseConsumer, Consumer as _};
use rdkafka::producer::{BaseRecord, DefaultProducerContext, Producer as _, ThreadedProducer};
use rdkafka::{ClientConfig, Message as _, Offset, TopicPartitionList};
use serde::{Deserialize, Serialize};

#[derive(Clone, Debug, Serialize, Deserialize)]
struct Announcement {
    host: String,
    partitions: Vec<(String, i32)>,
    at_ms: u128,
}

pub(crate) struct Hosts {
    topic: String,
    instance_id: String,
    host: Option<String>,
    producer: Mutex<Option<ThreadedProducer<DefaultProducerContext>>>,
    owned: Mutex<BTreeSet<(String, i32)>>,
    table: Arc<RwLock<HashMap<String, Announcement>>>,
    stop: Arc<AtomicBool>,
    started: AtomicBool,
    bootstrap: String,
    properties: Properties,
}

impl Drop for Hosts {
    fn drop(&mut self) {
        self.stop.store(true, Relaxed);
    }
}

impl Hosts {
    pub(crate) fn new(
        topic: String,
        instance_id: String,
        host: Option<String>,
        bootstrap: String,
        properties: Properties,
    ) -> Self {
        Hosts {
            topic,
            instance_id,
            host,
            producer: Mutex::new(None),
            owned: Mutex::new(BTreeSet::new()),
            table: Default::default(),
            stop: Arc::new(AtomicBool::new(false)),
            started: AtomicBool::new(false),
            bootstrap,
            properties,
        }
    }

    pub(crate) fn topic(&self) -> &str {
        &self.topic
    }

    fn client_config(&self) -> ClientConfig {
        let mut cc = ClientConfig::new();
        for (k, v) in &self.properties {
            cc.set(k, &v.0);
        }
        cc.set("bootstrap.servers", &self.bootstrap);
        cc
    }

    /// Starts the reader thread and the announcing producer (once).
    pub(crate) fn start(&self) -> Result<(), String> {
        if self.started.swap(true, Relaxed) {
            return Ok(());
        }
        if self.host.is_some() {
            let p: ThreadedProducer<DefaultProducerContext> = self
                .client_config()
                .set("linger.ms", "0")
                .create()
                .map_err(|e| {
                    format!("hosts producer: {}", self.properties.redact(&e.to_string()))
                })?;
            *self.producer.lock().unwrap_or_else(|e| e.into_inner()) = Some(p);
        }
        let consumer: BaseConsumer = self
            .client_config()
            .set("group.id", "kafka-tower-streams-hosts")
            .set("enable.auto.commit", "false")
            .create()
            .map_err(|e| format!("hosts reader: {}", self.properties.redact(&e.to_string())))?;
        let mut tpl = TopicPartitionList::new();
        tpl.add_partition_offset(&self.topic, 0, Offset::Beginning)
            .map_err(|e| e.to_string())?;
        consumer
            .assign(&tpl)
            .map_err(|e| format!("hosts reader: {}", self.properties.redact(&e.to_string())))?;
        let table = self.table.clone();
        let stop = self.stop.clone();
        std::thread::Builder::new()
            .name("kafka-tower-hosts".into())
            .spawn(move || {
                while !stop.load(Relaxed) {
                    if let Some(Ok(m)) = consumer.poll(Duration::from_millis(200)) {
                        let Some(key) = m.key().map(|k| String::from_utf8_lossy(k).into_owned())
                        else {
                            continue;
                        };
                        let mut t = table.write().unwrap_or_else(|e| e.into_inner());
                        match m.payload().map(serde_json::from_slice::<Announcement>) {
                            Some(Ok(a)) => {
                                t.insert(key, a);
                            }
                            None => {
                                t.remove(&key);
                            }
                            Some(Err(e)) => tracing::warn!(error = %e, "bad host announcement"),
                        }
                    }
                }
            })
            .map_err(|e| e.to_string())?;
        Ok(())
    }

    /// Records an assignment change and announces the owned set.
    pub(crate) fn update(&self, added: &[(String, i32)], removed: &[(String, i32)]) {
        let partitions: Vec<(String, i32)> = {
            let mut owned = self.owned.lock().unwrap_or_else(|e| e.into_inner());
            for r in removed {
                owned.remove(r);
            }
            owned.extend(added.iter().cloned());
            owned.iter().cloned().collect()
        };
        let Some(host) = &self.host else { return };
        let a = Announcement {
            host: host.clone(),
            partitions,
            at_ms: SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map_or(0, |d| d.as_millis()),
        };
        let payload = serde_json::to_vec(&a).expect("serializable");
        if let Some(p) = &*self.producer.lock().unwrap_or_else(|e| e.into_inner()) {
            let r = BaseRecord::<str, [u8]>::to(&self.topic)
                .key(&self.instance_id)
                .payload(&payload)
                .partition(0);
            if let Err((e, _)) = p.send(r) {
                tracing::warn!(error = %e, "cannot announce this instance's partitions");
            }
            let _ = p.flush(Duration::from_secs(5));
        }
    }

    /// The advertised host of the newest announcement listing
    /// `topic[partition]`.
    pub(crate) fn owner(&self, topic: &str, partition: i32) -> Option<String> {
        let t = self.table.read().unwrap_or_else(|e| e.into_inner());
        t.values()
            .filter(|a| {
                a.partitions
                    .iter()
                    .any(|(tp, p)| tp == topic && *p == partition)
            })
            .max_by_key(|a| a.at_ms)
            .map(|a| a.host.clone())
    }

    pub(crate) fn host(&self) -> Option<&str> {
        self.host.as_deref()
    }
}
