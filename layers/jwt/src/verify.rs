//! The verification itself: from a request to [`Outcome`] or [`Rejection`].

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use http::header::AUTHORIZATION;
use http::Request;
use jsonwebtoken::errors::ErrorKind;
use kafka_tower::mapping::topic_of;
use kafka_tower::RecordMeta;
use serde::Deserialize;
use serde_json::Value;

use crate::algorithm::Algorithm;
use crate::cache::TokenCache;
use crate::claims::{scopes_of, ClaimNames, ClaimsInner, Fingerprint, VerifiedClaims};
use crate::keystore::KeyStore;
use crate::policy::{ExpiryMode, TopicPolicy};
use crate::reason::Reason;

pub(crate) enum Outcome {
    Verified(VerifiedClaims),
    Anonymous,
}

/// A refusal before it becomes a response.
#[derive(Debug)]
pub(crate) struct Rejection {
    pub(crate) reason: Reason,
    pub(crate) detail: String,
    /// The key set is being refreshed: answer 503 so the record is retried.
    pub(crate) retryable: bool,
    pub(crate) fingerprint: Option<Fingerprint>,
}

impl Rejection {
    fn new(reason: Reason, detail: impl Into<String>) -> Self {
        Rejection {
            reason,
            detail: detail.into(),
            retryable: false,
            fingerprint: None,
        }
    }
}

pub(crate) struct Verifier {
    pub(crate) keys: KeyStore,
    pub(crate) cache: TokenCache,
    /// One `jsonwebtoken::Validation` per algorithm, built once.
    pub(crate) validations: Vec<(Algorithm, jsonwebtoken::Validation)>,
    pub(crate) required_claims: Vec<String>,
    pub(crate) require_exp: bool,
    pub(crate) leeway: u64,
    pub(crate) max_token_len: usize,
    pub(crate) claim_names: ClaimNames,
    pub(crate) topics: HashMap<Box<str>, TopicPolicy, foldhash::fast::RandomState>,
    pub(crate) default_policy: TopicPolicy,
    /// A token whose `kid` matches no key may be tried against the keys
    /// configured without a `kid` (off by default).
    pub(crate) unknown_kid_tries_kidless_keys: bool,
}

pub(crate) fn validation_for(
    alg: Algorithm,
    issuers: &[String],
    audiences: &[String],
) -> jsonwebtoken::Validation {
    let mut v = jsonwebtoken::Validation::new(alg.to_jwt());
    // Time is judged by `check_time`, per topic; the cache must not depend
    // on it.
    v.validate_exp = false;
    v.validate_nbf = false;
    v.leeway = 0;
    v.required_spec_claims = HashSet::new();
    if !issuers.is_empty() {
        v.set_issuer(issuers);
        v.required_spec_claims.insert("iss".into());
    }
    if !audiences.is_empty() {
        v.set_audience(audiences);
        v.required_spec_claims.insert("aud".into());
    }
    v.validate_aud = true;
    v
}

pub(crate) fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

#[derive(Deserialize)]
struct JoseHeader {
    alg: String,
    #[serde(default)]
    kid: Option<String>,
    #[serde(default)]
    crit: Option<Value>,
}

impl Verifier {
    pub(crate) fn policy(&self, topic: &str) -> &TopicPolicy {
        self.topics.get(topic).unwrap_or(&self.default_policy)
    }

