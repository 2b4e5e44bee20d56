//! [`JwtLayer`] and its [`JwtLayerBuilder`].

use std::fmt;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::header::{CONTENT_TYPE, RETRY_AFTER, WWW_AUTHENTICATE};
use http::{HeaderValue, Response, StatusCode};
use kafka_tower::Refusal;
use tower_layer::Layer;

use crate::algorithm::Algorithm;
use crate::cache::TokenCache;
use crate::claims::ClaimNames;
use crate::key::{Jwks, VerificationKey};
use crate::keystore::KeyStore;
use crate::policy::{ExpiryMode, TopicPolicy};
use crate::reason::Reason;
use crate::service::Jwt;
use crate::verify::{validation_for, Rejection, Verifier};

/// The name this layer gives itself in a [`Refusal`].
pub const LAYER_NAME: &str = "jwt";

/// Applies [`Jwt`] to a service. Holds the whole, shared configuration;
/// cloning is an `Arc` clone, and every clone shares one verified-token
/// cache and one key set.
#[derive(Clone)]
pub struct JwtLayer {
    pub(crate) verifier: Arc<Verifier>,
}

impl fmt::Debug for JwtLayer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("JwtLayer")
            .field("keys", &self.verifier.keys.snapshot().keys.len())
            .field("topics", &self.verifier.topics.len())
            .finish_non_exhaustive()
    }
}

impl JwtLayer {
    /// Starts a configuration.
    pub fn builder() -> JwtLayerBuilder {
        JwtLayerBuilder::default()
    }
}

impl<S> Layer<S> for JwtLayer {
    type Service = Jwt<S>;

    fn layer(&self, inner: S) -> Jwt<S> {
        Jwt::new(inner, self.clone())
    }
}

/// A configuration that cannot work: no key, a key or JWKS file that
/// cannot be read, an invalid option. The message names the culprit.
#[derive(Debug)]
pub struct JwtConfigError {
    message: String,
}

impl fmt::Display for JwtConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for JwtConfigError {}

/// Builds a [`JwtLayer`]. See the configuration table in the [crate
/// docs](crate).
#[derive(Debug)]
pub struct JwtLayerBuilder {
    keys: Vec<VerificationKey>,
    jwks_files: Vec<PathBuf>,
    issuers: Vec<String>,
    audiences: Vec<String>,
    leeway: Duration,
    require_exp: bool,
    required_claims: Vec<String>,
    max_token_len: usize,
    cache_capacity: usize,
    claim_names: ClaimNames,
    default_policy: TopicPolicy,
    topics: Vec<(String, TopicPolicy)>,
    unknown_kid_tries_kidless_keys: bool,
    #[cfg(feature = "jwks-http")]
    pub(crate) remote: crate::jwks_http::RemoteConfig,
}

impl Default for JwtLayerBuilder {
    fn default() -> Self {
        JwtLayerBuilder {
            keys: Vec::new(),
            jwks_files: Vec::new(),
            issuers: Vec::new(),
            audiences: Vec::new(),
            leeway: Duration::from_secs(60),
            require_exp: true,
            required_claims: Vec::new(),
            max_token_len: 8 * 1024,
            cache_capacity: 10_000,
            claim_names: ClaimNames::default(),
            default_policy: TopicPolicy::default(),
            topics: Vec::new(),
            unknown_kid_tries_kidless_keys: false,
            #[cfg(feature = "jwks-http")]
            remote: Default::default(),
        }
    }
}

impl JwtLayerBuilder {
    /// Whether a token whose `kid` matches no configured key may still be
    /// verified against the keys configured *without* a `kid` (default
    /// `false`: such a token is refused with `unknown_key`). Turn it on
    /// only while issuers start sending `kid`s that the configuration does
    /// not list yet; the signature is checked either way.
    pub fn unknown_kid_tries_kidless_keys(mut self, yes: bool) -> Self {
        self.unknown_kid_tries_kidless_keys = yes;
        self
    }

