"""The order domain: its events, its life cycle, and append helpers for demos and tests.

Streams are ``order-<order_id>``. Events (``data`` fields):

- ``OrderPlaced``: ``order_id``, ``customer_id``, ``total`` (integer cents),
  ``placed_at`` (ISO 8601 UTC timestamp; its date is the dashboard day).
- ``OrderPaid``: ``order_id``, ``amount`` (cents).
- ``OrderShipped``: ``order_id``, ``carrier``.
- ``OrderCancelled``: ``order_id``, ``reason``.

Life cycle: placed -> paid -> shipped; placed or paid -> cancelled. A
transition from any other status is ignored by every read model (and by
:mod:`projections.verify`), as is a second ``OrderPlaced`` for the same order.
"""

from __future__ import annotations

import random
from datetime import UTC, date, datetime, timedelta
from typing import Any, Final

from eventstore import NO_STREAM, EventStore, NewEvent

__all__ = [
    "CATEGORY",
    "HIGH_VALUE_THRESHOLD",
    "ORDER_CANCELLED",
    "ORDER_PAID",
    "ORDER_PLACED",
    "ORDER_SHIPPED",
    "TRANSITIONS",
    "advance",
    "day_of",
    "paid_like",
    "place",
    "stream_id_of",
    "workload",
]

CATEGORY: Final = "order"
ORDER_PLACED: Final = "OrderPlaced"
ORDER_PAID: Final = "OrderPaid"
ORDER_SHIPPED: Final = "OrderShipped"
ORDER_CANCELLED: Final = "OrderCancelled"

TRANSITIONS: Final[dict[str, tuple[tuple[str, ...], str]]] = {
    ORDER_PAID: (("placed",), "paid"),
    ORDER_SHIPPED: (("paid",), "shipped"),
    ORDER_CANCELLED: (("placed", "paid"), "cancelled"),
}
"""event type -> (statuses it applies to, the new status)."""

_STEPS: Final = {"paid": ORDER_PAID, "shipped": ORDER_SHIPPED, "cancelled": ORDER_CANCELLED}

HIGH_VALUE_THRESHOLD: Final = 50_000
"""Orders of at least this total (cents) are listed in ``high_value_orders``."""

_PRICES: Final = {"book": 1250, "lamp": 3900, "chair": 14900, "mug": 825, "desk": 42000, "pen": 240}
_CARRIERS: Final = ("ups", "dhl", "post")
_REASONS: Final = ("changed mind", "out of stock", "payment declined")


def paid_like(status: str) -> bool:
    """True for statuses whose total counts as revenue (paid, shipped)."""
    return status in ("paid", "shipped")


def day_of(data: dict[str, Any]) -> date:
    """The dashboard day of an ``OrderPlaced`` event: the date of ``placed_at`` (UTC).

    Raises ``KeyError``/``ValueError`` on a malformed event: a poison event for the projections.
    """
    return datetime.fromisoformat(str(data["placed_at"])).astimezone(UTC).date()


def stream_id_of(order_id: str) -> str:
    """The stream of an order."""
    return f"{CATEGORY}-{order_id}"


def place(
    store: EventStore,
    stream_id: str,
    *,
    customer: str,
    rng: random.Random | None = None,
    total: int | None = None,
    placed_at: datetime | None = None,
) -> int:
    """Append ``OrderPlaced`` as the first event of ``stream_id``; returns the events written (1).

    Raises :class:`~eventstore.WrongExpectedVersion` if the stream exists.
    """
    rng = rng or random.Random()
    if total is None:
        lines = rng.randint(1, 4)
        total = sum(rng.choice(list(_PRICES.values())) * rng.randint(1, 3) for _ in range(lines))
    when = placed_at or datetime.now(UTC) - timedelta(days=rng.randint(0, 2))
    order_id = stream_id.split("-", 1)[1] if "-" in stream_id else stream_id
    data = {"order_id": order_id, "customer_id": customer, "total": total, "placed_at": when.isoformat()}
    store.append(stream_id, [NewEvent(ORDER_PLACED, data)], expected_version=NO_STREAM)
    return 1


def advance(
    store: EventStore,
    stream_id: str,
    step: str,
    *,
    rng: random.Random | None = None,
    expected_version: int,
    amount: int | None = None,
) -> int:
    """Append the event that moves an order to ``step`` (paid, shipped or cancelled); returns 1.

    ``expected_version`` is the stream's current version (optimistic concurrency).
    Raises ``ValueError`` for an unknown step.
    """
    if step not in _STEPS:
        raise ValueError(f"step={step!r}; use one of {', '.join(_STEPS)}")
    rng = rng or random.Random()
    order_id = stream_id.split("-", 1)[1] if "-" in stream_id else stream_id
    data: dict[str, Any] = {"order_id": order_id}
    if step == "paid":
        data["amount"] = amount if amount is not None else 0
    elif step == "shipped":
        data["carrier"] = rng.choice(_CARRIERS)
    else:
        data["reason"] = rng.choice(_REASONS)
    store.append(stream_id, [NewEvent(_STEPS[step], data)], expected_version=expected_version)
    return 1


def workload(store: EventStore, orders: int, *, seed: int = 0, customers: int = 8, prefix: str = "w") -> int:
    """Append a deterministic mix of orders and their life cycles; returns the events written."""
    rng = random.Random(seed)
    written = 0
    for number in range(orders):
        stream_id = stream_id_of(f"{prefix}{seed}-{number}")
        written += place(store, stream_id, customer=f"customer-{rng.randrange(customers)}", rng=rng)
        version = 1
        status = "placed"
        while status in ("placed", "paid") and rng.random() < 0.8:
            if status == "placed":
                step = "paid" if rng.random() < 0.85 else "cancelled"
            else:
                step = "shipped" if rng.random() < 0.9 else "cancelled"
            written += advance(store, stream_id, step, rng=rng, expected_version=version)
            version += 1
            status = step
    return written