    /// Verifies the request's bearer token against the topic's policy.
    pub(crate) fn check<B>(&self, req: &Request<B>) -> Result<Outcome, Rejection> {
        let policy = self.policy(topic_of(req));
        let mut values = req.headers().get_all(AUTHORIZATION).iter();
        let Some(value) = values.next() else {
            return if policy.anonymous {
                Ok(Outcome::Anonymous)
            } else {
                Err(Rejection::new(Reason::Missing, "no Authorization header"))
            };
        };
        if values.next().is_some() {
            return Err(Rejection::new(
                Reason::Malformed,
                "several Authorization headers",
            ));
        }
        let value = value.as_bytes();
        if value.len() > self.max_token_len {
            return Err(Rejection::new(
                Reason::Oversized,
                format!(
                    "Authorization header of {} bytes exceeds the limit of {} bytes",
                    value.len(),
                    self.max_token_len
                ),
            ));
        }
        let token = bearer_token(value)
            .ok_or_else(|| Rejection::new(Reason::Malformed, "not a Bearer token"))?;

        let now = now_secs();
        let generation = self.keys.generation();
        let claims = match self.cache.get(token, generation) {
            Some(claims) => claims,
            None => {
                let claims = self.verify_token(token).map_err(|mut r| {
                    r.fingerprint = Some(Fingerprint::of(token));
                    r
                })?;
                self.cache.insert(token, claims.clone(), generation, now);
                claims
            }
        };
        let meta = req.extensions().get::<RecordMeta>();
        self.check_time(&claims, policy.expiry, meta, now)
            .and_then(|()| check_scopes(&claims, policy))
            .map_err(|mut r| {
                r.fingerprint = Some(claims.0.fingerprint);
                r
            })?;
        Ok(Outcome::Verified(claims))
    }

    /// Signature, algorithm, key, issuer, audience and claim shapes: all
    /// that does not depend on time or topic.
    pub(crate) fn verify_token(&self, token: &[u8]) -> Result<VerifiedClaims, Rejection> {
        let malformed = |d: &str| Rejection::new(Reason::Malformed, d);
        let mut parts = token.split(|&b| b == b'.');
        let (Some(header), Some(_), Some(_), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(malformed("a JWS has three dot-separated parts"));
        };
        let header = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(header)
            .map_err(|_| malformed("the header is not base64url"))?;
        let header: JoseHeader = serde_json::from_slice(&header)
            .map_err(|_| malformed("the header is not a JSON object with an alg"))?;
        let Some(alg) = Algorithm::from_name(&header.alg) else {
            let detail = if header.alg.eq_ignore_ascii_case("none") {
                "alg none is never accepted".to_owned()
            } else {
                format!("alg {:.16} is not supported", header.alg)
            };
            return Err(Rejection::new(Reason::UnsupportedAlgorithm, detail));
        };
        if header.crit.is_some() {
            return Err(malformed("critical header parameters are not supported"));
        }

        let snapshot = self.keys.snapshot();
        let by_kid: Vec<_> = match header.kid.as_deref() {
            Some(kid) => {
                let exact: Vec<_> = snapshot
                    .keys
                    .iter()
                    .filter(|k| k.kid.as_deref() == Some(kid))
                    .collect();
                if exact.is_empty() && self.unknown_kid_tries_kidless_keys {
                    snapshot.keys.iter().filter(|k| k.kid.is_none()).collect()
                } else {
                    exact
                }
            }
            None => snapshot.keys.iter().collect(),
        };
        if by_kid.is_empty() {
            let mut r = Rejection::new(
                Reason::UnknownKey,
                format!("no key has kid {:.64}", header.kid.as_deref().unwrap_or("")),
            );
            r.retryable = self.keys.on_unknown_kid();
            return Err(r);
        }
        let candidates: Vec<_> = by_kid
            .into_iter()
            .filter(|k| k.algorithms.contains(&alg))
            .collect();
        if candidates.is_empty() {
            return Err(Rejection::new(
                Reason::UnsupportedAlgorithm,
                format!("alg {alg} is not configured for the selected key"),
            ));
        }
        let validation = &self
            .validations
            .iter()
            .find(|(a, _)| *a == alg)
            .expect("a validation for every algorithm")
            .1;
        let mut result = Err(Rejection::new(
            Reason::BadSignature,
            "signature does not verify",
        ));
        let mut used = None;
        for key in candidates {
            match jsonwebtoken::decode::<Value>(token, &key.key, validation) {
                Ok(data) => {
                    used = Some(key);
                    result = Ok(data.claims);
                    break;
                }
                Err(e) => match e.kind() {
                    ErrorKind::InvalidSignature
                    | ErrorKind::InvalidEcdsaKey
                    | ErrorKind::InvalidEddsaKey
                    | ErrorKind::InvalidRsaKey(_) => continue,
                    other => return Err(map_jwt_error(other)),
                },
            }
        }
        let raw = result?;
        let key = used.expect("set on success");
        if !raw.is_object() {
            return Err(malformed("the claims are not a JSON object"));
        }
        let exp = numeric_claim(&raw, "exp")?;
        let nbf = numeric_claim(&raw, "nbf")?;
        if self.require_exp && exp.is_none() {
            return Err(malformed("required claim exp is missing"));
        }
        for name in &self.required_claims {
            if raw.get(name).is_none_or(Value::is_null) {
                return Err(Rejection::new(
                    Reason::Malformed,
                    format!("required claim {name:.64} is missing"),
                ));
            }
        }
        let str_claim = |n: &str| raw.get(n).and_then(Value::as_str).map(Into::into);
        let subject: Option<Box<str>> = str_claim("sub");
        let client_id = ClaimNames::first_str(&self.claim_names.client_id, &raw);
        let service_id = ClaimNames::first_str(&self.claim_names.service_id, &raw);
        let caller = kafka_tower::Caller::new(
            subject.as_deref(),
            client_id.as_deref(),
            service_id.as_deref(),
        );
        let inner = ClaimsInner {
            subject,
            client_id,
            service_id,
            caller,
            issuer: str_claim("iss"),
            scopes: scopes_of(&raw),
            expires_at: exp,
            not_before: nbf,
            algorithm: alg,
            kid: key.kid.clone(),
            fingerprint: Fingerprint::of(token),
            raw,
        };
        Ok(VerifiedClaims(Arc::new(inner)))
    }

