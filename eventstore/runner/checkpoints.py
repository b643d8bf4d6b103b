"""Read and advance projection checkpoints, forward only; record poison events.

A checkpoint is the ``(transaction_order, global_position)`` cursor of the last
event a projection has consumed, in the store's global order (see the gap rule
in :mod:`eventstore.store`). Everything at or before it has been applied (or
passed over by the projection's filters); nothing after it has.

Every function takes the caller's SQLAlchemy connection and runs inside the
caller's transaction: the runner moves the checkpoint in the same transaction
as the handlers' writes, which is what makes database read models
exactly-once.

Writers of one projection serialise on its checkpoint row: a runner's batch
begins with :func:`advance_from` (one guarded ``UPDATE``), an operator's
``skip``/``retry`` and ``replay_stream`` with :func:`lock` (``SELECT ... FOR
UPDATE``). So they never interleave, and as all take the checkpoint row
before any read-model row, they cannot deadlock.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from eventstore.store.sql import WAKE_UP
from eventstore.types import RecordedEvent

__all__ = [
    "Checkpoint",
    "Cursor",
    "ProjectionFailure",
    "StaleCheckpoint",
    "advance",
    "advance_from",
    "clear_failure",
    "cursor_of",
    "ensure",
    "load",
    "load_all",
    "list_failures",
    "lock",
    "mark_failed",
    "move_to",
    "record_failure",
    "resolve_failure",
    "resolve_open_failures",
    "wake_runners",
]

Cursor = tuple[int, int]
"""``(transaction_order, global_position)``: a place in the store's global order."""


class StaleCheckpoint(Exception):
    """The stored checkpoint is not where the writer expected it (an operator moved it): re-read it."""


def cursor_of(event: RecordedEvent) -> Cursor:
    """The cursor just at ``event``."""
    return event.transaction_order, event.global_position


_COLUMNS = (
    "projection_name, transaction_order::text AS transaction_order, global_position, state, "
    "failed_position, last_error, last_traceback, owner, updated_at, lease_token, lease_expires_at"
)

_ENSURE = sa.text(
    "INSERT INTO projection_checkpoints (projection_name) VALUES (:name) ON CONFLICT (projection_name) DO NOTHING"
)
_LOAD = sa.text(f"SELECT {_COLUMNS} FROM projection_checkpoints WHERE projection_name = :name")  # noqa: S608
_LOAD_ALL = sa.text(
    f"SELECT {_COLUMNS} FROM projection_checkpoints "  # noqa: S608 - constant
    "WHERE projection_name = ANY(CAST(:names AS text[]))"
)
# Whoever holds a checkpoint row lock makes the server notice within seconds if its
# host vanishes (no FIN), so that the lock, and with it the projection, is not held
# for the kernel's default two hours: server-side TCP keepalives for the rest of the
# transaction only (set_config(..., true); on a unix socket they do nothing). A row
# subquery in FROM is evaluated exactly once. Through a pooler they apply to the
# pooler's connection: the pooler's own client keepalives (PgBouncer's tcp_keepidle)
# cover its clients.
_KEEPALIVE = (
    "(SELECT set_config('tcp_keepalives_idle', '5', true), set_config('tcp_keepalives_interval', '2', true), "
    "set_config('tcp_keepalives_count', '3', true)) AS keepalive"
)
_LOCK = sa.text(
    f"SELECT {_COLUMNS} FROM projection_checkpoints, {_KEEPALIVE} "  # noqa: S608 - constants
    "WHERE projection_name = :name FOR UPDATE OF projection_checkpoints"
)
# The forward-only guard: a row comes back only if the checkpoint really moves.
_ADVANCE = sa.text(
    """
    UPDATE projection_checkpoints
    SET transaction_order = CAST(:order AS xid8), global_position = :position, updated_at = now()
    WHERE projection_name = :name
      AND (transaction_order, global_position) < (CAST(:order AS xid8), :position)
    RETURNING global_position
    """
)
# Take the row lock, check the lease's fencing token, renew the lease and move the
# checkpoint, in one statement at the start of a batch (see eventstore.runner.ownership).
_ADVANCE_FROM = sa.text(
    f"""
    UPDATE projection_checkpoints
    SET transaction_order = CAST(:order AS xid8), global_position = :position, updated_at = now(),
        lease_expires_at = clock_timestamp() + make_interval(secs => :ttl)
    FROM {_KEEPALIVE}
    WHERE projection_name = :name AND state <> 'failed' AND lease_token = :token
      AND (transaction_order, global_position) = (CAST(:expected_order AS xid8), :expected_position)
      AND (transaction_order, global_position) < (CAST(:order AS xid8), :position)
    RETURNING global_position
    """  # noqa: S608 - constants
)
_MOVE_TO = sa.text(
    "UPDATE projection_checkpoints SET transaction_order = CAST(:order AS xid8), global_position = :position, "
    "updated_at = now() WHERE projection_name = :name"
)
_MARK_FAILED = sa.text(
    "UPDATE projection_checkpoints SET state = 'failed', failed_position = :position, last_error = :error, "
    "last_traceback = :traceback, updated_at = now() WHERE projection_name = :name"
)
_CLEAR_FAILURE = sa.text(
    "UPDATE projection_checkpoints SET state = :state, failed_position = NULL, last_error = NULL, "
    "last_traceback = NULL, updated_at = now() WHERE projection_name = :name"
)
_RECORD_FAILURE = sa.text(
    """
    INSERT INTO projection_failures
        (projection_name, global_position, event_id, event_type, stream_id, error, traceback, attempts, status)
    VALUES (:name, :position, :event_id, :event_type, :stream_id, :error, :traceback, :attempts, :status)
    """
)


