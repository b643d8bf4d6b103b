"""The hooks the store and the runner call as they work, for metrics; no-op unless something is enabled.

The core never imports prometheus_client: it calls the methods of the
process-wide :class:`Instruments` (:func:`current`), which do nothing until
:func:`eventstore.metrics.enable` installs an implementation that counts.

Why one process-wide object rather than an argument to each store and runner:
a process serves one ``/metrics`` endpoint, as prometheus_client's own default
registry is process-wide; every ``EventStore`` an application builds (in a
repository, a request handler, the admin functions) is counted without
threading an argument through its code; and the price while disabled is one
module attribute read and an empty method call per append or batch.

Only what happens *in this process* goes through these hooks (appends, batch
durations, poison events, which projections this process owns). Positions,
lag, the head and held-back events are read from the database at scrape time
(:class:`eventstore.metrics.StatusCollector`), so they stay true when a
runner is dead. An implementation must be thread-safe (runner workers are
threads) and must never raise.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from eventstore.types import AppendResult, RecordedEvent

__all__ = ["Instruments", "current", "set_current"]


class Instruments:
    """Hooks called by the store and the runner; every method of this base class does nothing."""

    def append_finished(
        self,
        stream_id: str,
        events: int,
        seconds: float,
        *,
        result: AppendResult | None,
        error: BaseException | None,
    ) -> None:
        """One ``append()`` of ``events`` events to ``stream_id`` ended after ``seconds``.

        ``result`` when it succeeded (``already_stored`` for a retried request), ``error`` when it raised.
        With ``connection=`` the events are in the caller's transaction, not committed yet.
        """

    def batch_committed(self, projection_name: str, events: Sequence[RecordedEvent], seconds: float) -> None:
        """A batch of ``events`` committed with its checkpoint; ``seconds`` from its first statement to the commit."""

    def poison_event(self, projection_name: str, event: RecordedEvent, outcome: str) -> None:
        """The runner gave up on ``event`` after its retries: ``outcome`` is ``failed`` or ``skipped``."""

    def projection_active(self, projection_name: str, active: bool) -> None:
        """This process took (``True``) or let go of (``False``) the projection's lock as a running worker."""


_current = Instruments()


def current() -> Instruments:
    """The instruments in use in this process (a do-nothing :class:`Instruments` by default)."""
    return _current


def set_current(instruments: Instruments | None) -> Instruments:
    """Install ``instruments`` for the whole process (None: the do-nothing default); returns the previous ones."""
    global _current
    previous = _current
    _current = instruments if instruments is not None else Instruments()
    return previous
