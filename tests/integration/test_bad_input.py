"""Bad input is rejected with an error naming the field, and nothing is written."""

from __future__ import annotations

import uuid
from collections.abc import Callable

import pytest
import sqlalchemy as sa

from eventstore import DatabaseUnavailable, EventStore, InvalidEvent, NewEvent, SchemaNotReady
from eventstore.testing import TestServer

# Fixed, not random: every test process (pytest-xdist) must collect the same test ids.
SAME_ID = uuid.UUID("5a1d0c3e-0000-4000-8000-000000000042")

BAD_APPENDS = [
    ("", [NewEvent("T", {})], "stream_id: must not be empty"),
    ("x" * 256, [NewEvent("T", {})], "stream_id: is 256 characters long; the limit is 255"),
    ("a\x00b", [NewEvent("T", {})], "stream_id: contains a NUL"),
    (42, [NewEvent("T", {})], "stream_id: must be a string, got int"),
    ("s-1", [], "events: at least one event is required"),
    ("s-1", NewEvent("T", {}), "events: must be a list of NewEvent"),
    ("s-1", [{"type": "T"}], "events[0]: expected NewEvent, got dict"),
    ("s-1", [NewEvent("", {})], "events[0].type: must not be empty"),
    ("s-1", [NewEvent("T", [1, 2])], "events[0].data: must be a JSON object (a dict), got list"),  # type: ignore[arg-type]
    ("s-1", [NewEvent("T", {"a": "\x00"})], "events[0].data.a: contains a NUL"),
    ("s-1", [NewEvent("T", {"a\x00": 1})], "events[0].data key"),
    ("s-1", [NewEvent("T", {"a": float("nan")})], "events[0].data.a: nan is not valid JSON"),
    ("s-1", [NewEvent("T", {"a": [float("inf")]})], r"events\[0\].data.a\[0\]: inf"),
    ("s-1", [NewEvent("T", {"a": "\ud800"})], "events[0].data.a: is not valid Unicode"),
    ("s-1", [NewEvent("T", {1: "x"})], "events[0].data: has a key of type int"),  # type: ignore[dict-item]
    ("s-1", [NewEvent("T", {"a": (1, 2)})], "events[0].data.a: tuple is not a JSON type"),
    ("s-1", [NewEvent("T", {"a": {"b": [1, {2}]}})], r"events\[0\].data.a.b\[1\]: set is not a JSON type"),
    ("s-1", [NewEvent("T", {"a": ["ok", "x\x00"]})], r"events\[0\].data.a\[1\]: contains a NUL"),
    ("s-1", [NewEvent("T", {}, metadata={"a": {"b\ud800": 1}})], "events[0].metadata.a key 'b\\ud800': is not valid"),
    ("s-1", [NewEvent("T", {}, metadata=[])], "events[0].metadata: must be a JSON object"),  # type: ignore[arg-type]
    ("s-1", [NewEvent("T", {}, event_id="nope")], "events[0].event_id: must be a UUID"),  # type: ignore[arg-type]
    (
        "s-1",
        [NewEvent("T", {}, event_id=SAME_ID), NewEvent("T", {}, event_id=SAME_ID)],
        "events[1].event_id: " + str(SAME_ID) + " appears twice",
    ),
]


@pytest.mark.parametrize(("stream_id", "events", "message"), BAD_APPENDS)
def test_bad_append_names_the_field_and_writes_nothing(
    store: EventStore, stream_id: object, events: object, message: str
) -> None:
    with pytest.raises(InvalidEvent) as raised:
        store.append(stream_id, events)  # type: ignore[arg-type]
    assert message in str(raised.value) or raised.match(message)
    with store.engine.connect() as connection:
        assert connection.execute(sa.text("SELECT count(*) FROM events")).scalar_one() == 0


@pytest.mark.parametrize(
    ("expected", "message"),
    [(-1, "expected_version: must be between 0"), ("1", "expected_version: must be ANY"), (True, "expected_version")],
)
def test_bad_expected_version(store: EventStore, expected: object, message: str) -> None:
    with pytest.raises(InvalidEvent, match=message):
        store.append("s-1", [NewEvent("T", {})], expected_version=expected)  # type: ignore[arg-type]


def test_limits_bound_one_append(engine: sa.Engine) -> None:
    store = EventStore(engine, max_append_events=3, max_event_bytes=100)
    with pytest.raises(InvalidEvent, match="events: 4 events in one append; the limit is max_append_events=3"):
        store.append("s-1", [NewEvent("T", {})] * 4)
    with pytest.raises(InvalidEvent, match=r"events\[0\]: \d+ bytes of JSON; the limit is max_event_bytes=100"):
        store.append("s-1", [NewEvent("T", {"text": "x" * 200})])


def test_deep_nesting_is_rejected_before_the_database(store: EventStore) -> None:
    deep: dict[str, object] = {}
    cursor = deep
    for _ in range(200):
        child: dict[str, object] = {}
        cursor["a"] = child
        cursor = child
    with pytest.raises(InvalidEvent, match="nested deeper than 128"):
        store.append("s-1", [NewEvent("T", deep)])


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda store: list(store.read_all(after=-1)), "after: must be between 0"),
        (lambda store: list(store.read_all(limit="3")), "limit: must be an integer"),
        (lambda store: list(store.read_all(categories=[""])), r"categories\[0\]: must not be empty"),
        (lambda store: store.read_stream("s", from_version=0), "from_version: must be between 1"),
        (lambda store: store.read_stream(""), "stream_id: must not be empty"),
    ],
)
def test_bad_read_arguments(store: EventStore, call: Callable[[EventStore], object], message: str) -> None:
    with pytest.raises(InvalidEvent, match=message):
        call(store)


def test_unreachable_database_names_host_and_port_never_the_password() -> None:
    store = EventStore("postgresql://app:SeCrEt@127.0.0.1:1/orders?connect_timeout=2")
    with pytest.raises(DatabaseUnavailable) as raised:
        store.append("s-1", [NewEvent("T", {})])
    assert "127.0.0.1:1/orders" in str(raised.value)
    assert "SeCrEt" not in str(raised.value)
    assert "SeCrEt" not in repr(store)


def test_unmigrated_database_says_to_migrate(test_server: TestServer) -> None:
    name = test_server.create_database(migrated=False)
    store = EventStore(test_server.url(name))
    try:
        with pytest.raises(SchemaNotReady, match="eventstore migrate"):
            store.head_position()
    finally:
        store.engine.dispose()
        test_server.drop_database(name)


def test_text_that_merely_looks_like_an_escaped_nul_is_stored(store: EventStore) -> None:
    data = {"path": "C:\\u0000dir", "nested": [{"note": "\\u0000"}]}
    store.append("s-1", [NewEvent("T", data)])
    assert store.read_stream("s-1")[0].data == data
