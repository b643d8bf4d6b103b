"""The order projections build the same read models whatever the batch size.

A runner with ``batch_size=1`` applies the events one at a time; with a large
batch size each projection applies hundreds of events together. Both must
leave exactly the same rows in every table, and treat exactly the same events
as poison events, on the demo workload and on awkward events (duplicate
placements, transitions an order's status does not allow, unknown orders,
malformed or out-of-range data) mixed into it.
"""

from __future__ import annotations

from datetime import date
from typing import Any

import pytest
import sqlalchemy as sa

import projections
from eventstore import EventStore, NewEvent, Projection, ProjectionRunner, admin
from projections.orders import workload
from tests.runner.per_event_orders import PER_EVENT

TABLES = {
    "order_summaries": ("order_summaries",),
    "dashboard_daily": ("dashboard_daily", "dashboard_orders"),
    "customer_orders": ("customer_orders", "customer_order_states"),
    "high_value_orders": ("high_value_orders",),
}
DAY = "2026-11-25T10:00:00+00:00"

Snapshot = dict[str, list[tuple[Any, ...]]]


def _placed(order_id: Any, customer: Any = "cx", total: Any = 1250, placed_at: str = DAY) -> dict[str, Any]:
    return {"order_id": order_id, "customer_id": customer, "total": total, "placed_at": placed_at}


def _awkward(known: str) -> list[tuple[str, str, dict[str, Any]]]:
    """(stream, type, data) of events that exercise every rule; ``known`` is an order placed before them."""
    return [
        ("order-dup", "OrderPlaced", _placed(known, customer="intruder", total=99_999)),  # a second placement
        ("order-a1", "OrderPlaced", _placed("a1", total=60_000)),
        ("order-a1b", "OrderPlaced", _placed("a1", customer="other", total=70_000)),  # ... in the same batch
        ("order-a1", "OrderShipped", {"order_id": "a1", "carrier": "ups"}),  # not paid yet: ignored
        ("order-a1", "OrderPaid", {"order_id": "a1", "amount": 1}),
        ("order-a1", "OrderPaid", {"order_id": "a1", "amount": 1}),  # paid again: ignored
        ("order-a1", "OrderShipped", {"order_id": "a1", "carrier": "ups"}),
        ("order-a1", "OrderCancelled", {"order_id": "a1", "reason": "x"}),  # after shipping: ignored
        ("order-ghost", "OrderPaid", {"order_id": "ghost", "amount": 1}),  # an order never placed
        ("order-bd1", "OrderPlaced", _placed("bd1", total=100, placed_at="not a date")),  # poison but for customers
        ("order-bd2", "OrderPlaced", _placed("bd2", total=90_000, placed_at="not a date")),
        ("order-bd2", "OrderPaid", {"order_id": "bd2"}),
        ("order-bt", "OrderPlaced", _placed("bt", total="abc")),  # poison everywhere
        ("order-bt", "OrderPaid", {"order_id": "bt"}),
        ("order-huge", "OrderPlaced", _placed("huge", total=2**64)),  # out of bigint range
        ("order-neg", "OrderPlaced", _placed("neg", total=-(2**64))),  # ... below the high-value threshold
        ("order-duphuge", "OrderPlaced", _placed(known, total=2**64)),  # ... for an order already placed
        ("order-nocust", "OrderPlaced", {"order_id": "nocust", "total": 51_000, "placed_at": DAY}),
        ("order-nocust", "OrderCancelled", {"order_id": "nocust"}),
        ("order-noid", "OrderPaid", {"amount": 3}),
        ("order-u", "Unrelated", {"order_id": "a1"}),
        ("order-z", "OrderPlaced", _placed("z", customer="cz", total=100)),  # not high-value ...
        ("order-z2", "OrderPlaced", _placed("z", customer="cz2", total=80_000)),  # ... this placement is
        ("order-z", "OrderPaid", {"order_id": "z"}),
        ("order-f", "OrderPlaced", _placed(5, customer=7, total="70000")),  # coerced to text / int
        ("order-f", "OrderPaid", {"order_id": "5"}),
        ("order-g", "OrderPlaced", _placed("g", total=60_000.9, placed_at="2026-11-25T23:30:00-05:00")),
        ("order-g", "OrderCancelled", {"order_id": "g"}),
        ("order-nt", "OrderPlaced", {"order_id": "nt", "customer_id": "c", "placed_at": DAY}),  # no total
        ("order-last", "OrderPlaced", _placed("last", customer="solo", total=52_000)),
        ("order-last", "OrderCancelled", {"order_id": "last"}),  # solo's only order leaves 'placed'
    ]


def _build(
    store: EventStore, prototype: Projection, batch_size: int, *, defer_writes: bool = True
) -> tuple[Snapshot, list[tuple[int, str]]]:
    """Rebuild one projection from scratch with ``batch_size``: (its tables, its (position, status) failures)."""
    projection = type(prototype)()
    projection.on_error = "skip"
    admin.reset(store, projection)
    with store.engine.begin() as connection:
        connection.execute(sa.text("DELETE FROM projection_failures"))
    runner = ProjectionRunner(
        store, [projection], batch_size=batch_size, defer_writes=defer_writes, retry_attempts=1, retry_delay=0.001
    )
    runner.run_until_caught_up(timeout=120)
    failures = sorted((f.global_position, f.status) for f in admin.list_failures(store, projection.name))
    return _tables(store, projection.name), failures


def _tables(store: EventStore, name: str) -> Snapshot:
    with store.engine.connect() as connection:
        return {
            table: sorted(tuple(row) for row in connection.execute(sa.text(f"SELECT * FROM {table}")))
            for table in TABLES[name]
        }


