"""OpenTelemetry, set up once per process, and trace context carried as W3C `traceparent`."""

from __future__ import annotations

import functools
import logging
from collections.abc import Iterator
from contextlib import contextmanager

from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import (
    BatchSpanProcessor,
    ConsoleSpanExporter,
    SimpleSpanProcessor,
    SpanExporter,
)
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

from infra.settings import Settings

_propagator = TraceContextTextMapPropagator()
_configured = False
log = logging.getLogger(__name__)


def configure_tracing(settings: Settings, component: str, exporter: SpanExporter | None = None) -> None:
    """Install the tracer provider once; `exporter` (e.g. an in-memory one in tests) wins over settings."""
    global _configured
    if _configured:
        return
    _configured = True
    if exporter is None and settings.otel_exporter == "none":
        # No provider: spans cost nothing and record nothing, and a caller's trace context still passes through
        # (a span started under a remote parent is that parent), into commands, events and the engines.
        return
    provider = TracerProvider(
        resource=Resource.create({"service.name": settings.otel_service_name, "loraplane.component": component})
    )
    if exporter is not None:
        provider.add_span_processor(SimpleSpanProcessor(exporter))
    elif settings.otel_exporter == "console":
        provider.add_span_processor(SimpleSpanProcessor(ConsoleSpanExporter()))
    elif settings.otel_exporter == "otlp":
        try:
            from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
        except ImportError:
            log.warning("LORAPLANE_OTEL_EXPORTER=otlp needs opentelemetry-exporter-otlp-proto-http; tracing off")
        else:
            endpoint = settings.otel_endpoint
            provider.add_span_processor(
                BatchSpanProcessor(OTLPSpanExporter(endpoint=f"{endpoint}/v1/traces" if endpoint else None))
            )
    trace.set_tracer_provider(provider)


@functools.cache
def tracer(name: str = "loraplane") -> trace.Tracer:
    """One tracer per name (made once: the SDK makes a new one per call, on every request's path). One made before
    `configure_tracing` is a proxy that uses the provider set later."""
    return trace.get_tracer(name)


def context_of(traceparent: str | None) -> otel_context.Context | None:
    """The context a W3C `traceparent` names (None for none or a malformed one)."""
    if not traceparent:
        return None
    return _propagator.extract({"traceparent": traceparent})


def current_traceparent() -> str | None:
    carrier: dict[str, str] = {}
    _propagator.inject(carrier)
    return carrier.get("traceparent")


@contextmanager
def continued_from(traceparent: str | None) -> Iterator[None]:
    """Make `traceparent` (from a Kafka header or an envelope) the parent of spans started inside."""
    if not traceparent:
        yield
        return
    token = otel_context.attach(_propagator.extract({"traceparent": traceparent}))
    try:
        yield
    finally:
        otel_context.detach(token)
