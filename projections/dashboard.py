"""``dashboard_daily``: orders and revenue per day and status.

``dashboard_orders`` keeps each order's day, status and total (the
projection's state), so a status change moves the order from one
``(day, status)`` cell to another. A batch adds up, per cell, what its orders
brought in and took out, upserts each touched cell once and deletes the
cells left with no orders (see :mod:`projections.batching`).
"""

from __future__ import annotations

from datetime import date

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from eventstore import RecordedEvent

from .batching import Order, OrderBatch, OrderProjection, add_to, bigint, columns
from .orders import day_of

__all__ = ["DashboardDaily"]

_CREATE = (
    """
    CREATE TABLE IF NOT EXISTS dashboard_daily (
        day     date    NOT NULL,
        status  text    NOT NULL,
        orders  integer NOT NULL,
        revenue bigint  NOT NULL,
        PRIMARY KEY (day, status)
    )
    """,
    """
    CREATE TABLE IF NOT EXISTS dashboard_orders (
        order_id  text   PRIMARY KEY,
        stream_id text   NOT NULL,
        day       date   NOT NULL,
        status    text   NOT NULL,
        total     bigint NOT NULL
    )
    """,
)
_LOAD = sa.text("SELECT order_id, status, day, total FROM dashboard_orders WHERE order_id = ANY(CAST(:ids AS text[]))")
_INSERT_COLUMNS = ("order_id", "stream_id", "day", "status", "total")
_INSERT = sa.text(
    """
    INSERT INTO dashboard_orders (order_id, stream_id, day, status, total)
    SELECT * FROM unnest(CAST(:order_id AS text[]), CAST(:stream_id AS text[]), CAST(:day AS date[]),
                         CAST(:status AS text[]), CAST(:total AS bigint[]))
    """
)
_UPDATE_COLUMNS = ("order_id", "status")
_UPDATE = sa.text(
    """
    UPDATE dashboard_orders o SET status = u.status
    FROM unnest(CAST(:order_id AS text[]), CAST(:status AS text[])) AS u(order_id, status)
    WHERE o.order_id = u.order_id
    """
)
_ADD_COLUMNS = ("day", "status", "orders", "revenue")
_ADD = sa.text(
    """
    INSERT INTO dashboard_daily (day, status, orders, revenue)
    SELECT * FROM unnest(CAST(:day AS date[]), CAST(:status AS text[]), CAST(:orders AS integer[]),
                         CAST(:revenue AS bigint[]))
    ON CONFLICT (day, status) DO UPDATE
    SET orders = dashboard_daily.orders + EXCLUDED.orders, revenue = dashboard_daily.revenue + EXCLUDED.revenue
    """
)
_DROP_EMPTY = sa.text(
    """
    DELETE FROM dashboard_daily d USING unnest(CAST(:day AS date[]), CAST(:status AS text[])) AS k(day, status)
    WHERE d.day = k.day AND d.status = k.status AND d.orders = 0
    """
)
_FORGET = sa.text("DELETE FROM dashboard_orders WHERE stream_id = :stream_id RETURNING day, status, total")


class DashboardDaily(OrderProjection):
    """Per day (of ``placed_at``) and current status: number of orders and their total."""

    name = "dashboard_daily"
    create = _CREATE
    tables = ("dashboard_daily", "dashboard_orders")
    load = _LOAD

    def forget_stream(self, stream_id: str, conn: Connection) -> None:
        """Take the order of ``stream_id`` out of its cell."""
        cells: dict[tuple[date | None, str], list[int]] = {}
        for row in conn.execute(_FORGET, {"stream_id": stream_id}).all():
            add_to(cells, (row.day, row.status), (1, int(row.total)), -1)
        _add_cells(conn, cells)

    def place(self, event: RecordedEvent) -> tuple[str, Order]:
        """Every ``OrderPlaced`` is an order, counted on the day of ``placed_at``."""
        data = event.data
        day, total, order_id = day_of(data), int(data["total"]), str(data["order_id"])
        return order_id, Order("placed", event.stream_id, total=bigint(total), day=day)

    def write(self, batch: OrderBatch, conn: Connection) -> None:
        """Store the new and moved orders, then move their contributions between cells."""
        if batch.placed:
            new = [(order_id, o.stream_id, o.day, o.status, o.total) for order_id, o in batch.placed.items()]
            conn.execute(_INSERT, columns(_INSERT_COLUMNS, new))
        if batch.moved:
            moved = [(order_id, o.status) for order_id, o in batch.moved.items()]
            conn.execute(_UPDATE, columns(_UPDATE_COLUMNS, moved))
        cells: dict[tuple[date | None, str], list[int]] = {}
        for before, after in batch.changes():
            if before is not None:
                add_to(cells, (before.day, before.status), (1, before.total), -1)
            add_to(cells, (after.day, after.status), (1, after.total), 1)
        _add_cells(conn, cells)


def _add_cells(conn: Connection, cells: dict[tuple[date | None, str], list[int]]) -> None:
    """Add (orders, revenue) to each (day, status) cell; delete the cells left with no orders."""
    rows = [(day, status, orders, revenue) for (day, status), (orders, revenue) in cells.items() if orders or revenue]
    if rows:
        conn.execute(_ADD, columns(_ADD_COLUMNS, rows))
        conn.execute(_DROP_EMPTY, columns(("day", "status"), rows))
