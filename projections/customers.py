"""``customer_orders`` (per-customer counts and spend) and ``high_value_orders``.

``customer_orders`` derives each customer's row from the current status of
their orders (kept in ``customer_order_states``): ``orders`` (all),
``open_orders`` (placed), ``paid_orders`` (paid or shipped),
``cancelled_orders`` and ``total_spent`` (totals of paid or shipped orders).
A status change subtracts the order's old contribution and adds the new one;
a batch adds these up per customer and upserts each touched customer once
(see :mod:`projections.batching`).
"""

from __future__ import annotations

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from eventstore import RecordedEvent

from .batching import Order, OrderBatch, OrderProjection, add_to, bigint, columns
from .orders import HIGH_VALUE_THRESHOLD, day_of, paid_like

__all__ = ["CustomerOrders", "HighValueOrders", "contribution"]

_CREATE = (
    """
    CREATE TABLE IF NOT EXISTS customer_orders (
        customer_id      text    PRIMARY KEY,
        orders           integer NOT NULL,
        open_orders      integer NOT NULL,
        paid_orders      integer NOT NULL,
        cancelled_orders integer NOT NULL,
        total_spent      bigint  NOT NULL
    )
    """,
    """
    CREATE TABLE IF NOT EXISTS customer_order_states (
        order_id    text   PRIMARY KEY,
        stream_id   text   NOT NULL,
        customer_id text   NOT NULL,
        status      text   NOT NULL,
        total       bigint NOT NULL
    )
    """,
)
_LOAD = sa.text(
    "SELECT order_id, status, customer_id, total FROM customer_order_states WHERE order_id = ANY(CAST(:ids AS text[]))"
)
_INSERT_COLUMNS = ("order_id", "stream_id", "customer_id", "status", "total")
_INSERT = sa.text(
    """
    INSERT INTO customer_order_states (order_id, stream_id, customer_id, status, total)
    SELECT * FROM unnest(CAST(:order_id AS text[]), CAST(:stream_id AS text[]), CAST(:customer_id AS text[]),
                         CAST(:status AS text[]), CAST(:total AS bigint[]))
    """
)
_UPDATE_COLUMNS = ("order_id", "status")
_UPDATE = sa.text(
    """
    UPDATE customer_order_states s SET status = u.status
    FROM unnest(CAST(:order_id AS text[]), CAST(:status AS text[])) AS u(order_id, status)
    WHERE s.order_id = u.order_id
    """
)
_ADD_COLUMNS = ("customer_id", "orders", "open_orders", "paid_orders", "cancelled_orders", "total_spent")
_ADD = sa.text(
    """
    INSERT INTO customer_orders (customer_id, orders, open_orders, paid_orders, cancelled_orders, total_spent)
    SELECT * FROM unnest(CAST(:customer_id AS text[]), CAST(:orders AS integer[]), CAST(:open_orders AS integer[]),
                         CAST(:paid_orders AS integer[]), CAST(:cancelled_orders AS integer[]),
                         CAST(:total_spent AS bigint[]))
    ON CONFLICT (customer_id) DO UPDATE SET
        orders = customer_orders.orders + EXCLUDED.orders,
        open_orders = customer_orders.open_orders + EXCLUDED.open_orders,
        paid_orders = customer_orders.paid_orders + EXCLUDED.paid_orders,
        cancelled_orders = customer_orders.cancelled_orders + EXCLUDED.cancelled_orders,
        total_spent = customer_orders.total_spent + EXCLUDED.total_spent
    """
)
_DROP_EMPTY = sa.text(
    "DELETE FROM customer_orders WHERE customer_id = ANY(CAST(:customer_id AS text[])) AND orders = 0"
)
_FORGET = sa.text("DELETE FROM customer_order_states WHERE stream_id = :stream_id RETURNING customer_id, status, total")


def contribution(status: str, total: int) -> tuple[int, int, int, int, int]:
    """One order's share of its customer's row: (orders, open, paid, cancelled, spent)."""
    paid = paid_like(status)
    return 1, int(status == "placed"), int(paid), int(status == "cancelled"), total if paid else 0


def _add_customers(conn: Connection, sums: dict[str, list[int]]) -> None:
    """Add each customer's (orders, open, paid, cancelled, spent); delete the customers left with no orders."""
    rows = [(customer_id, *values) for customer_id, values in sums.items() if any(values)]
    if rows:
        conn.execute(_ADD, columns(_ADD_COLUMNS, rows))
        conn.execute(_DROP_EMPTY, {"customer_id": [row[0] for row in rows]})


