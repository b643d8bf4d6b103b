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
and the whole SSE message as bytes (:class:`eventstore.web.frames.Frames`,
shared by every stream of the app), and each stream hands those bytes to the server in one ASGI
``send``, several pending events joined into one.

A live stream whose client keeps up is written to by the fan-out itself, not
by a task of its own (:class:`_Streams`, "direct" mode): waking one task per
client and event cost about a fifth of the server's CPU at 1,000 clients.
When the hub has buffered a batch for the live subscriptions, one callback
of the event loop writes each direct stream's events by driving its ``send``
coroutine eagerly: an ASGI server's ``send`` of a body chunk writes to the
transport and returns without suspending unless the transport is paused
(the client does not read). If it suspends, the rest of that write is handed
to the stream's own writer task, which finishes it (awaiting what it waits
for), and the stream stays out of direct mode (the subscription's buffer,
bounded, then the catch-up from the database) until it has caught up again.
So only one write is ever in flight per stream, in order; a slow client
holds up no one else. The direct write runs outside the request's task (in
the hub's context): an ASGI middleware whose ``send`` needs its own task or
context variables would not see them there.

The stream's writer task (the only other writer) sends what the direct
path does not: history, catch-up, heartbeats of a stream not in direct mode,
and a handed-over write. The request's own task waits for the first of: the
writer ending, the client going away (``http.disconnect``), the server
shutting down; then it ends the others and leaves the subscription.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Generator
from typing import Any, Literal

from sse_starlette.sse import AppStatus
from starlette.requests import Request
from starlette.types import Message, Receive, Scope, Send

from eventstore.errors import UnknownPosition
from eventstore.store import AsyncEventStore
from eventstore.store.subscription import Subscription
from eventstore.web import params
from eventstore.web.errors import RequestError
from eventstore.web.frames import Frames, encode_event

__all__ = ["EventStream", "Frames", "encode_event", "stream_events"]  # Frames, encode_event: their old home

