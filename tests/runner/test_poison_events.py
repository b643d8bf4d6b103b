"""Poison events: bounded retries, then stop (stored failure) or skip; retry and skip afterwards."""

from __future__ import annotations

from collections.abc import Callable

import pytest
import sqlalchemy as sa
from sqlalchemy.engine import Engine

import projections
from eventstore import (
    ConfigurationError,
    EventStore,
    NewEvent,
    Projection,
    ProjectionError,
    ProjectionRunner,
    RecordedEvent,
    admin,
)
from eventstore.runner.checkpoints import load
from projections import Ledger, ledger_positions
from tests.runner.runner_helpers import FAST, wait_for


def _append(store: EventStore, types: list[str]) -> list[int]:
    return [store.append(f"order-{i}", [NewEvent(t, {"i": i})]).global_position for i, t in enumerate(types)]


def _applied(engine: Engine, name: str) -> list[int]:
    with engine.connect() as connection:
        return ledger_positions(connection, name)


def test_stop_policy_marks_the_projection_failed_and_others_keep_going(store: EventStore, engine: Engine) -> None:
    positions = _append(store, ["Good"] * 5 + ["Bad"] + ["Good"] * 4)
    poison = positions[5]
    stopping = Ledger("stopping", poison_types={"Bad"})
    runner = ProjectionRunner(store, [stopping, Ledger("healthy")], **{**FAST, "retry_attempts": 3})
    runner.run_until_caught_up(timeout=30)

    assert _applied(engine, "healthy") == positions
    assert _applied(engine, "stopping") == positions[:5]  # the events before the poison one are committed
    status = {s.name: s for s in admin.projection_status(store, [stopping, Ledger("healthy")])}
    assert (status["stopping"].state, status["stopping"].failed_position) == ("failed", poison)
    assert status["stopping"].position == positions[4] and status["stopping"].lag_events == 5
    assert "ValueError: ledger 'stopping': poison event Bad" in (status["stopping"].last_error or "")
    assert status["healthy"].state == "stopped" and status["healthy"].lag_events == 0
    with engine.connect() as connection:
        checkpoint = load(connection, "stopping")
    assert checkpoint is not None and "raise ValueError" in (checkpoint.last_traceback or "")
    [failure] = admin.list_failures(store, "stopping")
    assert (failure.global_position, failure.event_type, failure.stream_id, failure.status, failure.attempts) == (
        poison,
        "Bad",
        "order-5",
        "failed",
        3,
    )

    # A failed projection stays failed: running again changes nothing.
    assert runner.run_until_caught_up() == 0
    assert _applied(engine, "stopping") == positions[:5]

    # Retry with the bug fixed: the event is applied and processing goes on.
    stopping.poison_types = frozenset()
    assert admin.retry(store, "stopping") == poison
    assert runner.run_until_caught_up() == 5
    assert _applied(engine, "stopping") == positions
    assert [f.status for f in admin.list_failures(store, "stopping")] == ["retried"]
    with pytest.raises(ProjectionError, match="is not failed"):
        admin.retry(store, "stopping")


def test_skip_policy_records_the_event_and_moves_on(store: EventStore, engine: Engine) -> None:
    positions = _append(store, ["Good", "Bad", "Good", "Bad", "Good"])
    skipping = Ledger("skipping", on_error="skip", poison_types={"Bad"})
    assert ProjectionRunner(store, [skipping], **FAST).run_until_caught_up() == 5
    assert _applied(engine, "skipping") == [positions[0], positions[2], positions[4]]
    failures = admin.list_failures(store, "skipping")
    assert [(f.global_position, f.status, f.attempts) for f in failures] == [
        (positions[1], "skipped", 2),
        (positions[3], "skipped", 2),
    ]
    [status] = admin.projection_status(store, [skipping])
    assert (status.position, status.lag_events, status.state, status.failed_position) == (
        positions[-1],
        0,
        "stopped",
        None,
    )


def test_an_event_the_handler_cannot_decode_is_a_poison_event(store: EventStore, engine: Engine) -> None:
    projections.orders.place(store, "order-fine", customer="ada", total=100)
    bad = store.append("order-broken", [NewEvent("OrderPlaced", {"order_id": "broken"})]).global_position
    summaries = projections.OrderSummaries()
    ProjectionRunner(store, [summaries], **FAST).run_until_caught_up()
    [failure] = admin.list_failures(store, "order_summaries")
    assert (failure.global_position, failure.status) == (bad, "failed")
    assert failure.error.startswith("KeyError: 'customer_id'")
    with engine.connect() as connection:
        assert connection.execute(sa.text("SELECT order_id FROM order_summaries")).scalars().all() == ["fine"]


