//! See [`VerifiedClaims`].

use std::fmt;
use std::sync::Arc;

use serde_json::Value;

use crate::algorithm::Algorithm;

/// What a verified token says about the caller: [`VerifiedClaims`], put in
/// the request extensions for handlers, metrics and audit; [`Anonymous`]
/// when a topic lets a request without token through; and [`ClaimNames`],
/// which claims name the client and the calling service.
///
/// ```
/// use kafka_tower_jwt::{Anonymous, VerifiedClaims};
///
/// fn who<B>(req: &http::Request<B>) -> String {
///     if let Some(c) = req.extensions().get::<VerifiedClaims>() {
///         format!("{} via {}", c.subject().unwrap_or("?"), c.client_id().unwrap_or("?"))
///     } else if req.extensions().get::<Anonymous>().is_some() {
///         "anonymous".to_owned()
///     } else {
///         unreachable!("the layer either verified, let through anonymous, or refused")
///     }
/// }
/// ```
///
/// The claims of a verified token. Cheap to clone (shared). Inserted in the
/// request extensions by [`Jwt`](crate::Jwt); in axum, extract it with
/// `Extension<VerifiedClaims>`.
#[derive(Clone)]
pub struct VerifiedClaims(pub(crate) Arc<ClaimsInner>);

pub(crate) struct ClaimsInner {
    pub(crate) subject: Option<Box<str>>,
    pub(crate) client_id: Option<Box<str>>,
    pub(crate) service_id: Option<Box<str>>,
    pub(crate) issuer: Option<Box<str>>,
    pub(crate) scopes: Box<[Box<str>]>,
    pub(crate) expires_at: Option<u64>,
    pub(crate) not_before: Option<u64>,
    pub(crate) algorithm: Algorithm,
    pub(crate) kid: Option<Arc<str>>,
    pub(crate) fingerprint: Fingerprint,
    pub(crate) raw: Value,
    pub(crate) caller: kafka_tower::Caller,
}

impl VerifiedClaims {
    /// The caller as the vocabulary's [`Caller`](kafka_tower::Caller), which
    /// the layer also inserts for metrics and audit.
    pub fn caller(&self) -> &kafka_tower::Caller {
        &self.0.caller
    }

    /// `sub`: the user or principal the token was issued for.
    pub fn subject(&self) -> Option<&str> {
        self.0.subject.as_deref()
    }

    /// The OAuth client the token was issued to (the first of
    /// [`ClaimNames`]' client-id claims present: `client_id`, `azp`, `cid`
    /// by default).
    pub fn client_id(&self) -> Option<&str> {
        self.0.client_id.as_deref()
    }

    /// The calling service (the first of [`ClaimNames`]' service-id claims
    /// present: `service_id`, then the RFC 8693 actor `act.sub`, by
    /// default).
    pub fn service_id(&self) -> Option<&str> {
        self.0.service_id.as_deref()
    }

    /// `iss`.
    pub fn issuer(&self) -> Option<&str> {
        self.0.issuer.as_deref()
    }

    /// The scopes, from `scope` (space-separated), `scp` or `scopes`
    /// (a string or an array of strings), in the token's order.
    pub fn scopes(&self) -> impl ExactSizeIterator<Item = &str> {
        self.0.scopes.iter().map(|s| &**s)
    }

    /// Whether the token has `scope`.
    pub fn has_scope(&self, scope: &str) -> bool {
        self.0.scopes.iter().any(|s| &**s == scope)
    }

    /// `exp`, seconds since the Unix epoch.
    pub fn expires_at(&self) -> Option<u64> {
        self.0.expires_at
    }

    /// `nbf`, seconds since the Unix epoch.
    pub fn not_before(&self) -> Option<u64> {
        self.0.not_before
    }

    /// The algorithm the signature was verified with.
    pub fn algorithm(&self) -> Algorithm {
        self.0.algorithm
    }

    /// The `kid` of the key that verified the token, when it has one.
    pub fn key_id(&self) -> Option<&str> {
        self.0.kid.as_deref()
    }

    /// A short fingerprint of the token: the first 8 hex digits of its
    /// SHA-256. Safe to log; the token itself never is.
    pub fn fingerprint(&self) -> &str {
        self.0.fingerprint.as_str()
    }

    /// Every claim, as sent.
    pub fn raw(&self) -> &Value {
        &self.0.raw
    }
}

