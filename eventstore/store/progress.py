"""How far projections have got: the one definition of ``wait_until_processed``'s decision and message.

Waiting polls the stored checkpoints (so it works whichever runner, process or
host applies the projections). The loop's decision (done, keep waiting, or
time out) and the :class:`~eventstore.errors.ProjectionTimeout` message live
here, without I/O, for both waiters: :func:`eventstore.runner.waiting.wait_until_processed`
(sync) and :meth:`eventstore.store.AsyncEventStore.wait_until_processed`.
They load checkpoints with :func:`load` (a :mod:`~eventstore.store.protocol`
operation).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any, NamedTuple

from eventstore.errors import ProjectionTimeout
from eventstore.store.protocol import Read, Steps

__all__ = ["POLL_SECONDS", "PROGRESS", "Progress", "ProgressWait", "describe_lag", "load"]

POLL_SECONDS = 0.02
"""The longest pause between two looks at the checkpoints."""

PROGRESS = (
    "SELECT projection_name, CAST(transaction_order AS text), global_position, state, failed_position, last_error "
    "FROM projection_checkpoints WHERE projection_name = ANY(CAST(%(names)s AS text[]))"
)
"""The checkpoints of ``%(names)s`` that exist (psycopg placeholders: runs raw or through ``exec_driver_sql``)."""


class Progress(NamedTuple):
    """A row of :data:`PROGRESS`: where a projection is, and whether it is stopped at a poison event."""

    projection_name: str
    cursor: tuple[int, int]
    state: str
    failed_position: int | None
    last_error: str | None

    @property
    def position(self) -> int:
        """The ``global_position`` part of the cursor (0: nothing consumed yet)."""
        return self.cursor[1]

    @property
    def failed(self) -> bool:
        """True while the projection is stopped at a poison event."""
        return self.state == "failed"


def decode(rows: Sequence[Any]) -> dict[str, Progress]:
    """The rows of :data:`PROGRESS`, by projection name."""
    return {
        name: Progress(name, (int(order), int(position)), state, failed_position, last_error)
        for name, order, position, state, failed_position, last_error in rows
    }


def load(names: Sequence[str]) -> Steps[dict[str, Progress]]:
    """The checkpoints of ``names`` that exist, by name (a :mod:`~eventstore.store.protocol` operation)."""
    rows = yield Read(PROGRESS, {"names": list(names)})
    return decode(rows)


class ProgressWait:
    """The decision of one wait: are ``projection_names`` at ``target`` yet, and how long to pause if not.

    ``target`` is the ``(transaction_order, global_position)`` cursor of
    ``position`` (``store.order_of(position)``); a projection has processed
    ``position`` once its checkpoint is at or after it.
    """

    def __init__(
        self,
        projection_names: Sequence[str],
        position: int,
        target: tuple[int, int],
        *,
        timeout: float,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.names = list(projection_names)
        self.position = position
        self.target = target
        self.timeout = timeout
        self._clock = clock
        self._deadline = clock() + timeout

    def next_pause(self, stored: Mapping[str, Progress]) -> float | None:
        """None when every projection has processed the position; else the seconds to pause before looking again.

        ``stored``: the checkpoints just loaded (empty while the server is unreachable).

        Raises:
            ProjectionTimeout: the deadline has passed; names each lagging projection, its position and,
                if it is failed, its stored error.
        """
        lagging = [name for name in self.names if name not in stored or stored[name].cursor < self.target]
        if not lagging:
            return None
        remaining = self._deadline - self._clock()
        if remaining <= 0:
            details = "; ".join(describe_lag(name, stored.get(name)) for name in lagging)
            raise ProjectionTimeout(f"{details}: did not process position {self.position} within {self.timeout} s")
        return min(POLL_SECONDS, remaining)


def describe_lag(name: str, current: Progress | None) -> str:
    """Where a lagging projection is, for :class:`ProjectionTimeout`."""
    if current is None:
        return f"projection {name!r} (no checkpoint yet)"
    if current.failed:
        return f"projection {name!r} (failed at position {current.failed_position}: {current.last_error})"
    return f"projection {name!r} (at position {current.position}, state {current.state})"