def test_operator_skip_while_a_runner_is_live(
    store: EventStore, engine: Engine, start_runner: Callable[..., ProjectionRunner]
) -> None:
    stopping = Ledger("live-stop", poison_types={"Bad"})
    runner = start_runner([stopping, Ledger("live-ok")])
    positions = _append(store, ["Good", "Bad", "Good"])
    wait_for(lambda: admin.projection_status(store, [stopping])[0].state == "failed", what="live-stop failed")
    admin.wait_until_processed(store, "live-ok", positions[-1])  # the other projection keeps running
    assert _applied(engine, "live-ok") == positions
    more = _append(store, ["Good"])
    assert admin.skip(store, "live-stop") == positions[1]
    runner.wait_until_processed(more[-1])  # the skip woke the runner
    assert _applied(engine, "live-stop") == [positions[0], positions[2], more[0]]
    assert [f.status for f in admin.list_failures(store, "live-stop")] == ["skipped"]


class BatchCounter(Projection):
    """Counts with one UPDATE per batch (the apply_batch hook); events typed Bad make it raise."""

    name = "batch_counter"
    on_error = "skip"

    def __init__(self) -> None:
        self.calls = 0

    def setup(self, conn: sa.Connection) -> None:
        conn.execute(sa.text("CREATE TABLE IF NOT EXISTS batch_count (id int PRIMARY KEY, n int NOT NULL)"))
        conn.execute(sa.text("INSERT INTO batch_count VALUES (1, 0) ON CONFLICT DO NOTHING"))

    def apply_batch(self, events: list[RecordedEvent], conn: sa.Connection) -> None:
        self.calls += 1
        if any(event.type == "Bad" for event in events):
            raise ValueError("cannot count a Bad event")
        conn.execute(sa.text("UPDATE batch_count SET n = n + :count WHERE id = 1"), {"count": len(events)})


def test_apply_batch_writes_once_per_batch_and_a_poison_event_is_isolated(store: EventStore, engine: Engine) -> None:
    positions = _append(store, ["Good"] * 40 + ["Bad"] + ["Good"] * 39)
    counter = BatchCounter()

    assert ProjectionRunner(store, [counter], **{**FAST, "batch_size": 1000}).run_until_caught_up() == 80

    with engine.connect() as connection:
        assert connection.execute(sa.text("SELECT n FROM batch_count")).scalar_one() == 79
    [failure] = admin.list_failures(store, "batch_counter")
    assert (failure.global_position, failure.status) == (positions[40], "skipped")
    assert counter.calls < 20  # one call for the batch, then halving to find the poison event, not 80 calls


def test_a_rebuild_or_reset_resolves_the_open_failures_it_starts_over_from(store: EventStore, engine: Engine) -> None:
    _append(store, ["Good", "Bad", "Good"])
    stopping = Ledger("stopping", poison_types={"Bad"})
    ProjectionRunner(store, [stopping], **FAST).run_until_caught_up(timeout=30)
    assert [f.status for f in admin.list_failures(store, "stopping", open_only=True)] == ["failed"]

    stopping.poison_types = frozenset()  # the bug is fixed; rebuild from the start
    assert admin.rebuild(store, stopping) == 3
    assert admin.list_failures(store, "stopping", open_only=True) == []
    assert [f.status for f in admin.list_failures(store, "stopping")] == ["retried"]

    stopping.poison_types = frozenset({"Bad"})  # and a reset after a new failure
    assert admin.rebuild(store, stopping) == 1
    assert len(admin.list_failures(store, "stopping", open_only=True)) == 1
    admin.reset(store, stopping)
    assert admin.list_failures(store, "stopping", open_only=True) == []


class LostStatement(Projection):
    """Its handler runs a prepared statement the server does not have: what a transaction-mode pooler causes."""

    name = "lost_statement"

    def apply(self, event: RecordedEvent, conn: sa.Connection) -> bool:
        conn.exec_driver_sql("EXECUTE eventstore_no_such_statement")
        return True


def test_a_prepared_statement_lost_by_a_pooler_is_not_a_poison_event(store: EventStore) -> None:
    _append(store, ["Good"])
    runner = ProjectionRunner(store, [LostStatement()], **{**FAST, "retry_attempts": 2})
    with pytest.raises(ConfigurationError, match="prepared statement") as raised:
        runner.run_until_caught_up(timeout=30)
    assert "prepared_statements" in str(raised.value)  # says what to change
    assert admin.list_failures(store) == []  # not recorded as the event's fault
    assert admin.projection_status(store, ["lost_statement"])[0].state == "stopped"
