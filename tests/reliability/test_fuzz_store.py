"""Fuzzed input for append / read_stream / read_all (hypothesis, real PostgreSQL).

Every call either round-trips exactly (what is read back equals what was
appended) or is rejected with our own error type whose message names the
field; a rejected append writes nothing (the row count does not move).

All examples of one test share that test's database, so every example uses
its own stream id (a per-test counter as prefix).
"""

from __future__ import annotations

import itertools
import math
import unicodedata
import uuid
from typing import Any

import pytest
import sqlalchemy as sa
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from eventstore import ANY, NO_STREAM, STREAM_EXISTS, EventStore, NewEvent
from eventstore.errors import EventStoreError, InvalidEvent, UnknownPosition, WrongExpectedVersion
from eventstore.types import category_of

FUZZ = settings(
    max_examples=60,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow, HealthCheck.data_too_large],
)

# Any code point, lone surrogates included, plus characters that matter to
# PostgreSQL, JSON and SQL text.
SPECIAL = ["\x00", "\ud800", "\udfff", "-", "'", '"', ";", "\\", "%", ":", "$", "\n", "\u2010", "\ufeff", "🙂"]
CHARACTERS = st.one_of(st.characters(exclude_categories=()), st.sampled_from(SPECIAL))
TEXT = st.text(CHARACTERS, max_size=40)
LONG_TEXT = st.one_of(TEXT, st.text(CHARACTERS, min_size=250, max_size=300))

JSON_SCALARS = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.integers(min_value=-(10**40), max_value=10**40),
    st.floats(allow_nan=True, allow_infinity=True),
    TEXT,
)
JSON_VALUES = st.recursive(
    JSON_SCALARS,
    lambda children: st.lists(children, max_size=5) | st.dictionaries(TEXT, children, max_size=5),
    max_leaves=30,
)
NOT_JSON = st.sampled_from([b"bytes", {1, 2}, (1, 2), object(), 1 + 2j, uuid.UUID(int=7)])
OBJECTS = st.one_of(
    st.dictionaries(TEXT, JSON_VALUES, max_size=6),
    st.dictionaries(st.one_of(TEXT, st.integers(), st.none()), JSON_VALUES, max_size=3),
    st.dictionaries(TEXT, NOT_JSON, min_size=1, max_size=2),
    JSON_VALUES,  # not an object at the top: rejected
)
WILD_INTEGERS = st.one_of(
    st.integers(min_value=-5, max_value=5),
    st.integers(),
    st.sampled_from([2**31 - 1, 2**31, 2**63 - 1, 2**63, -(2**63), 10**30]),
)
WRONG_TYPES = st.sampled_from([None, True, 1.5, "3", b"1", [1], float("nan")])


def _storable(text: str) -> bool:
    if "\x00" in text:
        return False
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _printable_id(stream_id: str) -> bool:
    """The model of a stream id that prints unambiguously: no outer whitespace, no control characters."""
    return stream_id == stream_id.strip() and not any(
        unicodedata.category(character) in ("Cc", "Zl", "Zp") for character in stream_id
    )


def _valid_json(value: Any, depth: int = 1) -> bool:
    """The model: what the store must accept as event data."""
    if depth > 128:
        return False
    if isinstance(value, dict):
        return all(
            isinstance(key, str) and _storable(key) and _valid_json(child, depth + 1) for key, child in value.items()
        )
    if isinstance(value, list):
        return all(_valid_json(child, depth + 1) for child in value)
    if isinstance(value, str):
        return _storable(value)
    if isinstance(value, float):
        return math.isfinite(value)
    return value is None or isinstance(value, int)


def _same_json(stored: Any, given: Any) -> bool:
    """Equal as JSON values: 1 == 1.0 (jsonb keeps numbers as decimals), otherwise exact."""
    if isinstance(given, dict):
        return (
            isinstance(stored, dict)
            and stored.keys() == given.keys()
            and all(_same_json(stored[key], given[key]) for key in given)
        )
    if isinstance(given, list):
        return isinstance(stored, list) and len(stored) == len(given) and all(map(_same_json, stored, given))
    if isinstance(given, bool) or given is None or isinstance(given, str):
        return type(stored) is type(given) and stored == given
    if not isinstance(stored, int | float) or isinstance(stored, bool):
        return False
    if isinstance(given, float):
        # Floats read back as the same float (the store writes them in plain
        # notation, so jsonb does not print 1e23 as an integer).
        return type(stored) is float and stored == given
    return type(stored) is int and stored == given


def _count(store: EventStore) -> int:
    with store.engine.connect() as connection:
        return int(connection.execute(sa.text("SELECT count(*) FROM events")).scalar_one())


