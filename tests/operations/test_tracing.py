"""OpenTelemetry spans: a PRODUCER span per append (sync and async alike), a CONSUMER span per projection batch.

Each test gives eventstore a TracerProvider of its own (``use_tracer_provider``)
with an in-memory exporter; the process-wide provider is never set.
"""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Iterator

import pytest
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode

from eventstore import NO_STREAM, AsyncEventStore, EventStore, NewEvent, ProjectionRunner, WrongExpectedVersion, tracing
from projections import Ledger
from tests.runner.runner_helpers import FAST


@pytest.fixture
def exporter() -> Iterator[InMemorySpanExporter]:
    provider = TracerProvider()
    exporter = InMemorySpanExporter()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    tracing.use_tracer_provider(provider)
    try:
        yield exporter
    finally:
        tracing.use_tracer_provider(None)
        provider.shutdown()


def _spans(exporter: InMemorySpanExporter, kind: SpanKind) -> list[ReadableSpan]:
    return [span for span in exporter.get_finished_spans() if span.kind is kind]


def test_an_append_is_a_producer_span_with_the_messaging_attributes(
    store: EventStore, exporter: InMemorySpanExporter
) -> None:
    result = store.append("order-42", [NewEvent("OrderPlaced", {}), NewEvent("OrderPaid", {})])
    (span,) = _spans(exporter, SpanKind.PRODUCER)
    assert span.name == "send order"
    assert dict(span.attributes or {}) == {
        "messaging.system": "eventstore",
        "messaging.operation.type": "send",
        "messaging.operation.name": "append",
        "messaging.destination.name": "order",
        "messaging.batch.message_count": 2,
        "eventstore.stream_id": "order-42",
        "eventstore.global_position": result.global_position,
        "eventstore.stream_version": 2,
        "eventstore.already_stored": False,
    }
    assert span.status.status_code is StatusCode.UNSET


def test_the_async_append_makes_the_same_span(database_url: str, exporter: InMemorySpanExporter) -> None:
    async def append() -> int:
        async with AsyncEventStore(database_url) as store:
            return (await store.append("invoice-7", [NewEvent("InvoiceSent", {})])).global_position

    position = asyncio.run(append())
    (span,) = _spans(exporter, SpanKind.PRODUCER)
    assert span.name == "send invoice"
    attributes = dict(span.attributes or {})
    assert attributes["messaging.destination.name"] == "invoice"
    assert attributes["eventstore.stream_id"] == "invoice-7"
    assert attributes["messaging.batch.message_count"] == 1
    assert attributes["eventstore.global_position"] == position


def test_a_failed_append_records_its_exception(store: EventStore, exporter: InMemorySpanExporter) -> None:
    store.append("order-1", [NewEvent("OrderPlaced", {})])
    with pytest.raises(WrongExpectedVersion):
        store.append("order-1", [NewEvent("OrderPlaced", {})], expected_version=NO_STREAM)
    failed = _spans(exporter, SpanKind.PRODUCER)[-1]
    assert failed.status.status_code is StatusCode.ERROR
    assert [event.name for event in failed.events] == ["exception"]
    assert str((failed.events[0].attributes or {})["exception.type"]).endswith("WrongExpectedVersion")
    assert "eventstore.global_position" not in (failed.attributes or {})


def test_a_projection_batch_is_a_consumer_span(store: EventStore, exporter: InMemorySpanExporter) -> None:
    first = store.append("order-1", [NewEvent("OrderPlaced", {})]).global_position
    store.append("invoice-1", [NewEvent("InvoiceSent", {})])
    last = store.append("order-2", [NewEvent("OrderPlaced", {})]).global_position
    ProjectionRunner(
        store, [Ledger("orders", categories=("order",)), Ledger("everything")], **FAST
    ).run_until_caught_up(timeout=30)
    spans = {span.name: span for span in _spans(exporter, SpanKind.CONSUMER)}
    assert dict(spans["process orders"].attributes or {}) == {
        "messaging.system": "eventstore",
        "messaging.operation.type": "process",
        "messaging.operation.name": "apply",
        "messaging.destination.name": "order",
        "messaging.consumer.group.name": "orders",
        "messaging.batch.message_count": 2,
        "eventstore.first_position": first,
        "eventstore.last_position": last,
    }
    everything = dict(spans["process everything"].attributes or {})
    assert everything["messaging.destination.name"] == "*"
    assert everything["messaging.batch.message_count"] == 3


def test_a_poison_batch_records_the_handler_exception(store: EventStore, exporter: InMemorySpanExporter) -> None:
    store.append("order-1", [NewEvent("Bad", {})])
    ProjectionRunner(store, [Ledger("poisoned", poison_types={"Bad"})], **FAST).run_until_caught_up(timeout=30)
    spans = _spans(exporter, SpanKind.CONSUMER)
    assert len(spans) == FAST["retry_attempts"]  # one span per attempt, each failed
    for span in spans:
        assert span.status.status_code is StatusCode.ERROR
        (event,) = span.events
        assert event.name == "exception" and "poison event Bad" in str((event.attributes or {})["exception.message"])


def test_without_opentelemetry_appends_and_batches_work_and_trace_nothing(
    store: EventStore, exporter: InMemorySpanExporter, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "opentelemetry", None)  # import opentelemetry now raises ImportError
    monkeypatch.setattr(tracing, "_api", None)
    monkeypatch.setattr(tracing, "_tracer", None)
    position = store.append("order-1", [NewEvent("OrderPlaced", {})]).global_position
    ProjectionRunner(store, [Ledger("untraced")], **FAST).run_until_caught_up(timeout=30)
    assert tracing._api is False
    assert store.head_position() == position
    assert exporter.get_finished_spans() == ()


def test_no_span_is_started_until_a_tracer_provider_is_configured(
    store: EventStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With the API alone a span would be a no-op costing each append ~15 us: none is started, until a global
    provider is set (the API's proxy tracer then follows it, as applications that configure tracing late expect)."""
    from opentelemetry import trace

    started: list[str] = []
    proxy = trace.get_tracer("eventstore")

    class CountingTracer:
        def start_as_current_span(self, name: str, **options: object) -> object:
            started.append(name)
            return proxy.start_as_current_span(name, **options)  # type: ignore[arg-type]

    monkeypatch.setattr(tracing, "_tracer", CountingTracer())
    assert isinstance(trace.get_tracer_provider(), trace.ProxyTracerProvider)  # nothing configured
    store.append("order-1", [NewEvent("OrderPlaced", {})])
    assert started == []

    provider = TracerProvider()
    exporter = InMemorySpanExporter()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    monkeypatch.setattr(trace, "_TRACER_PROVIDER", provider)  # what set_tracer_provider does, undone after the test
    store.append("order-2", [NewEvent("OrderPlaced", {})])
    assert started == ["send order"]
    (span,) = exporter.get_finished_spans()
    assert span.attributes is not None and span.attributes["eventstore.stream_id"] == "order-2"
    provider.shutdown()
