"""Wake-ups: one per committed append, sent after the commit; the trigger covers other writers."""

from __future__ import annotations

import gc
import logging
import multiprocessing
import time
from concurrent.futures import ThreadPoolExecutor

import psycopg
import pytest
import sqlalchemy as sa

from eventstore import EventStore, NewEvent, WrongExpectedVersion
from eventstore.database import libpq_url


def listen(store: EventStore) -> psycopg.Connection:
    connection = psycopg.connect(libpq_url(store.engine), autocommit=True)
    connection.execute("LISTEN eventstore_events_v1")
    return connection


def wake_ups(connection: psycopg.Connection) -> int:
    return sum(1 for _ in connection.notifies(timeout=0.5))


def placed() -> NewEvent:
    return NewEvent("OrderPlaced", {"total": 1})


def terminate_wake_up_connections(store: EventStore) -> int:
    """Terminate the store's append connection(s) (last query: a wake-up), waiting until they are gone."""
    with store.engine.connect() as connection:
        return len(
            connection.execute(
                sa.text(
                    "SELECT pg_terminate_backend(pid, 5000) FROM pg_stat_activity "
                    "WHERE datname = current_database() AND query LIKE 'SELECT eventstore_wake_up_v1(%' "
                    "AND pid <> pg_backend_pid()"
                )
            ).all()
        )


def test_each_append_wakes_once_and_the_trigger_stands_aside(store: EventStore) -> None:
    listener = listen(store)
    try:
        for number in range(5):
            store.append(f"order-{number}", [placed(), placed()])
        # Both the trigger and the store notifying would give 10 (separate transactions do not fold).
        assert wake_ups(listener) == 5
    finally:
        listener.close()


def test_the_wake_up_follows_the_commit(store: EventStore) -> None:
    listener = listen(store)
    reader = psycopg.connect(libpq_url(store.engine), autocommit=True)
    try:
        for number in range(20):
            store.append(f"order-{number}", [placed()])
            next(listener.notifies(timeout=5, stop_after=1))
            # Whatever woke us, the event is readable by then.
            assert reader.execute("SELECT count(*) FROM events").fetchone() == (number + 1,)
    finally:
        listener.close()
        reader.close()


def test_other_writers_are_woken_by_the_trigger(store: EventStore) -> None:
    listener = listen(store)
    try:
        with psycopg.connect(libpq_url(store.engine)) as writer:
            writer.execute(
                "INSERT INTO events (transaction_order, event_id, stream_id, stream_version, event_type, data) "
                "VALUES (pg_current_xact_id(), gen_random_uuid(), 'order-9', 1, 'OrderPlaced', '{}')"
            )
        assert wake_ups(listener) == 1
    finally:
        listener.close()


def test_notify_false_sends_no_wake_up(engine: sa.Engine) -> None:
    quiet = EventStore(engine, notify=False)
    listener = listen(quiet)
    try:
        quiet.append("order-1", [placed()])
        with engine.begin() as connection:
            quiet.append("order-2", [placed()], connection=connection)
        assert wake_ups(listener) == 0
        assert [event.stream_id for event in quiet.read_all()] == ["order-1", "order-2"]
    finally:
        listener.close()


def test_a_failed_append_sends_no_wake_up(store: EventStore) -> None:
    store.append("order-1", [placed()])
    listener = listen(store)
    try:
        with pytest.raises(WrongExpectedVersion):
            store.append("order-1", [placed()], expected_version=5)
        assert wake_ups(listener) == 0
    finally:
        listener.close()


def test_a_terminated_append_connection_is_replaced(store: EventStore, caplog: pytest.LogCaptureFixture) -> None:
    store.append("order-1", [placed()])
    assert terminate_wake_up_connections(store) == 1
    listener = listen(store)
    try:
        with caplog.at_level(logging.WARNING, logger="eventstore"):
            store.append("order-2", [placed()])
        assert wake_ups(listener) == 1
        assert not [record for record in caplog.records if "wake-up" in record.getMessage()]
    finally:
        listener.close()


def _append_in_child(store: EventStore, stream_id: str) -> None:
    # SQLAlchemy's rule for forks: drop the inherited pool without closing the parent's connections.
    store.engine.dispose(close=False)
    store.append(stream_id, [placed()])


def test_a_forked_process_opens_its_own_append_connection(store: EventStore) -> None:
    store.append("order-1", [placed()])  # the parent's wake-up connection is open now
    listener = listen(store)
    try:
        context = multiprocessing.get_context("fork")
        child = context.Process(target=_append_in_child, args=(store, "order-2"))
        child.start()
        child.join(30)
        assert child.exitcode == 0
        assert wake_ups(listener) == 1
        # The child left the parent's connection alone.
        store.append("order-3", [placed()])
        assert wake_ups(listener) == 1
    finally:
        listener.close()


