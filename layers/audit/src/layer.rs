//! [`AuditLayer`] and its service [`Audit`]: one audit record per call.

use std::fmt;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Instant, SystemTime};

use bytes::Bytes;
use http::{HeaderName, HeaderValue, Method, Request, Response, StatusCode, Uri};
use kafka_tower::context::{CORRELATION_ID, TRACEABILITY_ID, TRACEPARENT};
use kafka_tower::outcome::ErrorClass;
use kafka_tower::{Caller, PropagatedContext, RecordMeta, Refusal};
use sha2::{Digest, Sha256};
use tower_layer::Layer;
use tower_service::Service;

use crate::auditor::{Auditor, Config, Shared};
use crate::caller::CallerSlot;
use crate::capture::{CapturePayload, NoPayload};
use crate::future::{AuditBody, ResponseFuture};
use crate::record::{error_class_of, hex, rfc3339_micros, AuditRecord, KeyMode, Outcome};

/// Applies [`Audit`]; made by [`Auditor::layer`]. Cheap to clone.
///
/// Place it *outside* the layers whose refusals it should see (an
/// authentication layer such as `kafka-tower-jwt`'s `JwtLayer`, a schema
/// layer): a refused call then still gets an audit record naming the
/// refusing layer. The caller's identity ([`Caller`]) is read from the
/// request as it reaches this layer or, when an authentication layer
/// inside establishes it, reported by an
/// [`AuditCallerLayer`](crate::AuditCallerLayer) placed inside that layer;
/// a refused call has none.
#[derive(Clone)]
pub struct AuditLayer<P = NoPayload> {
    auditor: Auditor,
    capture: P,
}

impl<P: fmt::Debug> fmt::Debug for AuditLayer<P> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AuditLayer")
            .field("auditor", &self.auditor)
            .field("capture", &self.capture)
            .finish()
    }
}

impl AuditLayer<NoPayload> {
    /// A layer auditing into `auditor` (an `Auditor` or a `&Auditor`),
    /// capturing no payload.
    pub fn new(auditor: impl Into<Auditor>) -> Self {
        AuditLayer {
            auditor: auditor.into(),
            capture: NoPayload,
        }
    }
}

impl<P> AuditLayer<P> {
    /// Captures payloads with `capture` (see [`CapturePayload`](crate::CapturePayload)).
    pub fn capture_payload<Q>(self, capture: Q) -> AuditLayer<Q> {
        AuditLayer {
            auditor: self.auditor,
            capture,
        }
    }
}

impl<S, P: Clone> Layer<S> for AuditLayer<P> {
    type Service = Audit<S, P>;
    fn layer(&self, inner: S) -> Audit<S, P> {
        Audit {
            inner,
            shared: self.auditor.shared.clone(),
            capture: self.capture.clone(),
        }
    }
}

/// Writes one [`AuditRecord`] per call of the inner service. See the
/// crate docs for where each field comes from.
///
/// The response body is wrapped in [`AuditBody`] so that a `must_audit`
/// failure can answer an empty `503`.
#[derive(Clone)]
pub struct Audit<S, P = NoPayload> {
    inner: S,
    shared: Arc<Shared>,
    capture: P,
}

impl<S: fmt::Debug, P: fmt::Debug> fmt::Debug for Audit<S, P> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Audit")
            .field("inner", &self.inner)
            .field("service_id", &self.shared.config.service_id)
            .field("capture", &self.capture)
            .finish()
    }
}

impl<S> Audit<S, NoPayload> {
    /// Wraps `inner`, auditing into `auditor` (an `Auditor` or a
    /// `&Auditor`).
    pub fn new(inner: S, auditor: impl Into<Auditor>) -> Self {
        AuditLayer::new(auditor).layer(inner)
    }
}

impl<S, P> Audit<S, P> {
    kafka_tower::define_inner_service_accessors!();
}

impl<S, P, B, ResBody> Service<Request<B>> for Audit<S, P>
where
    S: Service<Request<B>, Response = Response<ResBody>>,
    S::Error: fmt::Display,
    P: CapturePayload<B>,
{
    type Response = Response<AuditBody<ResBody>>;
    type Error = S::Error;
    type Future = ResponseFuture<S::Future, ResBody, S::Error>;

    #[inline]
    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: Request<B>) -> Self::Future {
        let mut draft = Draft::of_request(&req);
        draft.payload = self.capture.capture(&req);
        // No caller yet: an inner `AuditCallerLayer` may report one.
        if draft.caller.is_none() {
            let slot = CallerSlot::default();
            req.extensions_mut().insert(slot.clone());
            draft.caller_slot = Some(slot);
        }
        let pending = Pending {
            draft,
            start: Instant::now(),
        };
        ResponseFuture::new(self.inner.call(req), pending, self.shared.clone())
    }
}

