"""Two runner processes compete for one projection through a real PgBouncer, in session and transaction mode.

Before leases, through transaction mode both applied the projection at the same
time (a session advisory lock stays on whichever server connection took it),
and after they stopped the locks stayed on idle server connections. Now: one
applies, the other stands by; SIGKILL hands over within the lease's time to
live; SIGTERM frees the projection at once; a rebuild is refused meanwhile.
"""

from __future__ import annotations

import signal
import threading
import time
from collections.abc import Callable

import pytest
import sqlalchemy as sa
from sqlalchemy.engine import Engine

from eventstore import EventStore, NewEvent, ProjectionBusy, ProjectionRunner, admin
from eventstore.runner.ownership import take_setup_lock
from projections import Ledger
from tests.poolers.conftest import PgBouncer
from tests.runner.runner_helpers import FAST, Processes, append_many, running, wait_for


def _ledger(engine: Engine) -> list[tuple[int, str]]:
    with engine.begin() as connection:
        take_setup_lock(connection)
        Ledger().setup(connection)  # the table may not exist before a runner has set it up
        rows = connection.execute(
            sa.text(
                "SELECT global_position, applied_by FROM projection_ledger WHERE projection_name = 'ledger' "
                "ORDER BY applied_order"
            )
        )
        return [(int(position), str(by)) for position, by in rows]


def _owner(store: EventStore) -> str | None:
    return admin.projection_status(store, ["ledger"])[0].owner


@pytest.mark.parametrize("pool_mode", ["session", "transaction"])
def test_one_of_two_runners_through_pgbouncer_applies_and_the_other_takes_over(
    pool_mode: str,
    pgbouncer: Callable[..., PgBouncer],
    processes: Processes,
    database_url: str,
    store: EventStore,
    engine: Engine,
) -> None:
    # Session mode gives each client its own server connection for good: room for both runners.
    bouncer = pgbouncer(pool_mode, pool_size=20 if pool_mode == "session" else 2)
    listen = ["--listen-url", database_url] if pool_mode == "transaction" else []
    append_many(store, "order", 300, per_stream=20)
    runners = [processes.start("--delay", "0.002", "--batch-size", "25", *listen, url=bouncer.url) for _ in range(2)]
    owner = wait_for(lambda: _owner(store), what="a runner holding the lease")
    active = next(process for process in runners if owner.endswith(f":{process.pid}"))
    standby = next(process for process in runners if process is not active)

    # While it is active: appends keep coming, and a rebuild through the pooler is refused.
    bounced = EventStore(bouncer.url)
    try:
        with pytest.raises(ProjectionBusy, match=owner):
            admin.rebuild(bounced, Ledger())
        for round_ in range(5):
            bounced.append(f"live-{round_}", [NewEvent("Tick", {"n": n}) for n in range(10)])
    finally:
        bounced.close()
    admin.wait_until_processed(store, "ledger", store.head_position(), timeout=30)
    assert {by for _, by in _ledger(engine)} == {owner}  # only the lease holder applied

    active.send_signal(signal.SIGKILL)
    killed_at = time.monotonic()
    active.wait(10)
    new_owner = wait_for(lambda: _owner(store) not in (None, owner) and _owner(store), timeout=10, what="takeover")
    assert time.monotonic() - killed_at < 5.0
    assert new_owner.endswith(f":{standby.pid}")
    last = append_many(store, "after", 40)
    admin.wait_until_processed(store, "ledger", last, timeout=30)

    ledger = _ledger(engine)
    positions = [position for position, _ in ledger]
    assert len(positions) == len(set(positions))  # nothing applied twice
    assert positions == [event.global_position for event in store.read_all()]  # nothing skipped, in order
    owners = [by for _, by in ledger]
    switch = owners.index(new_owner)
    assert set(owners[:switch]) == {owner} and set(owners[switch:]) == {new_owner}  # never interleaved

    standby.send_signal(signal.SIGTERM)
    assert standby.wait(15) == 0
    status = admin.projection_status(store, ["ledger"])[0]
    assert (status.owner, status.state) == (None, "stopped")  # released at once, not left on a server connection


def test_a_runner_of_fifty_projections_leaves_a_session_pool_room_for_other_clients(
    pgbouncer: Callable[..., PgBouncer], store: EventStore
) -> None:
    """Before: 50 projections held 54 sessions; with a pool of 20 no checkpoint moved and others' appends hung."""
    bouncer = pgbouncer("session", pool_size=8)
    names = [f"ledger-{number:02}" for number in range(50)]
    bounced = EventStore(bouncer.url)
    runner = ProjectionRunner(bounced, [Ledger(name) for name in names], **FAST)
    try:
        with running(runner):
            wait_for(lambda: runner.active_projections() == names, timeout=30, what="all 50 projections owned")
            appended: list[int] = []
            other = threading.Thread(
                target=lambda: appended.append(append_many(bounced, "order", 50)), name="other-client", daemon=True
            )
            other.start()
            other.join(30)
            assert appended, "another client's appends through the same pool did not finish in 30 s"
            for name in names:
                admin.wait_until_processed(store, name, appended[0], timeout=30)
    finally:
        bounced.close()
