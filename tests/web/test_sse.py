"""``GET /api/events`` (server-sent events) against a real uvicorn and PostgreSQL: messages, resume, heartbeats.

The encoding tests need no server: the shared, pre-framed messages against the per-client ones they replaced.
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from datetime import datetime, timedelta, timezone
from typing import TYPE_CHECKING, Any

import httpx
import pytest
from sse_starlette import ServerSentEvent
from sse_starlette.sse import AppStatus
from typer.testing import CliRunner

from eventstore import EventStore, NewEvent
from eventstore.cli import app as cli_app
from eventstore.types import event_record
from eventstore.web.frames import Frames, encode_event
from eventstore.web.sse import EventStream, _Streams

if TYPE_CHECKING:
    from tests.web.conftest import WebServer

TIMEOUT = httpx.Timeout(10.0)  # a read that waits longer than this fails the test instead of hanging it


@contextmanager
def open_events(web: WebServer, query: str = "", **headers: str) -> Iterator[Iterator[dict[str, Any]]]:
    """The stream's messages as dicts ({"comment": ...} or {"id", "event", "data"}), parsed from the raw lines."""
    with httpx.stream("GET", f"{web.base_url}/api/events{query}", headers=headers, timeout=TIMEOUT) as response:
        assert response.status_code == 200, response.read()
        assert response.headers["content-type"].startswith("text/event-stream")

        def messages() -> Iterator[dict[str, Any]]:
            message: dict[str, Any] = {}
            for line in response.iter_lines():
                if not line:
                    if message:
                        yield message
                    message = {}
                elif line.startswith(":"):
                    yield {"comment": line[1:].strip()}
                else:
                    field, _, value = line.partition(":")
                    message[field] = value[1:] if value.startswith(" ") else value

        yield messages()


def events(messages: Iterator[dict[str, Any]], count: int) -> list[dict[str, Any]]:
    """The next ``count`` event messages (heartbeat comments skipped)."""
    found: list[dict[str, Any]] = []
    for message in messages:
        if "comment" not in message:
            found.append(message)
            if len(found) == count:
                break
    return found


def append(web: WebServer, stream_id: str, event_type: str, **data: Any) -> int:
    response = httpx.post(f"{web.base_url}/api/streams/{stream_id}", json={"type": event_type, "data": data},
                          timeout=TIMEOUT)  # fmt: skip
    assert response.status_code == 201, response.text
    position: int = response.json()["global_position"]
    return position


def test_events_arrive_with_id_event_and_data_history_then_live(web: WebServer) -> None:
    first = append(web, "order-1", "OrderPlaced", amount=10)
    append(web, "invoice-1", "InvoiceSent")
    with open_events(web, "?after=0&category=order") as messages:
        [history] = events(messages, 1)
        assert history["id"] == str(first) and history["event"] == "OrderPlaced"
        record = json.loads(history["data"])
        assert record["stream_id"] == "order-1" and record["data"] == {"amount": 10}
        assert set(record) == {"global_position", "stream_id", "stream_version", "type", "data", "metadata",
                               "event_id", "recorded_at"}  # fmt: skip
        append(web, "invoice-2", "InvoiceSent")  # filtered out
        live = append(web, "order-2", "OrderPlaced", amount=20)
        [pushed] = events(messages, 1)
        assert pushed["id"] == str(live) and json.loads(pushed["data"])["data"] == {"amount": 20}


def test_a_reconnect_with_last_event_id_resumes_without_gap_or_duplicate(web: WebServer) -> None:
    positions = [append(web, f"order-{n}", "OrderPlaced", n=n) for n in range(3)]
    with open_events(web, "?after=0") as messages:
        received = events(messages, 2)
    assert [int(message["id"]) for message in received] == positions[:2]
    positions += [append(web, f"order-{n}", "OrderPlaced", n=n) for n in range(3, 5)]
    # A browser reconnects with the URL it had (after=0) plus Last-Event-ID: the header wins.
    with open_events(web, "?after=0", **{"Last-Event-ID": received[-1]["id"]}) as messages:
        received += events(messages, 3)
        positions.append(append(web, "order-5", "OrderPlaced", n=5))
        received += events(messages, 1)
    assert [int(message["id"]) for message in received] == positions
    assert [json.loads(message["data"])["data"]["n"] for message in received] == list(range(6))


def test_an_idle_stream_gets_heartbeat_comments(serve_web: Callable[..., WebServer]) -> None:
    web = serve_web(heartbeat_seconds=0.2)
    with open_events(web) as messages:  # from the head: nothing to send
        assert next(messages) == {"comment": "ping"}
        assert next(messages) == {"comment": "ping"}


def test_bad_parameters_are_422_before_the_stream_starts(web: WebServer) -> None:
    for query, headers, words in [
        ("?after=12345", {}, "query parameter after: no event is stored at position 12345"),
        ("?after=0", {"Last-Event-ID": "777"}, "header Last-Event-ID: no event is stored at position 777"),
        ("?after=-1", {}, "after"),
        ("", {"Last-Event-ID": "abc"}, "Last-Event-ID"),
    ]:
        response = httpx.get(f"{web.base_url}/api/events{query}", headers=headers, timeout=TIMEOUT)
        assert response.status_code == 422, response.text
        assert words in response.json()["error"]