impl fmt::Debug for VerifiedClaims {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("VerifiedClaims")
            .field("subject", &self.subject())
            .field("client_id", &self.client_id())
            .field("service_id", &self.service_id())
            .field("issuer", &self.issuer())
            .field("scopes", &self.0.scopes)
            .field("expires_at", &self.expires_at())
            .field("fingerprint", &self.fingerprint())
            .finish_non_exhaustive()
    }
}

/// Marks a request that carried no token and was let through because its
/// topic allows anonymous requests ([`TopicPolicy::allow_anonymous`](crate::TopicPolicy::allow_anonymous)).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Anonymous;

/// Which claims name the client and the calling service. A name that
/// starts with `/` is a JSON Pointer into the claims (`/act/sub`); any
/// other name is a top-level claim. The first claim present, holding a
/// string, wins.
#[derive(Debug, Clone)]
pub struct ClaimNames {
    pub(crate) client_id: Vec<String>,
    pub(crate) service_id: Vec<String>,
}

impl Default for ClaimNames {
    fn default() -> Self {
        ClaimNames {
            client_id: vec!["client_id".into(), "azp".into(), "cid".into()],
            service_id: vec!["service_id".into(), "/act/sub".into()],
        }
    }
}

impl ClaimNames {
    /// The defaults: client id from `client_id`, `azp`, `cid`; service id
    /// from `service_id`, `/act/sub`.
    pub fn new() -> Self {
        ClaimNames::default()
    }

    /// Replaces the claims the client id is read from.
    pub fn client_id<I, S>(mut self, names: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.client_id = names.into_iter().map(Into::into).collect();
        self
    }

    /// Replaces the claims the calling service's id is read from.
    pub fn service_id<I, S>(mut self, names: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.service_id = names.into_iter().map(Into::into).collect();
        self
    }

    pub(crate) fn first_str(names: &[String], claims: &Value) -> Option<Box<str>> {
        names.iter().find_map(|n| {
            let v = if n.starts_with('/') {
                claims.pointer(n)
            } else {
                claims.get(n)
            };
            v.and_then(Value::as_str).map(Into::into)
        })
    }
}

pub(crate) fn scopes_of(claims: &Value) -> Box<[Box<str>]> {
    for name in ["scope", "scp", "scopes"] {
        match claims.get(name) {
            Some(Value::String(s)) => return s.split_ascii_whitespace().map(Into::into).collect(),
            Some(Value::Array(a)) => {
                return a.iter().filter_map(Value::as_str).map(Into::into).collect()
            }
            _ => {}
        }
    }
    Box::new([])
}

/// The first 8 hex digits of a token's SHA-256.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) struct Fingerprint([u8; 8]);

impl Fingerprint {
    pub(crate) fn of(token: &[u8]) -> Self {
        use sha2::Digest;
        let digest = sha2::Sha256::digest(token);
        let mut out = [0u8; 8];
        const HEX: &[u8; 16] = b"0123456789abcdef";
        for (i, b) in digest[..4].iter().enumerate() {
            out[2 * i] = HEX[usize::from(b >> 4)];
            out[2 * i + 1] = HEX[usize::from(b & 0xf)];
        }
        Fingerprint(out)
    }

    pub(crate) fn as_str(&self) -> &str {
        // Only ASCII hex digits are ever stored.
        std::str::from_utf8(&self.0).unwrap_or("????????")
    }
}

impl fmt::Display for Fingerprint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl fmt::Debug for Fingerprint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn scopes_from_each_claim_shape() {
        assert_eq!(
            &*scopes_of(&json!({"scope": "a  b"})),
            &["a".into(), "b".into()] as &[Box<str>]
        );
        assert_eq!(
            &*scopes_of(&json!({"scp": ["x", 1, "y"]})),
            &["x".into(), "y".into()] as &[Box<str>]
        );
        assert!(scopes_of(&json!({"scp": 3})).is_empty());
    }

    #[test]
    fn claim_names_follow_pointers() {
        let c = json!({"act": {"sub": "billing"}, "azp": "web"});
        let n = ClaimNames::default();
        assert_eq!(
            ClaimNames::first_str(&n.service_id, &c).as_deref(),
            Some("billing")
        );
        assert_eq!(
            ClaimNames::first_str(&n.client_id, &c).as_deref(),
            Some("web")
        );
    }

    #[test]
    fn fingerprint_is_sha256_prefix() {
        // SHA-256("abc") = ba7816bf...
        assert_eq!(Fingerprint::of(b"abc").as_str(), "ba7816bf");
    }
}