@dataclass(frozen=True, slots=True)
class Checkpoint:
    """A projection's stored checkpoint and state."""

    projection_name: str
    cursor: Cursor
    state: str
    failed_position: int | None
    last_error: str | None
    last_traceback: str | None
    owner: str | None
    updated_at: datetime
    lease_token: int = 0
    """The fencing token of the last lease taken (see :mod:`eventstore.runner.ownership`)."""
    lease_expires_at: datetime | None = None

    @property
    def position(self) -> int:
        """The ``global_position`` part of the cursor (0: nothing consumed yet)."""
        return self.cursor[1]

    @property
    def failed(self) -> bool:
        """True while the projection is stopped at a poison event."""
        return self.state == "failed"


@dataclass(frozen=True, slots=True)
class ProjectionFailure:
    """One recorded poison event (``status``: failed, skipped or retried)."""

    projection_name: str
    global_position: int
    event_id: Any
    event_type: str | None
    stream_id: str | None
    error: str
    status: str
    recorded_at: datetime
    attempts: int = 1
    traceback: str | None = None


def _checkpoint(row: Any) -> Checkpoint:
    return Checkpoint(
        projection_name=row.projection_name,
        cursor=(int(row.transaction_order), int(row.global_position)),
        state=row.state,
        failed_position=row.failed_position,
        last_error=row.last_error,
        last_traceback=row.last_traceback,
        owner=row.owner,
        updated_at=row.updated_at,
        lease_token=int(row.lease_token),
        lease_expires_at=row.lease_expires_at,
    )


def ensure(conn: Connection, name: str) -> None:
    """Create the checkpoint row of ``name`` at the start of the store, if missing."""
    conn.execute(_ENSURE, {"name": name})


def load(conn: Connection, name: str) -> Checkpoint | None:
    """The checkpoint of ``name`` (None when it has none yet)."""
    row = conn.execute(_LOAD, {"name": name}).one_or_none()
    return None if row is None else _checkpoint(row)


def load_all(conn: Connection, names: list[str]) -> dict[str, Checkpoint]:
    """The checkpoints of ``names`` that exist, by name."""
    return {row.projection_name: _checkpoint(row) for row in conn.execute(_LOAD_ALL, {"names": names})}


def lock(conn: Connection, name: str) -> Checkpoint | None:
    """Lock the checkpoint row for the rest of the transaction and return it.

    Every writer of a projection's read model calls this first (see the module
    docstring). Holding the row lock assigns a transaction id, so call it in
    the writing transaction, never while reading events.
    """
    row = conn.execute(_LOCK, {"name": name}).one_or_none()
    return None if row is None else _checkpoint(row)


def advance(conn: Connection, name: str, cursor: Cursor) -> bool:
    """Move the checkpoint forward to ``cursor``; False (nothing changed) if it is not ahead.

    The caller must roll back on False: another writer got there first.
    """
    order, position = cursor
    row = conn.execute(_ADVANCE, {"name": name, "order": str(order), "position": position}).one_or_none()
    return row is not None


