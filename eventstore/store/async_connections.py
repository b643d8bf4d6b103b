"""The asyncio store's connections: a small free list of autocommit psycopg ``AsyncConnection``, and their wake-ups.

Like the sync store's append connections (:mod:`eventstore.store.appender`)
and for the same reasons: autocommit makes one statement one transaction (one
round trip, and a reader never holds a transaction id, see the gap rule in
:mod:`eventstore.store`), and a connection is the store's own between two
calls, so no pool has to reset it. psycopg_pool is not needed for that.

The wake-up after an append's commit is sent the way the sync store sends
it: :meth:`AsyncConnections.send_wake_up` hands the query to libpq
(``PQsendQuery`` and a flush) once the commit has returned, and does not
wait for its answer, so the append costs its writer one round trip, not two.
The connection goes back to the free list with the wake-up in flight; the
answer is read when the connection is next taken (or the connection is
closed, which the server sees only after it has run the query it already
received). A wake-up the server refuses is logged there, never raised: the
append it followed committed long before. A connection whose wake-up cannot
be read back is closed and the next call opens another.

A call takes an idle connection whose wake-up has been answered; when every
idle connection's backend is still running its wake-up, it opens another
(while fewer than ``max_idle`` are open) rather than queue behind one, so
one writer's appends alternate between two backends and a wake-up held up
on the server (by the commit lock of other notifying transactions, say)
delays no append.

Bounds: each call in flight uses one connection; at most ``max_idle`` stay
open between calls.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import psycopg
import sqlalchemy as sa
from psycopg import pq

from eventstore.database import libpq_url, translate_driver_error
from eventstore.store.appender import wake_up_answered
from eventstore.store.sql import WAKE_UP

__all__ = ["AsyncConnections"]

logger = logging.getLogger(__name__)

# Sent as a plain (unprepared) query, as by the sync store: a prepared
# statement is session state a transaction-mode pooler does not keep.
_WAKE_UP = WAKE_UP.encode()

_CANCEL_TIMEOUT = 5.0
"""Seconds to wait for the server to accept the cancellation of a statement a cancelled task left running."""


class AsyncConnections:
    """Autocommit ``AsyncConnection`` to ``url``, at most ``max_idle`` kept open between calls.

    Each call takes a connection of its own, so concurrent tasks never share
    one. A connection that broke, or that a cancelled task left in the middle
    of a statement or a transaction, is closed instead of kept (a statement
    still running on the server is cancelled first, so that it cannot commit
    after its caller gave up).
    """

    def __init__(self, url: sa.URL, *, max_idle: int = 4) -> None:
        self.url = url
        self._conninfo = libpq_url(url)
        self._max_idle = max_idle
        self._idle: list[psycopg.AsyncConnection[Any]] = []
        # Connections with a wake-up sent and its answer not read yet.
        self._waking: set[psycopg.AsyncConnection[Any]] = set()
        self._open = 0  # in use and idle

    def connection(self) -> _Borrowed:
        """``async with`` it: an idle connection (or a new one), given back afterwards; driver errors translated."""
        return _Borrowed(self)

    async def send_wake_up(self, connection: psycopg.AsyncConnection[Any]) -> None:
        """Send the wake-up (:data:`~eventstore.store.sql.WAKE_UP`) on ``connection``, idle after a commit.

        Returns once libpq has written the query to the socket (at once, in
        practice: the server has just read everything before it), without
        waiting for the answer, which :meth:`connection` reads before it hands
        the connection out again. A failure to send is logged, never raised.
        """
        pgconn = connection.pgconn
        try:
            pgconn.send_query(_WAKE_UP)
            self._waking.add(connection)
            while pgconn.flush():  # 1: part of it is still in libpq's buffer
                await _ready(pgconn.socket, write=True)
        except (psycopg.Error, OSError) as error:
            logger.warning("wake-up not sent (%s); workers find the events on their timer", error)

    async def close(self) -> None:
        """Close the idle connections (one in use closes when given back over the limit, or later).

        A wake-up still in flight on one of them is not lost: the server has
        its query and runs it before it reads the close.
        """
        idle, self._idle[:] = list(self._idle), []
        for connection in idle:
            await self._close(connection)

    async def _take(self) -> psycopg.AsyncConnection[Any]:
        while self._idle:
            index = self._answered()
            if index is None:
                if self._open < self._max_idle:
                    # Every idle backend is still running its wake-up: a new connection's
                    # backend is free now, and it stays for the next calls (within max_idle).
                    break
                index = len(self._idle) - 1  # wait for the newest's answer
            connection = self._idle.pop(index)
            try:
                usable = await self._collect_wake_up(connection)
            except BaseException:  # cancelled while reading the wake-up's answer: state unknown
                await self._close(connection)
                raise
            if usable:
                return connection
            await self._close(connection)
        connection = await psycopg.AsyncConnection.connect(self._conninfo, autocommit=True)
        self._open += 1
        return connection

    async def _give_back(self, connection: psycopg.AsyncConnection[Any]) -> None:
        waking = connection in self._waking
        if not (_usable(connection) or (waking and connection.pgconn.status == pq.ConnStatus.OK)):
            self._waking.discard(connection)
            self._open -= 1
            await _discard(connection)
        elif len(self._idle) < self._max_idle:
            self._idle.append(connection)
        else:
            await self._close(connection)  # the server runs a wake-up it received before the close

    async def _close(self, connection: psycopg.AsyncConnection[Any]) -> None:
        self._waking.discard(connection)
        self._open -= 1
        await connection.close()

    def _answered(self) -> int | None:
        """The index of the idle connection to take: the newest with no wake-up answer to wait for (None: none)."""
        for index in range(len(self._idle) - 1, -1, -1):
            connection = self._idle[index]
            if connection not in self._waking or wake_up_answered(connection.pgconn):
                return index  # (a broken one too: _collect_wake_up says so, and it is closed)
        return None

    async def _collect_wake_up(self, connection: psycopg.AsyncConnection[Any]) -> bool:
        """Read the answer of the wake-up in flight on ``connection`` (if any); False if it is not usable."""
        if connection.closed:
            self._waking.discard(connection)
            return False
        pgconn = connection.pgconn
        try:
            if connection in self._waking:
                self._waking.discard(connection)
                while pgconn.flush():
                    await _ready(pgconn.socket, write=True)
                pgconn.consume_input()
                while pgconn.is_busy():
                    await _ready(pgconn.socket, write=False)
                    pgconn.consume_input()
                while (result := pgconn.get_result()) is not None:
                    if result.status != pq.ExecStatus.TUPLES_OK:
                        logger.warning(
                            "a wake-up failed (%s); workers find the events on their timer",
                            _message(result.error_message),
                        )
        except (psycopg.Error, OSError) as error:
            logger.warning("a wake-up's answer was lost (%s); workers find the events on their timer", error)
            return False
        return _usable(connection)


class _Borrowed:
    """One use of a connection of :class:`AsyncConnections` (a plain class: it wraps every call)."""

    __slots__ = ("_connection", "_connections")

    def __init__(self, connections: AsyncConnections) -> None:
        self._connections = connections

    async def __aenter__(self) -> psycopg.AsyncConnection[Any]:
        try:
            self._connection = await self._connections._take()
        except (sa.exc.DBAPIError, psycopg.Error) as error:
            translated = translate_driver_error(self._connections.url, error)
            if translated is None:
                raise
            raise translated from error
        return self._connection

    async def __aexit__(self, kind: type[BaseException] | None, error: BaseException | None, traceback: Any) -> None:
        await self._connections._give_back(self._connection)
        if isinstance(error, sa.exc.DBAPIError | psycopg.Error):
            translated = translate_driver_error(self._connections.url, error)
            if translated is not None:
                raise translated from error


def _usable(connection: psycopg.AsyncConnection[Any]) -> bool:
    """Open, healthy and idle (not inside a statement or a transaction a cancelled task left behind)."""
    if connection.closed:
        return False
    pgconn = connection.pgconn
    try:
        # Read what the server sent while the connection was idle: a
        # terminated backend's goodbye marks the connection bad here.
        pgconn.consume_input()
    except (psycopg.Error, OSError):
        return False
    return pgconn.status == pq.ConnStatus.OK and pgconn.transaction_status == pq.TransactionStatus.IDLE


async def _discard(connection: psycopg.AsyncConnection[Any]) -> None:
    """Close a connection that is not usable; cancel first a statement still running on the server.

    psycopg (3.3) already cancels the statement of a cancelled task and waits
    for it to end; this covers a driver that does not. Without it a statement
    waiting for a lock would go on and commit once the lock is released, after
    its caller had been told it was cancelled.
    """
    if not connection.closed and connection.pgconn.transaction_status == pq.TransactionStatus.ACTIVE:
        try:
            await connection.cancel_safe(timeout=_CANCEL_TIMEOUT)
        except (psycopg.Error, OSError) as error:
            logger.warning("could not cancel the statement of a cancelled call (%s)", error)
    await connection.close()


async def _ready(fileno: int, *, write: bool) -> None:
    """Wait until the socket ``fileno`` is writable (``write``) or readable."""
    loop = asyncio.get_running_loop()
    ready = loop.create_future()
    add, remove = (loop.add_writer, loop.remove_writer) if write else (loop.add_reader, loop.remove_reader)

    def wake() -> None:
        if not ready.done():
            ready.set_result(None)

    add(fileno, wake)
    try:
        await ready
    finally:
        remove(fileno)


def _message(raw: bytes) -> str:
    return raw.decode(errors="replace").strip() or "connection failed"
