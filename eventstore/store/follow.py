"""Follow the store live: yield each event once its transaction has committed.

A notification on ``eventstore_events_v1`` is only a wake-up: after each one
(and on a short timer, for events held back behind another open transaction,
whose end sends no notification) the events after the last yielded one are
read with :meth:`EventStore.read_all`, so the gap rule guarantees nothing is
skipped or repeated. The LISTEN runs on its own autocommit psycopg
connection, as PostgreSQL delivers notifications only between transactions.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator, Sequence

import psycopg
from psycopg import sql

from eventstore.database import libpq_url, translate_driver_errors
from eventstore.store.event_store import EventStore
from eventstore.store.sql import NOTIFY_CHANNEL
from eventstore.types import RecordedEvent

__all__ = ["follow"]

logger = logging.getLogger(__name__)


def follow(
    store: EventStore,
    *,
    after: int | None = None,
    categories: Sequence[str] | None = None,
    event_types: Sequence[str] | None = None,
    limit: int | None = None,
    recheck_interval: float = 1.0,
    ready: Callable[[int], None] | None = None,
) -> Iterator[RecordedEvent]:
    """Yield events after ``after`` (default: the current head) as they become readable, forever
    (or ``limit`` of them).

    ``ready(position)`` is called once the listener is in place; every event
    after ``position`` is yielded from then on.

    Raises:
        DatabaseUnavailable: PostgreSQL cannot be reached (host and port, no password).
        UnknownPosition: ``after`` is not the position of a stored event.
    """
    # Head first, LISTEN second: an event committed in between is found by
    # the first timed re-read, so none is lost.
    if after is None:
        last = store.head_position()
    else:
        if after:
            store.order_of(after)  # UnknownPosition now, not at the first read
        last = after
    seen = 0
    with translate_driver_errors(store.engine):
        connection = psycopg.connect(libpq_url(store.engine), autocommit=True)
    with connection:
        with translate_driver_errors(store.engine):
            connection.execute(sql.SQL("LISTEN {}").format(sql.Identifier(NOTIFY_CHANNEL)))
        if ready is not None:
            ready(last)
        wanted_categories = set(categories or ())
        wanted_types = set(event_types or ())
        while True:
            # Unfiltered read, filtered here: the cursor moves past every
            # event, so filtered-out ones are never read twice.
            for event in store.read_all(after=last or None):
                last = event.global_position
                if (wanted_categories and event.category not in wanted_categories) or (
                    wanted_types and event.type not in wanted_types
                ):
                    continue
                yield event
                seen += 1
                if limit is not None and seen >= limit:
                    return
            with translate_driver_errors(store.engine):
                for _ in connection.notifies(timeout=recheck_interval, stop_after=1):
                    pass
