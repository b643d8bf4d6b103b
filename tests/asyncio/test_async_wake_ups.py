"""The asyncio store's wake-up: sent after the commit without costing the writer a round trip, never failing it.

Each fault is forced for real: a wake-up that waits on the server (an
advisory lock the test holds), one the server refuses (the wake-up function
replaced by one that raises), a store closed with a wake-up in flight, an
append connection terminated after its wake-up.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from typing import Any

import psycopg
import pytest
import sqlalchemy as sa

from eventstore import AsyncEventStore
from eventstore.database import libpq_url
from eventstore.store import NOTIFY_CHANNEL
from tests.asyncio.async_helpers import Loop, placed, store_backends, wait_for

WAKE_UP_QUERY = "SELECT eventstore_wake_up_v1()"


@pytest.fixture
def listener(database_url: str) -> Iterator[psycopg.Connection[Any]]:
    with psycopg.connect(libpq_url(sa.make_url(database_url)), autocommit=True) as connection:
        connection.execute(f"LISTEN {NOTIFY_CHANNEL}")
        yield connection


def wake_ups(listener: psycopg.Connection[Any], expected: int) -> int:
    """The wake-ups received, waiting for ``expected`` of them (10 s at most), then 0.3 s for any extra."""
    received = sum(1 for _ in listener.notifies(timeout=10, stop_after=expected)) if expected else 0
    return received + sum(1 for _ in listener.notifies(timeout=0.3))


def replace_wake_up(admin: psycopg.Connection[Any], body: str) -> None:
    """Give this test's database another ``eventstore_wake_up_v1()`` (the store's after-commit wake-up calls it)."""
    admin.execute(f"CREATE OR REPLACE FUNCTION eventstore_wake_up_v1() RETURNS void LANGUAGE plpgsql AS $$ {body} $$")


def test_each_append_wakes_once_after_its_commit(
    loop: Loop, make_store: Callable[..., AsyncEventStore], listener: psycopg.Connection[Any], admin: Any
) -> None:
    store = make_store()
    for number in range(5):
        loop.run(store.append(f"order-{number}", [placed(), placed()]))
    # The trigger and the store both notifying would give 10 (separate transactions do not fold).
    assert wake_ups(listener, 5) == 5

    result = loop.run(store.append("order-9", [placed()]))
    assert wake_ups(listener, 1) == 1
    # Woken means committed: a reader that reacts to the wake-up sees the event.
    (position,) = admin.execute("SELECT max(global_position) FROM events").fetchone() or (None,)
    assert position == result.global_position


def test_the_append_returns_while_its_wake_up_still_waits_on_the_server(
    loop: Loop,
    make_store: Callable[..., AsyncEventStore],
    listener: psycopg.Connection[Any],
    admin: psycopg.Connection[Any],
    database_url: str,
) -> None:
    """The writer does not wait for the wake-up's answer: here the wake-up cannot even finish before it returns.

    Nor does the next append wait for it: it takes another connection, whose backend is free.
    """
    replace_wake_up(
        admin, "BEGIN PERFORM pg_advisory_xact_lock_shared(4242); PERFORM pg_notify('eventstore_events_v1', ''); END"
    )
    store = make_store()
    with psycopg.connect(libpq_url(sa.make_url(database_url)), autocommit=True) as holder:
        holder.execute("SELECT pg_advisory_lock(4242)")
        first = loop.run(store.append("order-1", [placed()]))  # would time out if it awaited its wake-up
        wait_for(lambda: len(stuck_wake_ups(admin)) == 1, "the wake-up to wait for the advisory lock")
        second = loop.run(store.append("order-1", [placed()]))  # would time out behind the first wake-up
        assert (first.stream_version, second.stream_version) == (1, 2)
        (count,) = admin.execute("SELECT count(*) FROM events").fetchone() or (0,)
        assert count == 2  # committed
        wait_for(lambda: len(stuck_wake_ups(admin)) == 2, "both wake-ups to wait for the advisory lock")
        assert wake_ups(listener, 0) == 0
        holder.execute("SELECT pg_advisory_unlock(4242)")
    assert wake_ups(listener, 2) == 2
    # Later appends read those answers and reuse the connections (at most max_idle=4 stay open).
    for number in range(3):
        loop.run(store.append(f"order-{number + 2}", [placed()]))
    assert wake_ups(listener, 3) == 3
    assert 2 <= len(store_backends(admin)) <= 4


def stuck_wake_ups(admin: psycopg.Connection[Any]) -> list[int]:
    return [pid for pid, _, wait, query in store_backends(admin) if wait == "Lock" and query == WAKE_UP_QUERY]


def test_a_refused_wake_up_is_logged_and_never_fails_an_append(
    loop: Loop,
    make_store: Callable[..., AsyncEventStore],
    listener: psycopg.Connection[Any],
    admin: psycopg.Connection[Any],
    caplog: pytest.LogCaptureFixture,
) -> None:
    replace_wake_up(admin, "BEGIN RAISE EXCEPTION 'wake-ups are broken today'; END")
    store = make_store()
    with caplog.at_level(logging.WARNING, logger="eventstore"):
        # An answer is read when its connection is taken again: with at most 4 open, by the 5th append.
        results = [loop.run(store.append("order-1", [placed()])) for _ in range(6)]
    assert [result.stream_version for result in results] == [1, 2, 3, 4, 5, 6]
    warnings = [record.getMessage() for record in caplog.records if "wake-up failed" in record.getMessage()]
    assert warnings and "wake-ups are broken today" in warnings[0]
    assert wake_ups(listener, 0) == 0

    replace_wake_up(admin, "BEGIN PERFORM pg_notify('eventstore_events_v1', ''); END")
    loop.run(store.append("order-1", [placed()]))  # the connections are still good: the next wake-up goes out
    assert wake_ups(listener, 1) == 1
    assert [event.stream_version for event in loop.run(store.read_stream("order-1"))] == list(range(1, 8))


def test_a_wake_up_in_flight_when_the_store_closes_is_still_delivered(
    loop: Loop, make_store: Callable[..., AsyncEventStore], listener: psycopg.Connection[Any]
) -> None:
    store = make_store()

    async def append_then_close() -> None:
        await store.append("order-1", [placed()])
        await store.close()  # at once: the wake-up's answer has not been read

    loop.run(append_then_close())
    assert wake_ups(listener, 1) == 1


def test_a_connection_terminated_after_its_wake_up_is_replaced(
    loop: Loop,
    make_store: Callable[..., AsyncEventStore],
    listener: psycopg.Connection[Any],
    admin: psycopg.Connection[Any],
) -> None:
    store = make_store()
    loop.run(store.append("order-1", [placed()]))
    assert wake_ups(listener, 1) == 1
    ((pid, _, _, query),) = store_backends(admin)
    assert query == WAKE_UP_QUERY
    admin.execute("SELECT pg_terminate_backend(%s, 5000)", (pid,))

    assert loop.run(store.append("order-1", [placed()])).stream_version == 2
    assert wake_ups(listener, 1) == 1
    assert [backend[0] for backend in store_backends(admin)] != [pid]


def test_notify_false_sends_no_wake_up(
    loop: Loop, make_store: Callable[..., AsyncEventStore], listener: psycopg.Connection[Any]
) -> None:
    store = make_store(notify=False)
    loop.run(store.append("order-1", [placed()]))
    assert wake_ups(listener, 0) == 0
