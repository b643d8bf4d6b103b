"""``dashboard_daily``: orders and revenue per day and status.

``dashboard_orders`` keeps each order's day, status and total, so a status
change moves the order from one ``(day, status)`` cell to another. Cells with
no orders are deleted.
"""

from __future__ import annotations

from datetime import date

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from eventstore import Projection, RecordedEvent, handles
from projections.orders import CATEGORY, ORDER_CANCELLED, ORDER_PAID, ORDER_PLACED, ORDER_SHIPPED, TRANSITIONS, day_of

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
_FORGET = sa.text("DELETE FROM dashboard_orders WHERE stream_id = :stream_id RETURNING day, status, total")


def _add(conn: Connection, day: date, status: str, orders: int, revenue: int) -> None:
    conn.execute(_ADD, {"day": day, "status": status, "orders": orders, "revenue": revenue})
    if orders < 0:
        conn.execute(_DROP_EMPTY, {"day": day, "status": status})


class DashboardDaily(Projection):
    """Per day (of ``placed_at``) and current status: number of orders and their total."""

    name = "dashboard_daily"
    categories = (CATEGORY,)

    def setup(self, conn: Connection) -> None:
        """Create ``dashboard_daily`` and ``dashboard_orders``."""
        for statement in _CREATE:
            conn.execute(sa.text(statement))

    def reset(self, conn: Connection) -> None:
        """Empty both tables."""
        conn.execute(sa.text("DELETE FROM dashboard_daily"))
        conn.execute(sa.text("DELETE FROM dashboard_orders"))

    def forget_stream(self, stream_id: str, conn: Connection) -> None:
        """Take the order of ``stream_id`` out of its cell."""
        for row in conn.execute(_FORGET, {"stream_id": stream_id}).all():
            _add(conn, row.day, row.status, -1, -int(row.total))

    @handles(ORDER_PLACED)
    def placed(self, event: RecordedEvent, conn: Connection) -> None:
        """Count a new order in (its day, placed)."""
        data = event.data
        day, total = day_of(data), int(data["total"])
        parameters = {"order_id": str(data["order_id"]), "stream_id": event.stream_id, "day": day, "total": total}
        if conn.execute(_PLACE, parameters).first() is not None:
            _add(conn, day, "placed", 1, total)

    @handles(ORDER_PAID, ORDER_SHIPPED, ORDER_CANCELLED)
    def transition(self, event: RecordedEvent, conn: Connection) -> None:
        """Move the order from its old status cell to the new one."""
        allowed, to = TRANSITIONS[event.type]
        row = conn.execute(
            _TRANSITION, {"order_id": str(event.data["order_id"]), "from": list(allowed), "to": to}
        ).first()
        if row is not None:
            _add(conn, row.day, row.old_status, -1, -int(row.total))
            _add(conn, row.day, to, 1, int(row.total))
