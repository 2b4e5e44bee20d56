//! See [`TopicPolicy`].

use std::sync::Arc;
use std::time::Duration;

/// How a topic judges a token's `exp` (and `nbf`). See [`TopicPolicy`]
/// for the trade-offs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ExpiryMode {
    /// The token must be valid now (± leeway). The default, and always the
    /// mode for requests that are not records.
    #[default]
    Strict,
    /// Accepts a token that expired less than this long ago.
    Grace(Duration),
    /// The token must have been valid at the record's timestamp, and the
    /// record must be at most `max_age` old.
    RecordTimestamp {
        /// The oldest record accepted, judged by its timestamp.
        max_age: Duration,
    },
    /// Does not check `exp` or `nbf` at all. Explicit opt-in; the layer logs
    /// a warning once per topic when it is built.
    Skip,
}

/// Per-topic policy: [`TopicPolicy`] and the queue-aware [`ExpiryMode`].
///
/// A record can wait in a topic long after the token it carries expired.
/// Strict expiry would dead-letter every record of a consumer that fell
/// behind; skipping expiry would accept a stolen token forever. The modes
/// in between:
///
/// | mode | accepts a token when | fits |
/// |---|---|---|
/// | [`ExpiryMode::Strict`] | `now ≤ exp + leeway` | HTTP routes (always), latency-critical topics |
/// | [`ExpiryMode::Grace`]`(G)` | `now ≤ exp + leeway + G` | topics with a known, bounded lag |
/// | [`ExpiryMode::RecordTimestamp`]`{ max_age }` | the token was valid when the record was written: `ts ≤ exp + leeway` and `nbf ≤ ts + leeway`, where `ts` is the record timestamp (capped at now), **and** the record is at most `max_age` old | event topics; the default choice for queues |
/// | [`ExpiryMode::Skip`] | always (only signature, issuer, audience, scopes) | explicit opt-in; logged once when the layer is built |
///
/// Queue-aware modes only apply to requests that carry a
/// [`kafka_tower::RecordMeta`]; an HTTP request without one is judged
/// strictly whatever its route.
///
/// **Trusting the record timestamp.** With `CreateTime` (Kafka's default)
/// the timestamp is set by the producer, so a producer holding an expired
/// token could back-date its records; `max_age` bounds that to "a token
/// expired at most `max_age` ago". Topics configured with
/// `message.timestamp.type=LogAppendTime` get a broker-assigned timestamp
/// that producers cannot choose — prefer them for `RecordTimestamp`. A record
/// without a timestamp is judged strictly.
///
/// ```
/// use std::time::Duration;
/// use kafka_tower_jwt::{ExpiryMode, TopicPolicy};
///
/// let orders = TopicPolicy::new()
///     .expiry(ExpiryMode::RecordTimestamp { max_age: Duration::from_secs(24 * 3600) })
///     .require_scope("orders.w");
/// assert!(!orders.allows_anonymous());
/// let public = TopicPolicy::new().allow_anonymous();
/// assert!(public.allows_anonymous());
/// ```
///
/// What one topic (or HTTP route, by its first path segment) requires.
#[derive(Debug, Clone, Default)]
pub struct TopicPolicy {
    pub(crate) expiry: ExpiryMode,
    pub(crate) anonymous: bool,
    pub(crate) scopes: Arc<[Box<str>]>,
}

impl TopicPolicy {
    /// Strict expiry, a token required, no scope required.
    pub fn new() -> Self {
        TopicPolicy::default()
    }

    /// Sets the expiry mode.
    pub fn expiry(mut self, mode: ExpiryMode) -> Self {
        self.expiry = mode;
        self
    }

    /// Lets requests without an `Authorization` header through, marked with
    /// the [`Anonymous`](crate::Anonymous) extension. A request that *has* a
    /// token is still verified and refused when the token is bad.
    pub fn allow_anonymous(mut self) -> Self {
        self.anonymous = true;
        self
    }

    /// Requires `scope` (in the token's `scope`, `scp` or `scopes` claim);
    /// a token without it is refused with `insufficient_scope` (403). May be
    /// called several times; every scope is required.
    pub fn require_scope(mut self, scope: impl Into<String>) -> Self {
        let mut v: Vec<Box<str>> = self.scopes.iter().cloned().collect();
        v.push(scope.into().into_boxed_str());
        self.scopes = v.into();
        self
    }

    /// The expiry mode.
    pub fn expiry_mode(&self) -> ExpiryMode {
        self.expiry
    }

    /// Whether requests without a token pass as anonymous.
    pub fn allows_anonymous(&self) -> bool {
        self.anonymous
    }

    /// The scopes a token must have.
    pub fn required_scopes(&self) -> impl Iterator<Item = &str> {
        self.scopes.iter().map(|s| &**s)
    }
}