/// What the request path keeps of a call: cheap clones (reference counts,
/// no copies) of what the record is made of. The writer thread turns it
/// into an [`AuditRecord`] ([`Draft::into_record`]), so formatting,
/// hashing, payload parsing and masking stay off the request path.
pub(crate) struct Draft {
    time: SystemTime,
    meta: Option<RecordMeta>,
    method: Option<Method>,
    uri: Option<Uri>,
    caller: Option<Caller>,
    caller_slot: Option<CallerSlot>,
    correlation_id: Option<HeaderValue>,
    traceability_id: Option<HeaderValue>,
    traceparent: Option<HeaderValue>,
    payload: Option<Bytes>,
    outcome: Outcome,
    status: Option<StatusCode>,
    latency_us: u64,
    error_class: Option<&'static str>,
    error: Option<String>,
    refusal: Option<Refusal>,
}

impl Draft {
    /// The request-side fields of a call.
    pub(crate) fn of_request<B>(req: &Request<B>) -> Draft {
        let ext = req.extensions();
        let meta = ext.get::<RecordMeta>().cloned();
        let (method, uri) = match meta {
            Some(_) => (None, None),
            None => (Some(req.method().clone()), Some(req.uri().clone())),
        };
        let ctx = ext
            .get::<PropagatedContext>()
            .map(PropagatedContext::headers);
        let headers = req.headers();
        let id = |name: &HeaderName| {
            ctx.and_then(|h| h.get(name))
                .or_else(|| headers.get(name))
                .cloned()
        };
        Draft {
            time: SystemTime::now(),
            meta,
            method,
            uri,
            caller: ext.get::<Caller>().cloned(),
            caller_slot: None,
            correlation_id: id(&CORRELATION_ID),
            traceability_id: id(&TRACEABILITY_ID),
            traceparent: id(&TRACEPARENT),
            payload: None,
            outcome: Outcome::Ok,
            status: None,
            latency_us: 0,
            error_class: None,
            error: None,
            refusal: None,
        }
    }

    /// The audit record, per `config`.
    pub(crate) fn into_record(self, config: &Config) -> AuditRecord {
        let mut r = AuditRecord::new(rfc3339_micros(self.time), config.service_id.clone());
        if let Some(meta) = &self.meta {
            r.topic = Some(meta.topic().to_owned());
            r.partition = Some(meta.partition());
            r.offset = Some(meta.offset());
            r.group = meta.group().map(str::to_owned);
            r.attempt = Some(meta.attempt());
            if let Some(key) = meta.key() {
                match config.key_mode {
                    KeyMode::Plain => {
                        r.key = Some(match std::str::from_utf8(key) {
                            Ok(s) => s.to_owned(),
                            Err(_) => format!("hex:{}", hex(key)),
                        })
                    }
                    KeyMode::Sha256 => r.key_sha256 = Some(hex(&Sha256::digest(key))),
                    KeyMode::Omit => {}
                }
            }
        }
        r.method = self.method.map(|m| m.as_str().to_owned());
        r.path = self.uri.map(|u| u.path().to_owned());
        let caller = self
            .caller
            .as_ref()
            .or_else(|| self.caller_slot.as_ref().and_then(|s| s.0.get()));
        if let Some(caller) = caller {
            r.subject = caller.subject().map(str::to_owned);
            r.client_id = caller.client_id().map(str::to_owned);
            r.calling_service = caller.service_id().map(str::to_owned);
        }
        let text =
            |v: &Option<HeaderValue>| v.as_ref().and_then(|v| v.to_str().ok()).map(str::to_owned);
        r.correlation_id = text(&self.correlation_id);
        r.traceability_id = text(&self.traceability_id);
        r.trace_id = self
            .traceparent
            .as_ref()
            .and_then(|v| v.to_str().ok())
            .and_then(trace_id_of)
            .map(str::to_owned);
        r.outcome = self.outcome;
        r.status = self.status.map(|s| s.as_u16());
        r.latency_us = self.latency_us;
        r.error_class = self.error_class.map(str::to_owned);
        r.error = self.error;
        if let Some(refusal) = &self.refusal {
            r.refused_by = Some(refusal.layer().to_owned());
            r.refusal_reason = Some(refusal.reason().to_owned());
            if !refusal.detail().is_empty() {
                r.refusal_detail = Some(truncate(refusal.detail().to_owned()));
            }
        }
        if let Some(bytes) = &self.payload {
            r.payload_size = Some(bytes.len());
            r.payload = config.payload.render(bytes);
        }
        r
    }
}

/// A call in flight.
pub(crate) struct Pending {
    draft: Draft,
    start: Instant,
}

