//! What became of one call — [`Outcome`] — and what kind of failure it
//! was — [`ErrorClass`]: the one rule the runtime, the metrics, the audit
//! trail and the trace layer all apply.
//!
//! | response | [`Outcome`] | [`ErrorClass`] | the consumer runtime |
//! |---|---|---|---|
//! | `2xx` | `ok` | — | commits |
//! | carries a [`Refusal`] | `refused` | by status | dead-letters (retries if the status is retryable) |
//! | `408`, `429`, `5xx` | `retryable` | `retryable-status` | retries, then dead-letters |
//! | any other status | `failed` | `permanent` | dead-letters |
//! | `Err` from the service | `retryable` | `service-error` | retries, then dead-letters |
//! | a panic | `retryable` | `panic` | retries, then dead-letters |
//!
//! ```
//! use kafka_tower::outcome::{ErrorClass, Outcome};
//! use kafka_tower::Refusal;
//! use http::{Response, StatusCode};
//!
//! let mut refused = Response::new(());
//! *refused.status_mut() = StatusCode::UNAUTHORIZED;
//! refused.extensions_mut().insert(Refusal::new("jwt", "expired", "token expired"));
//! assert_eq!(Outcome::of_response(&refused), Outcome::Refused);
//! assert_eq!(ErrorClass::of_status(refused.status()), Some(ErrorClass::Permanent));
//! assert_eq!(Outcome::of_result::<(), ()>(&Err(())).as_str(), "retryable");
//! ```

use std::fmt;

use http::{Response, StatusCode};

use crate::refusal::{is_retryable_status, Refusal};

/// What became of one call of a service: the `outcome` label of the
/// metrics and the `outcome` field of an audit record.
///
/// On a consumer it tells what the runtime does next: `ok` commits,
/// `retryable` retries (or dead-letters once the attempts are used up),
/// `failed` and `refused` dead-letter at once (unless the refusing layer
/// answered a retryable status).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[cfg_attr(
    feature = "serde",
    derive(serde::Serialize, serde::Deserialize),
    serde(rename_all = "lowercase")
)]
pub enum Outcome {
    /// A `2xx` response.
    Ok,
    /// A response carrying a [`Refusal`] extension: a layer (JWT, schema, …)
    /// refused the request.
    Refused,
    /// Any other status that is not retryable (typically `4xx`).
    Failed,
    /// `408`, `429`, `5xx`, an `Err` from the service, a panic, or a
    /// cancelled call.
    Retryable,
}

impl Outcome {
    /// Every outcome, in label order.
    pub const ALL: [Outcome; 4] = [
        Outcome::Ok,
        Outcome::Refused,
        Outcome::Failed,
        Outcome::Retryable,
    ];

    /// Classifies a response.
    pub fn of_response<B>(res: &Response<B>) -> Outcome {
        let status = res.status();
        if status.is_success() {
            Outcome::Ok
        } else if res.extensions().get::<Refusal>().is_some() {
            Outcome::Refused
        } else if is_retryable_status(status) {
            Outcome::Retryable
        } else {
            Outcome::Failed
        }
    }

    /// Classifies a service result: an `Err` is retryable.
    pub fn of_result<B, E>(res: &Result<Response<B>, E>) -> Outcome {
        match res {
            Ok(r) => Outcome::of_response(r),
            Err(_) => Outcome::Retryable,
        }
    }

    /// `ok`, `refused`, `failed` or `retryable`.
    pub const fn as_str(self) -> &'static str {
        match self {
            Outcome::Ok => "ok",
            Outcome::Refused => "refused",
            Outcome::Failed => "failed",
            Outcome::Retryable => "retryable",
        }
    }
}

impl fmt::Display for Outcome {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What kind of failure a call met: the `kt-dlq-error-class` header of a
/// dead letter and the `error_class` of an audit record.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ErrorClass {
    /// A response that is neither `2xx` nor retryable (typically `4xx`).
    Permanent,
    /// A retryable response: `408`, `429` or `5xx`.
    RetryableStatus,
    /// The service (or its readiness) returned `Err`.
    ServiceError,
    /// The service panicked.
    Panic,
    /// The call's future was dropped before it finished (the audit trail
    /// records it; the runtime never drops a call it started).
    Cancelled,
}

impl ErrorClass {
    /// The class of a response's status: `None` for `2xx`.
    pub fn of_status(status: StatusCode) -> Option<ErrorClass> {
        if status.is_success() {
            None
        } else if is_retryable_status(status) {
            Some(ErrorClass::RetryableStatus)
        } else {
            Some(ErrorClass::Permanent)
        }
    }

    /// `permanent`, `retryable-status`, `service-error`, `panic` or
    /// `cancelled`.
    pub const fn as_str(self) -> &'static str {
        match self {
            ErrorClass::Permanent => "permanent",
            ErrorClass::RetryableStatus => "retryable-status",
            ErrorClass::ServiceError => "service-error",
            ErrorClass::Panic => "panic",
            ErrorClass::Cancelled => "cancelled",
        }
    }

    /// Whether a failure of this class is retried.
    pub fn is_retryable(self) -> bool {
        !matches!(self, ErrorClass::Permanent)
    }
}

impl fmt::Display for ErrorClass {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn res(status: u16, refusal: bool) -> Response<()> {
        let mut r = Response::new(());
        *r.status_mut() = StatusCode::from_u16(status).unwrap();
        if refusal {
            r.extensions_mut()
                .insert(Refusal::new("jwt", "expired", ""));
        }
        r
    }

    #[test]
    fn classification_follows_the_runtime_policy() {
        assert_eq!(Outcome::of_response(&res(200, false)), Outcome::Ok);
        assert_eq!(Outcome::of_response(&res(204, false)), Outcome::Ok);
        assert_eq!(Outcome::of_response(&res(401, true)), Outcome::Refused);
        assert_eq!(Outcome::of_response(&res(503, true)), Outcome::Refused);
        assert_eq!(Outcome::of_response(&res(400, false)), Outcome::Failed);
        assert_eq!(Outcome::of_response(&res(404, false)), Outcome::Failed);
        assert_eq!(Outcome::of_response(&res(408, false)), Outcome::Retryable);
        assert_eq!(Outcome::of_response(&res(429, false)), Outcome::Retryable);
        assert_eq!(Outcome::of_response(&res(500, false)), Outcome::Retryable);
        let err: Result<Response<()>, ()> = Err(());
        assert_eq!(Outcome::of_result(&err), Outcome::Retryable);
        let labels: Vec<&str> = Outcome::ALL.iter().map(|o| o.as_str()).collect();
        assert_eq!(labels, ["ok", "refused", "failed", "retryable"]);
    }

    #[test]
    fn error_classes_by_status_and_their_names() {
        assert_eq!(ErrorClass::of_status(StatusCode::OK), None);
        assert_eq!(
            ErrorClass::of_status(StatusCode::UNPROCESSABLE_ENTITY),
            Some(ErrorClass::Permanent)
        );
        assert_eq!(
            ErrorClass::of_status(StatusCode::REQUEST_TIMEOUT),
            Some(ErrorClass::RetryableStatus)
        );
        assert_eq!(
            ErrorClass::of_status(StatusCode::BAD_GATEWAY),
            Some(ErrorClass::RetryableStatus)
        );
        assert_eq!(ErrorClass::ServiceError.to_string(), "service-error");
        assert!(!ErrorClass::Permanent.is_retryable());
        assert!(ErrorClass::Panic.is_retryable());
    }
}
