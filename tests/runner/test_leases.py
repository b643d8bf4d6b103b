"""Projection ownership is a lease with a fencing token: what holds when it expires, is taken over or released."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from datetime import UTC, datetime

import pytest
import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

from eventstore import EventStore, NewEvent, ProjectionBusy, ProjectionRunner, RecordedEvent, admin
from eventstore.errors import ProjectionTimeout
from eventstore.runner import checkpoints, ownership
from eventstore.runner.connections import session_engine
from eventstore.runner.ownership import LeaseLost
from eventstore.runner.poison import apply_policy
from eventstore.runner.session import ProjectionSession
from eventstore.runner.settings import RunnerSettings
from eventstore.web.dashboard import why
from projections import Ledger, ledger_positions
from tests.runner.runner_helpers import FAST, append_many, running, wait_for


def _expire(engine: Engine, name: str) -> None:
    """What a stalled owner's lease looks like to everyone else once its time is up."""
    with engine.begin() as connection:
        connection.execute(
            sa.text(
                "UPDATE projection_checkpoints SET lease_expires_at = clock_timestamp() - interval '1 second' "
                "WHERE projection_name = :name"
            ),
            {"name": name},
        )


def _applied(engine: Engine) -> list[int]:
    with engine.connect() as connection:
        return ledger_positions(connection, "ledger")


def _session(engine: Engine, store: EventStore, owner: str) -> ProjectionSession | None:
    return ProjectionSession.acquire(
        engine, store, Ledger(), settings=RunnerSettings(batch_size=50), stop=threading.Event(), owner=owner
    )


def test_an_owner_whose_lease_was_taken_over_cannot_commit(store: EventStore, engine: Engine) -> None:
    append_many(store, "order", 120)
    first = _session(engine, store, "first:1")
    assert first is not None
    assert _session(engine, store, "second:2") is None  # held: nobody else gets it
    first.catch_up(max_batches=1)
    assert len(_applied(engine)) == 50

    _expire(engine, "ledger")  # the first owner stalled past its lease...
    expired = admin.projection_status(store, ["ledger"])[0]
    with engine.connect() as connection:
        stored = checkpoints.load(connection, "ledger")
    assert stored is not None and expired.owner is None and expired.unowned_since == stored.lease_expires_at
    second = _session(engine, store, "second:2")  # ...and a standby took over
    assert second is not None and second.lease.token == first.lease.token + 1

    with pytest.raises(LeaseLost, match="another owner took it over"):
        first.catch_up()  # its next batch is fenced off: nothing committed
    assert len(_applied(engine)) == 50
    assert second.catch_up().caught_up
    positions = _applied(engine)
    assert positions == [event.global_position for event in store.read_all()]

    first.release()  # a stale owner's release frees nothing
    assert admin.projection_status(store, ["ledger"])[0].owner == "second:2"
    second.release()  # the holder's release frees it at once
    status = admin.projection_status(store, ["ledger"])[0]
    assert (status.owner, status.state) == (None, "stopped")


def test_a_poison_event_is_not_recorded_by_an_owner_that_lost_its_lease(store: EventStore, engine: Engine) -> None:
    store.append("order-1", [NewEvent("OrderPlaced", {})])
    event = next(iter(store.read_all()))
    first = _session(engine, store, "first:1")
    assert first is not None
    _expire(engine, "ledger")
    second = _session(engine, store, "second:2")
    assert second is not None
    with engine.connect() as connection, pytest.raises(LeaseLost):
        apply_policy(connection, Ledger(), event, (0, 0), ValueError("boom"), 3, token=first.lease.token)
    assert admin.list_failures(store) == []
    assert admin.projection_status(store, ["ledger"])[0].state != "failed"
    second.release()


def test_a_runner_that_loses_its_lease_stops_applying_and_takes_it_back_once_free(
    store: EventStore, engine: Engine, start_runner: Callable[..., ProjectionRunner], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="eventstore")
    runner = start_runner([Ledger()], lease_ttl=0.6)
    wait_for(lambda: runner.active_projections() == ["ledger"], what="the runner owning the ledger")
    admin.wait_until_processed(store, "ledger", append_many(store, "a", 10), timeout=10)

    # Another owner takes the lease once it looks expired (as after a stall of the runner).
    thief: list[ownership.Lease] = []

    def steal() -> bool:
        _expire(engine, "ledger")
        with engine.begin() as connection:
            thief.extend(ownership.acquire(connection, ["ledger"], "thief:9", ttl=60))
        return bool(thief)

    wait_for(steal, what="the lease taken over")
    wait_for(lambda: runner.active_projections() == [], what="the runner noticing its lease is gone")
    assert "lease lost" in caplog.text
    before = len(_applied(engine))
    append_many(store, "b", 10)
    with pytest.raises(ProjectionTimeout):
        admin.wait_until_processed(store, "ledger", store.head_position(), timeout=1.0)
    assert len(_applied(engine)) == before  # the thief holds it: nobody applies

    with engine.begin() as connection:
        assert ownership.release(connection, thief[0])
    admin.wait_until_processed(store, "ledger", store.head_position(), timeout=10)  # taken back and caught up
    assert _applied(engine) == [event.global_position for event in store.read_all()]