impl Pending {
    /// The draft of a call that answered `res`.
    pub(crate) fn finish<B, E: fmt::Display>(mut self, res: &Result<Response<B>, E>) -> Draft {
        let d = &mut self.draft;
        d.latency_us = self.start.elapsed().as_micros() as u64;
        match res {
            Ok(res) => {
                d.status = Some(res.status());
                d.outcome = Outcome::of_response(res);
                d.error_class = error_class_of(res.status());
                d.refusal = res.extensions().get::<Refusal>().cloned();
            }
            Err(e) => {
                d.outcome = Outcome::Retryable;
                d.error_class = Some(ErrorClass::ServiceError.as_str());
                d.error = Some(truncate(e.to_string()));
            }
        }
        self.draft
    }

    /// The draft of a call that never answered: it panicked or was
    /// dropped (`class`).
    pub(crate) fn abandon(mut self, class: &'static str) -> Draft {
        self.draft.latency_us = self.start.elapsed().as_micros() as u64;
        self.draft.outcome = Outcome::Retryable;
        self.draft.error_class = Some(class);
        self.draft
    }
}

/// The longest `error` / `refusal_detail` kept, in bytes.
const MAX_MESSAGE: usize = 512;

fn truncate(mut s: String) -> String {
    if s.len() > MAX_MESSAGE {
        let mut end = MAX_MESSAGE;
        while !s.is_char_boundary(end) {
            end -= 1;
        }
        s.truncate(end);
    }
    s
}

