"""The asyncio store under faults forced for real: terminated backends, a stopped and restarted server, cancelled tasks.

Blocking is real too: an append waits on the unique index behind an open
transaction that inserted the same stream version (the ``blocked`` fixture),
a read waits behind ``LOCK TABLE events``. Every wait is on a condition seen
in ``pg_stat_activity``, never a fixed sleep.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncGenerator, Callable, Iterator
from typing import Any, cast

import psycopg
import pytest
import sqlalchemy as sa
from sqlalchemy.engine import Engine

from eventstore import AsyncEventStore, DatabaseUnavailable, EventStore, ProjectionTimeout, RecordedEvent
from eventstore.database import libpq_url
from eventstore.runner import checkpoints
from eventstore.testing.server import TestServer
from tests.asyncio.async_helpers import Loop, placed, store_backends, wait_for, waiting_on_a_lock

APPEND = "WITH last AS"  # how the append statement starts
READ = "SELECT global_position"  # how a read_all batch starts
WAKE_UP = "SELECT eventstore_wake_up_v1()"  # may still run once its append has returned


@pytest.fixture
def blocked(store: EventStore, engine: Engine) -> Iterator[sa.Connection]:
    """An open transaction holding ``order-1`` version 1: an append to ``order-1`` waits for it on the unique index.

    Roll it back (or commit it) to let the waiting append go on.
    """
    with engine.connect() as held:
        transaction = held.begin()
        store.append("order-1", [placed(0)], connection=held)
        yield held
        if transaction.is_active:
            transaction.rollback()


def started(loop: Loop, make: Callable[[], Any]) -> asyncio.Task[Any]:
    """A task of the loop running the coroutine ``make()`` (the test thread keeps the handle to cancel it)."""

    async def create() -> asyncio.Task[Any]:
        return asyncio.create_task(make())

    return loop.run(create())


async def cancelled(task: asyncio.Task[Any]) -> None:
    """Cancel ``task`` and wait until it has ended (its clean-up included)."""
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
    assert task.cancelled()


def outcome(loop: Loop, task: asyncio.Task[Any]) -> Any:
    """Wait for ``task`` to end; its result, or the exception it raised."""

    async def ended() -> Any:
        try:
            return await task
        except Exception as error:
            return error

    return loop.run(ended())


def all_idle(admin: psycopg.Connection[Any]) -> bool:
    """No backend of the store is inside a statement or a transaction (but a wake-up sent after an append's commit)."""
    return all(state == "idle" or query == WAKE_UP for _, state, _, query in store_backends(admin))


# -- terminated backends ------------------------------------------------------------------


def test_an_append_whose_backend_is_terminated_is_retried_once_on_a_new_connection(
    loop: Loop, make_store: Callable[..., AsyncEventStore], admin: psycopg.Connection[Any], blocked: sa.Connection
) -> None:
    store = make_store()
    append = started(loop, lambda: store.append("order-1", [placed(1)]))
    wait_for(lambda: bool(waiting_on_a_lock(admin, APPEND)), "the append to wait on the unique index")
    (first,) = waiting_on_a_lock(admin, APPEND)
    admin.execute("SELECT pg_terminate_backend(%s, 5000)", (first,))
    wait_for(lambda: bool(waiting_on_a_lock(admin, APPEND)), "the retry to wait on the unique index")
    assert waiting_on_a_lock(admin, APPEND) != [first]

    blocked.rollback()  # the retry goes through
    result = outcome(loop, append)
    assert result.stream_version == 1, result
    assert [event.data for event in loop.run(store.read_stream("order-1"))] == [{"total": 1}]


def test_an_append_whose_backend_is_terminated_twice_raises_database_unavailable_then_the_next_works(
    loop: Loop, make_store: Callable[..., AsyncEventStore], admin: psycopg.Connection[Any], blocked: sa.Connection
) -> None:
    store = make_store()
    append = started(loop, lambda: store.append("order-1", [placed(1)]))
    terminated: list[int] = []
    for attempt in ("the append", "its retry"):
        wait_for(
            lambda: bool(set(waiting_on_a_lock(admin, APPEND)) - set(terminated)),
            f"{attempt} to wait on the unique index",
        )
        (pid,) = set(waiting_on_a_lock(admin, APPEND)) - set(terminated)
        admin.execute("SELECT pg_terminate_backend(%s, 5000)", (pid,))
        terminated.append(pid)

    error = outcome(loop, append)
    assert isinstance(error, DatabaseUnavailable), error
    assert "cannot reach PostgreSQL at" in str(error)
    assert isinstance(error.__cause__, psycopg.OperationalError)

    blocked.rollback()
    assert loop.run(store.read_stream("order-1")) == []  # nothing half-written
    assert loop.run(store.append("order-1", [placed(2)])).stream_version == 1
    assert all_idle(admin)


# -- the server stopped, restarted ----------------------------------------------------------


@pytest.fixture
def controlled_server(test_server: TestServer) -> Iterator[TestServer]:
    """The session's server, which this test may stop and restart; running again afterwards in any case."""
    if test_server.local is None:
        pytest.skip(f"cannot restart a {test_server.kind} server")
    yield test_server
    test_server.local.ensure_running()


def test_appends_while_the_server_is_down_raise_database_unavailable_and_work_once_it_is_back(
    loop: Loop, make_store: Callable[..., AsyncEventStore], controlled_server: TestServer
) -> None:
    assert controlled_server.local is not None
    store = make_store()
    loop.run(store.append("order-1", [placed(1)]))  # an idle connection to the server that goes away

    controlled_server.local.stop()
    with pytest.raises(DatabaseUnavailable, match="cannot reach PostgreSQL at") as raised:
        loop.run(store.append("order-1", [placed(2)]))
    assert isinstance(raised.value.__cause__, psycopg.OperationalError)
    with pytest.raises(DatabaseUnavailable):
        loop.run(store.head_position())

    controlled_server.local.ensure_running()
    assert loop.run(store.append("order-1", [placed(3)])).stream_version == 2
    assert [event.data for event in loop.run(store.read_stream("order-1"))] == [{"total": 1}, {"total": 3}]


def test_a_server_restart_between_appends_costs_no_error(
    loop: Loop, make_store: Callable[..., AsyncEventStore], controlled_server: TestServer
) -> None:
    """The idle connections (one with a wake-up in flight) die with the server; the next append opens a new one."""
    store = make_store()

    async def four_at_once(first: int) -> None:  # several idle connections
        await asyncio.gather(*(store.append(f"order-{first + number}", [placed()]) for number in range(4)))

    loop.run(four_at_once(0))
    controlled_server.restart()
    loop.run(four_at_once(10))
    assert loop.run(store.append("order-1", [placed()])).stream_version == 2


# -- cancellation -----------------------------------------------------------------------------


def test_cancelling_a_blocked_append_writes_nothing_and_leaves_the_store_usable(
    loop: Loop, make_store: Callable[..., AsyncEventStore], admin: psycopg.Connection[Any], blocked: sa.Connection
) -> None:
    store = make_store()
    append = started(loop, lambda: store.append("order-1", [placed(1)]))
    wait_for(lambda: bool(waiting_on_a_lock(admin, APPEND)), "the append to wait on the unique index")

    loop.run(cancelled(append))
    # The statement ended on the server, before the blocking transaction did: it cannot commit later.
    assert waiting_on_a_lock(admin, APPEND) == []
    assert all_idle(admin)  # the connection kept (if any) is idle, not inside a statement or a transaction

    blocked.rollback()
    assert loop.run(store.read_stream("order-1")) == []
    assert loop.run(store.append("order-1", [placed(2)])).stream_version == 1
    assert [event.data for event in loop.run(store.read_stream("order-1"))] == [{"total": 2}]
    assert all_idle(admin)


def test_cancelling_read_all_midway_releases_its_connection(
    loop: Loop, make_store: Callable[..., AsyncEventStore], admin: psycopg.Connection[Any], database_url: str
) -> None:
    store = make_store(read_batch_size=2)
    for number in range(10):
        loop.run(store.append(f"order-{number}", [placed(number)]))
    received: list[RecordedEvent] = []
    go_on = asyncio.Event()

    async def consume() -> None:
        async for event in store.read_all():
            received.append(event)
            if len(received) == 2:
                await go_on.wait()

    reader = started(loop, consume)
    wait_for(lambda: len(received) == 2, "the first batch")
    with psycopg.connect(libpq_url(sa.make_url(database_url))) as locker:
        locker.execute("LOCK TABLE events IN ACCESS EXCLUSIVE MODE")
        loop.loop.call_soon_threadsafe(go_on.set)
        wait_for(lambda: bool(waiting_on_a_lock(admin, READ)), "the second batch to wait for the table lock")

        loop.run(cancelled(reader))
        assert waiting_on_a_lock(admin, READ) == []  # the read ended on the server while the lock is still held
        assert all_idle(admin)
        locker.rollback()

    assert len(received) == 2
    assert [event.data["total"] for event in _read_all(loop, store)] == list(range(10))
    assert all_idle(admin)
    assert len(store_backends(admin)) <= 4


def test_leaving_read_all_midway_holds_no_connection(
    loop: Loop, make_store: Callable[..., AsyncEventStore], admin: psycopg.Connection[Any]
) -> None:
    store = make_store(read_batch_size=2)
    for number in range(5):
        loop.run(store.append(f"order-{number}", [placed(number)]))

    async def first_three() -> list[int]:
        taken: list[int] = []
        # read_all is an async generator: aclosing() ends it at once, as `break` then garbage collection would.
        all_events = cast(AsyncGenerator[RecordedEvent, None], store.read_all())
        async with contextlib.aclosing(all_events) as events:
            async for event in events:
                taken.append(event.data["total"])
                if len(taken) == 3:
                    break
        return taken

    assert loop.run(first_three()) == [0, 1, 2]
    assert all_idle(admin)
    assert len(store_backends(admin)) <= 4  # max_idle


def _read_all(loop: Loop, store: AsyncEventStore) -> list[RecordedEvent]:
    async def collect() -> list[RecordedEvent]:
        return [event async for event in store.read_all()]

    return loop.run(collect())


# -- wait_until_processed -------------------------------------------------------------------


def test_wait_until_processed_times_out_with_projection_timeout_while_the_server_is_down(
    loop: Loop,
    make_store: Callable[..., AsyncEventStore],
    engine: Engine,
    controlled_server: TestServer,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A server that goes away while waiting is waited for, and the timeout is still ProjectionTimeout."""
    assert controlled_server.local is not None
    store = make_store()
    result = loop.run(store.append("order-1", [placed()]))
    with engine.begin() as connection:
        checkpoints.ensure(connection, "order_summaries")
    engine.dispose()
    polled = 0
    real_checkpoints = store.checkpoints

    async def counting(names: Any) -> Any:
        nonlocal polled
        polled += 1
        return await real_checkpoints(names)

    monkeypatch.setattr(store, "checkpoints", counting)
    waiting = started(loop, lambda: store.wait_until_processed("order_summaries", result.global_position, timeout=3))
    wait_for(lambda: polled >= 2, "the wait to poll the checkpoint")
    controlled_server.local.stop()
    error = outcome(loop, waiting)
    assert isinstance(error, ProjectionTimeout), error
    assert f"did not process position {result.global_position} within 3" in str(error)
    controlled_server.local.ensure_running()


def test_a_connection_given_back_inside_a_statement_has_the_statement_cancelled_before_it_is_closed(
    loop: Loop, make_store: Callable[..., AsyncEventStore], admin: psycopg.Connection[Any]
) -> None:
    """The fallback for a driver that does not cancel a cancelled task's statement itself (psycopg 3.3 does).

    Closing the socket alone would leave the statement running on the server (PostgreSQL notices a gone
    client only when it next talks to it): a blocked append would then commit after its caller gave up.
    """
    store = make_store()

    async def leave_a_statement_running() -> None:
        async with store._connections.connection() as connection:
            connection.pgconn.send_query(b"SELECT pg_sleep(60)")

    loop.run(leave_a_statement_running())
    # Well within the 60 s the statement would otherwise run.
    wait_for(
        lambda: not [query for _, _, _, query in store_backends(admin) if "pg_sleep" in query],
        "the statement to be cancelled on the server",
    )
    assert loop.run(store.append("order-1", [placed()])).stream_version == 1
