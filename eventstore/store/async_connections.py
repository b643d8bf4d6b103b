"""The asyncio store's connections: a small free list of autocommit psycopg ``AsyncConnection``.

Like the sync store's append connections (:mod:`eventstore.store.appender`)
and for the same reasons: autocommit makes one statement one transaction (one
round trip, and a reader never holds a transaction id, see the gap rule in
:mod:`eventstore.store`), and a connection is the store's own between two
calls, so no pool has to reset it. psycopg_pool is not needed for that.

Bounds: each call in flight uses one connection; at most ``max_idle`` stay
open between calls.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import AsyncIterator
from typing import Any

import psycopg
import sqlalchemy as sa
from psycopg import pq

from eventstore.database import libpq_url, translate_driver_errors

__all__ = ["AsyncConnections"]

logger = logging.getLogger(__name__)


class AsyncConnections:
    """Autocommit ``AsyncConnection`` to ``url``, at most ``max_idle`` kept open between calls.

    Each call takes a connection of its own, so concurrent tasks never share
    one. A connection that broke, or that a cancelled task left in the middle
    of a statement or a transaction, is closed instead of kept.
    """

    def __init__(self, url: sa.URL, *, max_idle: int = 4) -> None:
        self.url = url
        self._conninfo = libpq_url(url)
        self._max_idle = max_idle
        self._idle: list[psycopg.AsyncConnection[Any]] = []

    @contextlib.asynccontextmanager
    async def connection(self) -> AsyncIterator[psycopg.AsyncConnection[Any]]:
        """An idle connection (or a new one), given back afterwards; driver errors translated into ours."""
        with translate_driver_errors(self.url):
            connection = await self._take()
            try:
                yield connection
            finally:
                await self._give_back(connection)

    async def close(self) -> None:
        """Close the idle connections (one in use closes when given back over the limit, or later)."""
        idle, self._idle[:] = list(self._idle), []
        for connection in idle:
            await connection.close()

    async def _take(self) -> psycopg.AsyncConnection[Any]:
        while self._idle:
            connection = self._idle.pop()
            if _usable(connection):
                return connection
            await connection.close()
        return await psycopg.AsyncConnection.connect(self._conninfo, autocommit=True)

    async def _give_back(self, connection: psycopg.AsyncConnection[Any]) -> None:
        if len(self._idle) < self._max_idle and _usable(connection):
            self._idle.append(connection)
        else:
            await connection.close()


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