@pytest.fixture
def unique() -> itertools.count[int]:
    return itertools.count(1)


@FUZZ
@given(raw_stream=LONG_TEXT, event_type=LONG_TEXT, data=OBJECTS, metadata=st.one_of(st.none(), OBJECTS))
@example(raw_stream="x", event_type="T", data={"n": float("nan")}, metadata=None)
@example(raw_stream="x", event_type="T", data={"n": float("inf")}, metadata=None)
@example(raw_stream="x", event_type="T", data={"s": "a\x00b"}, metadata=None)
@example(raw_stream="x", event_type="T", data={"s": "\ud800"}, metadata=None)
@example(raw_stream="x", event_type="T\x00", data={}, metadata=None)
@example(raw_stream="\udc00", event_type="T", data={}, metadata=None)
@example(raw_stream="x", event_type="", data={}, metadata=None)
@example(raw_stream="x", event_type="T", data={"f": 1e23, "g": 1.7976931348623157e308}, metadata=None)
@example(raw_stream="x", event_type="T", data={"big": 10**400, "tiny": 5e-324, "neg0": -0.0}, metadata={"k": [[[]]]})
def test_append_round_trips_or_rejects_naming_the_field(
    store: EventStore, unique: itertools.count[int], raw_stream: str, event_type: str, data: Any, metadata: Any
) -> None:
    stream_id = f"f{next(unique)}-{raw_stream}" if raw_stream else raw_stream
    before = _count(store)
    stream_ok = 1 <= len(stream_id) <= 255 and _storable(stream_id) and _printable_id(stream_id)
    type_ok = 1 <= len(event_type) <= 255 and _storable(event_type)
    data_ok = isinstance(data, dict) and _valid_json(data)
    metadata_ok = metadata is None or (isinstance(metadata, dict) and _valid_json(metadata))
    event = NewEvent(event_type, data, metadata=metadata)
    try:
        result = store.append(stream_id, [event], expected_version=NO_STREAM)
    except InvalidEvent as error:
        assert not (stream_ok and type_ok and data_ok and metadata_ok), f"valid input rejected: {error}"
        expected_field = (
            "stream_id" if not stream_ok else
            "events[0].type" if not type_ok else
            "events[0].data" if not data_ok else
            "events[0].metadata"
        )  # fmt: skip
        assert error.field.startswith(expected_field), (error.field, expected_field)
        assert str(error).startswith(error.field)
        assert _count(store) == before, "a rejected append wrote rows"
        return
    assert stream_ok and type_ok and data_ok and metadata_ok, "invalid input was stored"
    assert _count(store) == before + 1
    (stored,) = store.read_stream(stream_id)
    assert (stored.stream_id, stored.type, stored.event_id) == (stream_id, event_type, event.event_id)
    assert (stored.stream_version, stored.global_position) == (1, result.global_position)
    assert _same_json(stored.data, data), (stored.data, data)
    assert _same_json(stored.metadata, metadata or {}), (stored.metadata, metadata)
    # The stream is found by its category too, and the retry of the same event is idempotent.
    by_category = [e.event_id for e in store.read_all(categories=[category_of(stream_id)]) if e.stream_id == stream_id]
    assert by_category == [event.event_id]
    retried = store.append(stream_id, [event], expected_version=NO_STREAM)
    assert retried.already_stored and retried.global_position == result.global_position
    assert _count(store) == before + 1


@pytest.mark.parametrize("number", [1e23, 1.5e300, 1.7976931348623157e308])
def test_retrying_an_append_with_a_large_float_is_idempotent(store: EventStore, number: float) -> None:
    # Found by the fuzzer: jsonb printed 1e23 as 100000000000000000000000, the idempotency check saw
    # "different data" and the retry raised DuplicateEventId (fixed in store.py, commit 5367cea).
    event = NewEvent("Measured", {"value": number})
    first = store.append("sensor-1", [event])
    (stored,) = store.read_stream("sensor-1")
    assert type(stored.data["value"]) is float and stored.data["value"] == number
    retried = store.append("sensor-1", [event])
    assert retried.already_stored and retried.global_position == first.global_position
    assert _count(store) == 1


