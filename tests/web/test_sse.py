"""``GET /api/events`` (server-sent events) against a real uvicorn and PostgreSQL: messages, resume, heartbeats."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

import httpx

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
