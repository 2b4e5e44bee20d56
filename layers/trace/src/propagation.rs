//! See [`Propagation`].

use std::fmt;
use std::sync::Arc;

use http::{HeaderMap, HeaderName, HeaderValue};
use opentelemetry::propagation::{
    Extractor, Injector, TextMapCompositePropagator, TextMapPropagator,
};
use opentelemetry::trace::{SpanContext, SpanId, TraceContextExt, TraceFlags, TraceId, TraceState};
use opentelemetry::Context;
use opentelemetry_sdk::propagation::{BaggagePropagator, TraceContextPropagator};

/// [`Propagation`]: which headers carry the trace context, through
/// OpenTelemetry's propagator API — W3C `traceparent` / `tracestate` and
/// `baggage` by default, Jaeger (`uber-trace-id`) or B3 on request.
///
/// The Jaeger and B3 propagators are implemented here against the
/// `opentelemetry` 0.33 `TextMapPropagator` trait, because the upstream
/// crates lag a release behind and would bring a second `opentelemetry`
/// into the build.
///
/// ```
/// use kafka_tower_trace::Propagation;
/// use opentelemetry::propagation::TextMapPropagator;
///
/// let mut headers = http::HeaderMap::new();
/// headers.insert("b3", "80f198ee56343ba864fe8b2a57d3eff7-e457b5a2e4d86bd1-1".parse().unwrap());
/// let cx = Propagation::b3().extract(&headers);
/// use opentelemetry::trace::TraceContextExt;
/// assert_eq!(cx.span().span_context().trace_id().to_string(), "80f198ee56343ba864fe8b2a57d3eff7");
/// ```
///
/// The propagator a layer uses to read and write the trace context.
/// Cheap to clone.
#[derive(Clone)]
pub struct Propagation {
    inner: Arc<dyn TextMapPropagator + Send + Sync>,
    fields: Arc<[HeaderName]>,
}

impl fmt::Debug for Propagation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Propagation")
            .field("fields", &self.fields)
            .finish()
    }
}

impl Default for Propagation {
    fn default() -> Self {
        Propagation::w3c()
    }
}

impl Propagation {
    /// W3C Trace Context (`traceparent`, `tracestate`) and W3C Baggage.
    pub fn w3c() -> Self {
        Propagation::custom(TextMapCompositePropagator::new(vec![
            Box::new(TraceContextPropagator::new()),
            Box::new(BaggagePropagator::new()),
        ]))
    }

    /// Jaeger's `uber-trace-id` (and `uberctx-*` is not carried).
    pub fn jaeger() -> Self {
        Propagation::custom(JaegerPropagator::new())
    }

    /// B3: reads the single `b3` header or the `X-B3-*` headers, writes the
    /// single `b3` header.
    pub fn b3() -> Self {
        Propagation::custom(B3Propagator::new())
    }

    /// Any OpenTelemetry propagator (a composite one included).
    pub fn custom(p: impl TextMapPropagator + Send + Sync + 'static) -> Self {
        let fields = p
            .fields()
            .filter_map(|f| HeaderName::from_bytes(f.as_bytes()).ok())
            .collect();
        Propagation {
            inner: Arc::new(p),
            fields,
        }
    }

    /// The header names this propagator writes.
    pub fn fields(&self) -> &[HeaderName] {
        &self.fields
    }

    /// The context carried by `headers` (empty when none is).
    pub fn extract(&self, headers: &HeaderMap) -> Context {
        self.inner
            .extract_with_context(&Context::new(), &HeaderExtractor(headers))
    }

    /// Writes `cx` into `headers`, replacing what this propagator owns.
    pub fn inject(&self, cx: &Context, headers: &mut HeaderMap) {
        for f in self.fields.iter() {
            headers.remove(f);
        }
        self.inner.inject_context(cx, &mut HeaderInjector(headers));
    }
}

/// Reads an [`http::HeaderMap`] for a propagator.
pub(crate) struct HeaderExtractor<'a>(pub(crate) &'a HeaderMap);

impl Extractor for HeaderExtractor<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).and_then(|v| v.to_str().ok())
    }
    fn keys(&self) -> Vec<&str> {
        self.0.keys().map(HeaderName::as_str).collect()
    }
}

/// Writes an [`http::HeaderMap`] for a propagator.
pub(crate) struct HeaderInjector<'a>(pub(crate) &'a mut HeaderMap);