@FUZZ
@given(
    expected=st.one_of(WILD_INTEGERS, WRONG_TYPES, st.sampled_from([ANY, NO_STREAM, STREAM_EXISTS])),
    events=st.one_of(
        st.lists(st.builds(NewEvent, st.just("T"), st.just({})), min_size=0, max_size=3),
        st.sampled_from([None, "events", NewEvent("T", {}), [None], [{"type": "T"}], ({"x": 1},)]),
        st.lists(st.just(NewEvent("T", {}, event_id="not-a-uuid")), min_size=1, max_size=1),  # type: ignore[arg-type]
    ),
)
def test_append_arguments_of_the_wrong_kind(
    store: EventStore, unique: itertools.count[int], expected: Any, events: Any
) -> None:
    stream_id = f"args{next(unique)}"
    store.append(stream_id, [NewEvent("Seed", {})])  # the stream is at version 1
    before = _count(store)
    try:
        result = store.append(stream_id, events, expected_version=expected)
    except InvalidEvent as error:
        assert error.field.startswith(("expected_version", "events")), error
        assert _count(store) == before
        return
    except WrongExpectedVersion as error:
        assert error.actual == 1 and error.stream_id == stream_id
        assert _count(store) == before
        return
    assert expected in (ANY, STREAM_EXISTS, 1) and not isinstance(expected, bool)
    assert result.stream_version == 1 + len(events)
    assert _count(store) == before + len(events)


@FUZZ
@given(
    from_version=st.one_of(st.none(), WILD_INTEGERS, WRONG_TYPES),
    limit=st.one_of(st.none(), WILD_INTEGERS, WRONG_TYPES),
    backwards=st.booleans(),
)
def test_read_stream_bounds(store: EventStore, from_version: Any, limit: Any, backwards: bool) -> None:
    if not store.stream_version("fuzz-read"):
        store.append("fuzz-read", [NewEvent("T", {"i": i}) for i in range(1, 6)])
    try:
        events = store.read_stream("fuzz-read", from_version=from_version, backwards=backwards, limit=limit)
    except InvalidEvent as error:
        assert error.field in ("from_version", "limit")
        bad = from_version if error.field == "from_version" else limit
        assert bad is not None
        return
    versions = [event.stream_version for event in events]
    everything = [5, 4, 3, 2, 1] if backwards else [1, 2, 3, 4, 5]
    if from_version is not None:
        everything = [v for v in everything if (v <= from_version if backwards else v >= from_version)]
    assert versions == everything[: limit if limit is not None else None]


@FUZZ
@given(
    after=st.one_of(st.none(), WILD_INTEGERS, WRONG_TYPES),
    limit=st.one_of(st.none(), WILD_INTEGERS, WRONG_TYPES),
    event_types=st.one_of(st.none(), st.lists(LONG_TEXT, max_size=3), st.just("T"), st.just([1])),
    categories=st.one_of(st.none(), st.lists(LONG_TEXT, max_size=3), st.just(["cat"])),
)
def test_read_all_bounds(store: EventStore, after: Any, limit: Any, event_types: Any, categories: Any) -> None:
    if not store.stream_version("cat-1"):
        store.append("cat-1", [NewEvent("T", {}), NewEvent("U", {})])
        store.append("dog-1", [NewEvent("T", {})])
    positions = [event.global_position for event in store.read_all()]
    try:
        events = list(store.read_all(after=after, limit=limit, event_types=event_types, categories=categories))
    except InvalidEvent as error:
        assert error.field.split("[")[0] in ("after", "limit", "event_types", "categories"), error
        return
    except UnknownPosition as error:
        assert isinstance(after, int) and after not in positions and str(after) in str(error)
        return
    assert all(isinstance(e.global_position, int) for e in events)
    rest = [e for e in store.read_all() if not after or e.global_position > after]
    types = [event_types] if isinstance(event_types, str) else event_types
    if types:
        rest = [e for e in rest if e.type in types]
    if categories:
        rest = [e for e in rest if e.category in categories]
    assert [e.global_position for e in events] == [e.global_position for e in rest][:limit]


def test_largest_allowed_event_round_trips_and_one_byte_more_is_rejected(store: EventStore) -> None:
    limit = store.max_event_bytes
    overhead = len('{"s":""}') + len("{}")
    big = {"s": "x" * (limit - overhead)}
    result = store.append("big-1", [NewEvent("Big", big)])
    assert store.read_stream("big-1")[0].data == big and result.stream_version == 1
    with pytest.raises(InvalidEvent, match=r"events\[0\]: .*max_event_bytes"):
        store.append("big-2", [NewEvent("Big", {"s": "x" * (limit - overhead + 1)})])
    assert _count(store) == 1


def test_every_rejection_is_an_event_store_error(store: EventStore) -> None:
    # The union of what the fuzzers accept as "rejected": one base class.
    for bad in (lambda: store.append("", []), lambda: store.read_all(after=-1), lambda: store.read_stream(1)):  # type: ignore[arg-type]
        with pytest.raises(EventStoreError):
            bad()
