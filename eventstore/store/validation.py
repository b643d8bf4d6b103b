"""Validation of everything an append or a read takes, before any SQL runs.

Values PostgreSQL cannot store exactly are rejected here, naming the field:
NUL characters, lone surrogates, NaN and Infinity, non-string keys, nesting
deeper than :data:`MAX_JSON_DEPTH`, integers beyond ``integer``/``bigint``.
Stream ids must also print unambiguously: no leading or trailing whitespace,
no control characters. Every failure raises
:class:`~eventstore.errors.InvalidEvent`; :func:`prepare_append` returns the
arrays the append statement takes.
"""

from __future__ import annotations

import json
import math
import unicodedata
import uuid
from collections.abc import Iterable, Sequence
from decimal import Decimal
from typing import Any

from eventstore.errors import InvalidEvent
from eventstore.types import ANY, NO_STREAM, STREAM_EXISTS, ExpectedVersion, NewEvent

__all__ = [
    "MAX_EVENT_TYPE_LENGTH",
    "MAX_INT32",
    "MAX_INT64",
    "MAX_JSON_DEPTH",
    "MAX_STREAM_ID_LENGTH",
    "PreparedAppend",
    "check_count",
    "check_expected",
    "check_names",
    "check_stream_id",
    "check_text",
    "prepare_append",
]

MAX_STREAM_ID_LENGTH = 255
MAX_EVENT_TYPE_LENGTH = 255
MAX_JSON_DEPTH = 128
MAX_INT32 = 2**31 - 1
MAX_INT64 = 2**63 - 1


def prepare_append(
    stream_id: str,
    events: Sequence[NewEvent],
    expected_version: int | ExpectedVersion,
    *,
    max_append_events: int,
    max_event_bytes: int,
) -> PreparedAppend:
    """Check an append's arguments and encode its events; raises :class:`InvalidEvent` naming the field."""
    check_stream_id(stream_id)
    expected = check_expected(expected_version)
    if isinstance(events, NewEvent) or not isinstance(events, Sequence):
        raise InvalidEvent("events", f"must be a list of NewEvent, got {type(events).__name__}")
    if not events:
        raise InvalidEvent("events", "at least one event is required (an empty append writes nothing)")
    if len(events) > max_append_events:
        raise InvalidEvent(
            "events", f"{len(events)} events in one append; the limit is max_append_events={max_append_events}"
        )
    prepared = PreparedAppend(stream_id, expected)
    seen_ids: set[uuid.UUID] = set()
    checked_types: set[str] = set()
    for index, event in enumerate(events):
        field = f"events[{index}]"
        if not isinstance(event, NewEvent):
            raise InvalidEvent(field, f"expected NewEvent, got {type(event).__name__}")
        if not isinstance(event.event_id, uuid.UUID):
            raise InvalidEvent(f"{field}.event_id", f"must be a UUID, got {event.event_id!r}")
        if event.event_id in seen_ids:
            raise InvalidEvent(f"{field}.event_id", f"{event.event_id} appears twice in this append")
        if type(event.type) is not str or event.type not in checked_types:
            check_text(f"{field}.type", event.type, MAX_EVENT_TYPE_LENGTH)
            checked_types.add(event.type)
        data = _encode_object(f"{field}.data", event.data)
        if event.metadata is None or (type(event.metadata) is dict and not event.metadata):
            metadata = "{}"
        else:
            metadata = _encode_object(f"{field}.metadata", event.metadata)
        size = _utf8_length(data) + _utf8_length(metadata)
        if size > max_event_bytes:
            raise InvalidEvent(field, f"{size} bytes of JSON; the limit is max_event_bytes={max_event_bytes}")
        prepared.add(event.event_id, event.type, data, metadata)
        seen_ids.add(event.event_id)
    return prepared


