//! [`Outcome`]: what became of one call, as the metrics count it.

use http::Response;
use kafka_tower::Refusal;

/// The outcome of one call of the service, the `outcome` label.
///
/// On a consumer it tells what the runtime does next: `ok` commits,
/// `retryable` retries (or dead-letters once the attempts are used up),
/// `failed` and `refused` dead-letter at once (unless the refusing layer
/// answered a retryable status).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Outcome {
    /// A `2xx` response.
    Ok,
    /// A response carrying a [`Refusal`] extension: a layer (JWT, schema, …)
    /// refused the request.
    Refused,
    /// Any other status that is not retryable (typically `4xx`).
    Failed,
    /// `408`, `429`, `5xx`, or an `Err` from the service.
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
        } else if is_retryable(status) {
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

    /// The label value: `ok`, `refused`, `failed` or `retryable`.
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Ok => "ok",
            Outcome::Refused => "refused",
            Outcome::Failed => "failed",
            Outcome::Retryable => "retryable",
        }
    }

    pub(crate) fn index(self) -> usize {
        self as usize
    }
}

/// The statuses the consumer runtime retries: `408`, `429`, `5xx`.
pub(crate) use kafka_tower::refusal::is_retryable_status as is_retryable;

#[cfg(test)]
mod tests {
    use super::*;
    use http::StatusCode;

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
    }
}