class CustomerOrders(OrderProjection):
    """Per customer: order counts by status group and money spent."""

    name = "customer_orders"
    create = _CREATE
    tables = ("customer_orders", "customer_order_states")
    load = _LOAD

    def forget_stream(self, stream_id: str, conn: Connection) -> None:
        """Subtract the order of ``stream_id`` from its customer."""
        sums: dict[str, list[int]] = {}
        for row in conn.execute(_FORGET, {"stream_id": stream_id}).all():
            add_to(sums, row.customer_id, contribution(row.status, int(row.total)), -1)
        _add_customers(conn, sums)

    def place(self, event: RecordedEvent) -> tuple[str, Order]:
        """Every ``OrderPlaced`` is an order of its customer."""
        data = event.data
        customer_id, total, order_id = str(data["customer_id"]), int(data["total"]), str(data["order_id"])
        return order_id, Order("placed", event.stream_id, customer_id, bigint(total))

    def write(self, batch: OrderBatch, conn: Connection) -> None:
        """Store the new and moved orders, then replace their old contributions with the new ones."""
        if batch.placed:
            new = [(order_id, o.stream_id, o.customer_id, o.status, o.total) for order_id, o in batch.placed.items()]
            conn.execute(_INSERT, columns(_INSERT_COLUMNS, new))
        if batch.moved:
            moved = [(order_id, o.status) for order_id, o in batch.moved.items()]
            conn.execute(_UPDATE, columns(_UPDATE_COLUMNS, moved))
        sums: dict[str, list[int]] = {}
        for before, after in batch.changes():
            if before is not None:
                add_to(sums, before.customer_id, contribution(before.status, before.total), -1)
            add_to(sums, after.customer_id, contribution(after.status, after.total), 1)
        _add_customers(conn, sums)


_HV_CREATE = (
    """
    CREATE TABLE IF NOT EXISTS high_value_orders (
        order_id    text   PRIMARY KEY,
        stream_id   text   NOT NULL,
        customer_id text   NOT NULL,
        total       bigint NOT NULL,
        placed_on   date   NOT NULL,
        status      text   NOT NULL
    )
    """,
)
_HV_LOAD = sa.text("SELECT order_id, status FROM high_value_orders WHERE order_id = ANY(CAST(:ids AS text[]))")
_HV_INSERT_COLUMNS = ("order_id", "stream_id", "customer_id", "total", "placed_on", "status")
_HV_INSERT = sa.text(
    """
    INSERT INTO high_value_orders (order_id, stream_id, customer_id, total, placed_on, status)
    SELECT * FROM unnest(CAST(:order_id AS text[]), CAST(:stream_id AS text[]), CAST(:customer_id AS text[]),
                         CAST(:total AS bigint[]), CAST(:placed_on AS date[]), CAST(:status AS text[]))
    """
)
_HV_UPDATE_COLUMNS = ("order_id", "status")
_HV_UPDATE = sa.text(
    """
    UPDATE high_value_orders h SET status = u.status
    FROM unnest(CAST(:order_id AS text[]), CAST(:status AS text[])) AS u(order_id, status)
    WHERE h.order_id = u.order_id
    """
)


class HighValueOrders(OrderProjection):
    """Orders whose total is at least :data:`~projections.orders.HIGH_VALUE_THRESHOLD` cents, with their status.

    An ``OrderPlaced`` below the threshold is ignored, so a later one of the same
    order with a high enough total is the one listed.
    """

    name = "high_value_orders"
    create = _HV_CREATE
    tables = ("high_value_orders",)
    load = _HV_LOAD

    def forget_stream(self, stream_id: str, conn: Connection) -> None:
        """Delete the order of ``stream_id``."""
        conn.execute(sa.text("DELETE FROM high_value_orders WHERE stream_id = :stream_id"), {"stream_id": stream_id})

    def place(self, event: RecordedEvent) -> tuple[str, Order] | None:
        """An order if its total is high enough, else None (its ``placed_at`` is then not even read)."""
        data = event.data
        total = int(data["total"])
        if total < HIGH_VALUE_THRESHOLD:
            return None
        order_id, customer_id, day = str(data["order_id"]), str(data["customer_id"]), day_of(data)
        return order_id, Order("placed", event.stream_id, customer_id, bigint(total), day)

    def write(self, batch: OrderBatch, conn: Connection) -> None:
        """Insert the new orders, update the moved ones."""
        if batch.placed:
            new = [
                (order_id, o.stream_id, o.customer_id, o.total, o.day, o.status) for order_id, o in batch.placed.items()
            ]
            conn.execute(_HV_INSERT, columns(_HV_INSERT_COLUMNS, new))
        if batch.moved:
            moved = [(order_id, o.status) for order_id, o in batch.moved.items()]
            conn.execute(_HV_UPDATE, columns(_HV_UPDATE_COLUMNS, moved))
