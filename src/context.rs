//! [`PropagatedContext`]: the caller's identity and trace, carried across
//! every synchronous and asynchronous hop.
//!
//! The context is the set of cross-cutting headers — `Authorization`,
//! `X-Correlation-Id`, `X-Traceability-Id`, `traceparent`, `tracestate`,
//! `baggage`, plus names you configure. It is
//!
//! * **captured** from an inbound HTTP request by [`CaptureContextLayer`], and
//!   from each inbound record by the consumer runtime;
//! * **kept** in the request extensions *and* in a tokio task-local, so code
//!   deep inside a handler reaches it with [`PropagatedContext::current`];
//! * **injected** into outgoing record headers and outgoing HTTP requests by
//!   [`InjectContextLayer`] — explicit headers set by the caller win unless
//!   [`InjectMode::Overwrite`] is chosen.
//!
//! A correlation id is generated (UUID v4) when the first hop has none, then
//! kept unchanged; a traceability id is only passed through, never invented.
//!
//! Task-locals do not cross `tokio::spawn`: a spawned task starts without a
//! context. Wrap the spawned future with [`PropagatedContext::in_current`]
//! to carry it over.
//!
//! ```
//! use kafka_tower::context::{CaptureContextLayer, InjectContextLayer, PropagatedContext};
//! use tower::{service_fn, Layer, ServiceExt};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() {
//! // An "outgoing" client: a service that shows the headers it would send.
//! let client = InjectContextLayer::new().layer(service_fn(|req: http::Request<()>| async move {
//!     Ok::<_, std::convert::Infallible>(req.headers().clone())
//! }));
//! // An inbound handler that calls the client without threading anything by hand.
//! let handler = CaptureContextLayer::new().layer(service_fn(move |_req: http::Request<()>| {
//!     let client = client.clone();
//!     async move {
//!         let sent = client.oneshot(http::Request::new(())).await.unwrap();
//!         Ok::<_, std::convert::Infallible>(http::Response::new(sent))
//!     }
//! }));
//! let inbound = http::Request::builder()
//!     .header("x-traceability-id", "trace-42")
//!     .body(())
//!     .unwrap();
//! let sent = handler.oneshot(inbound).await.unwrap().into_body();
//! assert_eq!(sent["x-traceability-id"], "trace-42");
//! assert!(sent.contains_key("x-correlation-id")); // generated at the first hop
//! # }
//! ```

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, OnceLock};
use std::task::{Context, Poll};

use bytes::Bytes;
use http::header::{HeaderMap, HeaderName, HeaderValue, AUTHORIZATION};
use http::{Request, Response, StatusCode};
use pin_project_lite::pin_project;
use tower_layer::Layer;
use tower_service::Service;

use crate::record::{RawHeader, RawHeaders};
use crate::refusal::Refusal;

/// `x-correlation-id`: one id for everything one business request causes.
pub const CORRELATION_ID: HeaderName = HeaderName::from_static("x-correlation-id");
/// `x-traceability-id`: an id set by the origin for end-to-end audit.
pub const TRACEABILITY_ID: HeaderName = HeaderName::from_static("x-traceability-id");
/// W3C Trace Context `traceparent`.
pub const TRACEPARENT: HeaderName = HeaderName::from_static("traceparent");
/// W3C Trace Context `tracestate`.
pub const TRACESTATE: HeaderName = HeaderName::from_static("tracestate");
/// W3C `baggage`.
pub const BAGGAGE: HeaderName = HeaderName::from_static("baggage");

/// The header names propagated by default.
pub const DEFAULT_HEADERS: [HeaderName; 6] = [
    AUTHORIZATION,
    CORRELATION_ID,
    TRACEABILITY_ID,
    TRACEPARENT,
    TRACESTATE,
    BAGGAGE,
];

tokio::task_local! {
    static CURRENT: PropagatedContext;
}