    /// Adds a verification key.
    pub fn key(mut self, key: VerificationKey) -> Self {
        self.keys.push(key);
        self
    }

    /// Adds every key of a JWKS document.
    pub fn jwks(mut self, jwks: Jwks) -> Self {
        self.keys.extend(jwks.into_keys());
        self
    }

    /// Adds every key of a JWKS file, read by [`build`](Self::build) (an
    /// unreadable or invalid file is a [`JwtConfigError`] naming it).
    pub fn jwks_file(mut self, path: impl Into<PathBuf>) -> Self {
        self.jwks_files.push(path.into());
        self
    }

    /// Accepts tokens whose `iss` is `issuer`. May be called several times.
    /// Once any issuer is set, `iss` is required (`wrong_issuer` otherwise).
    pub fn issuer(mut self, issuer: impl Into<String>) -> Self {
        self.issuers.push(issuer.into());
        self
    }

    /// Accepts tokens whose `aud` names `audience`. May be called several
    /// times. Once any audience is set, `aud` is required. With none set, a
    /// token that names an audience is refused (`wrong_audience`), as RFC
    /// 7519 §4.1.3 asks.
    pub fn audience(mut self, audience: impl Into<String>) -> Self {
        self.audiences.push(audience.into());
        self
    }

    /// Clock-skew allowance for `exp` and `nbf` (default 60 s).
    pub fn leeway(mut self, leeway: Duration) -> Self {
        self.leeway = leeway;
        self
    }

    /// Whether `exp` must be present (default `true`).
    pub fn require_exp(mut self, yes: bool) -> Self {
        self.require_exp = yes;
        self
    }

    /// Requires a claim to be present and not null (e.g. `"sub"`); a token
    /// without it is `malformed`.
    pub fn require_claim(mut self, name: impl Into<String>) -> Self {
        self.required_claims.push(name.into());
        self
    }

    /// The longest `Authorization` header accepted, in bytes (default
    /// 8 KiB). A longer one is refused as `oversized` before any parsing.
    pub fn max_token_len(mut self, bytes: usize) -> Self {
        self.max_token_len = bytes;
        self
    }

    /// How many verified tokens to remember (default 10 000; 0 disables the
    /// cache).
    pub fn cache_capacity(mut self, entries: usize) -> Self {
        self.cache_capacity = entries;
        self
    }

    /// Which claims name the client and the calling service.
    pub fn claim_names(mut self, names: ClaimNames) -> Self {
        self.claim_names = names;
        self
    }

    /// The policy of topics and routes without their own (default: strict
    /// expiry, token required, no scope).
    pub fn default_policy(mut self, policy: TopicPolicy) -> Self {
        self.default_policy = policy;
        self
    }

    /// The policy of one topic (a record's [`kafka_tower::RecordMeta::topic`],
    /// or an HTTP route's first path segment).
    pub fn topic(mut self, topic: impl Into<String>, policy: TopicPolicy) -> Self {
        self.topics.push((topic.into(), policy));
        self
    }

