"""Stored events the projections cannot make sense of never crash the runner: the poison policy applies.

Hypothesis writes order events with fuzzed data (missing keys, wrong types,
huge numbers, odd dates) next to well-formed ones. The first-party
projections then run with ``on_error="skip"``: every projection must reach
the head, never be marked failed, and record each event it could not handle
as a skipped failure. With ``on_error="stop"`` a projection stops at its first
poison event while the others carry on. The same projections written as
per-event handlers end with the same read models and the same skipped events
whether their writes are deferred (batches) or not (one statement at a time).
"""

from __future__ import annotations

import itertools
from typing import Any

import pytest
import sqlalchemy as sa
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import projections
from eventstore import EventStore, NewEvent, Projection, ProjectionRunner, admin
from eventstore.admin import list_failures, projection_status
from tests.runner.per_event_orders import PER_EVENT

# Storable text only (the store rejects NUL and lone surrogates before writing; see test_fuzz_store).
TEXT = st.text(st.characters(exclude_characters="\x00", exclude_categories=["Cs"]), max_size=12)
FIELD_VALUES = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=False, allow_infinity=False),
    TEXT,
    st.sampled_from(["2026-11-25T10:00:00+00:00", "not a date", "9999-12-31T23:59:59+00:00", "2026-02-30"]),
    st.lists(st.integers(), max_size=2),
    st.dictionaries(TEXT, st.integers(), max_size=2),
)
KEYS = ["order_id", "customer_id", "total", "placed_at", "amount", "carrier", "reason"]
FUZZED_DATA = st.dictionaries(st.sampled_from(KEYS), FIELD_VALUES, max_size=6)
EVENT_TYPES = st.sampled_from(["OrderPlaced", "OrderPaid", "OrderShipped", "OrderCancelled", "Unrelated"])

_rounds = itertools.count(1)
PER_EVENT_TABLES = (
    "order_summaries",
    "dashboard_daily",
    "dashboard_orders",
    "customer_orders",
    "customer_order_states",
    "high_value_orders",
)


def _fresh(on_error: str) -> list[Projection]:
    instances: list[Projection] = [type(projection)() for projection in projections.ALL]
    for projection in instances:
        projection.on_error = on_error
    return instances


def _well_formed(order_id: str) -> dict[str, Any]:
    return {"order_id": order_id, "customer_id": "c-1", "total": 1250, "placed_at": "2026-11-25T10:00:00+00:00"}


@settings(max_examples=5, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(batch=st.lists(st.tuples(EVENT_TYPES, FUZZED_DATA), min_size=1, max_size=12))
def test_fuzzed_events_are_skipped_never_crash_the_runner(store: EventStore, batch: list[tuple[str, Any]]) -> None:
    round_number = next(_rounds)
    store.append(f"order-ok{round_number}", [NewEvent("OrderPlaced", _well_formed(f"ok{round_number}"))])
    for index, (event_type, data) in enumerate(batch):
        store.append(f"order-f{round_number}x{index}", [NewEvent(event_type, data)])
    head = store.head_position()

    instances = _fresh("skip")
    runner = ProjectionRunner(store, instances, retry_attempts=1, retry_delay=0.01)
    runner.run_until_caught_up(timeout=60)

    statuses = projection_status(store, instances)
    assert [status.position for status in statuses] == [head] * len(instances)
    assert all(status.state != "failed" for status in statuses), statuses
    failures = list_failures(store)
    assert all(failure.status == "skipped" for failure in failures)
    with store.engine.connect() as connection:
        placed = connection.execute(
            sa.text("SELECT count(*) FROM order_summaries WHERE order_id = :id"), {"id": f"ok{round_number}"}
        ).scalar_one()
    assert placed == 1  # the well-formed order was applied despite its poisonous neighbours


def _per_event_run(store: EventStore, *, defer_writes: bool, batch_size: int) -> tuple[object, ...]:
    """The per-event order projections rebuilt from scratch: (their tables, their failures with errors)."""
    instances: list[Projection] = [type(projection)() for projection in PER_EVENT]
    for projection in instances:
        projection.on_error = "skip"
        admin.reset(store, projection)
    with store.engine.begin() as connection:
        connection.execute(sa.text("DELETE FROM projection_failures"))
    runner = ProjectionRunner(
        store, instances, batch_size=batch_size, defer_writes=defer_writes, retry_attempts=1, retry_delay=0.01
    )
    runner.run_until_caught_up(timeout=60)
    statuses = projection_status(store, instances)
    assert all(status.state != "failed" for status in statuses), statuses
    failures = sorted((f.projection_name, f.global_position, f.status, f.error) for f in list_failures(store))
    with store.engine.connect() as connection:
        tables = {
            table: sorted(tuple(row) for row in connection.execute(sa.text(f"SELECT * FROM {table}")))
            for table in PER_EVENT_TABLES
        }
    return tables, failures, [status.position for status in statuses]


@pytest.mark.timeout(300)  # 10 runs of four projections
@settings(max_examples=5, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(batch=st.lists(st.tuples(EVENT_TYPES, FUZZED_DATA), min_size=1, max_size=12))
def test_fuzzed_events_give_per_event_handlers_the_same_outcome_with_deferred_writes(
    store: EventStore, batch: list[tuple[str, Any]]
) -> None:
    """Per-event handlers (tests/runner/per_event_orders.py) write through deferred writes in a batch:
    same read models, same skipped events with the same errors, as with one statement at a time."""
    round_number = next(_rounds)
    store.append(f"order-ok{round_number}", [NewEvent("OrderPlaced", _well_formed(f"ok{round_number}"))])
    for index, (event_type, data) in enumerate(batch):
        store.append(f"order-f{round_number}x{index}", [NewEvent(event_type, data)])
        store.append(f"order-ok{round_number}", [NewEvent("OrderPaid", {"order_id": f"ok{round_number}"})])
    deferred = _per_event_run(store, defer_writes=True, batch_size=500)
    assert deferred == _per_event_run(store, defer_writes=False, batch_size=500)


def test_stop_policy_stops_only_the_poisoned_projection(store: EventStore) -> None:
    store.append("order-1", [NewEvent("OrderPlaced", {"order_id": "1", "customer_id": "c", "total": "ten"})])
    store.append("order-2", [NewEvent("OrderPlaced", _well_formed("2"))])
    instances = _fresh("stop")
    ledger = projections.Ledger()
    runner = ProjectionRunner(store, [*instances, ledger], retry_attempts=1, retry_delay=0.01)
    runner.run_until_caught_up(timeout=60)

    states = {status.name: status for status in projection_status(store, [*instances, ledger])}
    assert states["ledger"].state != "failed" and states["ledger"].position == store.head_position()
    failed = [name for name, status in states.items() if status.state == "failed"]
    assert failed, "a projection reading `total` must stop at the poison event"
    for name in failed:
        assert states[name].failed_position == 1
    assert {failure.projection_name for failure in list_failures(store)} == set(failed)


@pytest.fixture(autouse=True)
def _reset_rounds() -> None:
    global _rounds
    _rounds = itertools.count(1)