/// Which headers form the context and whether to generate a correlation id.
#[derive(Debug, Clone)]
pub struct ContextConfig {
    names: Vec<HeaderName>,
    /// Bit `n` is set when a name is `n` bytes long (names of 63 bytes or
    /// more set bit 63): most headers of a record are not propagated, and
    /// this rules them out without comparing names.
    lengths: u64,
    generate_correlation_id: bool,
}

impl Default for ContextConfig {
    fn default() -> Self {
        let mut config = ContextConfig {
            names: Vec::new(),
            lengths: 0,
            generate_correlation_id: true,
        };
        for name in DEFAULT_HEADERS {
            config = config.with_header(name);
        }
        config
    }
}

impl ContextConfig {
    /// The default headers, correlation id generated when missing.
    pub fn new() -> Self {
        Self::default()
    }

    /// Also propagates `name` (e.g. `x-tenant-id`).
    pub fn with_header(mut self, name: HeaderName) -> Self {
        if !self.names.contains(&name) {
            self.lengths |= length_bit(name.as_str().len());
            self.names.push(name);
        }
        self
    }

    /// Whether to generate a correlation id when the inbound hop has none
    /// (default `true`).
    pub fn generate_correlation_id(mut self, yes: bool) -> Self {
        self.generate_correlation_id = yes;
        self
    }

    /// Whether a missing correlation id is generated.
    pub fn generates_correlation_id(&self) -> bool {
        self.generate_correlation_id
    }

    /// The propagated header names.
    pub fn names(&self) -> &[HeaderName] {
        &self.names
    }

    fn is_propagated(&self, key: &[u8]) -> Option<&HeaderName> {
        if self.lengths & length_bit(key.len()) == 0 {
            return None;
        }
        self.names
            .iter()
            .find(|n| n.as_str().as_bytes().eq_ignore_ascii_case(key))
    }
}

/// The bit of [`ContextConfig::lengths`] for a name of `len` bytes.
fn length_bit(len: usize) -> u64 {
    1 << len.min(63)
}

/// A header of the context whose value HTTP cannot carry (CR, LF, NUL or
/// other control bytes). Refused, never altered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InvalidContextHeader {
    name: String,
}

impl InvalidContextHeader {
    /// The offending header name.
    pub fn name(&self) -> &str {
        &self.name
    }
}

impl fmt::Display for InvalidContextHeader {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "context header `{}` has a value HTTP forbids (CR, LF, NUL or another control byte); refused, not altered",
            self.name
        )
    }
}

impl std::error::Error for InvalidContextHeader {}

/// How [`PropagatedContext::inject`] treats headers already on the
/// outgoing message.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum InjectMode {
    /// Headers the caller set explicitly win (default).
    #[default]
    KeepExisting,
    /// The context's values replace the caller's.
    Overwrite,
}

/// The propagated headers of one request. See the [module docs](self).
///
/// `Debug` never shows the `Authorization` value.
#[derive(Clone, Default)]
pub struct PropagatedContext {
    // Shared: the context is cloned into extensions and task-local scopes
    // on every hop; a clone is a reference-count bump, a change copies.
    //
    // A context captured from a record keeps the record's (shared) headers
    // and which of them it holds; the map is built the first time someone
    // asks for a `HeaderValue` or the map itself. The string accessors
    // (`correlation_id`, `traceparent`, …) read the record's bytes, so the
    // runtime's per-record capture allocates nothing.
    map: OnceLock<Arc<HeaderMap>>,
    record: Option<Captured>,
}

/// The propagated headers of a record: bit `i` of `held` set when
/// `raw[i]` is one (its value validated at capture).
#[derive(Clone)]
struct Captured {
    raw: RawHeaders,
    held: u64,
}

impl Captured {
    /// Headers past this position are captured into a map at once.
    const POSITIONS: usize = u64::BITS as usize;

