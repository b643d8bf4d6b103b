"""``GET /api/events``: the events live, as server-sent events, on :meth:`AsyncEventStore.subscribe`.

Each message is ``id: <global_position>``, ``event: <event type>`` and
``data: <the event as eventstore read --json prints it>``. A browser's
``EventSource`` reconnects by itself and sends the last ``id`` it got as
``Last-Event-ID``; the stream then resumes exactly after that event (it wins
over ``after``), and because the subscription follows the store's global
order (the gap rule), nothing is skipped or repeated across the reconnect.

An idle stream sends a ``: ping`` comment every ``heartbeat_seconds`` so that
proxies and load balancers keep it open. The subscription is entered before
the response starts, so a bad ``after`` is a 422 with a JSON error, not a
broken stream.

Why this module writes its own streaming response: one event goes out to
every connected client, one after another on one event loop, so whatever a
message costs is paid once per client. Here an event is encoded once, JSON
and the whole SSE message as bytes (:class:`Frames`, shared by every stream of
the app), and each stream hands those bytes to the server in one ASGI
``send``, several pending events joined into one. One task of a stream
writes (events and heartbeats, so only one task ever sends); the request's
own task waits for the first of: the writer ending, the client going away
(``http.disconnect``), the server shutting down; then it ends the others and
leaves the subscription.
The messages are byte for byte those of sse-starlette's ``ServerSentEvent``,
which this module used before (``tests/web/test_sse.py`` compares them).
"""

from __future__ import annotations

import asyncio
import json
import re
from collections import OrderedDict
from typing import Literal

from sse_starlette.sse import AppStatus
from starlette.requests import Request
from starlette.types import Message, Receive, Scope, Send

from eventstore.errors import UnknownPosition
from eventstore.store import AsyncEventStore
from eventstore.store.subscription import Subscription
from eventstore.types import RecordedEvent, event_record
from eventstore.web import params
from eventstore.web.errors import RequestError

__all__ = ["EventStream", "Frames", "encode_event", "stream_events"]

HEARTBEAT = b": ping\r\n\r\n"
"""The keepalive comment (EventSource ignores it), without a timestamp of the server's clock."""

MAX_EVENTS_PER_WRITE = 500
"""Pending events joined into one write at most (a stream that catches up sends batches of this size)."""

_HEADERS = [
    (b"content-type", b"text/event-stream; charset=utf-8"),
    (b"cache-control", b"no-store"),
    (b"connection", b"keep-alive"),
    (b"x-accel-buffering", b"no"),  # nginx: do not buffer the stream
]
_LINE_BREAK = re.compile(r"\r\n|\r|\n")
_SHUTDOWN_POLL_SECONDS = 0.5


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


async def stream_events(request: Request) -> EventStream:
    """``GET /api/events[?after=P|head][&category=C][&type=T][&stream=S]``: history after P, then live, forever.

    Filters repeat (``?category=order&category=invoice``) and combine with
    AND across kinds. Without ``after`` or ``Last-Event-ID`` the stream starts
    at the head (only new events, as ``eventstore tail``); ``after=0`` starts
    at the first event.
    """
    query = request.query_params
    after: int | Literal["head"] | None
    resumed = params.last_event_id(request.headers.get("last-event-id"))
    if resumed is not None:
        after = resumed
    elif query.get("after", "head") == "head":
        after = "head"
    else:
        after = params.integer(query, "after")
    store: AsyncEventStore = request.app.state.store
    feed = store.subscribe(
        after=after,
        categories=query.getlist("category") or None,
        event_types=query.getlist("type") or None,
        stream_ids=query.getlist("stream") or None,
    )
    try:
        await feed.__aenter__()  # here, so that an unknown position is a 422 before any byte is sent
    except UnknownPosition as error:
        given = "header Last-Event-ID" if resumed is not None else "query parameter after"
        raise RequestError(
            422,
            f"{given}: no event is stored at position {error.position}; pass the id of an event this stream sent, "
            "after=0 for the first event, or no after for only new events",
        ) from error
    return EventStream(feed, streams=_streams_of(request), heartbeat_seconds=request.app.state.heartbeat_seconds)


