"""The one place an append is timed, counted and traced, for :class:`EventStore` and :class:`AsyncEventStore`.

Both stores wrap their append in :func:`observe_append`: a synchronous
context manager, which is also correct around ``await`` (OpenTelemetry keeps
the current span in a ``contextvars`` context, which each asyncio task has of
its own).
"""

from __future__ import annotations

import time
from collections.abc import Sequence, Sized
from typing import Any

from eventstore import instruments, tracing
from eventstore.types import AppendResult, NewEvent

__all__ = ["AppendObservation", "observe_append"]


class AppendObservation:
    """The context manager :func:`observe_append` returns; the block reports its result with :meth:`done`.

    A plain class rather than a generator-based context manager: this wraps
    every append, and the generator machinery cost several microseconds each.
    """

    __slots__ = ("_count", "_span", "_span_context", "_started", "_stream", "result")

    def __init__(self, stream: str, count: int) -> None:
        self._stream = stream
        self._count = count
        self.result: AppendResult | None = None

    def __enter__(self) -> AppendObservation:
        self._started = time.perf_counter()
        self._span_context = tracing.append_span(self._stream, self._count)
        self._span = self._span_context.__enter__()
        return self

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None, traceback: Any) -> None:
        try:
            self._span_context.__exit__(kind, error, traceback)
        finally:
            instruments.current().append_finished(
                self._stream, self._count, time.perf_counter() - self._started, result=self.result, error=error
            )

    def done(self, result: AppendResult) -> AppendResult:
        """Record the result on the span (its global position; whether it was a retried request); returns it."""
        self.result = result
        self._span.set("eventstore.global_position", result.global_position)
        self._span.set("eventstore.stream_version", result.stream_version)
        self._span.set("eventstore.already_stored", result.already_stored)
        return result


def observe_append(stream_id: str, events: Sequence[NewEvent]) -> AppendObservation:
    """Trace the append (a PRODUCER span) and report it to :func:`eventstore.instruments.current` when it ends.

    Use it as ``with observe_append(...) as observation:``. Runs before
    validation, so it takes the arguments as given: an ``events`` without a
    length counts as 0 (the append then raises ``InvalidEvent``).
    """
    count = len(events) if isinstance(events, Sized) else 0
    return AppendObservation(stream_id if isinstance(stream_id, str) else repr(stream_id), count)
