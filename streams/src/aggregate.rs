//! Aggregates and commands: load the aggregate's state from the store,
//! check the expected version, decide, and append the resulting events in
//! the batch's transaction.
//!
//! A command is a record on a command topic keyed by aggregate id whose
//! payload is a JSON [`CommandEnvelope`]. [`AggregateService`] (run behind
//! [`Streams::layer`](crate::Streams::layer) with a store on the command
//! topic) answers:
//!
//! | outcome | response | what is committed |
//! |---|---|---|
//! | accepted | `200`, body `{"version":N}` | the events (on the command's partition of the event topic), the new state in the changelog, the command's offset |
//! | `expected_version` is not the aggregate's version | `409`, [`Refusal`] `aggregate` / `version_conflict` | the command, with the refusal, in the command topic's dead-letter topic |
//! | the aggregate refuses the command | `422`, [`Refusal`] `aggregate` / `rejected` | the same, dead-lettered |
//! | the payload is not a command | `400`, [`Refusal`] `aggregate` / `invalid_command` | the same, dead-lettered |
//!
//! One partition is served by one instance at a time and in order, so the
//! version check and the append cannot interleave with another command on
//! the same aggregate: of two commands with the same expected version,
//! exactly one is accepted. A conflicting command is never applied over the
//! other.
//!
//! ```
//! use kafka_tower_streams::aggregate::Aggregate;
//! use serde::{Deserialize, Serialize};
//!
//! #[derive(Default, Serialize, Deserialize)]
//! struct Counter { value: i64 }
//! #[derive(Deserialize)]
//! struct Add { by: i64 }
//! #[derive(Serialize, Deserialize)]
//! struct Added { by: i64 }
//!
//! struct CounterAggregate;
//! impl Aggregate for CounterAggregate {
//!     type State = Counter;
//!     type Command = Add;
//!     type Event = Added;
//!     fn decide(state: &Counter, cmd: &Add) -> Result<Vec<Added>, String> {
//!         if state.value + cmd.by < 0 { return Err("would go negative".into()); }
//!         Ok(vec![Added { by: cmd.by }])
//!     }
//!     fn apply(state: &mut Counter, event: &Added) { state.value += event.by; }
//! }
//! ```

use std::convert::Infallible;
use std::fmt;
use std::future::{ready, Ready};
use std::marker::PhantomData;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use kafka_tower::runtime::Outbox;
use kafka_tower::{OutgoingRecord, RawHeader, RawHeaders, RecordBody, RecordMeta, Refusal};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use tower::Service;

use crate::StateStore;

/// An event-sourced aggregate: how commands become events and events
/// change state.
pub trait Aggregate: Send + Sync + 'static {
    /// The state folded from the aggregate's events.
    type State: Default + Serialize + DeserializeOwned + Send;
    /// What callers ask for.
    type Command: DeserializeOwned + Send;
    /// What happened.
    type Event: Serialize + Send;
    /// Validates `command` against `state`: the events to append, or why
    /// the command is refused.
    fn decide(state: &Self::State, command: &Self::Command) -> Result<Vec<Self::Event>, String>;
    /// Applies one event to the state.
    fn apply(state: &mut Self::State, event: &Self::Event);
}

/// The payload of a command record.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct CommandEnvelope<C> {
    /// The aggregate version the caller saw (0 = not created yet); `None`
    /// skips the check.
    #[serde(default)]
    pub expected_version: Option<u64>,
    /// The command.
    pub command: C,
}

/// The payload of an event record.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct EventEnvelope<E> {
    /// The aggregate id (also the record key).
    pub aggregate_id: String,
    /// The aggregate's version after this event (1 for the first).
    pub version: u64,
    /// The event.
    pub event: E,
}

/// What the aggregate's store holds per aggregate id.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct Versioned<S> {
    /// How many events the aggregate has.
    pub version: u64,
    /// The folded state.
    pub state: S,
}

/// The header carrying an event's aggregate version.
pub const VERSION_HEADER: &str = "kt-aggregate-version";

/// Handles the commands of aggregate `A`; see the [module docs](self).
pub struct AggregateService<A> {
    events_topic: Arc<str>,
    _aggregate: PhantomData<fn() -> A>,
}