    pub(crate) fn check_time(
        &self,
        claims: &VerifiedClaims,
        mode: ExpiryMode,
        meta: Option<&RecordMeta>,
        now: u64,
    ) -> Result<(), Rejection> {
        let leeway = self.leeway;
        let (exp, nbf) = (claims.0.expires_at, claims.0.not_before);
        // Queue-aware modes only for records.
        let mode = if meta.is_some() {
            mode
        } else {
            ExpiryMode::Strict
        };
        let strict = |grace: u64| -> Result<(), Rejection> {
            if let Some(exp) = exp {
                if now > exp.saturating_add(leeway).saturating_add(grace) {
                    return Err(Rejection::new(
                        Reason::Expired,
                        if grace == 0 {
                            format!("token expired {} s ago", now - exp)
                        } else {
                            format!(
                                "token expired {} s ago, beyond the grace of {grace} s",
                                now - exp
                            )
                        },
                    ));
                }
            }
            check_nbf(nbf, now, leeway)
        };
        match mode {
            ExpiryMode::Strict => strict(0),
            ExpiryMode::Grace(g) => strict(g.as_secs()),
            ExpiryMode::Skip => Ok(()),
            ExpiryMode::RecordTimestamp { max_age } => {
                let ts = meta.and_then(RecordMeta::timestamp).filter(|&t| t >= 0);
                let Some(ts) = ts else { return strict(0) };
                let ts = (ts as u64 / 1000).min(now);
                let age = now - ts;
                if age > max_age.as_secs() {
                    return Err(Rejection::new(
                        Reason::Expired,
                        format!(
                            "record is {age} s old, beyond the maximum age of {} s",
                            max_age.as_secs()
                        ),
                    ));
                }
                if let Some(exp) = exp {
                    if ts > exp.saturating_add(leeway) {
                        return Err(Rejection::new(
                            Reason::Expired,
                            format!(
                                "token expired {} s before the record was produced",
                                ts - exp
                            ),
                        ));
                    }
                }
                check_nbf(nbf, ts, leeway)
            }
        }
    }
}