class PreparedAppend:
    """An append's validated, encoded events, and the append statement's parameters."""

    def __init__(self, stream_id: str, expected: int | ExpectedVersion) -> None:
        self.stream_id = stream_id
        self.expected = expected
        self.event_ids: list[uuid.UUID] = []
        self.event_types: list[str] = []
        self.datas: list[str] = []
        self.metadatas: list[str] = []

    def add(self, event_id: uuid.UUID, event_type: str, data: str, metadata: str) -> None:
        self.event_ids.append(event_id)
        self.event_types.append(event_type)
        self.datas.append(data)
        self.metadatas.append(metadata)

    @property
    def parameters(self) -> dict[str, Any]:
        expected = 0  # NO_STREAM
        if self.expected is ANY:
            expected = -1
        elif self.expected is STREAM_EXISTS:
            expected = -2
        elif isinstance(self.expected, int):
            expected = self.expected
        return {"stream_id": self.stream_id, "events": self.events_json(), "expected": expected}

    def events_json(self) -> str:
        """The events as one JSON array of ``{event_id, event_type, data, metadata}`` objects (the append's parameter).

        Built from the already-encoded data and metadata, so nothing is encoded twice.
        """
        return (
            "["
            + ",".join(
                f'{{"event_id":"{event_id}","event_type":{_JSON.encode(event_type)},"data":{data},"metadata":{metadata}}}'
                for event_id, event_type, data, metadata in zip(
                    self.event_ids, self.event_types, self.datas, self.metadatas, strict=True
                )
            )
            + "]"
        )

    def differs_from(self, index: int, row: Any) -> tuple[uuid.UUID, str] | None:
        """How the stored row differs from event ``index`` of this append (None: identical)."""
        event_id = self.event_ids[index]
        if row.stream_id != self.stream_id:
            return event_id, f"in stream {row.stream_id!r}, not {self.stream_id!r}"
        if row.event_type != self.event_types[index]:
            return event_id, f"with type {row.event_type!r}, not {self.event_types[index]!r}"
        if row.data != json.loads(self.datas[index]) or row.metadata != json.loads(self.metadatas[index]):
            return event_id, "with different data or metadata"
        return None


def check_expected(expected: object) -> int | ExpectedVersion:
    if isinstance(expected, ExpectedVersion):
        return 0 if expected is NO_STREAM else expected
    if isinstance(expected, bool) or not isinstance(expected, int):
        raise InvalidEvent(
            "expected_version", f"must be ANY, NO_STREAM, STREAM_EXISTS or an integer >= 0, got {expected!r}"
        )
    if not 0 <= expected <= MAX_INT32:
        raise InvalidEvent("expected_version", f"must be between 0 and {MAX_INT32}, got {expected}")
    return expected


def check_text(field: str, value: object, max_length: int) -> None:
    if not isinstance(value, str):
        raise InvalidEvent(field, f"must be a string, got {type(value).__name__}")
    if not value:
        raise InvalidEvent(field, "must not be empty")
    if len(value) > max_length:
        raise InvalidEvent(field, f"is {len(value)} characters long; the limit is {max_length}")
    _check_storable_string(field, value)


def _check_storable_string(field: str, value: str) -> None:
    # PostgreSQL text and jsonb cannot hold NUL, nor lone UTF-16 surrogates.
    if "\x00" in value:
        raise InvalidEvent(field, "contains a NUL character (\\u0000), which PostgreSQL cannot store")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as error:
        raise InvalidEvent(field, f"is not valid Unicode ({error.reason} at index {error.start})") from error


def check_count(field: str, value: object, *, minimum: int, maximum: int) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        raise InvalidEvent(field, f"must be an integer, got {type(value).__name__}")
    if not minimum <= value <= maximum:
        raise InvalidEvent(field, f"must be between {minimum} and {maximum}, got {value}")
    return value


def check_names(field: str, values: Iterable[str] | None, max_length: int) -> list[str] | None:
    if values is None:
        return None
    if isinstance(values, str):
        values = [values]
    names = list(values)
    for index, name in enumerate(names):
        check_text(f"{field}[{index}]", name, max_length)
    return names or None


# Compact UTF-8 JSON without NaN/Infinity; one encoder for all (json.dumps
# with options builds a new one per call).
_JSON = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"), allow_nan=False)


def _encode_object(field: str, value: object) -> str:
    """JSON text for a data/metadata object that round-trips exactly through jsonb.

    The structure is checked in one walk (keys, types, depth, finite floats);
    the strings are checked on the encoded text, and only when that shows a
    possible problem are they walked again to name the offending one.
    """
    if not isinstance(value, dict):
        raise InvalidEvent(field, f"must be a JSON object (a dict), got {type(value).__name__}")
    exponent_floats = _check_structure(field, value)
    try:
        text = _dumps_with_plain_floats(value) if exponent_floats else _JSON.encode(value)
    except ValueError as error:  # e.g. an integer too long to print
        raise InvalidEvent(field, str(error)) from error
    # The encoder escapes NUL as \u0000; a lone surrogate fails to encode.
    if "\\u0000" in text or not (text.isascii() or _encodes_as_utf8(text)):
        _check_strings(field, value)
    return text


def _utf8_length(text: str) -> int:
    return len(text) if text.isascii() else len(text.encode())


