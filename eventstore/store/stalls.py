"""Who holds back the gap rule's fence: the stall caveat made visible.

Readers stop at the oldest transaction still running in the whole cluster
(see :mod:`eventstore.store`). A transaction that holds a transaction id, in
any database of the cluster, therefore holds back every event committed after
it began until it ends. :func:`held_back` counts the events waiting, and
:func:`fence_blockers` names the transactions that keep them waiting, from
``pg_stat_activity`` (a role without ``pg_read_all_stats`` sees other roles'
sessions with some columns empty).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from sqlalchemy.engine import Engine

from eventstore.database import translate_driver_errors
from eventstore.store.sql import FENCE

__all__ = ["Blocker", "fence_blockers", "format_duration", "held_back"]

_HELD_BACK = f"SELECT count(*) FROM events WHERE transaction_order >= {FENCE}"  # noqa: S608 - constant

# A running transaction blocks a held-back event when its id is older than the
# event's order key (age() compares the 32-bit ids the two views share).
_BLOCKERS = f"""
    WITH held AS (SELECT max(transaction_order) AS newest FROM events WHERE transaction_order >= {FENCE})
    SELECT a.pid, a.datname, a.application_name, a.state,
           CAST(extract(epoch FROM now() - a.xact_start) AS float8) AS transaction_seconds, a.query_start
    FROM pg_stat_activity a CROSS JOIN held
    WHERE held.newest IS NOT NULL AND a.backend_xid IS NOT NULL AND a.pid <> pg_backend_pid()
      AND age(a.backend_xid) > age(xid(held.newest))
    ORDER BY age(a.backend_xid) DESC
    LIMIT 5
"""  # noqa: S608 - constant


@dataclass(frozen=True, slots=True)
class Blocker:
    """A running transaction that holds back the fence."""

    pid: int
    database: str | None
    application_name: str | None
    state: str | None
    """``pg_stat_activity.state``: e.g. ``active``, ``idle in transaction``."""
    transaction_seconds: float | None
    """How long its transaction has been open."""
    query_start: datetime | None

    def describe(self) -> str:
        """``pid 4242 (app `billing-batch`, database `postgres`, idle in transaction for 3 min)``."""
        parts = [f"app `{self.application_name}`" if self.application_name else "no application name"]
        parts.append(f"database `{self.database}`" if self.database else "database unknown")
        state = self.state or "state unknown (needs pg_read_all_stats)"
        if self.transaction_seconds is not None:
            state += f" for {format_duration(self.transaction_seconds)}"
        parts.append(state)
        return f"pid {self.pid} ({', '.join(parts)})"


def held_back(engine: Engine) -> int:
    """How many committed events wait behind a still-running transaction."""
    with translate_driver_errors(engine), engine.connect() as connection:
        return int(connection.exec_driver_sql(_HELD_BACK).scalar_one())


def fence_blockers(engine: Engine) -> list[Blocker]:
    """The running transactions (oldest first, at most 5) that hold back events of this database."""
    with translate_driver_errors(engine), engine.connect() as connection:
        rows = connection.exec_driver_sql(_BLOCKERS).all()
    return [
        Blocker(
            pid=int(row.pid),
            database=row.datname,
            application_name=row.application_name or None,
            state=row.state,
            transaction_seconds=row.transaction_seconds,
            query_start=row.query_start,
        )
        for row in rows
    ]


def format_duration(seconds: float) -> str:
    """A duration for people: ``42 s`` under two minutes, ``17 min`` under two hours, else ``3.5 h``."""
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 7200:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"
