"""Follow the store live: yield each event once its transaction has committed.

A notification on ``eventstore_events_v1`` is only a wake-up: after each one
(and on a short timer, for events held back behind another open transaction,
whose end sends no notification) the events after the last yielded one are
read with :meth:`EventStore.read_all`, so the gap rule guarantees nothing is
skipped or repeated. The LISTEN runs on its own autocommit psycopg
connection (``application_name`` ``eventstore-tail``), as PostgreSQL delivers
notifications only between transactions.

Before relying on LISTEN it proves that notifications arrive, with the runner
listener's probe (:mod:`eventstore.store.listen_probe`): a notification sent
from another session must come back within ``probe_timeout`` seconds.
Through a transaction-mode pooler (PgBouncer ``pool_mode = transaction``) it
does not, as LISTEN needs a session of its own: ``follow`` then logs one
WARNING (from this module's logger, naming the URL and the fix: a direct or
session-mode URL, ``eventstore tail --url``), closes the LISTEN connection
and polls: it re-reads every ``recheck_interval`` seconds (1 s by default),
so events still arrive, up to that much later. A probe that cannot be judged
(the NOTIFY queue half full, the probe connection refused) keeps the LISTEN;
the same timer covers it anyway.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import psycopg

from eventstore.database import libpq_url, translate_driver_errors
from eventstore.store.event_store import EventStore
from eventstore.store.listen_probe import (
    listen_statement,
    new_probe_channel,
    probe,
    run_probe,
    warn_listen_does_not_deliver,
)
from eventstore.store.sql import NOTIFY_CHANNEL
from eventstore.types import RecordedEvent

__all__ = ["follow"]

logger = logging.getLogger(__name__)

APPLICATION_NAME = "eventstore-tail"
"""The LISTEN connection's name in ``pg_stat_activity`` (its probe's: ``eventstore-tail-probe``)."""

_FIX = (
    "give it a direct or session-mode URL of the same database: eventstore tail --url (or EVENTSTORE_URL); "
    "follow(): a store made on such a URL"
)


def follow(
    store: EventStore,
    *,
    after: int | None = None,
    categories: Sequence[str] | None = None,
    event_types: Sequence[str] | None = None,
    limit: int | None = None,
    recheck_interval: float = 1.0,
    probe_timeout: float = 2.0,
    ready: Callable[[int], None] | None = None,
) -> Iterator[RecordedEvent]:
    """Yield events after ``after`` (default: the current head) as they become readable, forever
    (or ``limit`` of them).

    ``ready(position)`` is called once wake-ups are in place (a LISTEN
    proven to deliver, or polling); every event after ``position`` is
    yielded from then on. ``recheck_interval``: the re-read when no
    notification came (events held back behind an open transaction, whose
    end sends none), and the poll when LISTEN does not deliver (see the
    module docstring). ``probe_timeout``: how long the probe waits for its
    notification before declaring that LISTEN does not deliver.

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
    conninfo = libpq_url(store.engine)
    with translate_driver_errors(store.engine):
        connection = psycopg.connect(
            conninfo, autocommit=True, application_name=APPLICATION_NAME, prepare_threshold=None
        )
    with connection:
        with translate_driver_errors(store.engine):
            listening = _listen(connection, conninfo, probe_timeout=probe_timeout, poll_interval=recheck_interval)
        if not listening:
            connection.close()  # nothing would ever arrive on it
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
            if not listening:
                time.sleep(recheck_interval)  # the poll: LISTEN does not deliver here
                continue
            with translate_driver_errors(store.engine):
                for _ in connection.notifies(timeout=recheck_interval, stop_after=1):
                    pass


def _listen(connection: psycopg.Connection[Any], conninfo: str, *, probe_timeout: float, poll_interval: float) -> bool:
    """LISTEN on :data:`NOTIFY_CHANNEL` once a probe proved that notifications arrive; False (warned) if not.

    The probe comes first, on a channel of its own, so that a session that
    cannot receive never LISTENs on the store's channel (nothing to undo),
    and the connection's last statement in ``pg_stat_activity`` is the LISTEN.
    """
    probe_channel = new_probe_channel()
    connection.execute(listen_statement(probe_channel))
    steps = probe(probe_channel, timeout=probe_timeout, logger=logger, who="follow", extra={"channel": NOTIFY_CHANNEL})
    if run_probe(connection, conninfo, steps, application_name=APPLICATION_NAME) is False:
        warn_listen_does_not_deliver(
            logger,
            who="follow",
            conninfo=conninfo,
            probe_timeout=probe_timeout,
            poll_interval=poll_interval,
            fix=_FIX,
            extra={"channel": NOTIFY_CHANNEL},
        )
        return False
    connection.execute(listen_statement(NOTIFY_CHANNEL))
    return True
