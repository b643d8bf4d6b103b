"""First-party projections of a small order domain (see :mod:`projections.orders`).

- :class:`OrderSummaries` (``order_summaries``): one row per order.
- :class:`DashboardDaily` (``dashboard_daily``): orders and revenue per day and status.
- :class:`CustomerOrders` (``customer_orders``): per-customer counts and spend.
- :class:`HighValueOrders` (``high_value_orders``): orders above a threshold.
- :class:`Ledger`: one row per consumed event, for exactly-once tests.

The four order projections apply a whole batch of events with a few
set-based statements (:mod:`projections.batching`); the ledger writes one row
per event on purpose. ``ALL`` holds one instance of each order projection;
:func:`verify` compares a read model with a recomputation from the events.
"""

from .customers import CustomerOrders, HighValueOrders
from .dashboard import DashboardDaily
from .ledger import Ledger, ledger_positions
from .order_summaries import OrderSummaries
from .verify import expected_rows, verify

__all__ = [
    "ALL",
    "CustomerOrders",
    "DashboardDaily",
    "HighValueOrders",
    "Ledger",
    "OrderSummaries",
    "expected_rows",
    "ledger_positions",
    "verify",
]

ALL = [OrderSummaries(), DashboardDaily(), CustomerOrders(), HighValueOrders()]
"""One instance of each order projection (not the ledger)."""
