"""Value types of the public API: events going in, events coming out.

These are plain frozen dataclasses; they import nothing else of the package.
"""

from __future__ import annotations

import contextlib
import enum
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

__all__ = [
    "ANY",
    "NO_STREAM",
    "STREAM_EXISTS",
    "AppendResult",
    "ExpectedVersion",
    "JSONObject",
    "NewEvent",
    "RecordedEvent",
    "category_of",
    "event_record",
]

JSONObject = Mapping[str, Any]


class ExpectedVersion(enum.Enum):
    """Symbolic expectations for :meth:`EventStore.append`'s ``expected_version``."""

    ANY = "any"
    """Append whatever the stream's version (still one writer per version)."""
    NO_STREAM = "no stream"
    """The stream must not exist yet (same as the integer 0)."""
    STREAM_EXISTS = "stream exists"
    """The stream must have at least one event."""

    def __str__(self) -> str:
        return self.value


ANY = ExpectedVersion.ANY
NO_STREAM = ExpectedVersion.NO_STREAM
STREAM_EXISTS = ExpectedVersion.STREAM_EXISTS


def category_of(stream_id: str) -> str:
    """The category of a stream: the text before its first ``-`` (``order-42`` -> ``order``).

    A stream id without ``-`` is its own category. PostgreSQL computes the same
    value (``split_part(stream_id, '-', 1)``) into the ``category`` column.
    """
    return stream_id.split("-", 1)[0]


@dataclass(frozen=True, slots=True)
class NewEvent:
    """An event to append. ``event_id`` defaults to a fresh UUID4.

    Give the same ``event_id`` when retrying a request: the store then writes
    nothing the second time and returns the first result (idempotent append).
    """

    type: str
    data: JSONObject
    metadata: JSONObject | None = None
    event_id: uuid.UUID = field(default_factory=uuid.uuid4)

    def __post_init__(self) -> None:
        # Accept a UUID given as text; anything else is rejected at append time.
        if isinstance(self.event_id, str):
            with contextlib.suppress(ValueError):
                object.__setattr__(self, "event_id", uuid.UUID(self.event_id))
        if self.event_id is None:
            object.__setattr__(self, "event_id", uuid.uuid4())


@dataclass(frozen=True, slots=True)
class RecordedEvent:
    """An event as stored.

    ``global_position`` identifies the event in the whole store. Events are
    delivered in the store's global order (see :mod:`eventstore.store` for the
    gap rule); positions increase along a stream but may interleave across
    streams out of numeric order.
    """

    event_id: uuid.UUID
    stream_id: str
    stream_version: int
    type: str
    data: dict[str, Any]
    metadata: dict[str, Any]
    global_position: int
    recorded_at: datetime
    transaction_order: int = field(default=0, repr=False, compare=False)
    """The first part of the global order key (see the gap rule); internal."""

    @property
    def category(self) -> str:
        """The stream's category (text before the first ``-``)."""
        return category_of(self.stream_id)


def event_record(event: RecordedEvent) -> dict[str, Any]:
    """An event as a JSON-ready dict: the shape of ``eventstore read --json`` and of the web API's events."""
    return {
        "global_position": event.global_position,
        "stream_id": event.stream_id,
        "stream_version": event.stream_version,
        "type": event.type,
        "data": event.data,
        "metadata": event.metadata,
        "event_id": str(event.event_id),
        "recorded_at": event.recorded_at.isoformat(),
    }


@dataclass(frozen=True, slots=True)
class AppendResult:
    """What :meth:`EventStore.append` wrote (or had written, for a retried request)."""

    stream_id: str
    stream_version: int
    """Version of the last appended event."""
    global_position: int
    """Global position of the last appended event."""
    already_stored: bool = False
    """True when every event id was already stored: nothing new was written."""
