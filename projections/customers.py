"""``customer_orders`` (per-customer counts and spend) and ``high_value_orders``.

``customer_orders`` derives each customer's row from the current status of
their orders (kept in ``customer_order_states``): ``orders`` (all),
``open_orders`` (placed), ``paid_orders`` (paid or shipped),
``cancelled_orders`` and ``total_spent`` (totals of paid or shipped orders).
A status change subtracts the order's old contribution and adds the new one.
"""

from __future__ import annotations

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from eventstore import Projection, RecordedEvent, handles
from projections.orders import (
    CATEGORY,
    HIGH_VALUE_THRESHOLD,
    ORDER_CANCELLED,
    ORDER_PAID,
    ORDER_PLACED,
    ORDER_SHIPPED,
    TRANSITIONS,
    day_of,
    paid_like,
)

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
_PLACE = sa.text(
    "INSERT INTO customer_order_states (order_id, stream_id, customer_id, status, total) "
    "VALUES (:order_id, :stream_id, :customer_id, 'placed', :total) "
    "ON CONFLICT (order_id) DO NOTHING RETURNING order_id"
)
_TRANSITION = sa.text(
    """
    WITH previous AS (
        SELECT order_id, status FROM customer_order_states
        WHERE order_id = :order_id AND status = ANY(CAST(:from AS text[])) FOR UPDATE
    )
    UPDATE customer_order_states s SET status = :to FROM previous WHERE s.order_id = previous.order_id
    RETURNING previous.status AS old_status, s.customer_id, s.total
    """
)
_ADD = sa.text(
    """
    INSERT INTO customer_orders (customer_id, orders, open_orders, paid_orders, cancelled_orders, total_spent)
    VALUES (:customer_id, :orders, :open_orders, :paid_orders, :cancelled_orders, :total_spent)
    ON CONFLICT (customer_id) DO UPDATE SET
        orders = customer_orders.orders + EXCLUDED.orders,
        open_orders = customer_orders.open_orders + EXCLUDED.open_orders,
        paid_orders = customer_orders.paid_orders + EXCLUDED.paid_orders,
        cancelled_orders = customer_orders.cancelled_orders + EXCLUDED.cancelled_orders,
        total_spent = customer_orders.total_spent + EXCLUDED.total_spent
    """
)
_DROP_EMPTY = sa.text("DELETE FROM customer_orders WHERE customer_id = :customer_id AND orders = 0")
_FORGET = sa.text("DELETE FROM customer_order_states WHERE stream_id = :stream_id RETURNING customer_id, status, total")


def contribution(status: str, total: int) -> tuple[int, int, int, int, int]:
    """One order's share of its customer's row: (orders, open, paid, cancelled, spent)."""
    paid = paid_like(status)
    return 1, int(status == "placed"), int(paid), int(status == "cancelled"), total if paid else 0


def _add(conn: Connection, customer_id: str, status: str, total: int, sign: int) -> None:
    orders, open_orders, paid_orders, cancelled, spent = (sign * value for value in contribution(status, total))
    conn.execute(
        _ADD,
        {
            "customer_id": customer_id,
            "orders": orders,
            "open_orders": open_orders,
            "paid_orders": paid_orders,
            "cancelled_orders": cancelled,
            "total_spent": spent,
        },
    )
    if sign < 0:
        conn.execute(_DROP_EMPTY, {"customer_id": customer_id})


