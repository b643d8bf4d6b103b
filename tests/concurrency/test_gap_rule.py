"""The gap rule under forced races: never skip, never repeat, streams in version order.

Each test holds a transaction open while a later one commits, then reads.
"""

from __future__ import annotations

import random
import threading
from collections.abc import Iterator

import pytest
import sqlalchemy as sa

from eventstore import NO_STREAM, EventStore, NewEvent, RecordedEvent, WrongExpectedVersion


def event(label: str) -> NewEvent:
    return NewEvent("Happened", {"label": label})


def labels(events: Iterator[RecordedEvent] | list[RecordedEvent]) -> list[str]:
    return [item.data["label"] for item in events]


@pytest.fixture
def open_transaction(store: EventStore) -> Iterator[sa.Connection]:
    """A second connection whose transaction the test commits or rolls back itself."""
    with store.engine.connect() as connection:
        yield connection


def test_open_append_holds_back_a_later_commit_until_it_ends(
    store: EventStore, open_transaction: sa.Connection
) -> None:
    store.append("a-1", [event("before")])
    consumed = list(store.read_all())
    cursor = consumed[-1].global_position

    transaction = open_transaction.begin()
    early = store.append("a-2", [event("early")], connection=open_transaction)  # lower position, still open
    late = store.append("a-3", [event("late")])  # higher position, committed first
    assert late.global_position > early.global_position

    assert list(store.read_all(after=cursor)) == []  # the late event is held back, not skipped past
    assert store.held_back()
    assert store.head_position() == cursor

    transaction.commit()
    assert labels(store.read_all(after=cursor)) == ["early", "late"]
    assert not store.held_back()


def test_rolled_back_append_leaves_a_hole_that_does_not_block(
    store: EventStore, open_transaction: sa.Connection
) -> None:
    transaction = open_transaction.begin()
    doomed = store.append("a-1", [event("doomed")], connection=open_transaction)
    kept = store.append("a-2", [event("kept")])
    assert list(store.read_all()) == []

    transaction.rollback()
    read = list(store.read_all())
    assert labels(read) == ["kept"]
    assert read[0].global_position == kept.global_position > doomed.global_position


def test_unrelated_long_transaction_stalls_readers_but_never_skips(
    store: EventStore, open_transaction: sa.Connection
) -> None:
    transaction = open_transaction.begin()
    open_transaction.execute(sa.text("CREATE TEMPORARY TABLE unrelated (x int)"))
    open_transaction.execute(sa.text("INSERT INTO unrelated VALUES (1)"))  # now it holds a transaction id

    store.append("a-1", [event("waits")])
    assert list(store.read_all()) == []
    assert store.held_back()

    transaction.commit()  # no wake-up is sent for this one: workers re-check on a timer while held
    assert labels(store.read_all()) == ["waits"]


def test_stream_order_holds_when_the_appender_got_its_id_early(
    store: EventStore, open_transaction: sa.Connection
) -> None:
    transaction = open_transaction.begin()
    early_xid = open_transaction.execute(sa.text("SELECT pg_current_xact_id()::text")).scalar_one()

    store.append("order-1", [event("v1")], expected_version=NO_STREAM)  # later transaction id, commits first
    store.append("order-1", [event("v2")], expected_version=1, connection=open_transaction)
    transaction.commit()

    read = list(store.read_all())
    assert [(item.stream_version, item.data["label"]) for item in read] == [(1, "v1"), (2, "v2")]
    # The raw transaction ids are out of order; the stored order key was raised to keep the stream in order.
    assert int(early_xid) < read[0].transaction_order == read[1].transaction_order


def test_concurrent_appends_to_one_stream_exactly_one_wins_each_version(store: EventStore) -> None:
    writers, rounds = 8, 15
    barrier = threading.Barrier(writers)
    conflicts = []
    errors: list[BaseException] = []

    def writer(number: int) -> None:
        try:
            for round_number in range(rounds):
                barrier.wait(timeout=30)
                try:
                    store.append("race-1", [event(f"{number}/{round_number}")], expected_version=round_number)
                except WrongExpectedVersion:
                    conflicts.append(number)
        except BaseException as error:
            errors.append(error)

    threads = [threading.Thread(target=writer, args=(number,)) for number in range(writers)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)

    assert errors == []
    stream = store.read_stream("race-1")
    assert [item.stream_version for item in stream] == list(range(1, rounds + 1))
    assert len(conflicts) == (writers - 1) * rounds


def test_concurrent_any_appends_all_land_in_order(store: EventStore) -> None:
    writers, appends = 6, 20

    def writer(number: int) -> None:
        for index in range(appends):
            store.append("shared-1", [event(f"{number}:{index}")])

    threads = [threading.Thread(target=writer, args=(number,)) for number in range(writers)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)

    stream = store.read_stream("shared-1")
    assert [item.stream_version for item in stream] == list(range(1, writers * appends + 1))
    for number in range(writers):  # each writer's own appends keep their order
        mine = [item.data["label"] for item in stream if item.data["label"].startswith(f"{number}:")]
        assert mine == [f"{number}:{index}" for index in range(appends)]


def test_live_reader_sees_every_committed_event_exactly_once_in_stream_order(store: EventStore) -> None:
    """Random writers hold transactions open, roll back and race; a polling reader must get a perfect log."""
    writers, appends = 6, 25
    done = threading.Event()
    committed: list[str] = []
    lock = threading.Lock()

    def writer(number: int) -> None:
        rng = random.Random(number)
        with store.engine.connect() as connection:
            for index in range(appends):
                label = f"{number}:{index}"
                transaction = connection.begin()
                store.append(f"stream-{rng.randrange(4)}", [event(label)], connection=connection)
                if rng.random() < 0.3:
                    done.wait(rng.random() * 0.02)  # hold the transaction open while others commit
                if rng.random() < 0.15:
                    transaction.rollback()
                    continue
                transaction.commit()
                with lock:
                    committed.append(label)

    seen: list[RecordedEvent] = []

    def reader() -> None:
        cursor = 0
        while True:
            finished = done.is_set()
            batch = list(store.read_all(after=cursor or None))
            seen.extend(batch)
            if batch:
                cursor = batch[-1].global_position
            elif finished:
                return

    threads = [threading.Thread(target=writer, args=(number,)) for number in range(writers)]
    reading = threading.Thread(target=reader)
    reading.start()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=90)
    done.set()
    reading.join(timeout=30)

    assert sorted(labels(seen)) == sorted(committed)  # nothing skipped, nothing repeated, no rolled-back event
    assert len(set(labels(seen))) == len(seen)
    versions: dict[str, int] = {}
    for item in seen:  # per-stream version order holds in the global order
        assert item.stream_version == versions.get(item.stream_id, 0) + 1
        versions[item.stream_id] = item.stream_version
    assert labels(seen) == labels(store.read_all())  # and a fresh full read gives the very same order
