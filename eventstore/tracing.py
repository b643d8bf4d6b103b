"""OpenTelemetry spans for appends and projection batches; nothing at all when opentelemetry-api is absent.

eventstore is a library: it only calls the OpenTelemetry *API*. The spans go
wherever the application's tracer provider sends them (the global one set with
``opentelemetry.trace.set_tracer_provider``, or one given to
:func:`use_tracer_provider`). With the API alone, or no provider configured,
no span is started at all (the API's own no-op spans would cost an append
about 15 us for nothing); one is as soon as a provider is set. ``opentelemetry-api`` is
imported on the first span, never at import time; without it every span here
is a do-nothing object (``pip install 'eventstore[otel]'`` adds it).

Attributes follow the OpenTelemetry messaging conventions
(https://opentelemetry.io/docs/specs/semconv/messaging/messaging-spans/),
eventstore being the messaging system: an append is a ``send`` (span kind
PRODUCER, destination the stream's category), a projection batch a
``process`` (CONSUMER, consumer group the projection's name, destination its
categories). ``messaging.batch.message_count`` is set on every span, also for
one event, so dashboards need no special case. A span whose block raises
records the exception and gets the status ERROR.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator, Sequence
from typing import Any

from eventstore.types import category_of

__all__ = ["SYSTEM", "SpanHandle", "append_span", "batch_span", "use_tracer_provider"]

SYSTEM = "eventstore"
"""``messaging.system`` of every span."""

_lock = threading.Lock()
_provider: Any = None
_tracer: Any = None
_api: Any = None  # the opentelemetry.trace module, False when it is not installed


class SpanHandle:
    """What a block inside a span may add to it; does nothing when there is no span."""

    __slots__ = ("_span",)

    def __init__(self, span: Any = None) -> None:
        self._span = span

    def set(self, key: str, value: str | int | float | bool) -> None:
        """Set one attribute (only while the span records)."""
        if self._span is not None and self._span.is_recording():
            self._span.set_attribute(key, value)


def use_tracer_provider(provider: Any) -> None:
    """Send eventstore's spans to ``provider`` (an OpenTelemetry ``TracerProvider``); None: the global provider.

    For applications (and tests) that keep a provider of their own instead of
    setting the process-wide one.
    """
    global _provider, _tracer
    with _lock:
        _provider = provider
        _tracer = None


def _get_tracer() -> Any:
    """The tracer for eventstore's spans, or None without opentelemetry-api."""
    global _api, _tracer
    tracer = _tracer
    if tracer is not None:
        return tracer
    with _lock:
        if _api is None:
            try:
                from opentelemetry import trace
            except ImportError:
                _api = False
            else:
                _api = trace
        if _api is False:
            return None
        if _tracer is None:
            # Without a provider of ours, the API's proxy tracer: it follows a global provider set later.
            _tracer = (_provider if _provider is not None else _api).get_tracer("eventstore")
        return _tracer


def _tracer_if_configured() -> Any:
    """The tracer, or None when no span would be recorded: no API, or no tracer provider configured yet."""
    tracer = _get_tracer()
    if tracer is None or _provider is not None:
        return tracer
    if isinstance(_api.get_tracer_provider(), _api.ProxyTracerProvider | _api.NoOpTracerProvider):
        return None
    return tracer


_NO_SPAN: contextlib.AbstractContextManager[SpanHandle] = contextlib.nullcontext(SpanHandle())


@contextlib.contextmanager
def _span(tracer: Any, name: str, kind: str, attributes: dict[str, Any]) -> Iterator[SpanHandle]:
    with tracer.start_as_current_span(
        name, kind=getattr(_api.SpanKind, kind), attributes=attributes, record_exception=True,
        set_status_on_exception=True,
    ) as span:  # fmt: skip
        yield SpanHandle(span)


def append_span(stream_id: str, events: int) -> contextlib.AbstractContextManager[SpanHandle]:
    """The PRODUCER span of one append; the block sets ``eventstore.global_position`` once it has a result.

    Used by both stores through :func:`eventstore.store.telemetry.observe_append`.
    """
    tracer = _tracer_if_configured()
    if tracer is None:
        return _NO_SPAN
    category = category_of(stream_id)
    return _span(
        tracer,
        f"send {category}",
        "PRODUCER",
        {
            "messaging.system": SYSTEM,
            "messaging.operation.type": "send",
            "messaging.operation.name": "append",
            "messaging.destination.name": category,
            "messaging.batch.message_count": events,
            "eventstore.stream_id": stream_id,
        },
    )


def batch_span(
    projection_name: str, categories: Sequence[str], first_position: int, last_position: int, events: int
) -> contextlib.AbstractContextManager[SpanHandle]:
    """The CONSUMER span of one projection batch: its handlers and the commit of its checkpoint."""
    tracer = _tracer_if_configured()
    if tracer is None:
        return _NO_SPAN
    destination = ",".join(categories) or "*"
    return _span(
        tracer,
        f"process {projection_name}",
        "CONSUMER",
        {
            "messaging.system": SYSTEM,
            "messaging.operation.type": "process",
            "messaging.operation.name": "apply",
            "messaging.destination.name": destination,
            "messaging.consumer.group.name": projection_name,
            "messaging.batch.message_count": events,
            "eventstore.first_position": first_position,
            "eventstore.last_position": last_position,
        },
    )
