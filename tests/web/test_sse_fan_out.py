"""The fan-out writing to live SSE clients itself ("direct" mode), against a real uvicorn and PostgreSQL.

A client that keeps up is written to by the event loop's fan-out callback, without a task wake-up of its
own; one that stops reading (its socket's buffers full, uvicorn's transport paused) has its write handed
to its stream's task and falls back to the bounded buffer and the catch-up. These tests stall a real
client (a raw socket with a small receive buffer that is not read) and check what the others get, what it
gets once it reads again, and what a disconnect in the middle leaves behind.
"""

from __future__ import annotations

import importlib.util
import socket
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

import pytest

from eventstore import EventStore, NewEvent

if TYPE_CHECKING:
    from tests.web.conftest import WebServer


@pytest.fixture(
    params=[
        "asyncio",
        pytest.param(
            "uvloop",
            marks=pytest.mark.skipif(importlib.util.find_spec("uvloop") is None, reason="uvloop is not installed"),
        ),
    ]
)
def web(request: pytest.FixtureRequest, serve_web: Callable[..., WebServer]) -> WebServer:
    """The server on asyncio's event loop and on uvloop's (what `eventstore serve` runs where it is installed)."""
    return serve_web(event_loop=request.param)


BIG = "x" * 200_000  # a payload far below max_event_bytes; 40 of them outgrow loopback's socket buffers


class RawClient:
    """``GET /api/events`` on a plain socket: the test decides when (and whether) it reads."""

    def __init__(self, web: WebServer, *, receive_buffer: int | None = None) -> None:
        address = urlsplit(web.base_url)
        self.socket = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        if receive_buffer is not None:  # before connect: the window the server may fill
            self.socket.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, receive_buffer)
        assert address.hostname is not None and address.port is not None
        self.socket.connect((address.hostname, address.port))
        self.socket.sendall(f"GET /api/events HTTP/1.1\r\nHost: {address.netloc}\r\n\r\n".encode())
        self.pending = b""
        self.headers_read = False

    def ids(self, count: int, timeout: float = 30.0) -> list[int]:
        """The ``id`` of the next ``count`` messages (chunk-size lines and heartbeats skipped)."""
        found: list[int] = []
        deadline = time.monotonic() + timeout
        while len(found) < count:
            left = deadline - time.monotonic()
            assert left > 0, f"timed out after {timeout} s with {len(found)} of {count} messages"
            self.socket.settimeout(left)
            data = self.socket.recv(1 << 20)
            assert data, f"the server closed the stream after {len(found)} of {count} messages"
            *lines, self.pending = (self.pending + data).split(b"\r\n")
            for line in lines:
                if not self.headers_read:
                    self.headers_read = line == b""
                    continue
                if line.startswith(b"id: "):
                    found.append(int(line[4:]))
        assert len(found) == count, f"{len(found) - count} more messages than expected arrived in one read"
        return found

    def close(self) -> None:
        self.socket.close()


@contextmanager
def raw_client(web: WebServer, *, receive_buffer: int | None = None) -> Iterator[RawClient]:
    client = RawClient(web, receive_buffer=receive_buffer)
    try:
        yield client
    finally:
        client.close()


def wait_until(condition: Callable[[], bool], what: str, timeout: float = 20.0) -> None:
    """Wait on a condition of the server's state, read from the test's thread (plain attributes)."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.01)


def app_state(web: WebServer) -> Any:
    assert web.server is not None
    app: Any = web.server.config.app
    return app.state


def streams_of(web: WebServer) -> Any:
    """The app's shared ``_Streams`` (made by the first event stream)."""
    wait_until(lambda: getattr(app_state(web), "event_streams", None) is not None, "the first event stream")
    return app_state(web).event_streams


def append(store: EventStore, count: int, *, data: dict[str, Any] | None = None) -> list[int]:
    """``count`` events in one transaction; their positions."""
    stream_id = f"order-{time.monotonic_ns()}"
    store.append(stream_id, [NewEvent("OrderPlaced", data or {}) for _ in range(count)])
    return [event.global_position for event in store.read_stream(stream_id)]


def test_live_events_are_written_by_the_fan_out_not_by_a_task_per_client(web: WebServer, store: EventStore) -> None:
    clients = [RawClient(web) for _ in range(3)]
    try:
        streams = streams_of(web)
        # Idle new streams go direct as soon as they are live, not at their first heartbeat (15 s).
        wait_until(lambda: streams.direct == 3, "three streams in direct mode", timeout=5)
        before = streams.direct_writes
        positions = append(store, 1) + append(store, 2)
        for client in clients:
            assert client.ids(3) == positions
        assert streams.direct_writes - before >= 3  # at least one write per client, none by their tasks
        assert streams.handed_over == 0
    finally:
        for client in clients:
            client.close()


