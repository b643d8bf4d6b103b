"""The order projections written the way the README teaches: ``@handles`` methods, a few statements per event.

These are the first-party projections as they were before they learned to fold
batches (``git show 4b72386^:projections/``), restored as subclasses of
today's classes: same names, tables, ``setup``, ``reset`` and
``forget_stream``, so ``projections.verify`` checks them against a
recomputation. They exercise what deferred writes must get right: ``INSERT``
and ``UPDATE`` that can be deferred, ``INSERT ... RETURNING`` and a CTE
``UPDATE ... RETURNING`` read right away (a flush before each), upserts of hot
aggregate rows, a ``DELETE`` after them, and server-side errors (a total out of
``bigint`` range) that surface only when the statement runs.
"""

from __future__ import annotations

from datetime import date

import sqlalchemy as sa
from sqlalchemy.engine import Connection

import projections
from eventstore import Projection, RecordedEvent, handles
from projections.customers import contribution
from projections.orders import (
    HIGH_VALUE_THRESHOLD,
    ORDER_CANCELLED,
    ORDER_PAID,
    ORDER_PLACED,
    ORDER_SHIPPED,
    TRANSITIONS,
    day_of,
)

__all__ = ["PER_EVENT", "CustomerOrders", "DashboardDaily", "HighValueOrders", "OrderSummaries"]

_MOVES = (ORDER_PAID, ORDER_SHIPPED, ORDER_CANCELLED)


class _PerEvent:
    """Mixin: the runner's per-event path (``apply`` dispatches to the ``@handles`` methods)."""

    apply_batch = Projection.apply_batch
    apply = Projection.apply


class OrderSummaries(_PerEvent, projections.OrderSummaries):
    """One INSERT ... ON CONFLICT DO NOTHING per placement, one UPDATE per transition."""

    _PLACE = sa.text(
        "INSERT INTO order_summaries (order_id, stream_id, customer_id, status, total, placed_on, last_position) "
        "VALUES (:order_id, :stream_id, :customer_id, 'placed', :total, :placed_on, :position) "
        "ON CONFLICT (order_id) DO NOTHING"
    )
    _TRANSITION = sa.text(
        "UPDATE order_summaries SET status = :to, last_position = :position "
        "WHERE order_id = :order_id AND status = ANY(CAST(:from AS text[]))"
    )

    @handles(ORDER_PLACED)
    def placed(self, event: RecordedEvent, conn: Connection) -> None:
        data = event.data
        conn.execute(
            self._PLACE,
            {
                "order_id": str(data["order_id"]),
                "stream_id": event.stream_id,
                "customer_id": str(data["customer_id"]),
                "total": int(data["total"]),
                "placed_on": day_of(data),
                "position": event.global_position,
            },
        )

    @handles(*_MOVES)
    def transition(self, event: RecordedEvent, conn: Connection) -> None:
        allowed, to = TRANSITIONS[event.type]
        conn.execute(
            self._TRANSITION,
            {
                "order_id": str(event.data["order_id"]),
                "to": to,
                "from": list(allowed),
                "position": event.global_position,
            },
        )