def test_the_demo_workload_gives_the_same_read_models_one_event_at_a_time_and_in_batches(store: EventStore) -> None:
    workload(store, 150, seed=11, customers=6)
    for prototype in projections.ALL:
        one_by_one, no_failures = _build(store, prototype, batch_size=1)
        assert no_failures == []
        assert projections.verify(store, prototype) == [], prototype.name
        batched, no_failures = _build(store, prototype, batch_size=500)
        assert no_failures == []
        assert batched == one_by_one, prototype.name
        assert all(rows for rows in batched.values()), prototype.name


def test_awkward_events_give_the_same_read_models_and_poison_events_at_any_batch_size(store: EventStore) -> None:
    workload(store, 120, seed=11, customers=6)
    known = str(next(iter(store.read_all())).data["order_id"])
    at: dict[str, int] = {}  # stream -> position of its last awkward event
    for stream_id, event_type, data in _awkward(known):
        at[stream_id] = store.append(stream_id, [NewEvent(event_type, data)]).global_position
    workload(store, 40, seed=12, customers=6, prefix="v")

    results = {
        prototype.name: [_build(store, prototype, size) for size in (1, 7, 500)] for prototype in projections.ALL
    }
    for name, [one_by_one, *batched] in results.items():
        for other in batched:
            assert other == one_by_one, name

    # The poison events: each projection reads different fields of an OrderPlaced (customers never read
    # placed_at, the high-value list reads nothing but total below its threshold), every one needs an order_id.
    poison = {name: {position for position, _ in runs[0][1]} for name, runs in results.items()}
    placements = {at["order-bt"] - 1, at["order-huge"], at["order-duphuge"], at["order-nt"]}
    assert poison["customer_orders"] == placements | {at["order-neg"], at["order-nocust"] - 1, at["order-noid"]}
    bad_dates = {at["order-bd1"], at["order-bd2"] - 1}
    assert poison["dashboard_daily"] == placements | bad_dates | {at["order-neg"], at["order-noid"]}
    assert poison["order_summaries"] == poison["dashboard_daily"] | {at["order-nocust"] - 1}
    assert poison["high_value_orders"] == placements | {at["order-bd2"] - 1, at["order-nocust"] - 1, at["order-noid"]}

    # A few rules, checked on the rows themselves (results[name][2] is the batch_size=500 build).
    summaries = {row[0]: row for row in results["order_summaries"][2][0]["order_summaries"]}
    assert summaries[known][2] != "intruder"  # the first placement wins
    assert summaries["a1"][1:5] == ("order-a1", "cx", "shipped", 60_000)
    assert summaries["a1"][6] == at["order-a1"] - 1  # the position of the shipment that applied
    assert summaries["5"][2:5] == ("7", "paid", 70_000)
    assert summaries["g"][3:6] == ("cancelled", 60_000, date(2026, 11, 26))  # the UTC day of placed_at
    assert "ghost" not in summaries and "bt" not in summaries
    high_value = {row[0]: row for row in results["high_value_orders"][2][0]["high_value_orders"]}
    assert high_value["z"][1:3] == ("order-z2", "cz2") and high_value["z"][5] == "paid"
    assert "bd1" not in high_value and "neg" not in high_value
    customers = {row[0]: row for row in results["customer_orders"][2][0]["customer_orders"]}
    assert customers["solo"][1:] == (1, 0, 0, 1, 0)
    assert customers["cx"][1:] == (4, 1, 2, 1, 150_000)  # a1 shipped, bd1 placed, bd2 paid, g cancelled


@pytest.mark.timeout(300)  # 16 rebuilds, four of them one event at a time: about 30 s on 2 idle cores
def test_per_event_handlers_give_the_same_read_models_and_poison_events_with_deferred_writes(
    store: EventStore,
) -> None:
    """The projections as per-event handlers (tests/runner/per_event_orders.py): deferral changes nothing.

    Their poison events differ from the batch-folding classes' (a total out of ``bigint`` range is refused
    by the server, when the deferred statement runs); with deferral on, off, and one event at a time they
    must be the same events, with the same errors.
    """
    workload(store, 30, seed=11, customers=6)
    known = str(next(iter(store.read_all())).data["order_id"])
    for stream_id, event_type, data in _awkward(known):
        store.append(stream_id, [NewEvent(event_type, data)])
    workload(store, 10, seed=12, customers=6, prefix="v")

    def build(prototype: Projection, batch_size: int, defer_writes: bool) -> tuple[Snapshot, list[tuple[int, str]]]:
        tables, _ = _build(store, prototype, batch_size, defer_writes=defer_writes)
        failures = [(f.global_position, f.error) for f in admin.list_failures(store, prototype.name)]
        return tables, failures

    for prototype in PER_EVENT:
        one_by_one = build(prototype, 1, True)
        assert one_by_one[1], prototype.name  # the awkward events include poison events for every projection
        assert any("out of range" in error for _, error in one_by_one[1]), prototype.name  # raised by the server
        for batch_size, defer_writes in ((7, True), (500, True), (500, False)):
            assert build(prototype, batch_size, defer_writes) == one_by_one, (prototype.name, batch_size)


def test_replaying_a_stream_keeps_the_batch_built_read_model(store: EventStore) -> None:
    workload(store, 40, seed=4, customers=3)
    streams = sorted({event.stream_id for event in store.read_all()})[:5]
    for prototype in projections.ALL:
        built, _ = _build(store, prototype, batch_size=500)
        for stream_id in streams:
            assert admin.replay_stream(store, prototype, stream_id) == len(store.read_stream(stream_id))
        assert _tables(store, prototype.name) == built, prototype.name