def test_a_client_that_does_not_read_delays_no_one_and_later_gets_every_event_in_order(
    web: WebServer, store: EventStore
) -> None:
    with raw_client(web, receive_buffer=4096) as slow, raw_client(web) as fast:
        streams = streams_of(web)
        hub = app_state(web).store._subscriptions
        wait_until(lambda: streams.direct == 2, "both streams in direct mode")
        # Direct writes until the slow client's socket buffers and then uvicorn's transport fill up...
        sent = [position for _ in range(8) for position in append(store, 5, data={"payload": BIG})]
        assert fast.ids(len(sent)) == sent
        # ... then its write is handed to its stream's task, and more than its bounded buffer arrives:
        # it is detached from the live fan-out (a catch-up from the database awaits it).
        more = append(store, 1_100)
        wait_until(lambda: streams.handed_over >= 1, "the slow client's write to be handed over")
        assert fast.ids(len(more)) == more
        sent += more
        wait_until(lambda: len(hub.live) == 1, "the slow client's subscription to overflow and leave the fan-out")
        # The fast client stays in direct mode throughout, and is not held up.
        last = append(store, 1)
        assert fast.ids(1) == last
        sent += last
        # The slow client reads at last: every event once, in order (direct, handed over, buffered, caught up).
        assert slow.ids(len(sent), timeout=60) == sent
        # It has caught up and is written by the fan-out again.
        wait_until(lambda: streams.direct == 2, "the slow client's stream to be back in direct mode")
        before = streams.direct_writes
        last = append(store, 1)
        assert fast.ids(1) == last
        assert slow.ids(1) == last
        assert streams.direct_writes - before == 2


def test_a_client_that_leaves_while_its_write_is_handed_over_is_cleaned_up(web: WebServer, store: EventStore) -> None:
    state = app_state(web)
    with raw_client(web) as fast:
        slow = RawClient(web, receive_buffer=4096)
        try:
            streams = streams_of(web)
            wait_until(lambda: streams.direct == 2, "both streams in direct mode")
            sent = [position for _ in range(8) for position in append(store, 5, data={"payload": BIG})]
            sent += append(store, 1)
            wait_until(lambda: streams.handed_over >= 1, "the slow client's write to be handed over")
            assert fast.ids(len(sent)) == sent
        finally:
            slow.close()  # gone in the middle of a write that waits for the transport to drain
        hub = state.store._subscriptions
        wait_until(lambda: len(hub.subscriptions) == 1 and streams.open == 1, "the slow client's stream to end")
        assert streams.direct == 1
        last = append(store, 1)
        assert fast.ids(1) == last


class SeesBodies:
    """ASGI middleware that keeps the response body chunks passing through it."""

    def __init__(self, app: Any, *, seen: list[bytes]) -> None:
        self.app = app
        self.seen = seen

    @property
    def state(self) -> Any:  # the app's, for streams_of()
        return self.app.state

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        async def seeing(message: Any) -> None:
            if message["type"] == "http.response.body" and message.get("body"):
                self.seen.append(message["body"])
            await send(message)

        await self.app(scope, receive, seeing)


def added(seen: list[bytes]) -> Callable[[Any], Any]:
    def prepare(app: Any) -> Any:
        app.add_middleware(SeesBodies, seen=seen)  # inside the app: between Starlette's own wrappers
        return app

    return prepare


def around(seen: list[bytes]) -> Callable[[Any], Any]:
    return lambda app: SeesBodies(app, seen=seen)


@pytest.mark.parametrize("placed", [added, around], ids=["added to the app", "around the app"])
def test_a_user_middleware_sees_every_message_the_fan_out_writes(
    placed: Callable[[list[bytes]], Callable[[Any], Any]], serve_web: Callable[..., WebServer], store: EventStore
) -> None:
    """The streams write past Starlette's own ``send`` wrappers, never past a user's (app.add_middleware or around)."""
    seen: list[bytes] = []
    web = serve_web(prepare=placed(seen))
    with raw_client(web) as client:
        streams = streams_of(web)
        wait_until(lambda: streams.direct == 1, "the stream in direct mode", timeout=5)
        before = streams.direct_writes
        positions = append(store, 2) + append(store, 1)
        assert client.ids(3) == positions
        assert streams.direct_writes > before
        written = b"".join(seen)
        assert [f"id: {position}\r\n".encode() in written for position in positions] == [True] * 3