fn check_nbf(nbf: Option<u64>, at: u64, leeway: u64) -> Result<(), Rejection> {
    match nbf {
        Some(nbf) if nbf > at.saturating_add(leeway) => Err(Rejection::new(
            Reason::NotYetValid,
            format!("token not valid for another {} s", nbf - at),
        )),
        _ => Ok(()),
    }
}

fn check_scopes(claims: &VerifiedClaims, policy: &TopicPolicy) -> Result<(), Rejection> {
    match policy.scopes.iter().find(|s| !claims.has_scope(s)) {
        None => Ok(()),
        Some(missing) => Err(Rejection::new(
            Reason::InsufficientScope,
            format!("scope {missing} required"),
        )),
    }
}

/// The token of `Bearer <token>` (scheme case-insensitive, RFC 7235).
#[inline]
pub(crate) fn bearer_token(value: &[u8]) -> Option<&[u8]> {
    if value.len() < 7 || !value[..7].eq_ignore_ascii_case(b"bearer ") {
        return None;
    }
    let token = value[7..].trim_ascii();
    (!token.is_empty()).then_some(token)
}

fn numeric_claim(raw: &Value, name: &str) -> Result<Option<u64>, Rejection> {
    match raw.get(name) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Number(n)) => {
            if let Some(v) = n.as_u64() {
                Ok(Some(v))
            } else if let Some(f) = n.as_f64().filter(|f| f.is_finite() && *f >= 0.0) {
                Ok(Some(f as u64))
            } else {
                Err(Rejection::new(
                    Reason::Malformed,
                    format!("claim {name} is not a valid NumericDate"),
                ))
            }
        }
        Some(_) => Err(Rejection::new(
            Reason::Malformed,
            format!("claim {name} is not a number"),
        )),
    }
}

fn map_jwt_error(kind: &ErrorKind) -> Rejection {
    match kind {
        ErrorKind::InvalidIssuer => Rejection::new(Reason::WrongIssuer, "issuer not accepted"),
        ErrorKind::InvalidAudience => {
            Rejection::new(Reason::WrongAudience, "audience not accepted")
        }
        ErrorKind::MissingRequiredClaim(c) if c == "iss" => {
            Rejection::new(Reason::WrongIssuer, "the token has no iss")
        }
        ErrorKind::MissingRequiredClaim(c) if c == "aud" => {
            Rejection::new(Reason::WrongAudience, "the token has no aud")
        }
        ErrorKind::InvalidAlgorithm | ErrorKind::UnsupportedAlgorithm => Rejection::new(
            Reason::UnsupportedAlgorithm,
            "algorithm not accepted for this key",
        ),
        ErrorKind::InvalidClaimFormat(c) => Rejection::new(
            Reason::Malformed,
            format!("claim {c:.16} has an invalid format"),
        ),
        ErrorKind::Base64(_) => Rejection::new(Reason::Malformed, "a part is not base64url"),
        ErrorKind::Json(_) | ErrorKind::Utf8(_) => {
            Rejection::new(Reason::Malformed, "the claims are not valid JSON")
        }
        _ => Rejection::new(Reason::Malformed, "not a valid JWS"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bearer_scheme_is_case_insensitive_and_trimmed() {
        assert_eq!(bearer_token(b"Bearer abc"), Some(&b"abc"[..]));
        assert_eq!(bearer_token(b"bEaReR  abc "), Some(&b"abc"[..]));
        assert_eq!(bearer_token(b"Basic abc"), None);
        assert_eq!(bearer_token(b"Bearer   "), None);
    }

    #[test]
    fn topic_is_meta_topic_or_first_path_segment() {
        let r = Request::builder().uri("/orders/7?x=1").body(()).unwrap();
        assert_eq!(topic_of(&r), "orders");
        let mut r = Request::builder().uri("/whatever").body(()).unwrap();
        r.extensions_mut().insert(RecordMeta::new("payments", 0, 1));
        assert_eq!(topic_of(&r), "payments");
    }
}
