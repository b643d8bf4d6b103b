"""Wait until projections have processed a position: the one definition of ``wait_until_processed``.

It polls the stored checkpoints, so it works whichever runner (process, host)
applies the projections, and keeps waiting through a server restart.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence

from eventstore.database import is_connection_error
from eventstore.errors import ProjectionTimeout
from eventstore.runner import checkpoints
from eventstore.runner.checkpoints import Checkpoint
from eventstore.store import EventStore

__all__ = ["wait_until_processed"]

_POLL = 0.02


def wait_until_processed(
    store: EventStore,
    projection_names: Sequence[str],
    position: int,
    *,
    timeout: float,
    pause: Callable[[float], object] = time.sleep,
) -> None:
    """Return once every projection in ``projection_names`` has consumed ``position`` (and all before it).

    ``pause(seconds)`` waits between polls (a runner passes a wait on its own
    progress, so that it returns as soon as its batch commits).

    Raises:
        ProjectionTimeout: not processed within ``timeout`` seconds; names each lagging projection,
            its position and, if it is failed, its stored error.
        UnknownPosition: no stored event has ``position``.
    """
    if position <= 0:
        return
    target = store.order_of(position)
    deadline = time.monotonic() + timeout
    names = list(projection_names)
    stored: dict[str, Checkpoint] = {}
    while True:
        try:
            with store.engine.connect() as connection:
                stored = checkpoints.load_all(connection, names)
        except Exception as error:
            if not is_connection_error(error):
                raise
            stored = {}  # the server is restarting: keep waiting
        lagging = [name for name in names if name not in stored or stored[name].cursor < target]
        if not lagging:
            return
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            details = "; ".join(_describe_lag(name, stored.get(name)) for name in lagging)
            raise ProjectionTimeout(f"{details}: did not process position {position} within {timeout} s")
        pause(min(_POLL, remaining))


def _describe_lag(name: str, current: Checkpoint | None) -> str:
    if current is None:
        return f"projection {name!r} (no checkpoint yet)"
    if current.failed:
        return f"projection {name!r} (failed at position {current.failed_position}: {current.last_error})"
    return f"projection {name!r} (at position {current.position}, state {current.state})"