def test_a_stopped_runner_frees_its_projections_at_once(store: EventStore, engine: Engine) -> None:
    runner = ProjectionRunner(store, [Ledger()], **{**FAST, "lease_ttl": 60.0})
    with running(runner):
        wait_for(lambda: runner.active_projections() == ["ledger"], what="the runner owning the ledger")
        status = admin.projection_status(store, ["ledger"])[0]
        assert status.owner == runner.owner and status.state == "idle" and status.unowned_since is None
        with pytest.raises(ProjectionBusy, match=runner.owner):
            admin.reset(store, Ledger())
        with pytest.raises(ProjectionBusy, match=runner.owner):
            admin.rebuild(store, Ledger())
    status = admin.projection_status(store, ["ledger"])[0]
    assert (status.owner, status.state) == (None, "stopped")  # not after 60 s: released on stop
    assert status.unowned_since is not None
    assert why(status, None, datetime.now(UTC)) == (
        f"caught up (no runner owns it since {status.unowned_since.astimezone(UTC):%H:%M:%S} UTC)",
        "ok",
    )
    admin.rebuild(store, Ledger())  # free now
    with engine.connect() as connection:
        current = checkpoints.load(connection, "ledger")
    assert current is not None and current.owner is None and current.lease_expires_at is None


def test_a_long_batch_keeps_its_lease_even_past_the_time_to_live(store: EventStore, engine: Engine) -> None:
    """A batch holds the checkpoint row from its first statement: nobody takes the lease over while it runs."""
    append_many(store, "order", 20)
    slow = ProjectionSession.acquire(
        engine,
        store,
        Ledger(delay=0.1),  # 20 events: 2 s in one batch, with a 1 s lease
        settings=RunnerSettings(batch_size=50, lease_ttl=1.0),
        stop=threading.Event(),
        owner="slow:1",
    )
    assert slow is not None
    taken: list[ownership.Lease] = []
    done = threading.Event()

    def try_to_take_over() -> None:
        other = session_engine(engine, pool_size=1)
        try:
            while not done.is_set():
                with other.begin() as connection:
                    taken.extend(ownership.acquire(connection, ["ledger"], "other:2", ttl=60))
                if taken:
                    return
                done.wait(0.05)
        finally:
            other.dispose()

    owners: list[str | None] = []

    def look_during_the_batch() -> None:
        done.wait(1.5)  # past the 1 s lease, before the 2 s batch commits
        owners.append(admin.projection_status(store, ["ledger"])[0].owner)

    thread = threading.Thread(target=try_to_take_over)
    looker = threading.Thread(target=look_during_the_batch)
    thread.start()
    looker.start()
    try:
        assert slow.catch_up().caught_up
        done.wait(0.3)  # the other keeps trying for a while after the commit
    finally:
        done.set()
        thread.join(10)
        looker.join(10)
    assert len(_applied(engine)) == 20
    assert taken == []  # the batch held the row, and renewed the lease before it committed
    assert owners == ["slow:1"]  # status names the owner while its batch runs past the committed expiry
    slow.release()


class KeepaliveProbe(Ledger):
    """Records the server's keepalive setting its batch transactions run with."""

    def __init__(self, name: str) -> None:
        super().__init__(name)
        self.seen: list[str] = []

    def apply(self, event: RecordedEvent, conn: Connection) -> bool:
        self.seen.append(str(conn.exec_driver_sql("SHOW tcp_keepalives_idle").scalar_one()))
        return True


def test_a_batch_that_holds_the_checkpoint_row_has_the_server_watch_its_client(
    store: EventStore, engine: Engine
) -> None:
    """A vanished runner host must not keep the row (and the projection) locked for the kernel's two hours."""
    append_many(store, "order", 3)
    probe = KeepaliveProbe("probe")
    session = ProjectionSession.acquire(
        engine, store, probe, settings=RunnerSettings(), stop=threading.Event(), owner="probe:1"
    )
    assert session is not None
    session.catch_up()
    session.release()
    assert probe.seen == ["5", "5", "5"]  # while the row is locked: 5 s idle, then 3 probes 2 s apart
    with engine.connect() as connection:  # the test server is reached over TCP; outside a batch the default stays
        assert connection.exec_driver_sql("SHOW tcp_keepalives_idle").scalar_one() != "5"