    fn headers(&self) -> impl Iterator<Item = &RawHeader> + '_ {
        let held = self.held;
        self.raw
            .iter()
            .take(Self::POSITIONS)
            .enumerate()
            .filter(move |(i, _)| held & (1 << i) != 0)
            .map(|(_, h)| h)
    }

    /// The first value of `name`, as [`HeaderValue::to_str`] would give it.
    fn str_of(&self, name: &HeaderName) -> Option<&str> {
        let key = name.as_str().as_bytes();
        let value = self.headers().find(|h| h.key.eq_ignore_ascii_case(key))?;
        let bytes = value.value.as_deref()?;
        if !is_visible_ascii(bytes) {
            return None;
        }
        std::str::from_utf8(bytes).ok()
    }

    fn to_map(&self) -> HeaderMap {
        let mut map = HeaderMap::new();
        for h in self.headers() {
            // Validated at capture: a propagated name is a configured (so
            // valid) name, and the value was checked.
            if let (Ok(name), Some(Ok(value))) = (
                HeaderName::from_bytes(&h.key),
                h.value.clone().map(HeaderValue::from_maybe_shared),
            ) {
                map.append(name, value);
            }
        }
        map
    }
}

impl PartialEq for PropagatedContext {
    fn eq(&self, other: &Self) -> bool {
        self.headers() == other.headers()
    }
}

impl Eq for PropagatedContext {}

impl fmt::Debug for PropagatedContext {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut m = f.debug_map();
        for (k, v) in self.headers().iter() {
            if k == AUTHORIZATION {
                m.entry(&k.as_str(), &"<redacted>");
            } else {
                m.entry(&k.as_str(), v);
            }
        }
        m.finish()
    }
}

/// Whether HTTP can carry `value` as a header value (what
/// [`HeaderValue::from_bytes`] accepts), checked without a copy.
fn is_valid_value(value: &[u8]) -> bool {
    // Branch-free over the whole value so that it vectorises: a JWT is
    // hundreds of bytes, and every record's context is checked.
    value.iter().fold(true, |ok, &b| {
        ok & ((b == b'\t') | ((b >= 32) & (b != 127)))
    })
}

/// Whether [`HeaderValue::to_str`] accepts `value` (visible ASCII and tab).
fn is_visible_ascii(value: &[u8]) -> bool {
    value
        .iter()
        .fold(true, |ok, &b| ok & ((b == b'\t') | (32..127).contains(&b)))
}

impl PropagatedContext {
    /// An empty context.
    pub fn new() -> Self {
        Self::default()
    }

    fn from_map(map: HeaderMap) -> Self {
        PropagatedContext {
            map: OnceLock::from(Arc::new(map)),
            record: None,
        }
    }

    /// The map, built now if the context still reads the record's headers.
    fn map(&self) -> &Arc<HeaderMap> {
        self.map.get_or_init(|| {
            Arc::new(
                self.record
                    .as_ref()
                    .map(Captured::to_map)
                    .unwrap_or_default(),
            )
        })
    }

    /// The map, to change: from then on the context is the map alone.
    fn map_mut(&mut self) -> &mut HeaderMap {
        self.map();
        self.record = None;
        Arc::make_mut(self.map.get_mut().expect("initialised just above"))
    }

    /// Captures the configured headers present in `headers`.
    pub fn from_headers(headers: &HeaderMap, config: &ContextConfig) -> Self {
        let mut map = HeaderMap::new();
        for name in &config.names {
            for v in headers.get_all(name) {
                map.append(name.clone(), v.clone());
            }
        }
        Self::from_map(map)
    }