def advance_from(conn: Connection, name: str, expected: Cursor, cursor: Cursor, *, token: int, ttl: float) -> bool:
    """Move the checkpoint forward from exactly ``expected`` to ``cursor``, locking its row, under lease ``token``.

    False (nothing changed) when the checkpoint is elsewhere, the projection is
    failed, ``cursor`` is not ahead, or the lease's token is no longer
    ``token`` (another owner took over): roll back. A batch calls this first,
    so that it takes the row lock before any read-model write (see the module
    docstring) and needs one statement for the lock, the fencing check, the
    lease's renewal (``ttl`` seconds from now) and the move.
    """
    parameters = {
        "name": name,
        "order": str(cursor[0]),
        "position": cursor[1],
        "expected_order": str(expected[0]),
        "expected_position": expected[1],
        "token": token,
        "ttl": ttl,
    }
    return conn.execute(_ADVANCE_FROM, parameters).one_or_none() is not None


def move_to(conn: Connection, name: str, cursor: Cursor) -> None:
    """Set the checkpoint to ``cursor``, backwards too (reset and rebuild only)."""
    order, position = cursor
    conn.execute(_MOVE_TO, {"name": name, "order": str(order), "position": position})


def mark_failed(conn: Connection, name: str, position: int, error: str, traceback: str) -> None:
    """Stop the projection at the poison event ``position`` (the checkpoint stays before it)."""
    conn.execute(_MARK_FAILED, {"name": name, "position": position, "error": error, "traceback": traceback})


def clear_failure(conn: Connection, name: str, *, state: str = "idle") -> None:
    """Forget the failed state so that a runner applies the projection again."""
    conn.execute(_CLEAR_FAILURE, {"name": name, "state": state})


def record_failure(
    conn: Connection,
    name: str,
    event: RecordedEvent,
    *,
    error: str,
    traceback: str,
    attempts: int,
    status: str,
) -> None:
    """Store a poison event in ``projection_failures`` with ``status`` failed or skipped."""
    conn.execute(
        _RECORD_FAILURE,
        {
            "name": name,
            "position": event.global_position,
            "event_id": event.event_id,
            "event_type": event.type,
            "stream_id": event.stream_id,
            "error": error,
            "traceback": traceback,
            "attempts": attempts,
            "status": status,
        },
    )


_LIST_FAILURES = sa.text(
    "SELECT projection_name, global_position, event_id, event_type, stream_id, error, status, recorded_at, "
    "attempts, traceback FROM projection_failures "
    "WHERE (CAST(:name AS text) IS NULL OR projection_name = CAST(:name AS text)) "
    "AND (CAST(:status AS text) IS NULL OR status = CAST(:status AS text)) ORDER BY id"
)
_RESOLVE_OPEN_FAILURES = sa.text(
    "UPDATE projection_failures SET status = :status WHERE projection_name = :name AND status = 'failed'"
)
_RESOLVE_FAILURE = sa.text(
    "UPDATE projection_failures SET status = :status "
    "WHERE projection_name = :name AND global_position = :position AND status = 'failed'"
)


def list_failures(conn: Connection, name: str | None = None, *, status: str | None = None) -> list[ProjectionFailure]:
    """Recorded poison events, oldest first (of one projection, or of all; with one ``status``, or any)."""
    return [
        ProjectionFailure(
            projection_name=row.projection_name,
            global_position=row.global_position,
            event_id=row.event_id,
            event_type=row.event_type,
            stream_id=row.stream_id,
            error=row.error,
            status=row.status,
            recorded_at=row.recorded_at,
            attempts=row.attempts,
            traceback=row.traceback,
        )
        for row in conn.execute(_LIST_FAILURES, {"name": name, "status": status})
    ]


def resolve_open_failures(conn: Connection, name: str, status: str) -> int:
    """Mark every open failure of ``name`` as ``status`` (a reset or rebuild starts afresh); how many changed."""
    return int(conn.execute(_RESOLVE_OPEN_FAILURES, {"name": name, "status": status}).rowcount)


def resolve_failure(conn: Connection, name: str, position: int, status: str) -> int:
    """Mark the open failure at ``position`` as ``retried`` or ``skipped``; how many rows changed."""
    return int(conn.execute(_RESOLVE_FAILURE, {"name": name, "position": position, "status": status}).rowcount)


def wake_runners(conn: Connection) -> None:
    """Send the store's wake-up notification (at commit), so runners look at their checkpoints now."""
    conn.exec_driver_sql(WAKE_UP)
