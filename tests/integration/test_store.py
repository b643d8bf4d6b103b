"""EventStore append/read behaviour against a real PostgreSQL."""

from __future__ import annotations

import uuid

import psycopg
import pytest
import sqlalchemy as sa

from eventstore import (
    ANY,
    NO_STREAM,
    STREAM_EXISTS,
    DatabaseUnavailable,
    DuplicateEventId,
    EventStore,
    ExpectedVersion,
    NewEvent,
    UnknownPosition,
    WrongExpectedVersion,
)
from eventstore.database import libpq_url


def count_events(store: EventStore) -> int:
    with store.engine.connect() as connection:
        return int(connection.execute(sa.text("SELECT count(*) FROM events")).scalar_one())


def placed(total: int = 10) -> NewEvent:
    return NewEvent("OrderPlaced", {"total": total})


def test_first_event_of_a_stream_is_version_1_and_versions_follow(store: EventStore) -> None:
    first = store.append("order-42", [placed()], expected_version=NO_STREAM)
    second = store.append("order-42", [NewEvent("OrderPaid", {}), NewEvent("OrderShipped", {})], expected_version=1)

    assert (first.stream_version, second.stream_version) == (1, 3)
    assert second.global_position > first.global_position
    events = store.read_stream("order-42")
    assert [(event.stream_version, event.type) for event in events] == [
        (1, "OrderPlaced"),
        (2, "OrderPaid"),
        (3, "OrderShipped"),
    ]
    assert events[0].data == {"total": 10}
    assert events[0].metadata == {}
    assert events[0].category == "order"


def test_read_stream_directions_and_limits(store: EventStore) -> None:
    store.append("s-1", [NewEvent(f"E{number}", {"n": number}) for number in range(1, 6)])

    assert [event.stream_version for event in store.read_stream("s-1", from_version=3)] == [3, 4, 5]
    assert [event.stream_version for event in store.read_stream("s-1", backwards=True)] == [5, 4, 3, 2, 1]
    assert [event.stream_version for event in store.read_stream("s-1", backwards=True, from_version=2)] == [2, 1]
    assert [event.stream_version for event in store.read_stream("s-1", limit=2)] == [1, 2]
    assert store.read_stream("s-unknown") == []


@pytest.mark.parametrize(
    ("expected", "described"),
    [(NO_STREAM, "no stream"), (5, "version 5"), (0, "no stream")],
)
def test_wrong_expected_version_names_stream_expected_and_actual(
    store: EventStore, expected: int | ExpectedVersion, described: str
) -> None:
    store.append("order-7", [placed(), placed()])

    with pytest.raises(WrongExpectedVersion) as raised:
        store.append("order-7", [placed()], expected_version=expected)

    assert str(raised.value) == f"stream 'order-7': expected {described}, but it is at version 2"
    assert (raised.value.stream_id, raised.value.actual) == ("order-7", 2)
    assert count_events(store) == 2


def test_stream_exists_and_any(store: EventStore) -> None:
    with pytest.raises(WrongExpectedVersion, match="expected stream exists, but it is at no stream"):
        store.append("order-1", [placed()], expected_version=STREAM_EXISTS)
    assert store.append("order-1", [placed()], expected_version=ANY).stream_version == 1
    assert store.append("order-1", [placed()], expected_version=STREAM_EXISTS).stream_version == 2
    assert count_events(store) == 2


def test_retried_append_is_idempotent(store: EventStore) -> None:
    events = [placed(1), placed(2)]
    first = store.append("order-1", events, expected_version=NO_STREAM)

    again = store.append("order-1", events, expected_version=NO_STREAM)

    assert again.already_stored
    assert (again.stream_version, again.global_position) == (first.stream_version, first.global_position)
    assert count_events(store) == 2


@pytest.mark.parametrize(
    ("stream", "event", "message"),
    [
        ("order-1", NewEvent("OrderPlaced", {"total": 99}), "different data"),
        ("order-1", NewEvent("OrderPaid", {"total": 1}), "type 'OrderPlaced', not 'OrderPaid'"),
        ("order-2", NewEvent("OrderPlaced", {"total": 1}), "in stream 'order-1', not 'order-2'"),
    ],
)
def test_same_event_id_with_other_content_is_an_error(
    store: EventStore, stream: str, event: NewEvent, message: str
) -> None:
    original = placed(1)
    store.append("order-1", [original])
    clash = NewEvent(event.type, event.data, event_id=original.event_id)

    with pytest.raises(DuplicateEventId, match=message):
        store.append(stream, [clash])
    assert count_events(store) == 1


def test_partly_stored_append_writes_nothing(store: EventStore) -> None:
    stored = placed(1)
    store.append("order-1", [stored])

    with pytest.raises(DuplicateEventId, match="only some"):
        store.append("order-1", [placed(2), stored])
    assert count_events(store) == 1


def test_append_in_callers_transaction_exists_only_if_committed(store: EventStore) -> None:
    with store.engine.connect() as connection:
        transaction = connection.begin()
        store.append("order-1", [placed()], connection=connection)
        transaction.rollback()
    assert count_events(store) == 0

    with store.engine.begin() as connection:
        store.append("order-1", [placed()], connection=connection)
        store.append("order-2", [placed()], connection=connection)
    assert count_events(store) == 2