    /// Captures the configured headers of a record. A propagated header whose
    /// value HTTP cannot carry is an error naming it.
    ///
    /// Nothing is copied: the context shares the record's header buffers.
    pub fn from_raw_headers(
        raw: &RawHeaders,
        config: &ContextConfig,
    ) -> Result<Self, InvalidContextHeader> {
        let mut held = 0u64;
        let mut beyond = false;
        for (i, h) in raw.iter().enumerate() {
            let Some(name) = config.is_propagated(&h.key) else {
                continue;
            };
            let Some(value) = &h.value else { continue };
            if !is_valid_value(value) {
                return Err(InvalidContextHeader {
                    name: name.as_str().to_owned(),
                });
            }
            if i < Captured::POSITIONS {
                held |= 1 << i;
            } else {
                beyond = true;
            }
        }
        if beyond {
            // Rare (a propagated header behind 64 others): build the map
            // now rather than widen every context.
            let mut map = HeaderMap::new();
            for h in raw.iter() {
                if let (Some(name), Some(value)) = (config.is_propagated(&h.key), &h.value) {
                    if let Ok(value) = HeaderValue::from_maybe_shared(value.clone()) {
                        map.append(name.clone(), value);
                    }
                }
            }
            return Ok(Self::from_map(map));
        }
        Ok(PropagatedContext {
            map: OnceLock::new(),
            record: Some(Captured {
                raw: raw.clone(),
                held,
            }),
        })
    }

    /// Sets `name` to `value`, refusing values HTTP forbids.
    pub fn insert(&mut self, name: HeaderName, value: &str) -> Result<(), InvalidContextHeader> {
        let value = HeaderValue::from_str(value).map_err(|_| InvalidContextHeader {
            name: name.as_str().to_owned(),
        })?;
        self.map_mut().insert(name, value);
        Ok(())
    }

    /// The value of `name`, if the context has it.
    pub fn get(&self, name: &HeaderName) -> Option<&HeaderValue> {
        self.map().get(name)
    }

    /// The context's headers.
    pub fn headers(&self) -> &HeaderMap {
        self.map()
    }

    /// Whether the context holds no header.
    pub fn is_empty(&self) -> bool {
        match (&self.record, self.map.get()) {
            (Some(c), None) => c.held == 0,
            _ => self.map().is_empty(),
        }
    }

    /// The first value of `name` as text (visible ASCII), read from the
    /// record's bytes while the map is not built.
    fn str_of(&self, name: &HeaderName) -> Option<&str> {
        match (&self.record, self.map.get()) {
            (Some(c), None) => c.str_of(name),
            (_, Some(map)) => map.get(name).and_then(|v| v.to_str().ok()),
            (None, None) => None,
        }
    }

    /// `X-Correlation-Id`, when present and visible ASCII.
    pub fn correlation_id(&self) -> Option<&str> {
        self.str_of(&CORRELATION_ID)
    }

    /// `X-Traceability-Id`, when present and visible ASCII.
    pub fn traceability_id(&self) -> Option<&str> {
        self.str_of(&TRACEABILITY_ID)
    }

    /// `traceparent`, when present.
    pub fn traceparent(&self) -> Option<&str> {
        self.str_of(&TRACEPARENT)
    }

    /// The `Authorization` header, when present. Never log it.
    pub fn authorization(&self) -> Option<&HeaderValue> {
        self.get(&AUTHORIZATION)
    }

    /// Generates a correlation id (UUID v4) if there is none; returns it.
    pub fn ensure_correlation_id(&mut self) -> &str {
        if self.correlation_id().is_none() {
            let id = uuid::Uuid::new_v4().hyphenated().to_string();
            self.map_mut().insert(
                CORRELATION_ID,
                HeaderValue::from_str(&id).expect("a UUID is a valid header value"),
            );
        }
        self.correlation_id().expect("just ensured")
    }

    /// Writes the context into `headers`.
    pub fn inject(&self, headers: &mut HeaderMap, mode: InjectMode) {
        let ctx = self.map();
        for name in ctx.keys() {
            if mode == InjectMode::KeepExisting && headers.contains_key(name) {
                continue;
            }
            headers.remove(name);
            for v in ctx.get_all(name) {
                headers.append(name.clone(), v.clone());
            }
        }
    }

