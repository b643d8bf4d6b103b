"""One moment of the store, as the page shows it: :class:`Snapshot`, gathered by :func:`take_snapshot`.

Projection status, open failures, head, the recent events (also within each
log filter asked for), each checkpoint's :class:`PickUp` and the category and
event type counts, read in a thread on a synchronous
:class:`~eventstore.store.EventStore`.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import sqlalchemy as sa

from eventstore import admin
from eventstore.projection import Projection
from eventstore.store import EventStore, sql
from eventstore.store.sql import FENCE

from .filters import LogFilter

__all__ = ["COUNTS_LIMIT", "LOG_EVENTS", "PickUp", "RecentEvent", "Snapshot", "take_snapshot"]

LOG_EVENTS = 15
COUNTS_LIMIT = 20


def _recent(log: LogFilter) -> str:
    """The last readable events (within ``log``), newest first; parameters from :meth:`LogFilter.parameters`."""
    return (
        "SELECT global_position, stream_id, event_type, recorded_at FROM events "  # noqa: S608 - constant fragments
        f"WHERE transaction_order < {FENCE}{sql.filter_clause(log.categories, log.event_types, log.stream_ids)} "
        f"ORDER BY transaction_order DESC, global_position DESC LIMIT {LOG_EVENTS}"
    )


# The event at each checkpoint: when it was appended, and when the batch that moved the checkpoint there began.
_PICKUPS = sa.text(
    "SELECT c.projection_name AS name, c.global_position AS position, c.updated_at, e.recorded_at "
    "FROM projection_checkpoints c LEFT JOIN events e ON e.global_position = c.global_position "
    "WHERE c.projection_name = ANY(CAST(:names AS text[]))"
)
_COUNTS = "SELECT {column} AS name, count(*) AS n FROM events GROUP BY 1 ORDER BY 2 DESC, 1 LIMIT {limit}"


@dataclass(frozen=True, slots=True)
class RecentEvent:
    position: int
    stream_id: str
    event_type: str
    recorded_at: datetime


@dataclass(frozen=True, slots=True)
class PickUp:
    """The event a checkpoint is at: when it was appended, and when the batch that moved the checkpoint there began.

    Both are the database's ``now()``, the start of a transaction, on one clock:
    ``recorded_at`` is the appending transaction's (the events column's default),
    ``batch_started_at`` the checkpoint's ``updated_at``, set by the batch's first
    statement (:data:`eventstore.runner.checkpoints._ADVANCE_FROM`) after the
    runner read the events. Other writers of the row (a lease taken or
    released, a failure recorded) also set ``updated_at``: :class:`History`
    trusts it only when it saw the checkpoint move under a held lease.
    """

    position: int
    batch_started_at: datetime
    recorded_at: datetime | None
    """None at position 0, or where the event is not readable (never expected: events are never deleted)."""

    @property
    def seconds(self) -> float | None:
        """``batch_started_at - recorded_at`` in seconds (clamped at 0), or None."""
        if self.recorded_at is None:
            return None
        return max(0.0, (self.batch_started_at - self.recorded_at).total_seconds())


@dataclass(frozen=True, slots=True)
class Snapshot:
    """Everything the page shows at one moment (the one place that gathers it)."""

    taken_at: datetime
    head: int
    statuses: list[admin.ProjectionStatus]
    failures: dict[str, admin.ProjectionFailure]
    recent: list[RecentEvent]
    categories: list[tuple[str, int]]
    event_types: list[tuple[str, int]]
    pickups: dict[str, PickUp] = field(default_factory=dict)
    """Each projection's :class:`PickUp`, by name (none for a projection without a checkpoint row)."""
    logs: dict[LogFilter, list[RecentEvent]] = field(default_factory=dict)
    """The last events within each filter asked for (``recent`` is the unfiltered log)."""


def take_snapshot(
    store: EventStore,
    projections: Sequence[Projection | str],
    counts: tuple[list[Any], list[Any]] | None = None,
    *,
    log_filters: Collection[LogFilter] = (),
) -> Snapshot:
    """Status, open failures, head, recent events (also within each of ``log_filters``), pick-ups and counts.

    ``counts``: reuse these instead of scanning the table.
    """
    statuses = admin.projection_status(store, projections) if projections else []
    failures = {}
    for status in statuses:
        if status.state == "failed":
            open_failures = admin.list_failures(store, status.name, open_only=True)
            if open_failures:
                failures[status.name] = open_failures[-1]
    pickups: dict[str, PickUp] = {}
    with store.engine.connect() as connection:
        recent = [RecentEvent(*row) for row in connection.exec_driver_sql(_recent(LogFilter())).all()]
        logs = {
            log: [RecentEvent(*row) for row in connection.exec_driver_sql(_recent(log), log.parameters()).all()]
            for log in log_filters
            if log
        }
        if statuses:
            rows = connection.execute(_PICKUPS, {"names": [status.name for status in statuses]}).all()
            pickups = {row.name: PickUp(int(row.position), row.updated_at, row.recorded_at) for row in rows}
        if counts is None:
            counts = (_counts(connection, "category"), _counts(connection, "event_type"))
    head = statuses[0].head if statuses else store.head_position()
    return Snapshot(
        taken_at=datetime.now(UTC),
        head=head,
        statuses=statuses,
        failures=failures,
        recent=recent,
        categories=list(counts[0]),
        event_types=list(counts[1]),
        pickups=pickups,
        logs=logs,
    )


def _counts(connection: Any, column: str) -> list[Any]:
    rows = connection.exec_driver_sql(_COUNTS.format(column=column, limit=COUNTS_LIMIT)).all()
    return [(row.name, int(row.n)) for row in rows]
