"""Reading a request: query parameters and the append body, with errors naming the field (422).

Errors say what the HTTP client wrote (``query parameter position``,
``events[1].type``, ``expected_version``) and the form that is expected.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from eventstore.store.validation import MAX_INT32, MAX_INT64
from eventstore.types import ANY, NO_STREAM, STREAM_EXISTS, ExpectedVersion, NewEvent
from eventstore.web.errors import RequestError

__all__ = ["AppendRequest", "append_request", "field_words", "integer", "last_event_id", "seconds"]

_EVENT_FIELDS = ("type", "data", "metadata", "event_id")
_NAMED_VERSIONS = {"any": ANY, "no-stream": NO_STREAM, "exists": STREAM_EXISTS}
_JSON_TYPES = {list: "an array", str: "a string", int: "a number", float: "a number", bool: "a boolean"}
_EXAMPLE = '{"type": "OrderPlaced", "data": {"amount": 10}}'


def _invalid(message: str) -> RequestError:
    return RequestError(422, message)


def integer(query: Mapping[str, str], name: str, *, minimum: int = 0, maximum: int = MAX_INT64) -> int | None:
    """The query parameter ``name`` as an integer in ``[minimum, maximum]``, None when absent."""
    text = query.get(name)
    if text is None:
        return None
    if not text.isdigit() or not minimum <= int(text) <= maximum:
        raise _invalid(f"query parameter {name}={text!r}: expected an integer from {minimum} to {maximum}")
    return int(text)


def seconds(query: Mapping[str, str], name: str, *, default: float, maximum: float) -> float:
    """The query parameter ``name`` as a number of seconds in ``(0, maximum]``."""
    text = query.get(name)
    if text is None:
        return default
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not 0 < value <= maximum:  # also false for nan
        raise _invalid(f"query parameter {name}={text!r}: expected a number of seconds above 0, at most {maximum:g}")
    return value


def last_event_id(header: str | None) -> int | None:
    """The ``Last-Event-ID`` header (the ``id:`` of the last event the client got), None when absent or empty."""
    if header is None or not header.strip():
        return None
    text = header.strip()
    if not text.isdigit() or int(text) > MAX_INT64:
        raise _invalid(f"header Last-Event-ID: {text!r} is not a global position; send the id of an event we sent")
    return int(text)


@dataclass(frozen=True)
class AppendRequest:
    """A decoded ``POST /api/streams/{stream_id}`` body."""

    events: list[NewEvent]
    expected_version: int | ExpectedVersion
    single: bool
    """The body was one event (its fields at the top level), not ``{"events": [...]}``."""


def append_request(body: bytes) -> AppendRequest:
    """Decode an append body: one event ``{"type": ..., "data": {...}, ...}`` or ``{"events": [...]}``.

    Both forms take ``"expected_version"`` at the top level: N, "any" (the
    default), "no-stream" or "exists". Event fields: ``type`` (required),
    ``data`` (object, default {}), ``metadata`` (object), ``event_id`` (UUID
    text; repeat it to retry a request safely). The values themselves are
    checked by the store, which names the field (:class:`InvalidEvent`).
    """
    try:
        document = json.loads(body)
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        where = f" at line {error.lineno}, column {error.colno}" if isinstance(error, json.JSONDecodeError) else ""
        reason = error.msg if isinstance(error, json.JSONDecodeError) else "not UTF-8"
        raise _invalid(f"request body: invalid JSON{where}: {reason}; send an object such as {_EXAMPLE}") from error
    if not isinstance(document, dict):
        raise _invalid(f"request body: expected a JSON object, got {_kind(document)}; send one such as {_EXAMPLE}")
    version = _expected_version(document.pop("expected_version", "any"))
    if "events" not in document:
        return AppendRequest([_event(document, "")], version, single=True)
    items = document.pop("events")
    if document:
        raise _invalid(
            f"request body: unexpected field {sorted(document)[0]!r} next to events; "
            "put event fields inside each item of events"
        )
    if not isinstance(items, list) or not items:
        raise _invalid(f"events: expected a non-empty array of event objects, got {_kind(items)}")
    return AppendRequest([_event(item, f"events[{index}]") for index, item in enumerate(items)], version, single=False)


def _event(item: Any, place: str) -> NewEvent:
    prefix = f"{place}." if place else ""
    if not isinstance(item, dict):
        raise _invalid(f"{place}: expected an event object such as {_EXAMPLE}, got {_kind(item)}")
    unknown = sorted(set(item) - set(_EVENT_FIELDS))
    if unknown:
        allowed = ", ".join(_EVENT_FIELDS) + ("" if place else ", expected_version, events")
        raise _invalid(f"{prefix}{unknown[0]}: unknown field; the fields are {allowed}")
    if "type" not in item:
        raise _invalid(f'{prefix}type: missing; every event needs a type, e.g. "OrderPlaced"')
    data = item.get("data", {})
    return NewEvent(item["type"], {} if data is None else data, item.get("metadata"), item.get("event_id"))  # type: ignore[arg-type]


def _expected_version(value: Any) -> int | ExpectedVersion:
    if isinstance(value, str) and value.lower() in _NAMED_VERSIONS:
        return _NAMED_VERSIONS[value.lower()]
    if isinstance(value, int) and not isinstance(value, bool) and 0 <= value <= MAX_INT32:
        return value
    raise _invalid(
        f"expected_version: {json.dumps(value)} is not a stream version; use an integer from 0 to {MAX_INT32} "
        '(the version of the stream\'s last event, 0 for a new stream), "any", "no-stream" or "exists"'
    )


def _kind(value: Any) -> str:
    return "null" if value is None else _JSON_TYPES.get(type(value), type(value).__name__)


def field_words(field: str, request: AppendRequest | None) -> str:
    """The store's name for a field (``events[0].data.amount``) in the words of this request's body."""
    if field == "stream_id":
        return "stream_id (in the URL)"
    if request is not None and request.single and field.startswith("events[0]"):
        rest = field[len("events[0]") :].lstrip(".")
        return rest or "request body"
    return field
