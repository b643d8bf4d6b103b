"""Wait until projections have processed a position: the sync waiter of ``wait_until_processed``.

It polls the stored checkpoints, so it works whichever runner (process, host)
applies the projections, and keeps waiting through a server restart. The
decision and the timeout's message are :class:`eventstore.store.progress.ProgressWait`,
shared with :meth:`eventstore.AsyncEventStore.wait_until_processed`.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence

from eventstore.database import is_connection_error
from eventstore.store import EventStore, progress

__all__ = ["wait_until_processed"]


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
    wait = progress.ProgressWait(projection_names, position, store.order_of(position), timeout=timeout)
    while True:
        try:
            with store.engine.connect() as connection:
                rows = connection.exec_driver_sql(progress.PROGRESS, {"names": wait.names}).all()
            stored = progress.decode(rows)
        except Exception as error:
            if not is_connection_error(error):
                raise
            stored = {}  # the server is restarting: keep waiting
        seconds = wait.next_pause(stored)
        if seconds is None:
            return
        pause(seconds)
