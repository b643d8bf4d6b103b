"""The append hot path's connections, and the wake-up each append sends after its commit.

Why the wake-up is not a NOTIFY inside the appending transaction (as the
``events_notify_v3`` trigger does for other writers): PostgreSQL serialises
notifying commits. A transaction that notified holds a database-wide lock from
just before its commit until after the commit's WAL flush
(https://www.postgresql.org/docs/current/sql-notify.html; ``PreCommit_Notify``
in ``src/backend/commands/async.c``), so concurrent notifying appenders flush
one by one instead of sharing flushes (group commit).

So the store's own appends silence the trigger for their transaction and, once
the commit has returned, send ``pg_notify`` on the *same* connection as a
separate transaction that writes nothing (no flush, so the lock is held for
microseconds). The query is only sent; its result is collected when the
connection is next used, so an append waits for no second round trip. That is
why these connections are the store's own (a small free list of autocommit
psycopg connections, opened through the engine so its URL, ``connect_args``
and connect events apply) rather than the engine's pool: a pooled connection
must be idle when it goes back. An append takes an idle connection whose
wake-up has been answered; when every idle one's backend is still running its
wake-up, it opens another (while fewer than ``max_idle`` are open) rather than
wait, so one writer's appends alternate between two backends.

A wake-up is only a hint (workers re-read from their checkpoint on a timer
too): if one cannot be sent, the append still stands and a warning is logged.
"""

from __future__ import annotations

import logging
import os
import threading
import weakref
from typing import Any

import psycopg
import sqlalchemy as sa
from psycopg import pq
from sqlalchemy.engine import Engine

from eventstore.database import translate_driver_error
from eventstore.errors import ConfigurationError
from eventstore.store.sql import WAKE_UP

__all__ = ["AppendConnections", "append_connections", "wake_up_answered"]

logger = logging.getLogger(__name__)

# Sent as a plain (unprepared) query: a prepared statement is session state that
# psycopg drops with DEALLOCATE ALL after a rollback and that a transaction-mode
# pooler does not keep, and parsing this SELECT costs microseconds.
_WAKE_UP = WAKE_UP.encode()

# One set of append connections per engine, shared by every EventStore on it
# (so a store made per request reuses them, as it reuses the engine's pool).
_BY_ENGINE: weakref.WeakKeyDictionary[Engine, AppendConnections] = weakref.WeakKeyDictionary()
_BY_ENGINE_LOCK = threading.Lock()

# Connections inherited over fork belong to the parent process: a child keeps
# them referenced (never closed, which would end the parent's sessions).
_INHERITED: list[Any] = []


def append_connections(engine: Engine) -> AppendConnections:
    """The append connections of ``engine``, created on first use; closed when the engine is collected."""
    with _BY_ENGINE_LOCK:
        connections = _BY_ENGINE.get(engine)
        if connections is None:
            connections = _BY_ENGINE[engine] = AppendConnections(engine)
        return connections


class AppendConnections:
    """Autocommit psycopg connections for appends, at most ``max_idle`` kept open between appends.

    Thread-safe: each append takes a connection of its own. After a fork the
    child opens new ones.
    """

    def __init__(self, engine: Engine, *, max_idle: int = 4) -> None:
        # Weak: the engine's entry in _BY_ENGINE must not keep the engine alive.
        self._engine = weakref.ref(engine)
        self._max_idle = max_idle
        self._lock = threading.Lock()
        self._idle: list[_AppendConnection] = []
        self._open = 0  # in use and idle, of this process
        weakref.finalize(self, _close_all, self._idle)

    def connection(self) -> _Borrowed:
        """``with`` it: an idle connection (or a new one); errors translated, a broken connection dropped."""
        return _Borrowed(self)

    def close(self) -> None:
        """Close the idle connections (those in use close when given back over the limit, or later)."""
        with self._lock:
            idle, self._idle[:] = list(self._idle), []
            self._open -= len(idle)
        _close_all(idle)

    def _take(self, engine: Engine) -> _AppendConnection:
        """An idle connection whose wake-up has been answered, else a new one (while fewer than ``max_idle``).

        So one writer's appends alternate between two backends instead of
        waiting for the server to finish the previous append's wake-up.
        """
        while True:
            with self._lock:
                if not self._idle:
                    break
                index = next(
                    (index for index in range(len(self._idle) - 1, -1, -1) if self._idle[index].answered()), None
                )
                if index is None:
                    if self._open < self._max_idle:
                        break
                    index = len(self._idle) - 1  # wait for the newest's answer
                connection = self._idle.pop(index)
            if connection.pid != os.getpid():  # forked: the parent's, not ours
                _INHERITED.append(connection)
                self._forget()
            elif connection.collect_wake_up():  # outside the lock: it may wait for the server
                return connection
            else:
                self._discard(connection)
        pooled = engine.raw_connection()
        driver: psycopg.Connection[Any] = pooled.driver_connection  # type: ignore[assignment]
        pooled.detach()  # ours now: the pool neither resets nor closes it
        driver.autocommit = True
        with self._lock:
            self._open += 1
        return _AppendConnection(driver)

    def _give_back(self, connection: _AppendConnection) -> None:
        with self._lock:
            if len(self._idle) < self._max_idle:
                self._idle.append(connection)
                return
        self._discard(connection)

    def _discard(self, connection: _AppendConnection) -> None:
        connection.close()
        self._forget()

    def _forget(self) -> None:
        with self._lock:
            self._open -= 1


