"""The runner's own connections: client-side keepalives, a bounded pool, no prepared statements behind a pooler.

Keepalives are libpq's client-side ones (``keepalives_*``): a dead server or
network is noticed within seconds. They need no startup parameter, so every
pooler accepts them. Server-side keepalives (``tcp_keepalives_idle``) could
only travel in the ``options`` startup parameter, which PgBouncer refuses
(``FATAL: unsupported startup parameter in options``) unless told to drop it
(``ignore_startup_parameters = options``); nothing needs them any more, because
a projection's ownership is a lease row with a fencing token
(:mod:`eventstore.runner.ownership`) that expires by itself, not session state
that a backend of a vanished host would keep until its TCP connection died.

Prepared statements: psycopg prepares a statement on the server after
``prepare_threshold`` (5) executions on one connection, and a transaction-mode
pooler (PgBouncer before 1.21) loses it (``InvalidSqlStatementName``,
``DuplicatePreparedStatement``). A runner repeats the same few statements
forever, so its engine makes the store's choice (:mod:`eventstore.store.poolers`:
decided at the first connection, shared by every store on the same engine)
and turns preparation off (``prepare_threshold = None``) wherever it is not
a direct connection.
"""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Engine

from eventstore.database import CLIENT_KEEPALIVES
from eventstore.errors import ConfigurationError
from eventstore.store.poolers import guard_engine, prepared_statements_for, share_choice

__all__ = ["KEEPALIVE_OPTIONS", "session_engine"]

KEEPALIVE_OPTIONS: dict[str, Any] = {**CLIENT_KEEPALIVES}
"""libpq connection parameters for the runner's long-lived connections: client-side keepalives and a
connect timeout, no ``options`` startup parameter (poolers refuse it)."""


def session_engine(
    engine: Engine,
    *,
    application_name: str = "eventstore-runner",
    pool_size: int | None = None,
    prepared_statements: bool | None = None,
) -> Engine:
    """An engine on ``engine``'s URL for the runner: keepalives on, named for ``pg_stat_activity``.

    ``pool_size``: None opens a connection per checkout and closes it on
    return (``NullPool``); an int keeps a pool of exactly that many
    connections (``QueuePool``, no overflow), so the engine never holds more.
    ``prepared_statements``: as the store's argument; None (the default)
    shares the automatic choice of the stores on ``engine``
    (:func:`eventstore.store.poolers.prepared_statements_for`), made at the
    first connection of either, so no server-side statement is ever prepared
    through a pooler or proxy. The caller disposes of the returned engine.

    Raises:
        ConfigurationError: ``pool_size`` is not a positive integer.
    """
    if pool_size is None:
        pooling: dict[str, Any] = {"poolclass": sa.NullPool}
    elif isinstance(pool_size, int) and not isinstance(pool_size, bool) and pool_size >= 1:
        pooling = {"poolclass": sa.QueuePool, "pool_size": pool_size, "max_overflow": 0}
    else:
        raise ConfigurationError(f"pool_size must be a positive integer or None, got {pool_size!r}")
    choice = prepared_statements_for(engine, prepared_statements)
    runner_engine = sa.create_engine(
        engine.url, **pooling, connect_args={**KEEPALIVE_OPTIONS, "application_name": application_name}
    )
    if prepared_statements is None:
        share_choice(runner_engine, choice)  # stores made on it (the runner's reads) decide nothing again

    guard_engine(runner_engine, choice)
    return runner_engine
