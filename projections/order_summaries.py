"""``order_summaries``: one row per order with its customer, total, day and current status."""

from __future__ import annotations

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from eventstore import Projection, RecordedEvent, handles
from projections.orders import CATEGORY, ORDER_CANCELLED, ORDER_PAID, ORDER_PLACED, ORDER_SHIPPED, TRANSITIONS, day_of

__all__ = ["OrderSummaries"]

_CREATE = sa.text(
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
    """
)
_PLACE = sa.text(
    "INSERT INTO order_summaries (order_id, stream_id, customer_id, status, total, placed_on, last_position) "
    "VALUES (:order_id, :stream_id, :customer_id, 'placed', :total, :placed_on, :position) "
    "ON CONFLICT (order_id) DO NOTHING"
)
_TRANSITION = sa.text(
    "UPDATE order_summaries SET status = :to, last_position = :position "
    "WHERE order_id = :order_id AND status = ANY(CAST(:from AS text[]))"
)


class OrderSummaries(Projection):
    """Orders with their current status; an order's first ``OrderPlaced`` wins."""

    name = "order_summaries"
    categories = (CATEGORY,)

    def setup(self, conn: Connection) -> None:
        """Create ``order_summaries``."""
        conn.execute(_CREATE)

    def reset(self, conn: Connection) -> None:
        """Empty ``order_summaries``."""
        conn.execute(sa.text("DELETE FROM order_summaries"))

    def forget_stream(self, stream_id: str, conn: Connection) -> None:
        """Delete the order of ``stream_id``."""
        conn.execute(sa.text("DELETE FROM order_summaries WHERE stream_id = :stream_id"), {"stream_id": stream_id})

    @handles(ORDER_PLACED)
    def placed(self, event: RecordedEvent, conn: Connection) -> None:
        """Insert the order as placed."""
        data = event.data
        conn.execute(
            _PLACE,
            {
                "order_id": str(data["order_id"]),
                "stream_id": event.stream_id,
                "customer_id": str(data["customer_id"]),
                "total": int(data["total"]),
                "placed_on": day_of(data),
                "position": event.global_position,
            },
        )

    @handles(ORDER_PAID, ORDER_SHIPPED, ORDER_CANCELLED)
    def transition(self, event: RecordedEvent, conn: Connection) -> None:
        """Move the order along its life cycle (ignored from a status that does not allow it)."""
        allowed, to = TRANSITIONS[event.type]
        conn.execute(
            _TRANSITION,
            {
                "order_id": str(event.data["order_id"]),
                "to": to,
                "from": list(allowed),
                "position": event.global_position,
            },
        )