class DashboardDaily(_PerEvent, projections.DashboardDaily):
    """INSERT ... RETURNING per placement, then an upsert of the (day, status) cell; DELETE of empty cells."""

    _PLACE = sa.text(
        "INSERT INTO dashboard_orders (order_id, stream_id, day, status, total) "
        "VALUES (:order_id, :stream_id, :day, 'placed', :total) ON CONFLICT (order_id) DO NOTHING RETURNING order_id"
    )
    _TRANSITION = sa.text(
        """
        WITH previous AS (
            SELECT order_id, status FROM dashboard_orders
            WHERE order_id = :order_id AND status = ANY(CAST(:from AS text[])) FOR UPDATE
        )
        UPDATE dashboard_orders o SET status = :to FROM previous WHERE o.order_id = previous.order_id
        RETURNING previous.status AS old_status, o.day, o.total
        """
    )
    _ADD = sa.text(
        """
        INSERT INTO dashboard_daily (day, status, orders, revenue) VALUES (:day, :status, :orders, :revenue)
        ON CONFLICT (day, status) DO UPDATE
        SET orders = dashboard_daily.orders + EXCLUDED.orders, revenue = dashboard_daily.revenue + EXCLUDED.revenue
        """
    )
    _DROP_EMPTY = sa.text("DELETE FROM dashboard_daily WHERE day = :day AND status = :status AND orders = 0")

    def _add(self, conn: Connection, day: date, status: str, orders: int, revenue: int) -> None:
        conn.execute(self._ADD, {"day": day, "status": status, "orders": orders, "revenue": revenue})
        if orders < 0:
            conn.execute(self._DROP_EMPTY, {"day": day, "status": status})

    @handles(ORDER_PLACED)
    def placed(self, event: RecordedEvent, conn: Connection) -> None:
        data = event.data
        day, total = day_of(data), int(data["total"])
        parameters = {"order_id": str(data["order_id"]), "stream_id": event.stream_id, "day": day, "total": total}
        if conn.execute(self._PLACE, parameters).first() is not None:
            self._add(conn, day, "placed", 1, total)

    @handles(*_MOVES)
    def transition(self, event: RecordedEvent, conn: Connection) -> None:
        allowed, to = TRANSITIONS[event.type]
        parameters = {"order_id": str(event.data["order_id"]), "from": list(allowed), "to": to}
        row = conn.execute(self._TRANSITION, parameters).first()
        if row is not None:
            self._add(conn, row.day, row.old_status, -1, -int(row.total))
            self._add(conn, row.day, to, 1, int(row.total))


class CustomerOrders(_PerEvent, projections.CustomerOrders):
    """Like the dashboard, per customer: an order's old contribution out, the new one in."""

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

    def _add(self, conn: Connection, customer_id: str, status: str, total: int, sign: int) -> None:
        orders, open_orders, paid_orders, cancelled, spent = (sign * value for value in contribution(status, total))
        conn.execute(
            self._ADD,
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
            conn.execute(self._DROP_EMPTY, {"customer_id": customer_id})

    @handles(ORDER_PLACED)
    def placed(self, event: RecordedEvent, conn: Connection) -> None:
        data = event.data
        customer_id, total = str(data["customer_id"]), int(data["total"])
        parameters = {
            "order_id": str(data["order_id"]),
            "stream_id": event.stream_id,
            "customer_id": customer_id,
            "total": total,
        }
        if conn.execute(self._PLACE, parameters).first() is not None:
            self._add(conn, customer_id, "placed", total, 1)

    @handles(*_MOVES)
    def transition(self, event: RecordedEvent, conn: Connection) -> None:
        allowed, to = TRANSITIONS[event.type]
        parameters = {"order_id": str(event.data["order_id"]), "from": list(allowed), "to": to}
        row = conn.execute(self._TRANSITION, parameters).first()
        if row is not None:
            self._add(conn, row.customer_id, row.old_status, int(row.total), -1)
            self._add(conn, row.customer_id, to, int(row.total), 1)


class HighValueOrders(_PerEvent, projections.HighValueOrders):
    """One INSERT per high-value placement, one UPDATE per transition (of any order: most match nothing)."""

    _PLACE = sa.text(
        "INSERT INTO high_value_orders (order_id, stream_id, customer_id, total, placed_on, status) "
        "VALUES (:order_id, :stream_id, :customer_id, :total, :placed_on, 'placed') ON CONFLICT (order_id) DO NOTHING"
    )
    _TRANSITION = sa.text(
        "UPDATE high_value_orders SET status = :to WHERE order_id = :order_id AND status = ANY(CAST(:from AS text[]))"
    )

    @handles(ORDER_PLACED)
    def placed(self, event: RecordedEvent, conn: Connection) -> None:
        data = event.data
        total = int(data["total"])
        if total < HIGH_VALUE_THRESHOLD:
            return
        conn.execute(
            self._PLACE,
            {
                "order_id": str(data["order_id"]),
                "stream_id": event.stream_id,
                "customer_id": str(data["customer_id"]),
                "total": total,
                "placed_on": day_of(data),
            },
        )

    @handles(*_MOVES)
    def transition(self, event: RecordedEvent, conn: Connection) -> None:
        allowed, to = TRANSITIONS[event.type]
        conn.execute(self._TRANSITION, {"order_id": str(event.data["order_id"]), "from": list(allowed), "to": to})


PER_EVENT: list[Projection] = [OrderSummaries(), DashboardDaily(), CustomerOrders(), HighValueOrders()]
"""One instance of each, as ``projections.ALL`` for the batch-folding classes."""
