"""``AsyncEventStore.append(..., connection=...)``: inside the caller's SQLAlchemy ``AsyncConnection`` transaction.

The same contract as ``EventStore.append(..., connection=...)``
(tests/integration/test_store.py): the caller's commit or rollback decides;
a failed append leaves the caller's transaction usable (a savepoint); a lost
connection is an eventstore error; the wake-up comes from the trigger, at the
caller's commit.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import psycopg
import pytest
import sqlalchemy as sa

from eventstore import (
    NO_STREAM,
    AsyncEventStore,
    DatabaseUnavailable,
    DuplicateEventId,
    EventStoreError,
    InvalidEvent,
    NewEvent,
    WrongExpectedVersion,
)
from eventstore.database import libpq_url
from eventstore.store import NOTIFY_CHANNEL
from tests.asyncio.async_helpers import Loop, placed

pytest.importorskip("greenlet", reason="SQLAlchemy's asyncio extension needs greenlet (sqlalchemy[asyncio])")

from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine  # after the skip


@pytest.fixture
def async_engine(loop: Loop, database_url: str) -> Iterator[AsyncEngine]:
    engine = create_async_engine(database_url)
    yield engine
    loop.run(engine.dispose())


def versions(loop: Loop, store: AsyncEventStore, stream_id: str) -> list[int]:
    return [event.stream_version for event in loop.run(store.read_stream(stream_id))]


def test_the_callers_commit_or_rollback_decides(
    loop: Loop, make_store: Callable[..., AsyncEventStore], async_engine: AsyncEngine
) -> None:
    store = make_store()

    async def rolled_back() -> None:
        async with async_engine.connect() as connection:
            transaction = await connection.begin()
            result = await store.append("order-1", [placed()], connection=connection)
            assert result.stream_version == 1
            # Inside the transaction the append is visible; outside it is not.
            count = (await connection.exec_driver_sql("SELECT count(*) FROM events")).scalar_one()
            assert count == 1
            assert await store.read_stream("order-1") == []
            await transaction.rollback()

    async def committed() -> None:
        async with async_engine.begin() as connection:
            await store.append("order-1", [placed()], expected_version=NO_STREAM, connection=connection)
            await store.append("order-2", [placed()], connection=connection)
            await connection.exec_driver_sql("SELECT 1")  # the caller's own work in the same transaction

    loop.run(rolled_back())
    assert versions(loop, store, "order-1") == []
    loop.run(committed())
    assert versions(loop, store, "order-1") == [1]
    assert versions(loop, store, "order-2") == [1]


def test_a_conflict_raises_and_leaves_the_callers_transaction_usable(
    loop: Loop, make_store: Callable[..., AsyncEventStore], async_engine: AsyncEngine
) -> None:
    store = make_store()
    taken = NewEvent("OrderPlaced", {"total": 1})
    loop.run(store.append("order-2", [taken]))

    async def conflicting() -> None:
        async with async_engine.begin() as connection:
            await store.append("order-1", [placed()], connection=connection)
            with pytest.raises(WrongExpectedVersion) as raised:
                await store.append("order-1", [placed()], expected_version=NO_STREAM, connection=connection)
            assert (raised.value.stream_id, raised.value.actual) == ("order-1", 1)
            reused = NewEvent("OrderPlaced", {"total": 2}, event_id=taken.event_id)
            with pytest.raises(DuplicateEventId):
                await store.append("order-3", [reused], connection=connection)
            with pytest.raises(InvalidEvent, match="events: at least one event is required"):
                await store.append("order-1", [], connection=connection)
            # Still usable: no "current transaction is aborted".
            await store.append("order-1", [placed()], expected_version=1, connection=connection)

    loop.run(conflicting())
    assert versions(loop, store, "order-1") == [1, 2]
    assert versions(loop, store, "order-3") == []


def test_the_wake_up_comes_with_the_callers_commit_and_only_then(
    loop: Loop, make_store: Callable[..., AsyncEventStore], async_engine: AsyncEngine, database_url: str
) -> None:
    store = make_store()
    with psycopg.connect(libpq_url(sa.make_url(database_url)), autocommit=True) as listener:
        listener.execute(f"LISTEN {NOTIFY_CHANNEL}")

        async def rolled_back() -> None:
            async with async_engine.connect() as connection:
                transaction = await connection.begin()
                await store.append("order-1", [placed()], connection=connection)
                await transaction.rollback()

        async def committed() -> None:
            async with async_engine.begin() as connection:
                await store.append("order-1", [placed()], connection=connection)
                await store.append("order-2", [placed()], connection=connection)

        loop.run(rolled_back())
        assert list(listener.notifies(timeout=0.3)) == []
        loop.run(committed())
        woken = list(listener.notifies(timeout=10, stop_after=1)) + list(listener.notifies(timeout=0.3))
        assert [notify.channel for notify in woken] == [NOTIFY_CHANNEL]  # one per transaction


def test_a_terminated_backend_raises_database_unavailable(
    loop: Loop, make_store: Callable[..., AsyncEventStore], async_engine: AsyncEngine, admin: psycopg.Connection[Any]
) -> None:
    store = make_store()

    async def append_after_termination() -> None:
        async with async_engine.connect() as connection:
            await connection.begin()
            pid = (await connection.exec_driver_sql("SELECT pg_backend_pid()")).scalar_one()
            admin.execute("SELECT pg_terminate_backend(%s, 5000)", (pid,))
            with pytest.raises(DatabaseUnavailable, match="cannot reach PostgreSQL at") as raised:
                await store.append("order-1", [placed()], connection=connection)
            assert isinstance(raised.value, EventStoreError)
            assert isinstance(raised.value.__cause__, sa.exc.DBAPIError)

    loop.run(append_after_termination())
    assert versions(loop, store, "order-1") == []
    assert loop.run(store.append("order-1", [placed()])).stream_version == 1  # the store's own connections
