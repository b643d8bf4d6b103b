"""A deliberately wrong read model, to prove that ``eventstore demo`` notices disagreement."""

from __future__ import annotations

from sqlalchemy.engine import Connection

from eventstore.types import RecordedEvent
from projections import verify
from projections.order_summaries import OrderSummaries


class ForgetsShipments(OrderSummaries):
    """order_summaries, except that shipped orders stay 'paid'."""

    def apply_batch(self, events: list[RecordedEvent], conn: Connection) -> None:
        super().apply_batch([event for event in events if event.type != "OrderShipped"], conn)


ALL = [ForgetsShipments()]
__all__ = ["ALL", "verify"]