impl<A> Clone for AggregateService<A> {
    fn clone(&self) -> Self {
        AggregateService {
            events_topic: self.events_topic.clone(),
            _aggregate: PhantomData,
        }
    }
}

impl<A> fmt::Debug for AggregateService<A> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AggregateService")
            .field("events_topic", &self.events_topic)
            .finish()
    }
}

impl<A: Aggregate> AggregateService<A> {
    /// Appends the events of accepted commands to `events_topic`, which
    /// must have as many partitions as the command topic (an event goes to
    /// its command's partition, so both are partitioned by aggregate id).
    pub fn new(events_topic: impl Into<Arc<str>>) -> Self {
        AggregateService {
            events_topic: events_topic.into(),
            _aggregate: PhantomData,
        }
    }

    fn handle(&self, req: Request<RecordBody>) -> Response<String> {
        let ext = req.extensions();
        let (Some(meta), Some(store), Some(outbox)) = (
            ext.get::<RecordMeta>().cloned(),
            ext.get::<StateStore>().cloned(),
            ext.get::<Outbox>().cloned(),
        ) else {
            return refuse(
                StatusCode::INTERNAL_SERVER_ERROR,
                "missing_context",
                "no RecordMeta, StateStore or Outbox: run behind Streams::layer in exactly-once mode"
                    .into(),
            );
        };
        let Some(key) = meta.key().cloned() else {
            return refuse(
                StatusCode::BAD_REQUEST,
                "invalid_command",
                "a command record needs a key (the aggregate id)".into(),
            );
        };
        let id = String::from_utf8_lossy(&key).into_owned();
        let payload = req.into_body().into_payload().unwrap_or_default();
        let envelope: CommandEnvelope<A::Command> = match serde_json::from_slice(&payload) {
            Ok(c) => c,
            Err(e) => {
                return refuse(
                    StatusCode::BAD_REQUEST,
                    "invalid_command",
                    format!("not a command: {e}"),
                )
            }
        };
        let mut current: Versioned<A::State> = match store.get_json(&key) {
            Ok(v) => v.unwrap_or_default(),
            Err(e) => {
                return refuse(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "corrupt_state",
                    format!("stored state of {id}: {e}"),
                )
            }
        };
        if let Some(expected) = envelope.expected_version {
            if expected != current.version {
                return refuse(
                    StatusCode::CONFLICT,
                    "version_conflict",
                    format!(
                        "expected version {expected} of {id}, which is at version {}",
                        current.version
                    ),
                );
            }
        }
        let events = match A::decide(&current.state, &envelope.command) {
            Ok(e) => e,
            Err(why) => return refuse(StatusCode::UNPROCESSABLE_ENTITY, "rejected", why),
        };
        for event in events {
            A::apply(&mut current.state, &event);
            current.version += 1;
            let env = EventEnvelope {
                aggregate_id: id.clone(),
                version: current.version,
                event,
            };
            let payload = match serde_json::to_vec(&env) {
                Ok(p) => p,
                Err(e) => {
                    return refuse(
                        StatusCode::INTERNAL_SERVER_ERROR,
                        "unserializable",
                        e.to_string(),
                    )
                }
            };
            let headers: RawHeaders = vec![RawHeader::new(
                Bytes::from_static(VERSION_HEADER.as_bytes()),
                Bytes::from(current.version.to_string()),
            )]
            .into();
            outbox.send(OutgoingRecord {
                topic: self.events_topic.to_string(),
                partition: Some(meta.partition()),
                key: Some(key.clone()),
                payload: Some(payload.into()),
                headers,
                timestamp: None,
            });
        }
        if let Err(e) = store.put_json(key, &current) {
            return refuse(
                StatusCode::INTERNAL_SERVER_ERROR,
                "unserializable",
                e.to_string(),
            );
        }
        Response::new(format!("{{\"version\":{}}}", current.version))
    }
}

fn refuse(status: StatusCode, reason: &'static str, detail: String) -> Response<String> {
    let mut res = Response::new(detail.clone());
    *res.status_mut() = status;
    res.extensions_mut()
        .insert(Refusal::new("aggregate", reason, detail));
    res
}

impl<A: Aggregate> Service<Request<RecordBody>> for AggregateService<A> {
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
