//! [`Reason`]: why the layer refused a request, as a stable code.

use std::fmt;

use http::StatusCode;

/// Why [`Jwt`](crate::Jwt) refused a request. The [`Reason::code`] is what
/// goes into the [`kafka_tower::Refusal`] and the JSON body, so dead-letter
/// records and dashboards can group by it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Reason {
    /// No `Authorization` header, and the topic does not allow anonymous
    /// requests.
    Missing,
    /// The header is not `Bearer <jwt>`, or the token is not a well-formed
    /// JWS (three base64url parts, JSON header and claims, numeric times),
    /// or a required claim is absent, or it carries a `crit` header.
    Malformed,
    /// The signature does not verify with the selected key.
    BadSignature,
    /// `exp` has passed, judged by the topic's [`ExpiryMode`](crate::ExpiryMode).
    Expired,
    /// `nbf` is still in the future.
    NotYetValid,
    /// `iss` is absent or not one of the configured issuers.
    WrongIssuer,
    /// `aud` is absent or names none of the configured audiences, or the
    /// token names an audience and none is configured.
    WrongAudience,
    /// No configured key has the token's `kid`.
    UnknownKey,
    /// The token lacks a scope the topic requires. Answered with `403`.
    InsufficientScope,
    /// The `Authorization` header is longer than the configured limit; the
    /// token was not parsed.
    Oversized,
    /// The token's `alg` is `none`, unknown, or not one of the algorithms
    /// configured for the key.
    UnsupportedAlgorithm,
}

impl Reason {
    /// The machine-readable code, e.g. `"bad_signature"`.
    pub fn code(self) -> &'static str {
        match self {
            Reason::Missing => "missing",
            Reason::Malformed => "malformed",
            Reason::BadSignature => "bad_signature",
            Reason::Expired => "expired",
            Reason::NotYetValid => "not_yet_valid",
            Reason::WrongIssuer => "wrong_issuer",
            Reason::WrongAudience => "wrong_audience",
            Reason::UnknownKey => "unknown_key",
            Reason::InsufficientScope => "insufficient_scope",
            Reason::Oversized => "oversized",
            Reason::UnsupportedAlgorithm => "unsupported_algorithm",
        }
    }

    /// The status of the refusal: `403 Forbidden` for
    /// [`Reason::InsufficientScope`] (the caller is known but not allowed),
    /// `401 Unauthorized` otherwise. Both are permanent failures for the
    /// kafka-tower runtime, which dead-letters the record.
    pub fn status(self) -> StatusCode {
        match self {
            Reason::InsufficientScope => StatusCode::FORBIDDEN,
            _ => StatusCode::UNAUTHORIZED,
        }
    }
}

impl fmt::Display for Reason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.code())
    }
}
