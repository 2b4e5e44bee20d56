"""Produces one record with a W3C traceparent from an OpenTelemetry span,
using confluent-kafka and the OpenTelemetry Python SDK; prints the trace id
and span id (hex) of the producer span."""
import sys

from confluent_kafka import Producer
from opentelemetry import trace
from opentelemetry.propagate import inject
from opentelemetry.sdk.trace import TracerProvider

bootstrap, topic = sys.argv[1], sys.argv[2]
trace.set_tracer_provider(TracerProvider())
tracer = trace.get_tracer("interop")
with tracer.start_as_current_span(f"send {topic}", kind=trace.SpanKind.PRODUCER) as span:
    carrier = {}
    inject(carrier)
    p = Producer({"bootstrap.servers": bootstrap})
    p.produce(topic, key=b"py-1", value=b'{"from":"python"}', headers=list(carrier.items()))
    assert p.flush(30) == 0, "record not delivered"
    ctx = span.get_span_context()
    print(f"{ctx.trace_id:032x} {ctx.span_id:016x}")