# -- the shared, pre-framed encoding ----------------------------------------------------------


def recorded(position: int, event_type: str, data: dict[str, Any], metadata: dict[str, Any] | None = None) -> Any:
    from eventstore.types import RecordedEvent

    return RecordedEvent(
        event_id=uuid.UUID(int=position),
        stream_id=f"order-{position}",
        stream_version=position,
        type=event_type,
        data=data,
        metadata=metadata or {},
        global_position=position,
        recorded_at=datetime(2026, 12, 2, 3, 4, 5, 678901, tzinfo=timezone(timedelta(hours=1))),
    )


SAMPLES = [
    recorded(1, "OrderPlaced", {"amount": 10}),
    recorded(2, "Ümlaut·Typ", {"text": "line 1\nline 2\r\nline 3\rend", "quote": '"', "emoji": "🙂"}),
    recorded(3, "Separators", {"u2028": "a\u2028b\u2029c", "nested": {"list": [1, 2.5, None, True]}}, {"by": "ü"}),
    recorded(2**62, "Big", {}),
]


@pytest.mark.parametrize("event", SAMPLES, ids=lambda event: event.type)
def test_the_shared_encoding_is_byte_identical_to_the_per_client_one_it_replaced(event: Any) -> None:
    # What eventstore/web/sse.py sent per client before (sse-starlette's message of the JSON record).
    before = ServerSentEvent(
        json.dumps(event_record(event), ensure_ascii=False, separators=(",", ":")),
        event=event.type,
        id=str(event.global_position),
    ).encode()
    assert encode_event(event) == before
    frames = Frames(size=2)
    assert frames.join([event]) == before
    assert frames.join(SAMPLES) == b"".join(encode_event(sample) for sample in SAMPLES)


def test_frames_encode_each_position_once_and_hold_a_bounded_number_and_size() -> None:
    frames = Frames(size=3)
    for _ in range(5):
        frames.join(SAMPLES[:3])
    assert frames.encoded == 3
    frames.join(SAMPLES[3:])  # the oldest goes out
    frames.join(SAMPLES[:1])
    assert frames.encoded == 5
    sizes = [len(encode_event(event)) for event in SAMPLES]
    frames = Frames(max_bytes=sizes[0] + sizes[1])
    frames.join(SAMPLES[:3])  # the third pushes the first two out (bytes, not count)
    assert frames.held_bytes == sizes[2] <= frames.max_bytes
    big = recorded(5, "Big", {"blob": "x" * 1_000})
    frames = Frames(max_bytes=500)
    assert frames.join([big, big]) == encode_event(big) * 2
    assert (frames.encoded, frames.held_bytes) == (2, 0)  # too large to hold: encoded each time


def test_data_is_what_eventstore_read_json_prints(web: WebServer, database_url: str) -> None:
    append(web, "order-9", "OrderPlaced", amount=10, text="zwei\nZeilen", name="Ünal")
    append(web, "order-9", "OrderPaid", amount=10.5, paid=True, note=None)
    printed = CliRunner().invoke(cli_app, ["--url", database_url, "read", "order-9", "--json"])
    assert printed.exit_code == 0, printed.output
    with open_events(web, "?after=0") as messages:
        received = events(messages, 2)
    assert [json.loads(message["data"]) for message in received] == json.loads(printed.stdout)


def app_state(web: WebServer) -> Any:
    """The state of the app under test (``create_app``'s Starlette app)."""
    assert web.server is not None
    app: Any = web.server.config.app
    return app.state


def test_one_event_is_encoded_once_for_every_connected_client(web: WebServer) -> None:
    positions = [append(web, "order-1", "OrderPlaced", n=n) for n in range(3)]
    with ExitStack() as stack:
        clients = [stack.enter_context(open_events(web, "?after=0")) for _ in range(5)]
        for messages in clients:  # history: the clients catch up on their own, sharing the encoded messages
            assert [int(message["id"]) for message in events(messages, 3)] == positions
        positions.append(append(web, "order-1", "OrderPlaced", n=3))
        for messages in clients:  # live: one shared read, one encoding
            assert [int(message["id"]) for message in events(messages, 1)] == positions[3:]
    assert app_state(web).event_streams.frames.encoded == 4


def test_several_pending_events_arrive_complete_and_in_order(web: WebServer, store: EventStore) -> None:
    for first in range(0, 1_200, 100):  # more than one write's worth (MAX_EVENTS_PER_WRITE)
        store.append(f"order-{first}", [NewEvent("OrderPlaced", {"n": n}) for n in range(first, first + 100)])
    positions = [event.global_position for event in store.read_all()]
    with open_events(web, "?after=0") as messages:
        received = events(messages, 1_200)
    assert [int(message["id"]) for message in received] == positions
    assert [json.loads(message["data"])["data"]["n"] for message in received] == list(range(1_200))


