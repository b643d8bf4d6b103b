"""Aggregates rebuilt from their events, saved with optimistic concurrency."""

from __future__ import annotations

from typing import Any

import pytest

from eventstore import Aggregate, EventStore, Repository, StreamNotFound, WrongExpectedVersion, applies


class Order(Aggregate):
    category = "order"

    def __init__(self, aggregate_id: str) -> None:
        super().__init__(aggregate_id)
        self.total = 0
        self.status = "new"

    def place(self, total: int) -> None:
        if self.status != "new":
            raise ValueError("already placed")
        self.record("OrderPlaced", {"total": total})

    def pay(self) -> None:
        self.record("OrderPaid", {"amount": self.total})

    @applies("OrderPlaced")
    def _placed(self, data: dict[str, Any]) -> None:
        self.total = data["total"]
        self.status = "placed"

    @applies("OrderPaid")
    def _paid(self, data: dict[str, Any]) -> None:
        self.status = "paid"


def test_save_then_get_rebuilds_state(store: EventStore) -> None:
    orders = Repository(store, Order)
    order = Order("42")
    order.place(30)
    result = orders.save(order)

    assert result is not None and result.stream_version == 1
    assert order.version == 1 and order.pending_events == []
    loaded = orders.get("42")
    assert (loaded.total, loaded.status, loaded.version) == (30, "placed", 1)
    assert [event.stream_id for event in store.read_all()] == ["order-42"]


def test_concurrent_saves_of_the_same_version_conflict(store: EventStore) -> None:
    orders = Repository(store, Order)
    order = Order("7")
    order.place(10)
    orders.save(order)
    first, second = orders.get("7"), orders.get("7")
    first.pay()
    second.pay()

    orders.save(first)
    with pytest.raises(WrongExpectedVersion, match="expected version 1, but it is at version 2"):
        orders.save(second)
    assert [event.type for event in store.read_stream("order-7")] == ["OrderPlaced", "OrderPaid"]


def test_missing_aggregate_and_nothing_to_save(store: EventStore) -> None:
    orders = Repository(store, Order)
    with pytest.raises(StreamNotFound, match="order-404"):
        orders.get("404")
    assert orders.save(Order("1")) is None


def test_unknown_event_type_is_not_silently_ignored(store: EventStore) -> None:
    from eventstore import NewEvent

    store.append("order-9", [NewEvent("OrderTeleported", {})])
    with pytest.raises(NotImplementedError, match="OrderTeleported"):
        Repository(store, Order).get("9")
