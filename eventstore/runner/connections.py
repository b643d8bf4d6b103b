"""The runner's own long-lived connections: keepalives on, no pool.

A projection's session lock must die with its connection, so session
connections never come from a pool (a pooled connection would outlive the
runner's use of it, or carry the lock to someone else).
"""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Engine

from eventstore.database import CLIENT_KEEPALIVES

__all__ = ["KEEPALIVE_OPTIONS", "session_engine"]

KEEPALIVE_OPTIONS: dict[str, Any] = {
    **CLIENT_KEEPALIVES,
    # The server side too: a backend whose client host vanished (no FIN) goes away,
    # releasing its session advisory locks.
    "options": "-c tcp_keepalives_idle=5 -c tcp_keepalives_interval=2 -c tcp_keepalives_count=3",
}
"""Connection parameters for the runner's long-lived connections."""


def session_engine(engine: Engine, *, application_name: str = "eventstore-runner") -> Engine:
    """An engine like ``engine`` for session connections: no pool, keepalives on, named for pg_stat_activity."""
    return sa.create_engine(
        engine.url,
        poolclass=sa.NullPool,
        connect_args={**KEEPALIVE_OPTIONS, "application_name": application_name},
    )