def test_a_client_that_goes_away_releases_its_subscription(web: WebServer) -> None:
    state = app_state(web)
    with open_events(web) as messages:
        append(web, "order-1", "OrderPlaced")
        assert len(events(messages, 1)) == 1
        hub = state.store._subscriptions
        assert len(hub.subscriptions) == 1
    wait_until(lambda: not hub.subscriptions and state.event_streams.open == 0, "the subscription to end")
    assert hub.live == set()


def test_head_answers_the_headers_without_a_stream(web: WebServer) -> None:
    response = httpx.head(f"{web.base_url}/api/events", timeout=TIMEOUT)
    assert response.status_code == 200
    assert response.headers["content-type"] == "text/event-stream; charset=utf-8"
    assert response.headers["cache-control"] == "no-store"
    assert response.headers["x-accel-buffering"] == "no"
    wait_until(lambda: not app_state(web).store._subscriptions.subscriptions, "the subscription to end")


def test_a_busy_stream_still_gets_its_heartbeats(serve_web: Callable[..., WebServer]) -> None:
    web = serve_web(heartbeat_seconds=0.2)
    with open_events(web) as messages:
        comments = 0
        for message in messages:
            if "comment" in message:
                comments += 1
                if comments == 3:
                    break
            append(web, "order-1", "OrderPlaced")  # an event per message: the stream is never idle
        assert comments == 3


def wait_until(condition: Callable[[], bool], what: str, timeout: float = 10.0) -> None:
    """Wait on a condition of the server's state, read from the test's thread (plain attributes)."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.01)


def test_the_server_shutting_down_ends_the_stream_and_its_subscription(web: WebServer) -> None:
    # uvicorn waits for open responses before it stops; sse-starlette's AppStatus says it is stopping.
    state = app_state(web)
    with open_events(web) as messages:
        append(web, "order-1", "OrderPlaced")
        assert len(events(messages, 1)) == 1
        AppStatus.should_exit = True
        try:
            assert list(messages) == []  # the stream ends (no more messages), instead of waiting forever
        finally:
            AppStatus.should_exit = False
    wait_until(lambda: not state.store._subscriptions.subscriptions, "the subscription to end")


class FakeFeed:
    """Stands in for a Subscription: ``next_batch`` gives ``batches`` in turn, then raises ``error`` or waits."""

    streaming = False  # never live: the stream's own task writes everything
    buffered = 0

    def __init__(self, batches: list[list[Any]], error: BaseException | None = None) -> None:
        self.batches = batches
        self.error = error
        self.left = False

    def set_ready_callback(self, callback: Any) -> None:
        pass

    async def next_batch(self, limit: int, *, until_live: bool = False) -> list[Any]:
        if self.batches:
            return self.batches.pop(0)
        if self.error is not None:
            raise self.error
        await asyncio.Event().wait()
        raise AssertionError("unreachable")

    def interrupt(self) -> None:
        pass

    async def __aexit__(self, *exc_info: object) -> None:
        self.left = True


def run_stream(feed: FakeFeed, *, cancel_after_sends: int | None = None) -> tuple[list[Any], BaseException | None]:
    """Run an EventStream on ``feed`` with a client that never leaves; (messages sent, what it raised)."""
    sent: list[Any] = []

    async def main() -> None:
        task: asyncio.Task[None] | None = None

        async def receive() -> dict[str, Any]:
            await asyncio.Event().wait()
            return {}

        async def send(message: dict[str, Any]) -> None:
            sent.append(message)
            if cancel_after_sends is not None and len(sent) == cancel_after_sends and task is not None:
                task.cancel()  # as uvicorn does when its graceful shutdown times out

        stream = EventStream(feed, streams=_Streams(), heartbeat_seconds=60)  # type: ignore[arg-type]
        task = asyncio.create_task(stream({"type": "http", "method": "GET"}, receive, send))  # type: ignore[arg-type]
        await task

    try:
        asyncio.run(main())
    except BaseException as error:  # returned to the test, whatever it is
        return sent, error
    return sent, None


def test_a_failed_subscription_ends_the_response_with_its_error_and_is_left() -> None:
    feed = FakeFeed([[SAMPLES[0]]], error=RuntimeError("the shared read failed"))
    sent, raised = run_stream(feed)
    assert isinstance(raised, RuntimeError) and "shared read failed" in str(raised)
    assert [message.get("body") for message in sent[1:]] == [encode_event(SAMPLES[0])]
    assert feed.left


def test_a_cancelled_response_leaves_its_subscription() -> None:
    feed = FakeFeed([[SAMPLES[0]], SAMPLES[1:3]])
    sent, raised = run_stream(feed, cancel_after_sends=3)
    assert isinstance(raised, asyncio.CancelledError)
    assert sent[2]["body"] == encode_event(SAMPLES[1]) + encode_event(SAMPLES[2])  # two ready events, one write
    assert feed.left
