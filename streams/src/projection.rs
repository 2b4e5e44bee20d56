//! Projections: fold an event topic into a materialized view, and re-key
//! events through an internal repartition topic for views in other
//! dimensions.
//!
//! A [`Projection`] is a service for records whose payload is a JSON event
//! `E`: it folds each event into the view `V` stored under the record's key
//! (run it behind [`Streams::layer`](crate::Streams::layer) with a store on
//! the event topic), and, for each [`Projection::repartition`], forwards
//! the event to `<application>-<name>-repartition` keyed by the new
//! dimension — computed from the event and the updated view — where a
//! second projection folds it into the other view. Everything of one event
//! (view change, changelog record, repartition record, consumed offset)
//! commits in one transaction.
//!
//! ```
//! use kafka_tower_streams::projection::Projection;
//!
//! #[derive(serde::Deserialize)]
//! struct Deposited { amount: i64 }
//! let by_account = Projection::new(|balance: &mut i64, e: &Deposited| *balance += e.amount);
//! # let _ = by_account;
//! ```

use std::convert::Infallible;
use std::fmt;
use std::future::{ready, Ready};
use std::sync::Arc;
use std::task::{Context, Poll};

use http::{Request, Response, StatusCode};
use kafka_tower::runtime::Outbox;
use kafka_tower::{OutgoingRecord, RawHeaders, RecordBody, RecordMeta, Refusal};
use serde::de::DeserializeOwned;
use serde::Serialize;
use tower::Service;

use crate::partitioner::partition_for;
use crate::StateStore;

type Fold<E, V> = Arc<dyn Fn(&mut V, &E) + Send + Sync>;
type KeyOf<E, V> = Arc<dyn Fn(&E, &V) -> Option<String> + Send + Sync>;

struct Repartition<E, V> {
    topic: String,
    partitions: i32,
    key: KeyOf<E, V>,
}

/// Folds events into a view; see the [module docs](self).
pub struct Projection<E, V> {
    fold: Fold<E, V>,
    repartitions: Arc<Vec<Repartition<E, V>>>,
}

impl<E, V> Clone for Projection<E, V> {
    fn clone(&self) -> Self {
        Projection {
            fold: self.fold.clone(),
            repartitions: self.repartitions.clone(),
        }
    }
}

impl<E, V> fmt::Debug for Projection<E, V> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Projection")
            .field(
                "repartitions",
                &self
                    .repartitions
                    .iter()
                    .map(|r| &r.topic)
                    .collect::<Vec<_>>(),
            )
            .finish_non_exhaustive()
    }
}

impl<E, V> Projection<E, V>
where
    E: DeserializeOwned + 'static,
    V: Default + Serialize + DeserializeOwned + 'static,
{
    /// A projection folding each event into the view under the record key.
    pub fn new(fold: impl Fn(&mut V, &E) + Send + Sync + 'static) -> Self {
        Projection {
            fold: Arc::new(fold),
            repartitions: Arc::new(Vec::new()),
        }
    }

    /// Also forwards each event to `topic` (a repartition topic with
    /// `partitions` partitions) keyed by `key(event, updated_view)`; events
    /// for which it answers `None` are not forwarded.
    pub fn repartition(
        mut self,
        topic: impl Into<String>,
        partitions: i32,
        key: impl Fn(&E, &V) -> Option<String> + Send + Sync + 'static,
    ) -> Self {
        let mut list: Vec<Repartition<E, V>> = Vec::new();
        for r in self.repartitions.iter() {
            list.push(Repartition {
                topic: r.topic.clone(),
                partitions: r.partitions,
                key: r.key.clone(),
            });
        }
        list.push(Repartition {
            topic: topic.into(),
            partitions,
            key: Arc::new(key),
        });
        self.repartitions = Arc::new(list);
        self
    }

    fn handle(&self, req: Request<RecordBody>) -> Response<String> {
        let ext = req.extensions();
        let meta = ext.get::<RecordMeta>().cloned();
        let store = ext.get::<StateStore>().cloned();
        let outbox = ext.get::<Outbox>().cloned();
        let headers = ext.get::<RawHeaders>().cloned().unwrap_or_default();
        let (Some(meta), Some(store)) = (meta, store) else {
            return refuse(
                StatusCode::INTERNAL_SERVER_ERROR,
                "missing_context",
                "no RecordMeta or StateStore: run behind Streams::layer".into(),
            );
        };
        let Some(key) = meta.key().cloned() else {
            return refuse(
                StatusCode::BAD_REQUEST,
                "no_key",
                "an event record needs a key".into(),
            );
        };
        let Some(payload) = req.into_body().into_payload() else {
            return Response::new(String::new()); // a tombstone: nothing to fold
        };
        let event: E = match serde_json::from_slice(&payload) {
            Ok(e) => e,
            Err(e) => {
                return refuse(
                    StatusCode::BAD_REQUEST,
                    "undecodable",
                    format!("not an event: {e}"),
                )
            }
        };
        let mut view: V = match store.get_json(&key) {
            Ok(v) => v.unwrap_or_default(),
            Err(e) => {
                return refuse(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "corrupt_view",
                    e.to_string(),
                )
            }
        };
        (self.fold)(&mut view, &event);
        if let Err(e) = store.put_json(key, &view) {
            return refuse(
                StatusCode::INTERNAL_SERVER_ERROR,
                "unserializable",
                e.to_string(),
            );
        }
        for r in self.repartitions.iter() {
            let Some(new_key) = (r.key)(&event, &view) else {
                continue;
            };
            let Some(outbox) = &outbox else {
                return refuse(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "missing_context",
                    "no Outbox: repartitioning needs exactly-once mode".into(),
                );
            };
            outbox.send(OutgoingRecord {
                topic: r.topic.clone(),
                partition: Some(partition_for(new_key.as_bytes(), r.partitions)),
                key: Some(new_key.into()),
                payload: Some(payload.clone()),
                headers: headers.clone(),
                timestamp: meta.timestamp(),
            });
        }
        Response::new(String::new())
    }
}

fn refuse(status: StatusCode, reason: &'static str, detail: String) -> Response<String> {
    let mut res = Response::new(detail.clone());
    *res.status_mut() = status;
    res.extensions_mut()
        .insert(Refusal::new("projection", reason, detail));
    res
}

impl<E, V> Service<Request<RecordBody>> for Projection<E, V>
where
    E: DeserializeOwned + 'static,
    V: Default + Serialize + DeserializeOwned + 'static,
{
    type Response = Response<String>;
    type Error = Infallible;
    type Future = Ready<Result<Response<String>, Infallible>>;

    #[inline]
    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: Request<RecordBody>) -> Self::Future {
        ready(Ok(self.handle(req)))
    }
}