logger = logging.getLogger(__name__)

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
SERVER_SEND = "eventstore.server_send"
"""The scope key under which the app (:mod:`eventstore.web.app`) may put the ``send`` it was called with:
the stream then writes its body chunks with that one, past Starlette's own wrappers, which only watch
for the response's start (sent through them as usual)."""
_SHUTDOWN_POLL_SECONDS = 0.5


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
    """What the event streams of one app share: the encoded messages, the fan-out's writes, the shutdown.

    The streams in direct mode queue themselves here when their subscription
    has events (:meth:`queue`); one event-loop callback (:meth:`_flush`) then
    writes each of them, in the order the hub offered the events.

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
        self.direct_writes = 0
        """Writes done by the fan-out itself (tests check that the direct path is taken)."""
        self.handed_over = 0
        """Direct writes that suspended (a paused transport) and were finished by their stream's own task."""
        self.direct = 0
        """Streams in direct mode now."""
        self._watcher: asyncio.Task[None] | None = None
        self._queued: list[EventStream] = []
        self._flush_scheduled = False

    def queue(self, stream: EventStream) -> None:
        """Have ``stream`` written at the next :meth:`_flush` (one loop callback for every stream of a batch).

        Called from a direct stream's ready callback (so in the hub's task),
        at most once per stream and flush; the flush runs once the hub's task
        waits (for its next read), so the events of one read go out in one
        write per stream.
        """
        self._queued.append(stream)
        if not self._flush_scheduled:
            self._flush_scheduled = True
            asyncio.get_running_loop().call_soon(self._flush)

    def _flush(self) -> None:
        self._flush_scheduled = False
        queued, self._queued = self._queued, []
        for stream in queued:
            stream.deliver()

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
        self.direct = False
        """True while the fan-out writes this stream's events (:class:`_Streams`); the writer task then waits."""
        self._send: Send | None = None
        self._queued = False
        self._wake = asyncio.Event()
        self._handed_over: tuple[Generator[Any, None, None], Any] | None = None
        self._error: BaseException | None = None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await send({"type": "http.response.start", "status": 200, "headers": _HEADERS})
            if scope.get("method") != "HEAD":
                await self._stream(receive, scope.get(SERVER_SEND, send))
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
            self._stop_direct()  # no write from the fan-out once the response is ending
            streams.closed()
            for task in tasks:
                task.cancel()
            outcomes = await asyncio.gather(*tasks, return_exceptions=True)
        for outcome in outcomes:  # the writer's own error (a failed subscription) ends the response with it
            if isinstance(outcome, BaseException) and not isinstance(outcome, asyncio.CancelledError):
                raise outcome
        if self._handed_over is not None:  # never resumed (the writer was cancelled first)
            self._handed_over[0].close()  # runs the write's own clean-up (finally blocks)
            self._handed_over = None

    async def _write(self, send: Send) -> None:
        """Write events as they come, a heartbeat when one is due; in direct mode, wait while the fan-out writes."""
        loop = asyncio.get_running_loop()
        feed = self.feed
        self._send = send
        due = False
        timer: asyncio.TimerHandle

        def tick() -> None:
            nonlocal due, timer
            timer = loop.call_later(self.heartbeat_seconds, tick)
            if self.direct:
                self._write_now(HEARTBEAT)
            else:
                due = True
                feed.interrupt()

        timer = loop.call_later(self.heartbeat_seconds, tick)
        try:
            while True:
                await self._take_over()
                if due:
                    due = False
                    await send({"type": "http.response.body", "body": HEARTBEAT, "more_body": True})
                if feed.streaming and not feed.buffered:
                    # Everything so far is written and the next events come from the hub's fan-out:
                    # from now on, the fan-out writes them (no await between the test and this).
                    self.direct = True
                    self.streams.direct += 1
                    feed.set_ready_callback(self._ready)
                    await self._wake.wait()
                    self._wake.clear()
                    continue
                try:
                    # until_live: back here as soon as the subscription has joined the live fan-out with
                    # nothing buffered, so that a new, idle stream goes direct at once (not at its
                    # first event or heartbeat).
                    events = await feed.next_batch(MAX_EVENTS_PER_WRITE, until_live=True)
                except StopAsyncIteration:
                    return  # the store was closed
                if events:
                    body = self.frames.join(events)
                    self.sent += len(events)
                    await send({"type": "http.response.body", "body": body, "more_body": True})
        finally:
            timer.cancel()

    async def _take_over(self) -> None:
        """Finish the direct write that was handed over (if any); raise the error a direct write met (if any)."""
        handed_over = self._handed_over
        if handed_over is not None:
            try:
                await _finish(*handed_over)
            finally:
                self._handed_over = None
        if self._error is not None:
            raise self._error

    # -- direct mode: called by the event loop, not in this stream's task ------------

    def _ready(self) -> None:
        """The subscription's ready callback: an event is buffered (or it failed, or the store closed)."""
        if not self._queued:
            self._queued = True
            self.streams.queue(self)

    def deliver(self) -> None:
        """Write what the subscription has buffered; leave direct mode when the writer task must act."""
        self._queued = False
        if not self.direct:
            return  # the writer task takes the buffer itself
        feed = self.feed
        try:
            events = feed.take(MAX_EVENTS_PER_WRITE)
            if events:
                self.sent += len(events)
                self._write_now(self.frames.join(events))
        except Exception as error:  # a bug, not the client: end this response with it, not the others' writes
            self._error = error
            self._stop_direct()
            return
        if self.direct and (feed.buffered or not feed.streaming):
            self._stop_direct()  # more than one write's worth, a catch-up, a failure or the end: the task's job

    def _write_now(self, body: bytes) -> None:
        """Write ``body`` now by driving ``send`` eagerly; if it suspends, hand the rest to the writer task."""
        assert self._send is not None
        self.streams.direct_writes += 1
        # Any awaitable's __await__() is an iterator that yields what its task would wait for.
        writing = self._send({"type": "http.response.body", "body": body, "more_body": True}).__await__()
        try:
            waiting_for = writing.send(None)
        except StopIteration:
            return  # written, as on every write while the client keeps up
        except Exception as error:
            self._error = error
            self._stop_direct()
            return
        # A paused transport (the client does not read): the writer task finishes this write, then
        # the stream leaves direct mode until its buffer is written and it is live again.
        self.streams.handed_over += 1
        self._handed_over = (writing, waiting_for)
        self._stop_direct()

    def _stop_direct(self) -> None:
        """Leave direct mode and wake the writer task (which sends everything from here on, in order)."""
        if self.direct:
            self.direct = False
            self.streams.direct -= 1
            self.feed.set_ready_callback(None)
            self._wake.set()


async def _finish(coroutine: Generator[Any, None, None], waiting_for: Any) -> None:
    """Run ``coroutine``, which was started by hand and suspended on ``waiting_for``, to its end.

    As an asyncio task would (what Python 3.12's eager tasks do): a coroutine
    suspends on a future (or on a bare ``yield``, to let others run); await
    it, then resume the coroutine with ``send(None)`` or, if the wait raised
    (this task was cancelled), ``throw``.
    """
    while True:
        try:
            if waiting_for is None:
                await asyncio.sleep(0)
            else:
                # The coroutine's yield marked the future as awaited (asyncio's protocol); a task clears
                # the mark when it takes the future over, and so must this one before awaiting it again.
                if getattr(waiting_for, "_asyncio_future_blocking", False):
                    waiting_for._asyncio_future_blocking = False
                await waiting_for
        except BaseException as error:  # cancelled: let the coroutine clean up, as a task would
            try:
                waiting_for = coroutine.throw(error)
            except StopIteration:
                return
            continue
        try:
            waiting_for = coroutine.send(None)
        except StopIteration:
            return


async def _disconnected(receive: Receive) -> None:
    """Return when the client has gone away."""
    message: Message = {}
    while message.get("type") != "http.disconnect":
        message = await receive()