class CustomerOrders(Projection):
    """Per customer: order counts by status group and money spent."""

    name = "customer_orders"
    categories = (CATEGORY,)

    def setup(self, conn: Connection) -> None:
        """Create ``customer_orders`` and ``customer_order_states``."""
        for statement in _CREATE:
            conn.execute(sa.text(statement))

    def reset(self, conn: Connection) -> None:
        """Empty both tables."""
        conn.execute(sa.text("DELETE FROM customer_orders"))
        conn.execute(sa.text("DELETE FROM customer_order_states"))

    def forget_stream(self, stream_id: str, conn: Connection) -> None:
        """Subtract the order of ``stream_id`` from its customer."""
        for row in conn.execute(_FORGET, {"stream_id": stream_id}).all():
            _add(conn, row.customer_id, row.status, int(row.total), -1)

    @handles(ORDER_PLACED)
    def placed(self, event: RecordedEvent, conn: Connection) -> None:
        """Count a new order for its customer."""
        data = event.data
        customer_id, total = str(data["customer_id"]), int(data["total"])
        parameters = {
            "order_id": str(data["order_id"]),
            "stream_id": event.stream_id,
            "customer_id": customer_id,
            "total": total,
        }
        if conn.execute(_PLACE, parameters).first() is not None:
            _add(conn, customer_id, "placed", total, 1)

    @handles(ORDER_PAID, ORDER_SHIPPED, ORDER_CANCELLED)
    def transition(self, event: RecordedEvent, conn: Connection) -> None:
        """Replace the order's old contribution with the new one."""
        allowed, to = TRANSITIONS[event.type]
        row = conn.execute(
            _TRANSITION, {"order_id": str(event.data["order_id"]), "from": list(allowed), "to": to}
        ).first()
        if row is not None:
            _add(conn, row.customer_id, row.old_status, int(row.total), -1)
            _add(conn, row.customer_id, to, int(row.total), 1)


_HV_CREATE = sa.text(
    """
    CREATE TABLE IF NOT EXISTS high_value_orders (
        order_id    text   PRIMARY KEY,
        stream_id   text   NOT NULL,
        customer_id text   NOT NULL,
        total       bigint NOT NULL,
        placed_on   date   NOT NULL,
        status      text   NOT NULL
    )
    """
)
_HV_PLACE = sa.text(
    "INSERT INTO high_value_orders (order_id, stream_id, customer_id, total, placed_on, status) "
    "VALUES (:order_id, :stream_id, :customer_id, :total, :placed_on, 'placed') ON CONFLICT (order_id) DO NOTHING"
)
_HV_TRANSITION = sa.text(
    "UPDATE high_value_orders SET status = :to WHERE order_id = :order_id AND status = ANY(CAST(:from AS text[]))"
)


class HighValueOrders(Projection):
    """Orders whose total is at least :data:`~projections.orders.HIGH_VALUE_THRESHOLD` cents, with their status."""

    name = "high_value_orders"
    categories = (CATEGORY,)

    def setup(self, conn: Connection) -> None:
        """Create ``high_value_orders``."""
        conn.execute(_HV_CREATE)

    def reset(self, conn: Connection) -> None:
        """Empty ``high_value_orders``."""
        conn.execute(sa.text("DELETE FROM high_value_orders"))

    def forget_stream(self, stream_id: str, conn: Connection) -> None:
        """Delete the order of ``stream_id``."""
        conn.execute(sa.text("DELETE FROM high_value_orders WHERE stream_id = :stream_id"), {"stream_id": stream_id})

    @handles(ORDER_PLACED)
    def placed(self, event: RecordedEvent, conn: Connection) -> None:
        """List the order if its total is high enough."""
        data = event.data
        total = int(data["total"])
        if total < HIGH_VALUE_THRESHOLD:
            return
        conn.execute(
            _HV_PLACE,
            {
                "order_id": str(data["order_id"]),
                "stream_id": event.stream_id,
                "customer_id": str(data["customer_id"]),
                "total": total,
                "placed_on": day_of(data),
            },
        )

    @handles(ORDER_PAID, ORDER_SHIPPED, ORDER_CANCELLED)
    def transition(self, event: RecordedEvent, conn: Connection) -> None:
        """Follow the listed order's status."""
        allowed, to = TRANSITIONS[event.type]
        conn.execute(_HV_TRANSITION, {"order_id": str(event.data["order_id"]), "from": list(allowed), "to": to})