def append_connection_count(engine: sa.Engine) -> int:
    with engine.connect() as connection:
        return int(
            connection.execute(
                sa.text(
                    "SELECT count(*) FROM pg_stat_activity "
                    "WHERE datname = current_database() AND query LIKE 'SELECT eventstore_wake_up_v1(%'"
                )
            ).scalar_one()
        )


def test_stores_on_one_engine_share_their_append_connections(engine: sa.Engine) -> None:
    for number in range(10):  # e.g. a store made per request
        EventStore(engine).append(f"order-{number}", [placed()])
    # Shared, not one per store: one, or two when an append found the other still running its wake-up.
    assert 1 <= append_connection_count(engine) <= 2
    assert len(list(EventStore(engine).read_all())) == 10


def test_append_connections_close_with_their_engine(database_url: str, engine: sa.Engine) -> None:
    other = sa.create_engine(database_url)
    EventStore(other).append("order-1", [placed()])
    assert append_connection_count(engine) == 1
    other.dispose()
    del other
    gc.collect()
    deadline = time.monotonic() + 5
    while append_connection_count(engine) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert append_connection_count(engine) == 0


def test_threads_appending_through_one_store_each_get_a_connection_and_a_wake_up(store: EventStore) -> None:
    listener = listen(store)
    try:
        with ThreadPoolExecutor(max_workers=8) as pool:
            results = list(pool.map(lambda n: store.append(f"order-{n}", [placed()]), range(200)))
        assert {result.stream_version for result in results} == {1}
        received = 0
        for _ in listener.notifies(timeout=2, stop_after=200):
            received += 1
        assert received == 200
        assert 1 <= append_connection_count(store.engine) <= 8
    finally:
        listener.close()


def test_wake_ups_survive_a_contended_append_and_its_deallocate_all(
    store: EventStore, caplog: pytest.LogCaptureFixture
) -> None:
    """Contended appends roll back on lost races; psycopg then sends DEALLOCATE ALL on that connection.

    That used to drop the store's hand-prepared wake-up statement for good: every
    later wake-up failed with 'prepared statement "eventstore_wake_up" does not
    exist' and workers fell back to their poll timer. The wake-up is a plain
    query now, so nothing server-side can be lost.
    """

    def append_many(writer: int) -> None:
        for number in range(150):
            store.append("order-contended", [NewEvent("OrderPlaced", {"writer": writer, "number": number})])

    with ThreadPoolExecutor(4) as pool:
        list(pool.map(append_many, range(4)))
    assert store.stream_version("order-contended") == 600
    listener = listen(store)
    try:
        with caplog.at_level(logging.WARNING, logger="eventstore"):
            for number in range(5):
                store.append(f"order-single-{number}", [placed()])
            received = sum(1 for _ in listener.notifies(timeout=5, stop_after=5))
        assert received == 5
        assert not [record for record in caplog.records if "wake-up" in record.getMessage()]
    finally:
        listener.close()


def test_the_next_append_does_not_wait_for_the_previous_wake_up(store: EventStore) -> None:
    """A wake-up held up on the server (here: behind an advisory lock the test holds) delays no append.

    The append connection still running its wake-up is skipped: the next append
    opens (and later reuses) another, so one writer alternates between two backends.
    """
    url = libpq_url(store.engine)
    with psycopg.connect(url, autocommit=True) as admin, psycopg.connect(url, autocommit=True) as holder:
        admin.execute(
            "CREATE OR REPLACE FUNCTION eventstore_wake_up_v1() RETURNS void LANGUAGE plpgsql AS $$ "
            "BEGIN PERFORM pg_advisory_xact_lock_shared(4242); PERFORM pg_notify('eventstore_events_v1', ''); END $$"
        )
        listener = listen(store)
        try:
            holder.execute("SELECT pg_advisory_lock(4242)")
            with ThreadPoolExecutor(max_workers=1) as pool:
                first = pool.submit(store.append, "order-1", [placed()]).result(timeout=10)
                second = pool.submit(store.append, "order-1", [placed()]).result(timeout=10)  # not behind the first
            assert (first.stream_version, second.stream_version) == (1, 2)
            assert wake_ups(listener) == 0  # both still held on the server
            holder.execute("SELECT pg_advisory_unlock(4242)")
            for number in range(5):
                store.append(f"order-{number + 2}", [placed()])
            received = sum(1 for _ in listener.notifies(timeout=5, stop_after=7))
            assert received == 7
            assert 2 <= append_connection_count(store.engine) <= 4  # reused, not one per append
        finally:
            listener.close()
