"""A deliberately wrong read model, to prove that ``eventstore demo`` notices disagreement."""

from __future__ import annotations

from sqlalchemy.engine import Connection

from eventstore.projection import handles
from eventstore.types import RecordedEvent
from projections import verify
from projections.order_summaries import OrderSummaries


class ForgetsShipments(OrderSummaries):
    """order_summaries, except that shipped orders stay 'paid'."""

    @handles("OrderShipped")
    def ignore_shipment(self, event: RecordedEvent, conn: Connection) -> None:
        return None


ALL = [ForgetsShipments()]
__all__ = ["ALL", "verify"]
