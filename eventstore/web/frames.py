"""The SSE message of an event, encoded once for every stream of an app (:mod:`eventstore.web.sse`).

The messages are byte for byte those of sse-starlette's ``ServerSentEvent``,
which :mod:`eventstore.web.sse` used before (``tests/web/test_sse.py``
compares them).
"""

from __future__ import annotations

import json
import re
from collections import OrderedDict

from eventstore.types import RecordedEvent, event_record

__all__ = ["Frames", "encode_event"]

_LINE_BREAK = re.compile(r"\r\n|\r|\n")


def encode_event(event: RecordedEvent) -> bytes:
    """The SSE message of ``event``: ``id``, ``event`` and ``data`` lines (CRLF), then an empty line, in UTF-8.

    ``data`` is :func:`eventstore.types.event_record` as compact JSON (the
    fields of ``eventstore read --json``), on one line: JSON escapes line
    breaks inside strings, and a line break anywhere else would still be split
    into ``data:`` lines as the SSE format requires.
    """
    data = json.dumps(event_record(event), ensure_ascii=False, separators=(",", ":"))
    event_type = event.type
    if "\r" in event_type or "\n" in event_type:  # cannot be stored (no control characters); kept as sse-starlette did
        event_type = _LINE_BREAK.sub("", event_type)
    if "\r" in data or "\n" in data:
        lines = "".join(f"data: {chunk}\r\n" for chunk in _LINE_BREAK.split(data))
    else:
        lines = f"data: {data}\r\n"
    return f"id: {event.global_position}\r\nevent: {event_type}\r\n{lines}\r\n".encode()


class Frames:
    """The encoded messages of recent events, shared by every stream of an app: each event is encoded once.

    Keyed by ``global_position``: a stored event never changes (the table
    forbids ``UPDATE`` and ``DELETE``) and a position is never reused, so two
    streams that send the same position send the same bytes. Holds the latest
    ``size`` events and at most ``max_bytes`` of messages (oldest out first;
    a message larger than that is encoded for each stream and never held),
    which covers the live feed and streams catching up together.
    """

    def __init__(self, size: int = 4096, max_bytes: int = 16 * 1024 * 1024) -> None:
        self.size = size
        self.max_bytes = max_bytes
        self.encoded = 0
        """How many messages were encoded (tests compare it with the messages sent)."""
        self.held_bytes = 0
        self._frames: OrderedDict[int, bytes] = OrderedDict()

    def join(self, events: list[RecordedEvent]) -> bytes:
        """The messages of ``events``, in order, as one chunk of bytes."""
        frames = self._frames
        if len(events) == 1:
            return frames.get(events[0].global_position) or self._encode(events[0])
        return b"".join(frames.get(event.global_position) or self._encode(event) for event in events)

    def _encode(self, event: RecordedEvent) -> bytes:
        frame = encode_event(event)
        self.encoded += 1
        if len(frame) > self.max_bytes:
            return frame
        frames = self._frames
        frames[event.global_position] = frame
        self.held_bytes += len(frame)
        while len(frames) > self.size or self.held_bytes > self.max_bytes:
            self.held_bytes -= len(frames.popitem(last=False)[1])
        return frame