class _Borrowed:
    """One use of an append connection: taken on enter, given back (or closed if broken) on exit.

    A plain class rather than generator-based context managers: it wraps every
    append, and those cost several microseconds each.
    """

    __slots__ = ("_connection", "_connections", "_engine")

    def __init__(self, connections: AppendConnections) -> None:
        self._connections = connections

    def __enter__(self) -> _AppendConnection:
        engine = self._connections._engine()
        if engine is None:  # pragma: no cover - a store holds its engine
            raise ConfigurationError("the engine of these append connections was garbage-collected")
        self._engine = engine
        try:
            self._connection = self._connections._take(engine)
        except (sa.exc.DBAPIError, psycopg.Error) as error:
            translated = translate_driver_error(engine, error)
            if translated is None:
                raise
            raise translated from error
        return self._connection

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None, traceback: Any) -> None:
        connection = self._connection
        if error is not None and (connection.driver.closed or connection.driver.pgconn.status != pq.ConnStatus.OK):
            self._connections._discard(connection)
        else:
            self._connections._give_back(connection)
        if isinstance(error, sa.exc.DBAPIError | psycopg.Error):
            translated = translate_driver_error(self._engine, error)
            if translated is not None:
                raise translated from error


class _AppendConnection:
    """One autocommit connection and the state of its last wake-up."""

    def __init__(self, driver: psycopg.Connection[Any]) -> None:
        self.driver = driver
        self.pid = os.getpid()
        self._pending = False

    def send_wake_up(self) -> None:
        """Send the wake-up (``pg_notify``) in its own transaction; do not wait for its result."""
        pgconn = self.driver.pgconn
        try:
            pgconn.send_query(_WAKE_UP)
            self._pending = True
        except (psycopg.Error, OSError) as error:
            logger.warning("wake-up not sent (%s); workers find the events on their timer", error)

    def answered(self) -> bool:
        """Whether the last wake-up's result has arrived (or none is pending), without waiting for it."""
        return not self._pending or wake_up_answered(self.driver.pgconn)

    def collect_wake_up(self) -> bool:
        """Read the last wake-up's result; False if the connection is unusable (the caller closes it)."""
        pgconn = self.driver.pgconn
        try:
            while self._pending and (result := pgconn.get_result()) is not None:
                if result.status != pq.ExecStatus.TUPLES_OK:
                    logger.warning(
                        "a wake-up failed (%s); workers find the events on their timer",
                        _message(result.error_message),
                    )
            self._pending = False
            # Read what the server sent while the connection was idle: a
            # terminated backend's goodbye marks the connection bad here.
            pgconn.consume_input()
        except (psycopg.Error, OSError):
            pass
        return pgconn.status == pq.ConnStatus.OK and pgconn.transaction_status == pq.TransactionStatus.IDLE

    def close(self) -> None:
        self.driver.close()


def wake_up_answered(pgconn: Any) -> bool:
    """Whether the answer to the wake-up in flight on ``pgconn`` has arrived; reads what has, never waits.

    True also for a broken connection: reading the answer then says so. Shared with the asyncio store.
    """
    try:
        pgconn.consume_input()
        return not pgconn.is_busy()
    except (psycopg.Error, OSError):
        return True


def _close_all(idle: list[_AppendConnection]) -> None:
    for connection in idle:
        if connection.pid == os.getpid():
            connection.close()
        else:
            _INHERITED.append(connection)


def _message(raw: bytes) -> str:
    return raw.decode(errors="replace").strip() or "connection failed"
