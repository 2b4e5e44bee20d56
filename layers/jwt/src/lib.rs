//! JWT verification as a [Tower](https://docs.rs/tower) layer that fits
//! queues as well as HTTP routes.
//!
//! A producer passes its caller's token in the record's `Authorization`
//! header; [`JwtLayer`] verifies it before the service sees the record, puts
//! the caller's identity in the request extensions ([`VerifiedClaims`]), and
//! refuses anything else with a `401`/`403` whose [`kafka_tower::Refusal`]
//! (`layer = "jwt"`, a [`Reason`] code) tells the kafka-tower runtime to
//! dead-letter the record and says why. The same layer guards an axum
//! route.
//!
//! # A short tour
//!
//! * **Keys decide the algorithms.** Each [`VerificationKey`] (HMAC secret,
//!   RSA/EC/Ed25519 PEM or DER, or a [`Jwks`] entry) carries the
//!   [`Algorithm`]s it accepts; the token's `alg` header only has to be one
//!   of them. `alg: none` and algorithm confusion (an `HS256` token whose
//!   "secret" is the RSA public key) are refused with
//!   `unsupported_algorithm`. A token's `jku`, `x5u` and `jwk` headers are
//!   ignored; its `kid` only selects among configured keys. A token with
//!   a `kid` is tried only against the key with that `kid`: a `kid` no key
//!   has is refused with `unknown_key` (unless
//!   [`unknown_kid_tries_kidless_keys`](JwtLayerBuilder::unknown_kid_tries_kidless_keys)
//!   lets it try the keys configured without one); a token without a `kid`
//!   is tried against every key whose algorithms include its `alg`.
//! * **Queue-aware expiry per topic.** Records wait in topics; a token can
//!   expire meanwhile. Each topic picks an [`ExpiryMode`]: strict, a grace
//!   period, "valid when the record was produced" (bounded by a maximum
//!   record age), or — explicitly, logged once — no expiry check. HTTP
//!   requests are always strict. See [`TopicPolicy`].
//! * **Refusals, not errors.** A refused request never reaches the inner
//!   service; the response (body [`RefusalBody`]) carries
//!   `{"layer":"jwt","reason":"expired","detail":"…"}`, a `Refusal` and the
//!   [`Reason`] in its extensions. Reason codes: `missing`, `malformed`,
//!   `bad_signature`, `expired`, `not_yet_valid`, `wrong_issuer`,
//!   `wrong_audience`, `unknown_key`, `insufficient_scope` (403),
//!   `oversized`, `unsupported_algorithm`.
//! * **Verified once.** A bounded cache keyed by a hash of the token keeps
//!   the time-independent part of a verification (signature, issuer,
//!   audience, claims); `exp`/`nbf`, the topic's mode and its scopes are
//!   judged on every request. A token propagated along thousands of records
//!   costs one signature check.
//! * **Tokens are never logged**; logs and [`VerifiedClaims::fingerprint`]
//!   carry the first 8 hex digits of the token's SHA-256.
//!
//! ```
//! use std::convert::Infallible;
//! use std::time::Duration;
//! use http::{Request, Response, StatusCode};
//! use kafka_tower::{RecordBody, RecordMeta, Refusal};
//! use kafka_tower_jwt::{Algorithm, ExpiryMode, JwtLayer, TopicPolicy, VerificationKey, VerifiedClaims};
//! use tower::{service_fn, ServiceBuilder, ServiceExt};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let jwt = JwtLayer::builder()
//!     .key(VerificationKey::hmac(b"a-shared-secret-of-at-least-32-bytes", Algorithm::HS256)?)
//!     .issuer("https://idp.example.com")
//!     .topic(
//!         "orders",
//!         TopicPolicy::new()
//!             .expiry(ExpiryMode::RecordTimestamp { max_age: Duration::from_secs(86_400) })
//!             .require_scope("orders.w"),
//!     )
//!     .build()?;
//!
//! let service = ServiceBuilder::new().layer(jwt).service(service_fn(
//!     |req: Request<RecordBody>| async move {
//!         let caller = req.extensions().get::<VerifiedClaims>().and_then(|c| c.subject());
//!         Ok::<_, Infallible>(Response::new(format!("hello {caller:?}")))
//!     },
//! ));
//!
//! // A record without a token is refused, and the refusal says why.
//! let mut req = Request::post("/orders").body(RecordBody::from(bytes::Bytes::from_static(b"{}")))?;
//! req.extensions_mut().insert(RecordMeta::new("orders", 0, 42));
//! let res = service.oneshot(req).await?;
//! assert_eq!(res.status(), StatusCode::UNAUTHORIZED);
//! let refusal = res.extensions().get::<Refusal>().unwrap();
//! assert_eq!((refusal.layer(), refusal.reason()), ("jwt", "missing"));
//! # Ok(()) }
//! ```
//!
//! # Configuration
//!
//! | builder method | default | meaning |
//! |---|---|---|
//! | [`key`](JwtLayerBuilder::key) | — | a [`VerificationKey`]; at least one key or JWKS source is required |
//! | [`jwks`](JwtLayerBuilder::jwks) / [`jwks_file`](JwtLayerBuilder::jwks_file) | — | the signature keys of a JWKS document / file |
//! | `jwks_url` (feature `jwks-http`) | — | fetch a JWKS over HTTP(S); refreshed every `jwks_refresh_interval` (5 min) and on an unknown `kid`, at most every `jwks_min_refresh_interval` (30 s) |
//! | [`unknown_kid_tries_kidless_keys`](JwtLayerBuilder::unknown_kid_tries_kidless_keys) | `false` | a `kid` no key has may try the keys without a `kid` |
//! | [`issuer`](JwtLayerBuilder::issuer) | any | accepted `iss` values; once set, `iss` is required |
//! | [`audience`](JwtLayerBuilder::audience) | none | accepted `aud` values; once set, `aud` is required; with none, tokens naming an audience are refused |
//! | [`leeway`](JwtLayerBuilder::leeway) | 60 s | clock skew allowed on `exp` and `nbf` |
//! | [`require_exp`](JwtLayerBuilder::require_exp) | `true` | tokens without `exp` are `malformed` |
//! | [`require_claim`](JwtLayerBuilder::require_claim) | — | further claims that must be present |
//! | [`max_token_len`](JwtLayerBuilder::max_token_len) | 8 KiB | longer `Authorization` headers are `oversized`, refused before parsing |
//! | [`cache_capacity`](JwtLayerBuilder::cache_capacity) | 10 000 | verified tokens remembered (0 disables) |
//! | [`claim_names`](JwtLayerBuilder::claim_names) | `client_id`/`azp`/`cid`; `service_id`/`act.sub` | where client and calling-service ids are read |
//! | [`default_policy`](JwtLayerBuilder::default_policy) | strict, token required | policy of topics and routes without their own |
//! | [`topic`](JwtLayerBuilder::topic) | — | a [`TopicPolicy`]: [`ExpiryMode`], anonymous allowed, required scopes |
//!
//! The topic of a request is [`kafka_tower::RecordMeta::topic`] when the
//! request is a record, else the first segment of its URI path.
//!
//! # Feature flags
//!
//! | feature | default | what it adds |
//! |---|---|---|
//! | `jwks-http` | no | JWKS over HTTP(S) with `reqwest` + rustls (*ring*), refreshed in a Tokio task |
//!
//! # Crypto backend
//!
//! jsonwebtoken 12 needs a crypto backend chosen at build time. This crate
//! enables `rust_crypto` (RustCrypto's `rsa`, `p256`, `p384`,
//! `ed25519-dalek`, `hmac`, `sha2`): pure Rust, so it builds without a C
//! toolchain or CMake, on every target, and keeps the layer light. The
//! layer only *verifies* signatures, with public keys (or HMAC secrets):
//! the timing side channel known in the `rsa` crate (RUSTSEC-2023-0071,
//! "Marvin") concerns private-key operations, which this crate never
//! performs. If another crate in the build also enables jsonwebtoken's
//! `aws_lc_rs`, [`JwtLayerBuilder::build`] installs the RustCrypto provider
//! as the process default rather than letting decoding panic.
//!
//! # Performance
//!
//! `cargo bench -p kafka-tower-jwt` (criterion, `benches/verify.rs`), one
//! whole `Jwt::call` per iteration, measured on a 2-core CI-class VM:
//!
//! | path | time |
//! |---|---|
//! | cold verify HS256 | ≈ 2.4 µs |
//! | cold verify EdDSA | ≈ 36 µs |
//! | cold verify PS256 / RS256 (2048-bit) | ≈ 58 / 65 µs |
//! | cold verify ES256 | ≈ 165 µs |
//! | cache hit (any algorithm), per record | ≈ 0.4 µs |

#![cfg_attr(docsrs, feature(doc_cfg))]

mod algorithm;
mod claims;
pub mod future;
mod key;
mod layer;
mod policy;
mod reason;
mod service;

mod cache;
#[cfg(feature = "jwks-http")]
pub mod jwks_http;
mod keystore;
mod verify;

pub use algorithm::Algorithm;
pub use claims::{Anonymous, ClaimNames, VerifiedClaims};

pub use kafka_tower::refusal::RefusalBody;
pub use key::{Jwks, KeyError, VerificationKey};
pub use layer::{JwtConfigError, JwtLayer, JwtLayerBuilder, LAYER_NAME};

/// The former name of [`JwtConfigError`].
#[deprecated(note = "renamed `JwtConfigError`, after the crate's other `<Thing>Error`s")]
pub type ConfigError = JwtConfigError;
pub use policy::{ExpiryMode, TopicPolicy};
pub use reason::Reason;
pub use service::Jwt;
