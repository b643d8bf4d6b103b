"""Runner processes: one applies while another stands by, SIGKILL failover, SIGTERM mid catch-up."""

from __future__ import annotations

import signal
import time

import sqlalchemy as sa
from sqlalchemy.engine import Engine

from eventstore import EventStore, ProjectionRunner, admin
from eventstore.runner.checkpoints import load
from eventstore.runner.ownership import take_setup_lock
from projections import Ledger
from tests.runner.runner_helpers import FAST, Processes, append_many, wait_for


def _ledger(engine: Engine, name: str = "ledger") -> list[tuple[int, str]]:
    with engine.begin() as connection:
        # The table may not exist before a runner has started; the setup lock keeps its setup() and ours apart.
        take_setup_lock(connection)
        Ledger(name).setup(connection)
        rows = connection.execute(
            sa.text(
                "SELECT global_position, applied_by FROM projection_ledger WHERE projection_name = :name "
                "ORDER BY applied_order"
            ),
            {"name": name},
        )
        return [(int(position), str(applied_by)) for position, applied_by in rows]


def _owner(store: EventStore) -> str | None:
    return admin.projection_status(store, ["ledger"])[0].owner


def test_one_runner_applies_and_the_standby_takes_over_after_sigkill(
    store: EventStore, engine: Engine, processes: Processes
) -> None:
    total = 600
    append_many(store, "order", total, per_stream=20)
    # Both start at once and race for the lock; the active one is slowed down so it is killed mid catch-up.
    runners = [processes.start("--delay", "0.004", "--batch-size", "40") for _ in range(2)]
    owner = wait_for(lambda: _owner(store), what="a runner holding the lock")
    active = next(p for p in runners if owner.endswith(f":{p.pid}"))
    standby = next(p for p in runners if p is not active)
    wait_for(lambda: len(_ledger(engine)) >= 120, what="120 events applied")
    assert {by for _, by in _ledger(engine)} == {owner}  # only the lock holder applies

    active.kill()
    killed_at = time.monotonic()
    active.wait(10)
    new_owner = wait_for(lambda: _owner(store) not in (None, owner) and _owner(store), timeout=5.0, what="takeover")
    assert time.monotonic() - killed_at < 5.0
    assert new_owner.endswith(f":{standby.pid}")
    admin.wait_until_processed(store, "ledger", store.head_position(), timeout=20)

    ledger = _ledger(engine)
    positions = [position for position, _ in ledger]
    assert len(positions) == len(set(positions)) == total  # every position exactly once
    assert positions == [event.global_position for event in store.read_all()]
    by_killed = [position for position, by in ledger if by == owner]
    assert 120 <= len(by_killed) < total and positions[: len(by_killed)] == by_killed
    assert {by for _, by in ledger[len(by_killed) :]} == {new_owner}
    assert admin.list_failures(store) == []

    standby.send_signal(signal.SIGTERM)
    assert standby.wait(10) == 0


def test_sigterm_during_a_large_catch_up_commits_and_a_restart_continues(
    store: EventStore, engine: Engine, processes: Processes
) -> None:
    total = 3000
    append_many(store, "order", total, per_stream=100)
    process = processes.start("--delay", "0.002", "--batch-size", "100")
    wait_for(lambda: len(_ledger(engine)) >= 200, what="200 events applied")
    process.send_signal(signal.SIGTERM)
    signalled_at = time.monotonic()
    assert process.wait(10) == 0
    assert time.monotonic() - signalled_at < 10

    applied = [position for position, _ in _ledger(engine)]
    with engine.connect() as connection:
        checkpoint = load(connection, "ledger")
    assert checkpoint is not None and checkpoint.state == "stopped" and checkpoint.owner is None
    assert 200 <= len(applied) < total  # interrupted, not finished
    assert applied[-1] == checkpoint.position  # the last batch was committed together with its checkpoint
    [status] = admin.projection_status(store, [Ledger("ledger")])
    assert (status.state, status.lag_events) == ("stopped", total - len(applied))

    # A restart continues exactly where the first run stopped.
    assert ProjectionRunner(store, [Ledger("ledger")], **FAST).run_until_caught_up(timeout=60) == total - len(applied)
    positions = [position for position, _ in _ledger(engine)]
    assert positions == [event.global_position for event in store.read_all()]


def test_a_second_signal_aborts_without_committing_the_batch(
    store: EventStore, engine: Engine, processes: Processes
) -> None:
    append_many(store, "order", 200, per_stream=100)
    # One batch of 100 events at 0.2 s each: a graceful stop would wait ~20 s.
    process = processes.start("--delay", "0.2", "--batch-size", "100")
    wait_for(lambda: admin.projection_status(store, ["ledger"])[0].owner, what="the runner holding the lock")
    process.send_signal(signal.SIGTERM)
    time.sleep(0.2)  # two separate signals, not one coalesced delivery
    process.send_signal(signal.SIGINT)
    assert process.wait(5) != 0
    assert _ledger(engine) == []  # the interrupted batch was rolled back
    with engine.connect() as connection:
        checkpoint = load(connection, "ledger")
    assert checkpoint is not None and checkpoint.position == 0