    /// Writes the context into a record's raw headers.
    pub fn inject_raw(&self, raw: &mut RawHeaders, mode: InjectMode) {
        let ctx = self.map();
        let mut out: Vec<RawHeader> = Vec::with_capacity(raw.len() + ctx.len());
        let names: Vec<&HeaderName> = ctx.keys().collect();
        let existing = |n: &HeaderName| raw.contains_name_ignore_case(n.as_str().as_bytes());
        let skip: Vec<bool> = names
            .iter()
            .map(|n| mode == InjectMode::KeepExisting && existing(n))
            .collect();
        for h in raw.iter() {
            let replaced = mode == InjectMode::Overwrite
                && names
                    .iter()
                    .any(|n| h.key.eq_ignore_ascii_case(n.as_str().as_bytes()));
            if !replaced {
                out.push(h.clone());
            }
        }
        for (name, skip) in names.iter().zip(skip) {
            if skip {
                continue;
            }
            for v in ctx.get_all(*name) {
                out.push(RawHeader::new(
                    Bytes::copy_from_slice(name.as_str().as_bytes()),
                    Bytes::copy_from_slice(v.as_bytes()),
                ));
            }
        }
        *raw = out.into();
    }

    /// The context of the current task, if one is in scope.
    pub fn current() -> Option<PropagatedContext> {
        CURRENT.try_with(Clone::clone).ok()
    }

    /// Runs `fut` with this context as the task-local current context.
    pub fn scope<F: Future>(
        self,
        fut: F,
    ) -> tokio::task::futures::TaskLocalFuture<PropagatedContext, F> {
        CURRENT.scope(self, fut)
    }

    /// Wraps `fut` so that it runs with the *current* context, if any; use it
    /// for futures given to `tokio::spawn`.
    pub fn in_current<F: Future>(
        fut: F,
    ) -> tokio::task::futures::TaskLocalFuture<PropagatedContext, F> {
        CURRENT.scope(Self::current().unwrap_or_default(), fut)
    }
}

/// Captures the [`PropagatedContext`] of inbound requests: into the request
/// extensions and the task-local scope of the inner service's future. A
/// missing correlation id is generated and also set on the request.
///
/// A request built from a record whose propagated header HTTP cannot carry
/// is answered `400` with a [`Refusal`] (`context` / `invalid_header`), so
/// the consumer dead-letters it.
#[derive(Debug, Clone, Default)]
pub struct CaptureContextLayer {
    config: Arc<ContextConfig>,
}

impl CaptureContextLayer {
    /// Captures the default headers.
    pub fn new() -> Self {
        Self::default()
    }

    /// Captures per `config`.
    pub fn with_config(config: ContextConfig) -> Self {
        CaptureContextLayer {
            config: Arc::new(config),
        }
    }
}

impl<S> Layer<S> for CaptureContextLayer {
    type Service = CaptureContext<S>;
    fn layer(&self, inner: S) -> CaptureContext<S> {
        CaptureContext {
            inner,
            config: self.config.clone(),
        }
    }
}

/// The service of [`CaptureContextLayer`].
#[derive(Debug, Clone)]
pub struct CaptureContext<S> {
    inner: S,
    config: Arc<ContextConfig>,
}

impl<S> CaptureContext<S> {
    /// Wraps `inner` with the default configuration.
    pub fn new(inner: S) -> Self {
        CaptureContextLayer::new().layer(inner)
    }
    crate::define_inner_service_accessors!();
}

/// Captures the context of `req` (validating record headers), generating a
/// correlation id if configured; the request gets the id and the extension.
pub(crate) fn capture<B>(
    req: &mut Request<B>,
    config: &ContextConfig,
) -> Result<PropagatedContext, InvalidContextHeader> {
    let mut ctx = match req.extensions().get::<RawHeaders>() {
        Some(raw) => PropagatedContext::from_raw_headers(raw, config)?,
        None => PropagatedContext::from_headers(req.headers(), config),
    };
    if config.generate_correlation_id && ctx.correlation_id().is_none() {
        let id = ctx.ensure_correlation_id().to_owned();
        req.headers_mut()
            .insert(CORRELATION_ID, HeaderValue::from_str(&id).expect("UUID"));
    }
    req.extensions_mut().insert(ctx.clone());
    Ok(ctx)
}