impl Injector for HeaderInjector<'_> {
    fn set(&mut self, key: &str, value: String) {
        if let (Ok(k), Ok(v)) = (
            HeaderName::from_bytes(key.as_bytes()),
            HeaderValue::from_str(&value),
        ) {
            self.0.insert(k, v);
        }
    }
}

fn remote(trace_id: TraceId, span_id: SpanId, sampled: bool) -> Option<SpanContext> {
    if trace_id == TraceId::INVALID || span_id == SpanId::INVALID {
        return None;
    }
    let flags = if sampled {
        TraceFlags::SAMPLED
    } else {
        TraceFlags::default()
    };
    Some(SpanContext::new(
        trace_id,
        span_id,
        flags,
        true,
        TraceState::default(),
    ))
}

/// Parses a trace id of 16 or 32 hex digits (shorter ones are left-padded).
fn trace_id(s: &str) -> Option<TraceId> {
    if s.is_empty() || s.len() > 32 {
        return None;
    }
    u128::from_str_radix(s, 16).ok().map(TraceId::from)
}

fn span_id(s: &str) -> Option<SpanId> {
    if s.is_empty() || s.len() > 16 {
        return None;
    }
    u64::from_str_radix(s, 16).ok().map(SpanId::from)
}

/// Jaeger's `uber-trace-id: {trace-id}:{span-id}:{parent-span-id}:{flags}`.
#[derive(Debug)]
pub struct JaegerPropagator {
    fields: [String; 1],
}

impl JaegerPropagator {
    /// The header `uber-trace-id`.
    pub fn new() -> Self {
        JaegerPropagator {
            fields: ["uber-trace-id".to_owned()],
        }
    }
}

impl Default for JaegerPropagator {
    fn default() -> Self {
        Self::new()
    }
}

impl TextMapPropagator for JaegerPropagator {
    fn inject_context(&self, cx: &Context, injector: &mut dyn Injector) {
        let span = cx.span();
        let sc = span.span_context();
        if sc.is_valid() {
            let flags = if sc.is_sampled() { 1 } else { 0 };
            injector.set(
                "uber-trace-id",
                format!("{}:{}:0:{flags}", sc.trace_id(), sc.span_id()),
            );
        }
    }

    fn extract_with_context(&self, cx: &Context, extractor: &dyn Extractor) -> Context {
        let parsed = extractor.get("uber-trace-id").and_then(|v| {
            let v = v.replace("%3A", ":").replace("%3a", ":");
            let parts: Vec<&str> = v.split(':').collect();
            if parts.len() != 4 {
                return None;
            }
            let flags = u8::from_str_radix(parts[3], 16).ok()?;
            remote(trace_id(parts[0])?, span_id(parts[1])?, flags & 1 == 1)
        });
        match parsed {
            Some(sc) => cx.with_remote_span_context(sc),
            None => cx.clone(),
        }
    }

    fn fields(&self) -> opentelemetry::propagation::text_map_propagator::FieldIter<'_> {
        opentelemetry::propagation::text_map_propagator::FieldIter::new(&self.fields)
    }
}

/// B3 (Zipkin): extracts the single `b3` header or the multi-header
/// `X-B3-TraceId` / `X-B3-SpanId` / `X-B3-Sampled` form; injects `b3`.
#[derive(Debug)]
pub struct B3Propagator {
    fields: [String; 4],
}

impl B3Propagator {
    /// Reads both encodings, writes the single header.
    pub fn new() -> Self {
        B3Propagator {
            fields: [
                "b3".to_owned(),
                "x-b3-traceid".to_owned(),
                "x-b3-spanid".to_owned(),
                "x-b3-sampled".to_owned(),
            ],
        }
    }
}

impl Default for B3Propagator {
    fn default() -> Self {
        Self::new()
    }
}

impl TextMapPropagator for B3Propagator {
    fn inject_context(&self, cx: &Context, injector: &mut dyn Injector) {
        let span = cx.span();
        let sc = span.span_context();
        if sc.is_valid() {
            let flags = if sc.is_sampled() { 1 } else { 0 };
            injector.set("b3", format!("{}-{}-{flags}", sc.trace_id(), sc.span_id()));
        }
    }

