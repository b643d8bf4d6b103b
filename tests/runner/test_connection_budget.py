"""A runner's connections and threads do not grow with its projections; standbys open no connection per retry."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

import pytest
import sqlalchemy as sa
from sqlalchemy.engine import Engine

from eventstore import EventStore, ProjectionRunner, admin
from projections import Ledger
from tests.runner.runner_helpers import append_many, wait_for

NAMES = [f"ledger-{number:02}" for number in range(50)]

_BACKENDS = sa.text(
    "SELECT pid, backend_start FROM pg_stat_activity "
    "WHERE datname = current_database() AND application_name IN ('eventstore-runner', 'eventstore-listener') "
    "AND pid <> pg_backend_pid()"
)


def _backends(engine: Engine) -> set[tuple[int, object]]:
    with engine.connect() as connection:
        return {(int(row.pid), row.backend_start) for row in connection.execute(_BACKENDS)}


def _runner_threads() -> list[str]:
    return [thread.name for thread in threading.enumerate() if thread.name.startswith("eventstore-")]


def test_fifty_projections_fit_in_six_connections_and_a_standby_opens_none_per_retry(
    store: EventStore, engine: Engine, start_runner: Callable[..., ProjectionRunner]
) -> None:
    active = start_runner([Ledger(name) for name in NAMES])
    wait_for(lambda: active.active_projections() == NAMES, timeout=30, what="all 50 projections owned")
    last = append_many(store, "order", 200)
    for name in NAMES:
        admin.wait_until_processed(store, name, last, timeout=30)

    assert len(_backends(engine)) <= 6  # the listener and a pool of 5, not 50 sessions
    assert sorted(_runner_threads()) == [
        "eventstore-leases",
        "eventstore-listener",
        "eventstore-worker-1",
        "eventstore-worker-2",
        "eventstore-worker-3",
        "eventstore-worker-4",
    ]

    standby = start_runner([Ledger(name) for name in NAMES])
    wait_for(lambda: standby.listener.listening.is_set(), what="the standby listening")
    time.sleep(0.5)  # let the standby's pool reach its working size
    before = _backends(engine)
    time.sleep(2.0)  # about 20 standby retries (lock_retry_interval 0.1 s)
    after = _backends(engine)
    assert standby.active_projections() == []
    assert after == before  # the same backends: no connection opened (or closed) per retry
    assert len(after) <= 12

    last = append_many(store, "late", 20)
    for name in NAMES:
        admin.wait_until_processed(store, name, last, timeout=30)


def test_a_budget_larger_than_the_server_has_room_for_is_reported(
    store: EventStore, start_runner: Callable[..., ProjectionRunner], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="eventstore")
    runner = start_runner([Ledger()], connections=100_000)
    wait_for(lambda: runner.active_projections() == ["ledger"], what="the runner owning the ledger")
    assert "the server has room for" in caplog.text and "budget is 100000" in caplog.text
    assert "lower connections=" in caplog.text