class _Streams:
    """What the event streams of one app share: the encoded messages, and whether the server is shutting down.

    One task per app (not per stream) polls sse-starlette's
    ``AppStatus.should_exit`` every half second while streams are open:
    uvicorn waits for open responses before it stops, and an event stream
    never ends by itself. sse-starlette sets the flag on uvicorn's SIGINT and
    SIGTERM (it wraps ``Server.handle_exit`` when imported, as this module
    imports it); like sse-starlette's own streams, streams opened after that
    end at once.
    """

    def __init__(self) -> None:
        self.frames = Frames()
        self.shutdown = asyncio.Event()
        self.open = 0
        self._watcher: asyncio.Task[None] | None = None

    def opened(self) -> None:
        self.open += 1
        if self._watcher is None:
            self._watcher = asyncio.get_running_loop().create_task(self._watch(), name="eventstore-sse-shutdown")

    def closed(self) -> None:
        self.open -= 1

    async def _watch(self) -> None:
        try:
            while self.open > 0:
                if AppStatus.should_exit:
                    self.shutdown.set()
                    return
                await asyncio.sleep(_SHUTDOWN_POLL_SECONDS)
        finally:
            self._watcher = None


def _streams_of(request: Request) -> _Streams:
    """The app's shared :class:`_Streams` (made on its first event stream)."""
    state = request.app.state
    streams: _Streams | None = getattr(state, "event_streams", None)
    if streams is None:
        streams = state.event_streams = _Streams()
    return streams


class EventStream:
    """The ASGI response of ``GET /api/events``: an entered subscription, streamed until the client leaves.

    It ends when the client disconnects, when the server shuts down (see
    :class:`_Streams`), or when the store is closed; in every case the
    subscription is left before the response returns. A ``HEAD`` request gets
    the headers and no stream. A client that reads too slowly holds up only
    its own stream: the server stops taking its messages (uvicorn's flow
    control), its subscription's bounded buffer overflows, and it catches up
    from the database once it reads again.
    """

    def __init__(self, feed: Subscription, *, streams: _Streams, heartbeat_seconds: float) -> None:
        self.feed = feed
        self.streams = streams
        self.frames = streams.frames
        self.heartbeat_seconds = heartbeat_seconds
        self.sent = 0
        """Events written so far."""

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await send({"type": "http.response.start", "status": 200, "headers": _HEADERS})
            if scope.get("method") != "HEAD":
                await self._stream(receive, send)
            await send({"type": "http.response.body", "body": b"", "more_body": False})
        finally:
            await self.feed.__aexit__(None, None, None)

    async def _stream(self, receive: Receive, send: Send) -> None:
        streams = self.streams
        streams.opened()
        tasks = (
            asyncio.create_task(self._write(send)),
            asyncio.create_task(_disconnected(receive)),
            asyncio.create_task(streams.shutdown.wait()),
        )
        try:
            await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
        finally:
            streams.closed()
            for task in tasks:
                task.cancel()
            outcomes = await asyncio.gather(*tasks, return_exceptions=True)
        for outcome in outcomes:  # the writer's own error (a failed subscription) ends the response with it
            if isinstance(outcome, BaseException) and not isinstance(outcome, asyncio.CancelledError):
                raise outcome

    async def _write(self, send: Send) -> None:
        """Write events as they come, a heartbeat when one is due; the only task that sends."""
        loop = asyncio.get_running_loop()
        feed = self.feed
        due = False
        timer: asyncio.TimerHandle

        def tick() -> None:
            nonlocal due, timer
            due = True
            feed.interrupt()
            timer = loop.call_later(self.heartbeat_seconds, tick)

        timer = loop.call_later(self.heartbeat_seconds, tick)
        try:
            while True:
                try:
                    events = await feed.next_batch(MAX_EVENTS_PER_WRITE)
                except StopAsyncIteration:
                    return  # the store was closed
                if events:
                    body = self.frames.join(events)
                    self.sent += len(events)
                    await send({"type": "http.response.body", "body": body, "more_body": True})
                if due:
                    due = False
                    await send({"type": "http.response.body", "body": HEARTBEAT, "more_body": True})
        finally:
            timer.cancel()


async def _disconnected(receive: Receive) -> None:
    """Return when the client has gone away."""
    message: Message = {}
    while message.get("type") != "http.disconnect":
        message = await receive()
