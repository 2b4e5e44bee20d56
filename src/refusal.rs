//! [`Refusal`]: how a layer tells the runtime, the dead-letter record and
//! the audit trail *who* refused a request and *why*.
//!
//! A layer that refuses a request answers with a 4xx (permanent) or 5xx
//! (retryable) response and puts a `Refusal` in the response extensions.
//! The consumer runtime copies it into the dead-letter provenance headers
//! (`kt-dlq-failed-by`, `kt-dlq-error-message`).
//!
//! ```
//! use kafka_tower::Refusal;
//!
//! let mut res = http::Response::new(());
//! *res.status_mut() = http::StatusCode::UNAUTHORIZED;
//! res.extensions_mut().insert(Refusal::new("jwt", "expired", "token expired 3600 s before the record was produced"));
//! let refusal = res.extensions().get::<Refusal>().unwrap();
//! assert_eq!(refusal.layer(), "jwt");
//! assert_eq!(refusal.reason(), "expired");
//! ```

use std::borrow::Cow;
use std::fmt;

/// The layer (or service) that refused a request, a machine-readable reason
/// code, and a human-readable detail. A response extension.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    layer: Cow<'static, str>,
    reason: Cow<'static, str>,
    detail: String,
}

impl Refusal {
    /// A refusal by `layer` (e.g. `"jwt"`) for `reason` (e.g. `"expired"`).
    pub fn new(
        layer: impl Into<Cow<'static, str>>,
        reason: impl Into<Cow<'static, str>>,
        detail: impl Into<String>,
    ) -> Self {
        Refusal {
            layer: layer.into(),
            reason: reason.into(),
            detail: detail.into(),
        }
    }

    /// The name of the refusing layer or service.
    pub fn layer(&self) -> &str {
        &self.layer
    }

    /// The machine-readable reason code.
    pub fn reason(&self) -> &str {
        &self.reason
    }

    /// A human-readable explanation; never contains secrets.
    pub fn detail(&self) -> &str {
        &self.detail
    }
}

impl fmt::Display for Refusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.detail.is_empty() {
            write!(f, "{}: {}", self.layer, self.reason)
        } else {
            write!(f, "{}: {}: {}", self.layer, self.reason, self.detail)
        }
    }
}
