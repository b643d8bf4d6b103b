"""Projections through the runner: handlers, filters, checkpoints, status, the order read models."""

from __future__ import annotations

import threading
from collections.abc import Callable

import pytest
import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

import projections
from eventstore import (
    ConfigurationError,
    EventStore,
    NewEvent,
    Projection,
    ProjectionBusy,
    ProjectionRunner,
    RecordedEvent,
    admin,
    handles,
)
from eventstore.runner.checkpoints import load
from projections import Ledger, ledger_positions
from projections.orders import workload
from tests.runner.runner_helpers import FAST, append_many


class PlacedCounter(Projection):
    name = "placed_counter"
    event_types = ("OrderPlaced",)

    def setup(self, conn: Connection) -> None:
        conn.execute(sa.text("CREATE TABLE IF NOT EXISTS placed_counter (id int PRIMARY KEY, n int NOT NULL)"))

    @handles("OrderPlaced")
    def placed(self, event: RecordedEvent, conn: Connection) -> None:
        conn.execute(
            sa.text("INSERT INTO placed_counter VALUES (1, 1) ON CONFLICT (id) DO UPDATE SET n = placed_counter.n + 1")
        )


def _count(engine: Engine) -> int:
    with engine.connect() as connection:
        return int(connection.execute(sa.text("SELECT coalesce(sum(n), 0) FROM placed_counter")).scalar_one())


def test_order_read_models_equal_a_recomputation(store: EventStore) -> None:
    written = workload(store, 60, seed=3)
    runner = ProjectionRunner(store, projections.ALL, **FAST)
    assert runner.run_until_caught_up(timeout=60) == written * len(projections.ALL)
    for projection in projections.ALL:
        assert projections.verify(store, projection) == [], projection.name
        rows = projections.expected_rows(store, projection)
        assert sum(len(r) for r in rows.values()) > 0
    statuses = admin.projection_status(store, projections.ALL)
    assert [(s.position, s.lag_events, s.state) for s in statuses] == [(store.head_position(), 0, "stopped")] * 4
    # Replaying one order's stream rebuilds exactly its rows.
    stream_id = next(iter(store.read_all())).stream_id
    for projection in projections.ALL:
        assert admin.replay_stream(store, projection, stream_id) == len(store.read_stream(stream_id))
        assert projections.verify(store, projection) == []


def test_filtered_projection_moves_its_checkpoint_past_events_it_never_reads(store: EventStore, engine: Engine) -> None:
    store.append("order-1", [NewEvent("OrderPlaced", {})])
    last = append_many(store, "noise", 25)
    runner = ProjectionRunner(store, [PlacedCounter()], **FAST)
    assert runner.run_until_caught_up() == 1
    assert _count(engine) == 1
    with engine.connect() as connection:
        checkpoint = load(connection, "placed_counter")
    assert checkpoint is not None and checkpoint.position == last
    status = admin.projection_status(store, [PlacedCounter()])[0]
    assert (status.position, status.head, status.lag_events) == (last, last, 0)
    # A second catch-up reads nothing and changes nothing.
    assert runner.run_until_caught_up() == 0
    assert _count(engine) == 1


def test_wake_up_applies_new_events_once_each(
    store: EventStore, engine: Engine, start_runner: Callable[..., ProjectionRunner]
) -> None:
    ledger = Ledger("wake")
    batches: list[int] = []
    runner = start_runner([ledger, PlacedCounter()], on_batch=lambda name, events: batches.append(len(events)))
    positions = [store.append(f"order-{i}", [NewEvent("OrderPlaced", {"i": i})]).global_position for i in range(20)]
    runner.wait_until_processed(positions[-1], timeout=10)
    assert runner.active_projections() == ["wake", "placed_counter"]
    with engine.connect() as connection:
        assert ledger_positions(connection, "wake") == positions
    assert _count(engine) == 20
    assert sum(batches) == 40
    status = {s.name: s for s in admin.projection_status(store, [ledger, PlacedCounter()])}
    assert status["wake"].state == "idle" and status["wake"].owner == runner.owner


def test_a_second_catch_up_runner_is_refused_while_one_runs(
    store: EventStore, start_runner: Callable[..., ProjectionRunner]
) -> None:
    runner = start_runner([Ledger("busy")])
    position = store.append("order-1", [NewEvent("OrderPlaced", {})]).global_position
    runner.wait_until_processed(position)
    other = ProjectionRunner(store, [Ledger("busy")], **FAST)
    with pytest.raises(ProjectionBusy, match="'busy' is locked by another runner") as info:
        other.run_until_caught_up()
    assert info.value.owner == runner.owner
    with pytest.raises(ProjectionBusy):
        admin.rebuild(store, Ledger("busy"))


def test_rebuild_replays_everything_and_can_be_stopped(store: EventStore, engine: Engine) -> None:
    last = append_many(store, "tick", 300)
    ledger = Ledger("rebuilt")
    ProjectionRunner(store, [ledger], **FAST).run_until_caught_up()
    seen: list[tuple[int, int]] = []
    assert admin.rebuild(store, ledger, progress=lambda done, total: seen.append((done, total)), batch_size=100) == 300
    assert seen[0] == (0, 300) and seen[-1] == (300, 300)
    with engine.connect() as connection:
        assert len(ledger_positions(connection, "rebuilt")) == 300
    stop = threading.Event()

    def stop_after_first(done: int, total: int) -> None:
        if done:
            stop.set()

    assert admin.rebuild(store, ledger, progress=stop_after_first, stop_event=stop, batch_size=100) == 100
    with pytest.raises(TimeoutError, match=r"'rebuilt' .*did not process"):
        admin.wait_until_processed(store, "rebuilt", last, timeout=0.05)
    assert ProjectionRunner(store, [ledger], **FAST).run_until_caught_up() == 200
    with engine.connect() as connection:
        assert sorted(ledger_positions(connection, "rebuilt")) == [e.global_position for e in store.read_all()]


def test_bad_projection_lists_are_refused(store: EventStore) -> None:
    with pytest.raises(ConfigurationError, match="unique"):
        ProjectionRunner(store, [Ledger("x"), Ledger("x")])
    with pytest.raises(ConfigurationError, match="on_error"):
        ProjectionRunner(store, [Ledger("x", on_error="ignore")])
    with pytest.raises(ConfigurationError, match="instances"):
        ProjectionRunner(store, [Ledger])  # type: ignore[list-item]
