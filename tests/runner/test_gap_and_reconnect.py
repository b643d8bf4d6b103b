"""The runner never skips or repeats: out-of-order commits, a killed listener, a restarted server."""

from __future__ import annotations

import random
import socket
import threading
from collections.abc import Callable

import pytest
import sqlalchemy as sa
from sqlalchemy.engine import Engine

from eventstore import DatabaseUnavailable, EventStore, NewEvent, ProjectionRunner, admin
from eventstore.testing import TestServer
from projections import Ledger, ledger_positions
from tests.runner.runner_helpers import FAST, append_many


def _global_order(store: EventStore) -> list[int]:
    return [event.global_position for event in store.read_all()]


def test_out_of_order_commits_while_the_runner_is_live(
    store: EventStore, engine: Engine, start_runner: Callable[..., ProjectionRunner]
) -> None:
    runner = start_runner([Ledger("gap")])
    first = store.append("order-first", [NewEvent("Placed", {})]).global_position
    runner.wait_until_processed(first)

    # Hold an append transaction open while later appends commit (and notify).
    with engine.connect() as held:
        transaction = held.begin()
        early = store.append("order-held", [NewEvent("Placed", {})], connection=held).global_position
        later = [store.append(f"order-later-{i}", [NewEvent("Placed", {})]).global_position for i in range(5)]
        assert early < later[0]
        assert store.held_back()
        # The runner was woken by the later commits, but must not move past the open transaction.
        with pytest.raises(TimeoutError):
            runner.wait_until_processed(later[-1], timeout=0.3)
        with engine.connect() as connection:
            assert ledger_positions(connection, "gap") == [first]
        transaction.commit()

    runner.wait_until_processed(later[-1])
    with engine.connect() as connection:
        applied = ledger_positions(connection, "gap")
    assert applied == [first, early, *later]  # the held event first: its transaction began first
    assert applied == _global_order(store)


def test_concurrent_writers_with_open_transactions_lose_nothing(
    store: EventStore, engine: Engine, start_runner: Callable[..., ProjectionRunner]
) -> None:
    runner = start_runner([Ledger("race")])
    positions: list[int] = []
    lock = threading.Lock()

    def writer(index: int) -> None:
        rng = random.Random(index)
        for round_ in range(40):
            if rng.random() < 0.3:
                # A transaction that stays open across other writers' commits.
                with engine.begin() as connection:
                    result = store.append(f"w{index}-{round_}", [NewEvent("E", {})], connection=connection)
                    threading.Event().wait(rng.random() * 0.01)
                    more = store.append(f"w{index}-{round_}b", [NewEvent("E", {})], connection=connection)
                with lock:
                    positions.extend([result.global_position, more.global_position])
            else:
                result = store.append(f"w{index}-{round_}", [NewEvent("E", {}), NewEvent("E", {})])
                with lock:
                    positions.extend([result.global_position - 1, result.global_position])

    threads = [threading.Thread(target=writer, args=(i,)) for i in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    runner.wait_until_processed(max(positions), timeout=20)
    with engine.connect() as connection:
        applied = ledger_positions(connection, "race")
    assert len(applied) == len(set(applied)) == 320
    assert set(positions) <= set(applied)
    assert applied == _global_order(store)
    assert admin.list_failures(store) == []


def test_listener_killed_then_server_restarted_during_a_run(
    test_server: TestServer, store: EventStore, engine: Engine, start_runner: Callable[..., ProjectionRunner]
) -> None:
    if not test_server.can_restart:
        pytest.skip(f"cannot restart a {test_server.kind} server")
    # A long poll interval: only wake-ups and reconnect catch-ups can keep up in time.
    runner = start_runner([Ledger("resilient")], poll_interval=60.0)
    assert runner.listener is not None and runner.listener.listening.wait(10)
    runner.wait_until_processed(append_many(store, "before", 40))

    with engine.connect() as connection:
        killed = connection.execute(
            sa.text("SELECT pg_terminate_backend(:pid)"), {"pid": runner.listener.backend_pid}
        ).scalar_one()
    assert killed
    runner.wait_until_processed(append_many(store, "after-kill", 40))
    assert runner.listener.connections >= 2

    test_server.restart()
    engine.dispose()  # the pool's connections died with the server
    last = append_many(store, "after-restart", 40)
    runner.wait_until_processed(last, timeout=30)
    assert runner.listener.connections >= 3

    with engine.connect() as connection:
        applied = ledger_positions(connection, "resilient")
    assert len(applied) == 120
    assert applied == _global_order(store)
    assert admin.list_failures(store) == []


def test_catching_up_without_a_server_raises_an_eventstore_error() -> None:
    with socket.socket() as unused:
        unused.bind(("127.0.0.1", 0))
        port = unused.getsockname()[1]
    with EventStore(f"postgresql://postgres@127.0.0.1:{port}/nowhere") as unreachable:
        runner = ProjectionRunner(unreachable, [Ledger()], **FAST)
        with pytest.raises(DatabaseUnavailable, match=f"127.0.0.1:{port}/nowhere"):
            runner.run_until_caught_up(timeout=10)