/// The trace id of a W3C `traceparent` (`00-<32 hex>-<16 hex>-<2 hex>`),
/// unless it is invalid or all zeros.
pub(crate) fn trace_id_of(traceparent: &str) -> Option<&str> {
    let mut parts = traceparent.trim().split('-');
    let version = parts.next()?;
    let trace_id = parts.next()?;
    let span_id = parts.next()?;
    let valid_hex = |s: &str, n: usize| {
        s.len() == n && s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
    };
    (valid_hex(version, 2)
        && version != "ff"
        && valid_hex(trace_id, 32)
        && valid_hex(span_id, 16)
        && trace_id.bytes().any(|b| b != b'0'))
    .then_some(trace_id)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auditor::QueueFullPolicy;
    use crate::mask::PayloadPolicy;
    use kafka_tower::context::ContextConfig;
    use kafka_tower::RawHeaders;

    fn start_record<B>(req: &Request<B>, config: &Config) -> AuditRecord {
        Draft::of_request(req).into_record(config)
    }

    fn config(key_mode: KeyMode) -> Config {
        Config {
            service_id: "orders-service".into(),
            key_mode,
            must_audit: false,
            policy: QueueFullPolicy::Block,
            payload: PayloadPolicy {
                masks: vec!["/card".into()],
                max_bytes: 1024,
            },
        }
    }

    const TP: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

    fn record_request() -> Request<()> {
        let mut req = Request::post("/orders").body(()).unwrap();
        req.extensions_mut().insert(
            RecordMeta::new("orders", 2, 41)
                .with_key(Some(Bytes::from_static(b"order-7")))
                .with_group(Some("billing".into()))
                .with_attempt(3),
        );
        req.extensions_mut().insert(Caller::new(
            Some("user-1"),
            Some("web-shop"),
            Some("gateway"),
        ));
        let mut raw = RawHeaders::new();
        raw.push(kafka_tower::RawHeader::new("X-Correlation-Id", "corr-1"));
        raw.push(kafka_tower::RawHeader::new("x-traceability-id", "trace-9"));
        raw.push(kafka_tower::RawHeader::new("traceparent", TP));
        let ctx = PropagatedContext::from_raw_headers(&raw, &ContextConfig::new()).unwrap();
        req.extensions_mut().insert(ctx);
        req
    }

    #[test]
    fn a_record_request_fills_every_request_field() {
        let r = start_record(&record_request(), &config(KeyMode::Plain));
        assert_eq!(r.service_id, "orders-service");
        assert_eq!(r.topic.as_deref(), Some("orders"));
        assert_eq!(
            (r.partition, r.offset, r.attempt),
            (Some(2), Some(41), Some(3))
        );
        assert_eq!(r.group.as_deref(), Some("billing"));
        assert_eq!(r.key.as_deref(), Some("order-7"));
        assert_eq!(r.key_sha256, None);
        assert_eq!(r.subject.as_deref(), Some("user-1"));
        assert_eq!(r.client_id.as_deref(), Some("web-shop"));
        assert_eq!(r.calling_service.as_deref(), Some("gateway"));
        assert_eq!(r.correlation_id.as_deref(), Some("corr-1"));
        assert_eq!(r.traceability_id.as_deref(), Some("trace-9"));
        assert_eq!(
            r.trace_id.as_deref(),
            Some("4bf92f3577b34da6a3ce929d0e0e4736")
        );
        assert_eq!((&r.method, &r.path), (&None, &None));
        assert!(
            r.timestamp.ends_with('Z') && r.timestamp.len() == 27,
            "{}",
            r.timestamp
        );
    }

    #[test]
    fn keys_are_plain_hashed_or_omitted() {
        let req = record_request();
        let hashed = start_record(&req, &config(KeyMode::Sha256));
        assert_eq!(hashed.key, None);
        // sha256("order-7")
        assert_eq!(
            hashed.key_sha256.as_deref(),
            Some(hex(&Sha256::digest(b"order-7")).as_str())
        );
        assert_eq!(hashed.key_sha256.as_ref().unwrap().len(), 64);
        let omitted = start_record(&req, &config(KeyMode::Omit));
        assert_eq!((omitted.key, omitted.key_sha256), (None, None));

        let mut binary = Request::new(());
        binary
            .extensions_mut()
            .insert(RecordMeta::new("t", 0, 0).with_key(Some(Bytes::from_static(&[0xff, 0x01]))));
        let r = start_record(&binary, &config(KeyMode::Plain));
        assert_eq!(r.key.as_deref(), Some("hex:ff01"));
    }

    #[test]
    fn an_http_request_reads_ids_from_headers() {
        let req = Request::put("/accounts/7?x=1")
            .header("x-correlation-id", "c-2")
            .header("x-traceability-id", "t-2")
            .header("traceparent", TP)
            .body(())
            .unwrap();
        let r = start_record(&req, &config(KeyMode::Plain));
        assert_eq!(r.method.as_deref(), Some("PUT"));
        assert_eq!(r.path.as_deref(), Some("/accounts/7"));
        assert_eq!(r.correlation_id.as_deref(), Some("c-2"));
        assert_eq!(r.traceability_id.as_deref(), Some("t-2"));
        assert_eq!(
            r.trace_id.as_deref(),
            Some("4bf92f3577b34da6a3ce929d0e0e4736")
        );
        assert_eq!((&r.topic, r.partition, r.attempt), (&None, None, None));
        assert_eq!(r.stream(), "http");
    }

    #[test]
    fn invalid_traceparents_give_no_trace_id() {
        assert_eq!(trace_id_of(TP), Some("4bf92f3577b34da6a3ce929d0e0e4736"));
        for bad in [
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
            "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e473-00f067aa0ba902b7-01",
            "garbage",
        ] {
            assert_eq!(trace_id_of(bad), None, "{bad}");
        }
    }

    fn pending(payload: Option<&'static [u8]>) -> Pending {
        let mut draft = Draft::of_request(&record_request());
        draft.payload = payload.map(Bytes::from_static);
        Pending {
            draft,
            start: Instant::now(),
        }
    }

    #[test]
    fn responses_fill_outcome_status_refusal_and_payload() {
        let config = config(KeyMode::Plain);
        let mut res = Response::new(());
        *res.status_mut() = StatusCode::UNAUTHORIZED;
        res.extensions_mut()
            .insert(Refusal::new("jwt", "expired", "token expired 5 s ago"));
        let r = pending(Some(br#"{"card":"4111","amount":10}"#))
            .finish(&Ok::<_, String>(res))
            .into_record(&config);
        assert_eq!(r.outcome, Outcome::Refused);
        assert_eq!(r.status, Some(401));
        assert_eq!(r.error_class.as_deref(), Some("permanent"));
        assert_eq!(r.refused_by.as_deref(), Some("jwt"));
        assert_eq!(r.refusal_reason.as_deref(), Some("expired"));
        assert_eq!(r.refusal_detail.as_deref(), Some("token expired 5 s ago"));
        assert_eq!(r.payload_size, Some(27));
        assert_eq!(
            r.payload,
            Some(serde_json::json!({"card": "***", "amount": 10}))
        );

        let ok = pending(None)
            .finish(&Ok::<_, String>(Response::new(())))
            .into_record(&config);
        assert_eq!(
            (ok.outcome, ok.status, ok.error_class),
            (Outcome::Ok, Some(200), None)
        );
        assert_eq!((ok.payload_size, ok.payload), (None, None));

        let long = "é".repeat(400); // 800 bytes
        let err = pending(None)
            .finish(&Err::<Response<()>, _>(long))
            .into_record(&config);
        assert_eq!((err.outcome, err.status), (Outcome::Retryable, None));
        assert_eq!(err.error_class.as_deref(), Some("service-error"));
        assert_eq!(err.error.as_ref().unwrap().len(), 512);

        let gone = pending(None)
            .abandon(ErrorClass::Panic.as_str())
            .into_record(&config);
        assert_eq!(gone.outcome, Outcome::Retryable);
        assert_eq!(gone.error_class.as_deref(), Some("panic"));
    }
}