    /// Checks the configuration and builds the layer. With `jwks-http` URLs
    /// configured, it must be called within a Tokio runtime: it spawns the
    /// task that fetches and refreshes them.
    pub fn build(self) -> Result<JwtLayer, JwtConfigError> {
        let err = |message: String| JwtConfigError { message };
        if jsonwebtoken::crypto::CryptoProvider::try_get_default().is_none() {
            // Another crate enabled a second jsonwebtoken backend; pick ours.
            let _ = jsonwebtoken::crypto::rust_crypto::DEFAULT_PROVIDER.install_default();
        }
        let mut keys = self.keys;
        for path in &self.jwks_files {
            let jwks = Jwks::from_file(path).map_err(|e| err(e.to_string()))?;
            keys.extend(jwks.into_keys());
        }
        #[cfg(feature = "jwks-http")]
        let has_remote = !self.remote.urls.is_empty();
        #[cfg(not(feature = "jwks-http"))]
        let has_remote = false;
        if keys.is_empty() && !has_remote {
            return Err(err("no verification key configured".into()));
        }
        let leeway = self.leeway.as_secs();
        let mut retention = Some(leeway);
        let all_policies = std::iter::once(("(default)", &self.default_policy))
            .chain(self.topics.iter().map(|(t, p)| (t.as_str(), p)));
        for (topic, policy) in all_policies {
            let extra = match policy.expiry {
                ExpiryMode::Strict => Some(0),
                ExpiryMode::Grace(g) => Some(g.as_secs()),
                ExpiryMode::RecordTimestamp { max_age } => Some(max_age.as_secs()),
                ExpiryMode::Skip => {
                    tracing::warn!(
                        target: "kafka_tower_jwt",
                        topic,
                        "token expiry is NOT checked for this topic (ExpiryMode::Skip)"
                    );
                    None
                }
            };
            retention = match (retention, extra) {
                (Some(r), Some(e)) => Some(r.max(leeway + e)),
                _ => None,
            };
        }
        let validations = Algorithm::ALL
            .into_iter()
            .map(|a| (a, validation_for(a, &self.issuers, &self.audiences)))
            .collect();
        #[allow(unused_mut)]
        let mut store = KeyStore::new(keys);
        #[cfg(feature = "jwks-http")]
        let pending_remote = if has_remote {
            let (remote, task) = crate::jwks_http::Remote::new(self.remote).map_err(err)?;
            store.remote = Some(remote);
            Some(task)
        } else {
            None
        };
        let verifier = Arc::new(Verifier {
            keys: store,
            cache: TokenCache::new(self.cache_capacity, retention),
            validations,
            required_claims: self.required_claims,
            require_exp: self.require_exp,
            leeway,
            max_token_len: self.max_token_len,
            claim_names: self.claim_names,
            topics: self
                .topics
                .into_iter()
                .map(|(t, p)| (t.into_boxed_str(), p))
                .collect(),
            default_policy: self.default_policy,
            unknown_kid_tries_kidless_keys: self.unknown_kid_tries_kidless_keys,
        });
        #[cfg(feature = "jwks-http")]
        if let Some(task) = pending_remote {
            task.spawn(Arc::downgrade(&verifier)).map_err(err)?;
        }
        Ok(JwtLayer { verifier })
    }
}

#[derive(serde::Serialize)]
struct RefusalJson<'a> {
    layer: &'a str,
    reason: &'a str,
    detail: &'a str,
}

pub(crate) fn refusal_response(rejection: &Rejection, topic: &str) -> Response<Bytes> {
    let reason = rejection.reason;
    let fingerprint = rejection.fingerprint.as_ref().map(|f| f.as_str());
    tracing::debug!(
        target: "kafka_tower_jwt",
        reason = reason.code(),
        topic,
        token = fingerprint.unwrap_or("-"),
        retryable = rejection.retryable,
        detail = %rejection.detail,
        "request refused"
    );
    let body = serde_json::to_vec(&RefusalJson {
        layer: LAYER_NAME,
        reason: reason.code(),
        detail: &rejection.detail,
    })
    .unwrap_or_default();
    let mut res = Response::new(Bytes::from(body));
    let status = if rejection.retryable {
        StatusCode::SERVICE_UNAVAILABLE
    } else {
        reason.status()
    };
    *res.status_mut() = status;
    let h = res.headers_mut();
    h.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    if rejection.retryable {
        h.insert(RETRY_AFTER, HeaderValue::from_static("1"));
    }
    let challenge = match reason {
        Reason::Missing => "Bearer",
        Reason::InsufficientScope => "Bearer error=\"insufficient_scope\"",
        _ => "Bearer error=\"invalid_token\"",
    };
    h.insert(WWW_AUTHENTICATE, HeaderValue::from_static(challenge));
    res.extensions_mut().insert(Refusal::new(
        LAYER_NAME,
        reason.code(),
        rejection.detail.clone(),
    ));
    res.extensions_mut().insert(reason);
    res
}
