"""``order_summaries``: one row per order with its customer, total, day and current status.

The table is also the projection's state: a batch inserts its new orders and
updates the orders whose status moved (see :mod:`projections.batching`).
"""

from __future__ import annotations

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from eventstore import RecordedEvent

from .batching import Order, OrderBatch, OrderProjection, bigint, columns
from .orders import day_of

__all__ = ["OrderSummaries"]

_CREATE = (
    """
    CREATE TABLE IF NOT EXISTS order_summaries (
        order_id      text    PRIMARY KEY,
        stream_id     text    NOT NULL,
        customer_id   text    NOT NULL,
        status        text    NOT NULL,
        total         bigint  NOT NULL,
        placed_on     date    NOT NULL,
        last_position bigint  NOT NULL
    )
    """,
)
_LOAD = sa.text("SELECT order_id, status FROM order_summaries WHERE order_id = ANY(CAST(:ids AS text[]))")
_INSERT_COLUMNS = ("order_id", "stream_id", "customer_id", "status", "total", "placed_on", "last_position")
_INSERT = sa.text(
    """
    INSERT INTO order_summaries (order_id, stream_id, customer_id, status, total, placed_on, last_position)
    SELECT * FROM unnest(CAST(:order_id AS text[]), CAST(:stream_id AS text[]), CAST(:customer_id AS text[]),
                         CAST(:status AS text[]), CAST(:total AS bigint[]), CAST(:placed_on AS date[]),
                         CAST(:last_position AS bigint[]))
    """
)
_UPDATE_COLUMNS = ("order_id", "status", "last_position")
_UPDATE = sa.text(
    """
    UPDATE order_summaries o SET status = u.status, last_position = u.last_position
    FROM unnest(CAST(:order_id AS text[]), CAST(:status AS text[]), CAST(:last_position AS bigint[]))
         AS u(order_id, status, last_position)
    WHERE o.order_id = u.order_id
    """
)


class OrderSummaries(OrderProjection):
    """Orders with their current status; an order's first ``OrderPlaced`` wins."""

    name = "order_summaries"
    create = _CREATE
    tables = ("order_summaries",)
    load = _LOAD

    def forget_stream(self, stream_id: str, conn: Connection) -> None:
        """Delete the order of ``stream_id``."""
        conn.execute(sa.text("DELETE FROM order_summaries WHERE stream_id = :stream_id"), {"stream_id": stream_id})

    def place(self, event: RecordedEvent) -> tuple[str, Order]:
        """Every ``OrderPlaced`` is an order, placed at its position."""
        data = event.data
        order_id, customer_id, total = str(data["order_id"]), str(data["customer_id"]), int(data["total"])
        day = day_of(data)
        order = Order("placed", event.stream_id, customer_id, bigint(total), day, event.global_position)
        return order_id, order

    def write(self, batch: OrderBatch, conn: Connection) -> None:
        """Insert the new orders, update the moved ones."""
        if batch.placed:
            new = [
                (order_id, o.stream_id, o.customer_id, o.status, o.total, o.day, o.last_position)
                for order_id, o in batch.placed.items()
            ]
            conn.execute(_INSERT, columns(_INSERT_COLUMNS, new))
        if batch.moved:
            moved = [(order_id, o.status, o.last_position) for order_id, o in batch.moved.items()]
            conn.execute(_UPDATE, columns(_UPDATE_COLUMNS, moved))
