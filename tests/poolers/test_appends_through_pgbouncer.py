"""Appends and reads through a real PgBouncer (Debian's 1.18: no max_prepared_statements), both stores.

Enough appends per connection to pass psycopg's prepare threshold (5): with
server-side prepared statements, transaction mode fails with
``InvalidSqlStatementName`` / ``DuplicatePreparedStatement``
(:func:`test_prepared_statements_forced_on_fail_with_an_eventstore_error` shows the
tests would catch it); the stores see the pooler at their first connection
and prepare nothing (:mod:`eventstore.store.poolers`).
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import psycopg
import pytest

from eventstore import AsyncEventStore, EventStore, NewEvent, RecordedEvent, WrongExpectedVersion
from eventstore.errors import ConfigurationError, EventStoreError

THREADS = 4
APPENDS = 50  # per thread (task), each to its own stream: far past psycopg's prepare_threshold of 5


def new_event(thread: int, number: int) -> NewEvent:
    return NewEvent("Counted", {"thread": thread, "number": number}, event_id=uuid.uuid4())


def check_everything_landed_once(events: list[RecordedEvent], appended: dict[str, list[uuid.UUID]]) -> None:
    by_stream: dict[str, list[RecordedEvent]] = {}
    for event in events:
        by_stream.setdefault(event.stream_id, []).append(event)
    assert sorted(by_stream) == sorted(appended)
    for stream_id, ids in appended.items():
        stored = by_stream[stream_id]
        assert [event.event_id for event in stored] == ids
        assert [event.stream_version for event in stored] == list(range(1, len(ids) + 1))
    positions = [event.global_position for event in events]
    assert len(set(positions)) == len(positions)


@pytest.mark.parametrize(
    ("pool_mode", "prepared_statements"),
    [("transaction", None), ("transaction", False), ("session", None), ("session", True)],
)
def test_sync_store_through_pgbouncer(
    pgbouncer: Callable[..., Any],
    pool_mode: str,
    prepared_statements: bool | None,
    caplog: pytest.LogCaptureFixture,
) -> None:
    bouncer = pgbouncer(pool_mode, pool_size=2 if pool_mode == "transaction" else 20)
    caplog.set_level(logging.INFO, logger="eventstore.store.poolers")
    appended: dict[str, list[uuid.UUID]] = {}
    with EventStore(bouncer.url, prepared_statements=prepared_statements) as store:

        def work(thread: int) -> None:
            stream_id = f"counter-{thread}"
            ids = appended[stream_id] = []
            for number in range(APPENDS):
                event = new_event(thread, number)
                result = store.append(stream_id, [event], expected_version=number)
                assert result.stream_version == number + 1
                ids.append(event.event_id)
                assert store.stream_version(stream_id) == number + 1  # a read per append, too

        with ThreadPoolExecutor(THREADS) as pool:
            list(pool.map(work, range(THREADS)))

        # An idempotent retry, and a wrong expected version: eventstore's answers, not the pooler's.
        first = store.read_stream("counter-0", limit=1)[0]
        retried = store.append("counter-0", [NewEvent(first.type, first.data, event_id=first.event_id)])
        assert (retried.already_stored, retried.stream_version) == (True, 1)
        with pytest.raises(WrongExpectedVersion) as wrong:
            store.append("counter-1", [new_event(1, -1)], expected_version=3)
        assert wrong.value.actual == APPENDS

        events = list(store.read_all())
        check_everything_landed_once(events, appended)
        assert store.head_position() == events[-1].global_position
        assert store.read_stream("counter-2", backwards=True, limit=1)[0].stream_version == APPENDS
    announced = [record for record in caplog.records if "pooler or proxy" in record.getMessage()]
    assert len(announced) == (1 if prepared_statements is None else 0)


@pytest.mark.parametrize("pool_mode", ["transaction", "session"])
def test_async_store_through_pgbouncer(pgbouncer: Callable[..., Any], pool_mode: str) -> None:
    bouncer = pgbouncer(pool_mode, pool_size=2 if pool_mode == "transaction" else 20)
    appended: dict[str, list[uuid.UUID]] = {}

    async def main() -> list[RecordedEvent]:
        async with AsyncEventStore(bouncer.url) as store:

            async def work(task: int) -> None:
                stream_id = f"counter-{task}"
                ids = appended[stream_id] = []
                for number in range(APPENDS):
                    event = new_event(task, number)
                    await store.append(stream_id, [event], expected_version=number)
                    ids.append(event.event_id)
                    assert await store.stream_version(stream_id) == number + 1

            await asyncio.gather(*(work(task) for task in range(THREADS)))
            first = (await store.read_stream("counter-0", limit=1))[0]
            retried = await store.append("counter-0", [NewEvent(first.type, first.data, event_id=first.event_id)])
            assert retried.already_stored
            with pytest.raises(WrongExpectedVersion):
                await store.append("counter-1", [new_event(1, -1)], expected_version=3)
            events = [event async for event in store.read_all()]
            assert await store.head_position() == events[-1].global_position
            return events

    check_everything_landed_once(asyncio.run(main()), appended)


def test_prepared_statements_forced_on_fail_with_an_eventstore_error(pgbouncer: Callable[..., Any]) -> None:
    """The original failure, reproduced: psycopg's prepared statements through transaction mode.

    Before the fix every store behaved like ``prepared_statements=True``, and
    these appends raised psycopg's own ``InvalidSqlStatementName`` or
    ``DuplicatePreparedStatement``; now the same failure is a
    :class:`ConfigurationError` saying what to change (the raw error is its cause).
    """
    bouncer = pgbouncer("transaction", pool_size=2)
    failures: list[BaseException] = []
    with EventStore(bouncer.url, prepared_statements=True) as store:

        def work(thread: int) -> None:
            for number in range(APPENDS):
                try:
                    store.append(f"counter-{thread}", [new_event(thread, number)])
                except Exception as error:  # collected: every failure must be ours
                    failures.append(error)

        with ThreadPoolExecutor(THREADS) as pool:
            list(pool.map(work, range(THREADS)))
    assert failures, "prepared statements through transaction mode did not fail: the test would not catch it"
    for failure in failures:
        assert isinstance(failure, ConfigurationError), repr(failure)
        assert "prepared_statements=False" in str(failure)
        assert isinstance(failure.__cause__, psycopg.Error)
    causes = {type(failure.__cause__) for failure in failures}
    assert causes & {psycopg.errors.InvalidSqlStatementName, psycopg.errors.DuplicatePreparedStatement}


def test_a_startup_parameter_pgbouncer_refuses_is_a_configuration_error(pgbouncer: Callable[..., Any]) -> None:
    bouncer = pgbouncer("transaction")
    url = bouncer.url + "?options=-c%20statement_timeout%3D5000"
    with EventStore(url) as store, pytest.raises(ConfigurationError, match="ignore_startup_parameters") as refused:
        store.head_position()
    assert isinstance(refused.value, EventStoreError)


def test_a_direct_connection_keeps_prepared_statements(database_url: str, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG, logger="eventstore.store.poolers")
    with EventStore(database_url) as store:
        store.append("direct-1", [new_event(0, 0)])
        assert store._prepared.decided and store._prepared.prepare is None  # psycopg prepares after 5 runs

    async def main() -> bool | None:
        async with AsyncEventStore(database_url) as store:
            await store.head_position()
            return store._prepared.prepare

    assert asyncio.run(main()) is None
    assert not [record for record in caplog.records if record.levelno >= logging.INFO]


def test_appends_in_transactions_of_the_stores_own_engine_through_transaction_mode(
    pgbouncer: Callable[..., Any],
) -> None:
    """``append(connection=...)`` on ``store.engine`` behind PgBouncer 1.18: its statements are never prepared.

    Before, an engine made from the URL kept psycopg's automatic prepared
    statements, and such appends failed within seconds with 'prepared
    statement "_pg3_0" does not exist' (found by the chaos soak).
    """
    bouncer = pgbouncer("transaction", pool_size=2)
    with EventStore(bouncer.url) as store:

        def write(writer: int) -> int:
            for number in range(25):
                with store.engine.connect() as connection, connection.begin():
                    store.append(f"tx-{writer}-{number}", [NewEvent("Placed", {"n": number})], connection=connection)
            return writer

        with ThreadPoolExecutor(max_workers=4) as pool:
            assert sorted(pool.map(write, range(4))) == [0, 1, 2, 3]
        assert len(list(store.read_all())) == 100