def test_failed_append_leaves_callers_transaction_usable(store: EventStore) -> None:
    with store.engine.begin() as connection:
        store.append("order-1", [placed()], connection=connection)
        with pytest.raises(WrongExpectedVersion):
            store.append("order-1", [placed()], expected_version=NO_STREAM, connection=connection)
        store.append("order-1", [placed()], expected_version=1, connection=connection)
    assert [event.stream_version for event in store.read_stream("order-1")] == [1, 2]


def listen(store: EventStore) -> psycopg.Connection:
    connection = psycopg.connect(libpq_url(store.engine), autocommit=True)
    connection.execute("LISTEN eventstore_events_v1")
    return connection


def drain(connection: psycopg.Connection) -> list[str]:
    return [notify.payload for notify in connection.notifies(timeout=0.5)]


def test_one_small_wake_up_per_committed_transaction(store: EventStore) -> None:
    listener = listen(store)
    try:
        store.append("order-1", [placed(number) for number in range(50)])
        assert len(drain(listener)) == 1

        with store.engine.begin() as connection:
            store.append("order-2", [placed()], connection=connection)
            store.append("order-3", [placed()], connection=connection)
        payloads = drain(listener)
        assert len(payloads) == 1
        assert len(payloads[0].encode()) < 100

        with store.engine.connect() as connection:
            transaction = connection.begin()
            store.append("order-4", [placed()], connection=connection)
            transaction.rollback()
        assert drain(listener) == []
    finally:
        listener.close()


def test_read_all_filters_by_category_and_event_type(store: EventStore) -> None:
    store.append("order-1", [placed(), NewEvent("OrderPaid", {})])
    store.append("customer-1", [NewEvent("CustomerRegistered", {})])
    store.append("order-2", [placed()])

    assert [event.stream_id for event in store.read_all(categories=["order"])] == ["order-1", "order-1", "order-2"]
    assert [event.stream_id for event in store.read_all(categories="customer")] == ["customer-1"]
    assert [event.type for event in store.read_all(event_types=["OrderPaid", "CustomerRegistered"])] == [
        "OrderPaid",
        "CustomerRegistered",
    ]
    assert list(store.read_all(categories=["order"], event_types=["CustomerRegistered"])) == []


def test_read_all_streams_in_batches_and_continues_after_a_position(engine: sa.Engine) -> None:
    store = EventStore(engine, read_batch_size=3)
    for number in range(10):
        store.append(f"order-{number}", [placed(number)])

    everything = list(store.read_all())
    assert [event.data["total"] for event in everything] == list(range(10))
    assert [event.data["total"] for event in store.read_all(limit=4)] == [0, 1, 2, 3]
    middle = everything[5].global_position
    assert [event.data["total"] for event in store.read_all(after=middle)] == [6, 7, 8, 9]
    assert [event.data["total"] for event in store.read_all(after=middle, limit=2)] == [6, 7]
    assert list(store.read_all(after=everything[-1].global_position)) == []
    assert list(store.read_all(after=0)) == everything


def test_read_all_after_an_unknown_position_is_an_error(store: EventStore) -> None:
    store.append("order-1", [placed()])
    with pytest.raises(UnknownPosition, match="after=999"):
        list(store.read_all(after=999))


def test_head_position(store: EventStore) -> None:
    assert store.head_position() == 0
    store.append("order-1", [placed()])
    result = store.append("order-2", [placed(), placed()])
    assert store.head_position() == result.global_position
    assert list(store.read_all(after=store.head_position())) == []


@pytest.mark.parametrize(
    "statement",
    ["UPDATE events SET event_type = 'X'", "DELETE FROM events", "TRUNCATE events"],
)
def test_events_are_append_only_in_the_database(store: EventStore, statement: str) -> None:
    store.append("order-1", [placed()])
    with pytest.raises(sa.exc.DBAPIError, match="append-only"), store.engine.begin() as connection:
        connection.execute(sa.text(statement))
    assert count_events(store) == 1


def test_event_ids_given_as_text_are_accepted(store: EventStore) -> None:
    event_id = uuid.uuid4()
    store.append("order-1", [NewEvent("OrderPlaced", {}, event_id=str(event_id))])  # type: ignore[arg-type]
    assert store.read_stream("order-1")[0].event_id == event_id


def test_numbers_round_trip_exactly_through_jsonb(store: EventStore) -> None:
    data = {"big": 1e23, "tiny": 1.5e-7, "max": 1.7976931348623157e308, "int": 10**30, "plain": 2.5, "whole": 3.0}
    event = NewEvent("Measured", data)
    store.append("sensor-1", [event])

    stored = store.read_stream("sensor-1")[0].data
    assert stored == data
    assert [type(stored[key]) for key in data] == [type(value) for value in data.values()]
    assert store.append("sensor-1", [event]).already_stored  # a retry compares equal


def test_append_in_a_caller_transaction_whose_connection_dies_raises_database_unavailable(
    store: EventStore, engine: sa.Engine
) -> None:
    """The connection= path maps driver errors like every other path (it raised raw OperationalError)."""
    with engine.connect() as connection:
        transaction = connection.begin()
        pid = connection.exec_driver_sql("SELECT pg_backend_pid()").scalar_one()
        with psycopg.connect(libpq_url(engine), autocommit=True) as admin:
            admin.execute("SELECT pg_terminate_backend(%s, 5000)", (pid,))
        with pytest.raises(DatabaseUnavailable, match="cannot reach PostgreSQL at"):
            store.append("order-1", [NewEvent("OrderPlaced", {})], connection=connection)
        transaction.rollback()
    assert store.read_stream("order-1") == []
