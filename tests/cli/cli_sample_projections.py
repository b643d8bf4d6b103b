"""Projections the CLI tests load with ``--projections cli_sample_projections``."""

from __future__ import annotations

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from eventstore.projection import Projection, handles
from eventstore.types import RecordedEvent


class StreamCounts(Projection):
    """Events per order stream; can forget one stream (so `streams replay --projection` works)."""

    name = "cli_stream_counts"
    categories = ("order",)

    def setup(self, conn: Connection) -> None:
        conn.execute(
            sa.text("CREATE TABLE IF NOT EXISTS cli_stream_counts (stream_id text PRIMARY KEY, events int NOT NULL)")
        )

    def reset(self, conn: Connection) -> None:
        conn.execute(sa.text("DELETE FROM cli_stream_counts"))

    def forget_stream(self, stream_id: str, conn: Connection) -> None:
        conn.execute(sa.text("DELETE FROM cli_stream_counts WHERE stream_id = :s"), {"s": stream_id})

    @handles("OrderPlaced", "OrderPaid")
    def count(self, event: RecordedEvent, conn: Connection) -> None:
        conn.execute(
            sa.text(
                "INSERT INTO cli_stream_counts VALUES (:s, 1) "
                "ON CONFLICT (stream_id) DO UPDATE SET events = cli_stream_counts.events + 1"
            ),
            {"s": event.stream_id},
        )

    @handles("Poison")
    def poison(self, event: RecordedEvent, conn: Connection) -> None:
        raise ValueError(f"cannot digest event {event.global_position}")


class Totals(Projection):
    """A second projection without forget_stream()."""

    name = "cli_totals"

    def setup(self, conn: Connection) -> None:
        conn.execute(sa.text("CREATE TABLE IF NOT EXISTS cli_totals (id int PRIMARY KEY, events int NOT NULL)"))

    def reset(self, conn: Connection) -> None:
        conn.execute(sa.text("DELETE FROM cli_totals"))

    @handles("OrderPlaced")
    def placed(self, event: RecordedEvent, conn: Connection) -> None:
        conn.execute(
            sa.text(
                "INSERT INTO cli_totals VALUES (1, 1) ON CONFLICT (id) DO UPDATE SET events = cli_totals.events + 1"
            )
        )


ALL = [StreamCounts(), Totals()]