impl<S, B, ResBody> Service<Request<B>> for CaptureContext<S>
where
    S: Service<Request<B>, Response = Response<ResBody>>,
    ResBody: Default,
{
    type Response = Response<ResBody>;
    type Error = S::Error;
    type Future = CaptureFuture<S::Future, ResBody>;

    #[inline]
    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: Request<B>) -> Self::Future {
        match capture(&mut req, &self.config) {
            Ok(ctx) => CaptureFuture {
                kind: Kind::Inner {
                    fut: ctx.scope(self.inner.call(req)),
                },
            },
            Err(bad) => {
                let mut res = Response::new(ResBody::default());
                *res.status_mut() = StatusCode::BAD_REQUEST;
                res.extensions_mut().insert(Refusal::new(
                    "context",
                    "invalid_header",
                    bad.to_string(),
                ));
                CaptureFuture {
                    kind: Kind::Refused { res: Some(res) },
                }
            }
        }
    }
}

pin_project! {
    /// The response future of [`CaptureContext`].
    pub struct CaptureFuture<F, ResBody> {
        #[pin]
        kind: Kind<F, ResBody>,
    }
}

pin_project! {
    #[project = KindProj]
    enum Kind<F, ResBody> {
        Inner { #[pin] fut: tokio::task::futures::TaskLocalFuture<PropagatedContext, F> },
        Refused { res: Option<Response<ResBody>> },
    }
}

impl<F, ResBody, E> Future for CaptureFuture<F, ResBody>
where
    F: Future<Output = Result<Response<ResBody>, E>>,
{
    type Output = Result<Response<ResBody>, E>;
    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.project().kind.project() {
            KindProj::Inner { fut } => fut.poll(cx),
            KindProj::Refused { res } => {
                Poll::Ready(Ok(res.take().expect("polled after completion")))
            }
        }
    }
}

/// Injects the current [`PropagatedContext`] — from the request extensions,
/// else the task-local scope — into outgoing requests: to the producer
/// service (record headers) or to an HTTP client.
#[derive(Debug, Clone, Copy, Default)]
pub struct InjectContextLayer {
    mode: InjectMode,
}

impl InjectContextLayer {
    /// Injects without overwriting headers the caller set.
    pub fn new() -> Self {
        Self::default()
    }

    /// Injects with the given mode.
    pub fn with_mode(mode: InjectMode) -> Self {
        InjectContextLayer { mode }
    }
}

impl<S> Layer<S> for InjectContextLayer {
    type Service = InjectContext<S>;
    fn layer(&self, inner: S) -> InjectContext<S> {
        InjectContext {
            inner,
            mode: self.mode,
        }
    }
}

/// The service of [`InjectContextLayer`].
#[derive(Debug, Clone)]
pub struct InjectContext<S> {
    inner: S,
    mode: InjectMode,
}

impl<S> InjectContext<S> {
    /// Wraps `inner`, keeping headers the caller set.
    pub fn new(inner: S) -> Self {
        InjectContextLayer::new().layer(inner)
    }
    crate::define_inner_service_accessors!();
}

impl<S, B> Service<Request<B>> for InjectContext<S>
where
    S: Service<Request<B>>,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = S::Future;

    #[inline]
    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: Request<B>) -> S::Future {
        let ctx = req
            .extensions()
            .get::<PropagatedContext>()
            .cloned()
            .or_else(PropagatedContext::current);
        if let Some(ctx) = ctx {
            ctx.inject(req.headers_mut(), self.mode);
            if self.mode == InjectMode::Overwrite {
                if let Some(raw) = req.extensions_mut().get_mut::<RawHeaders>() {
                    // The raw headers would win over the HeaderMap when the
                    // request becomes a record: let the context win instead.
                    let mut kept = RawHeaders::with_capacity(raw.len());
                    for h in raw.iter() {
                        if !ctx
                            .headers()
                            .keys()
                            .any(|n| h.key.eq_ignore_ascii_case(n.as_str().as_bytes()))
                        {
                            kept.push(h.clone());
                        }
                    }
                    *raw = kept;
                }
            }
        }
        self.inner.call(req)
    }
}
