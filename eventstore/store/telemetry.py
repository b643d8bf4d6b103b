"""The one place an append is timed, counted and traced, for :class:`EventStore` and :class:`AsyncEventStore`.

Both stores wrap their append in :func:`observe_append`: a synchronous
context manager, which is also correct around ``await`` (OpenTelemetry keeps
the current span in a ``contextvars`` context, which each asyncio task has of
its own).
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator, Sequence, Sized

from eventstore import instruments, tracing
from eventstore.types import AppendResult, NewEvent

__all__ = ["AppendObservation", "observe_append"]


class AppendObservation:
    """Handed to the append's block: it reports the result with :meth:`done`."""

    __slots__ = ("_span", "result")

    def __init__(self, span: tracing.SpanHandle) -> None:
        self._span = span
        self.result: AppendResult | None = None

    def done(self, result: AppendResult) -> AppendResult:
        """Record the result on the span (its global position; whether it was a retried request); returns it."""
        self.result = result
        self._span.set("eventstore.global_position", result.global_position)
        self._span.set("eventstore.stream_version", result.stream_version)
        self._span.set("eventstore.already_stored", result.already_stored)
        return result


@contextlib.contextmanager
def observe_append(stream_id: str, events: Sequence[NewEvent]) -> Iterator[AppendObservation]:
    """Trace the append (a PRODUCER span) and report it to :func:`eventstore.instruments.current` when it ends.

    Runs before validation, so it takes the arguments as given: an ``events``
    without a length counts as 0 (the append then raises ``InvalidEvent``).
    """
    count = len(events) if isinstance(events, Sized) else 0
    stream = stream_id if isinstance(stream_id, str) else repr(stream_id)
    started = time.perf_counter()
    error: BaseException | None = None
    observation: AppendObservation | None = None
    try:
        with tracing.append_span(stream, count) as span:
            observation = AppendObservation(span)
            yield observation
    except BaseException as raised:
        error = raised
        raise
    finally:
        instruments.current().append_finished(
            stream,
            count,
            time.perf_counter() - started,
            result=observation.result if observation is not None else None,
            error=error,
        )