def _check_structure(field: str, value: dict[Any, Any]) -> bool:
    """Raise for keys, types, depth or numbers JSON cannot hold; True if a float needs plain notation.

    Paths are kept as ``(parent, key)`` pairs and rendered only for an error.
    """
    # Most events are flat objects of strings, integers, booleans and nulls.
    if all(type(key) is str and type(child) in _SCALARS for key, child in value.items()):
        return False
    exponent_floats = False
    stack: list[tuple[object, int, Any]] = [(value, 1, None)]
    while stack:
        item, depth, path = stack.pop()
        if isinstance(item, str) or item is None or isinstance(item, int):  # bool is an int
            continue
        if isinstance(item, dict):
            if depth > MAX_JSON_DEPTH:
                raise InvalidEvent(field, f"is nested deeper than {MAX_JSON_DEPTH} levels")
            for key, child in item.items():
                if not isinstance(key, str):
                    raise InvalidEvent(
                        _render_path(field, path), f"has a key of type {type(key).__name__}; JSON keys are strings"
                    )
                stack.append((child, depth + 1, (path, f".{key}")))
        elif isinstance(item, list):
            if depth > MAX_JSON_DEPTH:
                raise InvalidEvent(field, f"is nested deeper than {MAX_JSON_DEPTH} levels")
            stack.extend((child, depth + 1, (path, f"[{index}]")) for index, child in enumerate(item))
        elif isinstance(item, float):
            if not math.isfinite(item):
                raise InvalidEvent(_render_path(field, path), f"{item} is not valid JSON (only finite numbers are)")
            exponent_floats = exponent_floats or "e" in repr(item)
        else:
            raise InvalidEvent(_render_path(field, path), f"{type(item).__name__} is not a JSON type")
    return exponent_floats


_SCALARS = frozenset({str, int, bool, type(None)})


def _render_path(field: str, path: Any) -> str:
    parts: list[str] = []
    while path is not None:
        path, part = path
        parts.append(part)
    return field + "".join(reversed(parts))


def _encodes_as_utf8(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _check_strings(field: str, value: object) -> None:
    """Name the key or string PostgreSQL cannot store (NUL, lone surrogate), if any."""
    stack: list[tuple[str, object]] = [(field, value)]
    while stack:
        path, item = stack.pop()
        if isinstance(item, dict):
            for key, child in item.items():
                _check_storable_string(f"{path} key {key[:40]!r}", key)
                stack.append((f"{path}.{key}", child))
        elif isinstance(item, list):
            stack.extend((f"{path}[{index}]", child) for index, child in enumerate(item))
        elif isinstance(item, str):
            _check_storable_string(path, item)


def _dumps_with_plain_floats(value: dict[str, Any]) -> str:
    """Dump floats such as ``1e300`` as ``1000...0.0``.

    jsonb keeps numbers as ``numeric`` and prints ``1e300`` back without an
    exponent or a decimal point, which JSON readers take for an integer. Plain
    notation with a decimal point survives the trip as the same float. The
    placeholders hold a NUL character, which validated strings never contain.
    """
    plain: list[str] = []

    def swap(item: object) -> object:
        if isinstance(item, dict):
            return {key: swap(child) for key, child in item.items()}
        if isinstance(item, list):
            return [swap(child) for child in item]
        if isinstance(item, float) and "e" in repr(item):
            text = format(Decimal(repr(item)), "f")
            plain.append(text if "." in text else f"{text}.0")
            return f"\x00{len(plain) - 1}"
        return item

    text = _JSON.encode(swap(value))
    for index, literal in enumerate(plain):
        text = text.replace(f'"\\u0000{index}"', literal, 1)
    return text


def check_stream_id(stream_id: object) -> None:
    """A stream id: a non-empty string of at most 255 characters that prints unambiguously.

    Leading or trailing whitespace and control characters (tab, newline, ...)
    are refused: they make ``order-42`` and ``order-42 `` look alike in every
    listing. Any other Unicode is fine.
    """
    check_text("stream_id", stream_id, MAX_STREAM_ID_LENGTH)
    assert isinstance(stream_id, str)
    if stream_id != stream_id.strip():
        raise InvalidEvent("stream_id", f"{stream_id!r} has leading or trailing whitespace; remove it")
    if not stream_id.isprintable():
        for index, character in enumerate(stream_id):
            if unicodedata.category(character) in _UNPRINTABLE:
                raise InvalidEvent(
                    "stream_id",
                    f"{stream_id!r} contains the control character {character!r} at index {index}; "
                    "use printable characters only",
                )


# Control characters and line/paragraph separators. Format characters (Cf) stay allowed:
# emoji sequences and many scripts need the zero-width joiners.
_UNPRINTABLE = frozenset({"Cc", "Zl", "Zp"})
