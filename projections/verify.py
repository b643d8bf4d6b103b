"""Recompute each read model from the events and compare it with its tables.

The recomputation is plain Python over :meth:`EventStore.read_all`, written
independently of the projections' SQL, following the rules of
:mod:`projections.orders`. It covers the events up to the projection's
checkpoint, so it can run while writers keep appending (the demo and the chaos
soak call it after catching up).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import date
from typing import Any

import sqlalchemy as sa

from eventstore import EventStore, Projection, RecordedEvent
from eventstore.admin import projection_status

from .customers import contribution
from .ledger import Ledger
from .orders import CATEGORY, HIGH_VALUE_THRESHOLD, ORDER_PLACED, TRANSITIONS, day_of

__all__ = ["expected_rows", "verify"]

Rows = dict[str, set[tuple[Any, ...]]]


@dataclass
class _Order:
    stream_id: str
    customer_id: str
    total: int
    day: date
    status: str
    last_position: int


def _fold(events: Iterable[RecordedEvent], admit: Callable[[dict[str, Any]], bool]) -> dict[str, _Order]:
    orders: dict[str, _Order] = {}
    for event in events:
        if event.category != CATEGORY:
            continue
        data = event.data
        if event.type == ORDER_PLACED:
            order_id = str(data["order_id"])
            if order_id not in orders and admit(data):
                orders[order_id] = _Order(
                    event.stream_id, str(data["customer_id"]), int(data["total"]), day_of(data), "placed",
                    event.global_position,
                )  # fmt: skip
        elif event.type in TRANSITIONS:
            allowed, to = TRANSITIONS[event.type]
            order = orders.get(str(data["order_id"]))
            if order is not None and order.status in allowed:
                order.status = to
                order.last_position = event.global_position
    return orders


def _summaries(events: list[RecordedEvent]) -> Rows:
    orders = _fold(events, lambda data: True)
    return {
        "order_summaries": {
            (i, o.stream_id, o.customer_id, o.status, o.total, o.day, o.last_position) for i, o in orders.items()
        }
    }


def _dashboard(events: list[RecordedEvent]) -> Rows:
    orders = _fold(events, lambda data: True)
    cells: dict[tuple[date, str], list[int]] = {}
    for order in orders.values():
        cell = cells.setdefault((order.day, order.status), [0, 0])
        cell[0] += 1
        cell[1] += order.total
    return {
        "dashboard_daily": {(day, status, n, revenue) for (day, status), (n, revenue) in cells.items()},
        "dashboard_orders": {(i, o.stream_id, o.day, o.status, o.total) for i, o in orders.items()},
    }


def _customers(events: list[RecordedEvent]) -> Rows:
    orders = _fold(events, lambda data: True)
    totals: dict[str, list[int]] = {}
    for order in orders.values():
        row = totals.setdefault(order.customer_id, [0, 0, 0, 0, 0])
        for index, value in enumerate(contribution(order.status, order.total)):
            row[index] += value
    return {
        "customer_orders": {(customer, *values) for customer, values in totals.items()},
        "customer_order_states": {(i, o.stream_id, o.customer_id, o.status, o.total) for i, o in orders.items()},
    }


def _high_value(events: list[RecordedEvent]) -> Rows:
    orders = _fold(events, lambda data: int(data["total"]) >= HIGH_VALUE_THRESHOLD)
    return {"high_value_orders": {(i, o.stream_id, o.customer_id, o.total, o.day, o.status) for i, o in orders.items()}}


_RECOMPUTE: dict[str, Callable[[list[RecordedEvent]], Rows]] = {
    "order_summaries": _summaries,
    "dashboard_daily": _dashboard,
    "customer_orders": _customers,
    "high_value_orders": _high_value,
}

_QUERIES = {
    "order_summaries": "SELECT order_id, stream_id, customer_id, status, total, placed_on, last_position "
    "FROM order_summaries",
    "dashboard_daily": "SELECT day, status, orders, revenue FROM dashboard_daily",
    "dashboard_orders": "SELECT order_id, stream_id, day, status, total FROM dashboard_orders",
    "customer_orders": "SELECT customer_id, orders, open_orders, paid_orders, cancelled_orders, total_spent "
    "FROM customer_orders",
    "customer_order_states": "SELECT order_id, stream_id, customer_id, status, total FROM customer_order_states",
    "high_value_orders": "SELECT order_id, stream_id, customer_id, total, placed_on, status FROM high_value_orders",
}


def _consumed_events(store: EventStore, projection: Projection) -> list[RecordedEvent]:
    """The events the projection has consumed (up to its checkpoint, within its filters)."""
    position = projection_status(store, [projection.name])[0].position
    if not position:
        return []
    checkpoint = store.order_of(position)
    consumed = []
    for event in store.read_all(categories=projection.categories or None, event_types=projection.event_types or None):
        if (event.transaction_order, event.global_position) > checkpoint:
            break
        consumed.append(event)
    return consumed


def expected_rows(store: EventStore, projection: Projection) -> Rows:
    """The rows each table of ``projection`` should hold, recomputed from the events it consumed.

    Raises ``KeyError`` for a projection this module does not know.
    """
    events = _consumed_events(store, projection)
    if isinstance(projection, Ledger):
        return {"projection_ledger": {(event.global_position,) for event in events}}
    return _RECOMPUTE[projection.name](events)


def verify(store: EventStore, projection: Projection, *, limit: int = 5) -> list[str]:
    """Differences between the read model and a recomputation (empty: they are equal).

    Each difference names the table and up to ``limit`` missing or unexpected rows.
    """
    expected = expected_rows(store, projection)
    problems = []
    with store.engine.connect() as connection:
        for table, rows in expected.items():
            if isinstance(projection, Ledger):
                query = sa.text("SELECT global_position FROM projection_ledger WHERE projection_name = :name")
                actual_list = [tuple(row) for row in connection.execute(query, {"name": projection.name})]
                if len(actual_list) != len(set(actual_list)):
                    problems.append(f"{table}: {len(actual_list) - len(set(actual_list))} duplicate rows")
            else:
                actual_list = [tuple(row) for row in connection.execute(sa.text(_QUERIES[table]))]
            actual = set(actual_list)
            missing, extra = sorted(rows - actual, key=repr), sorted(actual - rows, key=repr)
            if missing:
                problems.append(f"{table}: {len(missing)} rows missing, e.g. {missing[:limit]}")
            if extra:
                problems.append(f"{table}: {len(extra)} unexpected rows, e.g. {extra[:limit]}")
    return problems
