"""The wake-up an append sends after its commit, without waiting for it.

Why not NOTIFY inside the appending transaction (as the ``events_notify_v2``
trigger does for other writers)? PostgreSQL serialises notifying commits: a
transaction that notified holds a database-wide lock from just before its
commit until after the commit's WAL flush
(https://www.postgresql.org/docs/current/sql-notify.html, "notify" in
``src/backend/commands/async.c``). Concurrent notifying appenders therefore
flush one by one instead of sharing flushes (group commit).

So the store's own appends silence the trigger for their transaction and, once
the commit has returned, send ``SELECT pg_notify(...)`` here, in a separate
transaction that writes nothing and so needs no flush: the lock is then held
for microseconds. The query is only *sent*; its result is collected before the
next wake-up (usually long arrived by then), so an append does not wait for
a second round trip.

A wake-up is only a hint (workers re-read from their checkpoint on a timer
too): if it cannot be sent, the append still succeeded, and a warning is
logged.
"""

from __future__ import annotations

import logging
import os
import threading

import psycopg
from psycopg import pq
from psycopg.conninfo import make_conninfo
from sqlalchemy.engine import Engine

from eventstore.database import autocommit_driver
from eventstore.errors import EventStoreError

__all__ = ["NOTIFY_CHANNEL", "WakeUps"]

logger = logging.getLogger(__name__)

NOTIFY_CHANNEL = "eventstore_events_v1"
"""The channel workers LISTEN on: one wake-up per committed append."""

_WAKE_UP = f"SELECT pg_notify('{NOTIFY_CHANNEL}', '')".encode()
_PREPARED = b"eventstore_wake_up"  # parsed and planned once per connection


class WakeUps:
    """Sends wake-ups on one dedicated connection of this process, opened on first use.

    Thread-safe. After a fork the child opens its own connection (libpq
    connections cannot be shared across processes).
    """

    def __init__(self, engine: Engine) -> None:
        self._engine = engine
        self._lock = threading.Lock()
        self._connection: pq.abc.PGconn | None = None
        self._pid = 0
        self._pending = False

    def send(self) -> None:
        """Send one ``pg_notify`` on :data:`NOTIFY_CHANNEL`; do not wait for it.

        A broken connection (server restart, terminated backend) is replaced
        once; if that fails too, a warning is logged and the append stands.
        """
        with self._lock:
            for attempt in (1, 2):
                try:
                    self._ready().send_query_prepared(_PREPARED, None)
                    self._pending = True
                    return
                except (psycopg.Error, OSError, EventStoreError) as error:
                    self._discard()
                    if attempt == 2:
                        logger.warning("wake-up not sent (%s); workers find the events on their timer", error)

    def _ready(self) -> pq.abc.PGconn:
        if self._connection is None or self._pid != os.getpid():
            self._connection, self._pid, self._pending = self._connect(), os.getpid(), False
        connection = self._connection
        if self._pending:
            # The previous wake-up's result; blocks only if it is still on its way.
            while (result := connection.get_result()) is not None:
                if result.status != pq.ExecStatus.TUPLES_OK:
                    raise psycopg.OperationalError(_message(result.error_message))
            self._pending = False
        # Read what the server sent meanwhile: a terminated backend's goodbye
        # marks the connection bad here, before a wake-up is sent into the void.
        connection.consume_input()
        if connection.status != pq.ConnStatus.OK:
            raise psycopg.OperationalError(_message(connection.error_message))
        return connection

    def _connect(self) -> pq.abc.PGconn:
        # The parameters of a pooled connection, as libpq resolved them: the
        # engine's URL, connect_args and environment all included.
        with autocommit_driver(self._engine) as driver:
            options = {
                option.keyword.decode(): option.val.decode()
                for option in driver.pgconn.info
                if option.val is not None and option.keyword != b"replication"
            }
        connection = pq.PGconn.connect(make_conninfo(**options).encode())
        prepared = connection.prepare(_PREPARED, _WAKE_UP) if connection.status == pq.ConnStatus.OK else None
        if prepared is None or prepared.status != pq.ExecStatus.COMMAND_OK:
            message = _message(connection.error_message)
            connection.finish()
            raise psycopg.OperationalError(message)
        return connection

    def _discard(self) -> None:
        # A connection inherited over fork belongs to the parent: leave it alone.
        if self._connection is not None and self._pid == os.getpid():
            self._connection.finish()
        self._connection, self._pending = None, False


def _message(raw: bytes) -> str:
    return raw.decode(errors="replace").strip() or "connection failed"
