"""The projections the catch-up measurement runs: a no-op, one counting in one row, one writing a row per event."""

from __future__ import annotations

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from eventstore import Projection, RecordedEvent, handles

__all__ = [
    "CountBatchProjection",
    "CountProjection",
    "NoopProjection",
    "RowBatchProjection",
    "RowPerEventProjection",
]


class NoopProjection(Projection):
    """(0) A handler that does nothing: the runner's own ceiling (read, decode, dispatch, checkpoint per batch)."""

    name = "bench_noop"
    categories = ("bench",)

    @handles("BenchEvent")
    def ignored(self, event: RecordedEvent, conn: Connection) -> None:
        return None


class CountProjection(Projection):
    """(a) One UPDATE of a single counter row per event."""

    name = "bench_count"
    categories = ("bench",)

    def setup(self, conn: Connection) -> None:
        conn.execute(sa.text("CREATE TABLE IF NOT EXISTS bench_count (id int PRIMARY KEY, n bigint NOT NULL)"))
        conn.execute(sa.text("INSERT INTO bench_count VALUES (1, 0) ON CONFLICT (id) DO NOTHING"))

    def reset(self, conn: Connection) -> None:
        conn.execute(sa.text("UPDATE bench_count SET n = 0"))

    @handles("BenchEvent")
    def counted(self, event: RecordedEvent, conn: Connection) -> None:
        conn.execute(sa.text("UPDATE bench_count SET n = n + 1 WHERE id = 1"))


class RowPerEventProjection(Projection):
    """(b) One INSERT per event into a table keyed by event id."""

    name = "bench_rows"
    categories = ("bench",)

    def setup(self, conn: Connection) -> None:
        conn.execute(
            sa.text(
                "CREATE TABLE IF NOT EXISTS bench_rows (event_id uuid PRIMARY KEY, stream_id text NOT NULL, "
                "amount bigint NOT NULL)"
            )
        )

    def reset(self, conn: Connection) -> None:
        conn.execute(sa.text("TRUNCATE bench_rows"))

    @handles("BenchEvent")
    def row(self, event: RecordedEvent, conn: Connection) -> None:
        conn.execute(
            sa.text("INSERT INTO bench_rows VALUES (:event_id, :stream_id, :amount)"),
            {"event_id": event.event_id, "stream_id": event.stream_id, "amount": event.data["amount"]},
        )


class CountBatchProjection(CountProjection):
    """(a) with :meth:`Projection.apply_batch`: one UPDATE per batch (the idiomatic fast projection)."""

    def apply_batch(self, events: list[RecordedEvent], conn: Connection) -> None:
        conn.execute(sa.text("UPDATE bench_count SET n = n + :count WHERE id = 1"), {"count": len(events)})


class RowBatchProjection(RowPerEventProjection):
    """(b) with :meth:`Projection.apply_batch`: one multi-row INSERT per batch."""

    def apply_batch(self, events: list[RecordedEvent], conn: Connection) -> None:
        conn.execute(
            sa.text(
                "INSERT INTO bench_rows SELECT * FROM unnest(CAST(:ids AS uuid[]), CAST(:streams AS text[]), "
                "CAST(:amounts AS bigint[]))"
            ),
            {
                "ids": [event.event_id for event in events],
                "streams": [event.stream_id for event in events],
                "amounts": [event.data["amount"] for event in events],
            },
        )