    fn extract_with_context(&self, cx: &Context, extractor: &dyn Extractor) -> Context {
        let single = extractor.get("b3").and_then(|v| {
            let parts: Vec<&str> = v.split('-').collect();
            if parts.len() < 2 {
                return None;
            }
            let sampled = parts.get(2).is_none_or(|s| *s == "1" || *s == "d");
            remote(trace_id(parts[0])?, span_id(parts[1])?, sampled)
        });
        let multi = || {
            let sampled = extractor
                .get("x-b3-sampled")
                .is_none_or(|s| s == "1" || s.eq_ignore_ascii_case("true"))
                || extractor.get("x-b3-flags") == Some("1");
            remote(
                trace_id(extractor.get("x-b3-traceid")?)?,
                span_id(extractor.get("x-b3-spanid")?)?,
                sampled,
            )
        };
        match single.or_else(multi) {
            Some(sc) => cx.with_remote_span_context(sc),
            None => cx.clone(),
        }
    }

    fn fields(&self) -> opentelemetry::propagation::text_map_propagator::FieldIter<'_> {
        opentelemetry::propagation::text_map_propagator::FieldIter::new(&self.fields)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        pairs
            .iter()
            .map(|(k, v)| (HeaderName::from_static(k), HeaderValue::from_static(v)))
            .collect()
    }

    fn ids(cx: &Context) -> (String, String, bool) {
        let span = cx.span();
        let sc = span.span_context();
        (
            sc.trace_id().to_string(),
            sc.span_id().to_string(),
            sc.is_sampled(),
        )
    }

    #[test]
    fn w3c_round_trips_traceparent_and_baggage() {
        let h = headers(&[
            (
                "traceparent",
                "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            ),
            ("baggage", "tenant=acme"),
        ]);
        let cx = Propagation::w3c().extract(&h);
        assert_eq!(
            ids(&cx),
            (
                "4bf92f3577b34da6a3ce929d0e0e4736".into(),
                "00f067aa0ba902b7".into(),
                true
            )
        );
        let mut out = HeaderMap::new();
        Propagation::w3c().inject(&cx, &mut out);
        assert_eq!(
            out["traceparent"],
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
        );
        assert_eq!(out["baggage"], "tenant=acme");
    }

    #[test]
    fn jaeger_reads_and_writes_uber_trace_id() {
        let h = headers(&[(
            "uber-trace-id",
            "4bf92f3577b34da6a3ce929d0e0e4736:00f067aa0ba902b7:0:1",
        )]);
        let cx = Propagation::jaeger().extract(&h);
        assert_eq!(ids(&cx).0, "4bf92f3577b34da6a3ce929d0e0e4736");
        let mut out = HeaderMap::new();
        Propagation::jaeger().inject(&cx, &mut out);
        assert_eq!(
            out["uber-trace-id"],
            "4bf92f3577b34da6a3ce929d0e0e4736:00f067aa0ba902b7:0:1"
        );
        // A 64-bit trace id is left-padded.
        let short = headers(&[("uber-trace-id", "a3ce929d0e0e4736:00f067aa0ba902b7:0:0")]);
        let cx = Propagation::jaeger().extract(&short);
        assert_eq!(
            ids(&cx),
            (
                "0000000000000000a3ce929d0e0e4736".into(),
                "00f067aa0ba902b7".into(),
                false
            )
        );
    }

    #[test]
    fn b3_reads_single_and_multi_headers() {
        let single = headers(&[("b3", "4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-0")]);
        assert_eq!(
            ids(&Propagation::b3().extract(&single)),
            (
                "4bf92f3577b34da6a3ce929d0e0e4736".into(),
                "00f067aa0ba902b7".into(),
                false
            )
        );
        let multi = headers(&[
            ("x-b3-traceid", "4bf92f3577b34da6a3ce929d0e0e4736"),
            ("x-b3-spanid", "00f067aa0ba902b7"),
            ("x-b3-sampled", "1"),
        ]);
        let cx = Propagation::b3().extract(&multi);
        assert!(ids(&cx).2);
        let mut out = HeaderMap::new();
        Propagation::b3().inject(&cx, &mut out);
        assert_eq!(
            out["b3"],
            "4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-1"
        );
        // Garbage is no context.
        let bad = headers(&[("b3", "zz-yy")]);
        assert!(!Propagation::b3()
            .extract(&bad)
            .span()
            .span_context()
            .is_valid());
    }
}
