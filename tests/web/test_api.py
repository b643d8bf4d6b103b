"""The web API's JSON endpoints against a real uvicorn and PostgreSQL: append, read, wait, errors, the token."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import httpx
import pytest
import sqlalchemy as sa

from eventstore import EventStore, Projection, ProjectionRunner, handles
from eventstore.errors import ConfigurationError

if TYPE_CHECKING:
    from tests.web.conftest import WebServer


class Counter(Projection):
    name = "counter"

    @handles("Happened")
    def on_happened(self, event: Any, connection: Any) -> None:
        connection.execute(sa.text("SELECT 1"))


def post(web: WebServer, stream_id: str, body: Any, **options: Any) -> httpx.Response:
    return httpx.post(f"{web.base_url}/api/streams/{stream_id}", json=body, timeout=10, **options)


def get(web: WebServer, path: str, **options: Any) -> httpx.Response:
    return httpx.get(f"{web.base_url}{path}", timeout=10, **options)


def assert_error(response: httpx.Response, status: int, *words: str) -> str:
    assert response.status_code == status, response.text
    body = response.json()
    assert list(body) == ["error"]
    message: str = body["error"]
    assert "\n" not in message
    for word in words:
        assert word in message, message
    return message


def test_append_then_read_gives_the_read_json_shape(web: WebServer, store: EventStore) -> None:
    event_id = str(uuid.uuid4())
    first = post(web, "order-1", {"type": "OrderPlaced", "data": {"amount": 10}, "metadata": {"user": "ann"},
                                  "event_id": event_id, "expected_version": "no-stream"})  # fmt: skip
    assert first.status_code == 201, first.text
    assert first.json() == {"stream_id": "order-1", "stream_version": 1, "global_position": first.json()[
        "global_position"], "already_stored": False, "event_ids": [event_id]}  # fmt: skip
    batch = post(web, "order-1", {"expected_version": 1, "events": [
        {"type": "ItemAdded", "data": {"sku": "a"}}, {"type": "ItemAdded"}]})  # fmt: skip
    assert batch.status_code == 201, batch.text
    assert batch.json()["stream_version"] == 3

    response = get(web, "/api/streams/order-1")
    assert response.status_code == 200
    records = response.json()
    from eventstore.types import event_record

    assert records == [event_record(event) for event in store.read_stream("order-1")]
    assert [record["type"] for record in records] == ["OrderPlaced", "ItemAdded", "ItemAdded"]
    assert records[0]["event_id"] == event_id and records[0]["metadata"] == {"user": "ann"}
    assert records[2]["data"] == {}
    assert [r["stream_version"] for r in get(web, "/api/streams/order-1?backwards=true&limit=2").json()] == [3, 2]

    retried = post(web, "order-1", {"type": "OrderPlaced", "data": {"amount": 10}, "metadata": {"user": "ann"},
                                    "event_id": event_id})  # fmt: skip
    assert retried.status_code == 201 and retried.json()["already_stored"] is True


def test_conflicts_are_409_and_name_the_fix(web: WebServer) -> None:
    assert post(web, "order-2", {"type": "OrderPlaced"}).status_code == 201
    message = assert_error(post(web, "order-2", {"type": "OrderPlaced", "expected_version": 0}), 409,
                           "order-2", "version 1", '"expected_version": 1')  # fmt: skip
    assert "nothing was written" in message
    assert_error(post(web, "order-3", {"type": "X", "expected_version": "exists"}), 409, "order-3")

    event_id = str(uuid.uuid4())
    assert post(web, "order-4", {"type": "A", "event_id": event_id}).status_code == 201
    assert_error(post(web, "order-4", {"type": "B", "event_id": event_id}), 409, event_id)


@pytest.mark.parametrize(
    ("body", "words"),
    [
        (b"{not json", ("request body", "invalid JSON", "line 1, column 2")),
        (b"[1, 2]", ("request body", "expected a JSON object, got an array")),
        (b'{"data": {}}', ("type: missing",)),
        (b'{"type": "A", "colour": 1}', ("colour: unknown field",)),
        (b'{"type": "A", "expected_version": -1}', ("expected_version: -1",)),
        (b'{"type": "A", "expected_version": "sometimes"}', ('expected_version: "sometimes"',)),
        (b'{"type": "A", "data": [1]}', ("data",)),
        (b'{"type": "A", "event_id": "not-a-uuid"}', ("event_id",)),
        (b'{"type": ""}', ("type",)),
        (b'{"events": []}', ("events: expected a non-empty array",)),
        (b'{"events": [{"type": "A"}, {"type": "B", "data": "x"}]}', ("events[1].data",)),
    ],
)
def test_bad_bodies_are_422_naming_the_field(web: WebServer, body: bytes, words: tuple[str, ...]) -> None:
    response = httpx.post(f"{web.base_url}/api/streams/order-5", content=body, timeout=10,
                          headers={"Content-Type": "application/json"})  # fmt: skip
    message = assert_error(response, 422, *words)
    if words[0] in ("data", "type", "event_id"):
        assert not message.startswith("events[0]"), message  # the single-event form's own words
    assert get(web, "/api/streams/order-5").status_code == 404  # nothing was written


def test_unknown_stream_and_unknown_route_are_404_json(web: WebServer) -> None:
    assert_error(get(web, "/api/streams/order-404"), 404, "'order-404' has no events")
    assert_error(get(web, "/api/nothing-here"), 404)
    assert_error(get(web, "/api/streams/order-1?limit=-3"), 422, "limit")


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def test_the_app_mounts_under_a_prefix_of_another_app(serve_web: Callable[..., WebServer]) -> None:
    web = serve_web(mount="/store", token="t")
    assert web.base_url.endswith("/store")
    assert_error(get(web, "/api/streams/order-1"), 401)
    assert post(web, "order-1", {"type": "A"}, headers=web.auth_headers()).status_code == 201
    assert get(web, "/api/streams/order-1", headers=web.auth_headers()).json()[0]["stream_id"] == "order-1"
    assert_error(get(web, "/api/streams/order-9", headers=web.auth_headers()), 404, "order-9")


def test_an_unreachable_database_is_503(serve_web: Callable[..., WebServer]) -> None:
    web = serve_web(f"postgresql://nobody@127.0.0.1:{free_port()}/nothing")
    assert_error(post(web, "order-1", {"type": "A"}), 503, "retry later")
    assert_error(get(web, "/api/streams/order-1"), 503)


def test_wait_endpoint_200_504_404_422(serve_web: Callable[..., WebServer], store: EventStore) -> None:
    web = serve_web(projections=[Counter(), "never_ran"])
    position = post(web, "thing-1", {"type": "Happened"}).json()["global_position"]
    assert_error(get(web, f"/api/projections/counter/wait?position={position}&timeout=0.2"), 404, "counter")
    ProjectionRunner(store, [Counter()]).run_until_caught_up()
    response = get(web, f"/api/projections/counter/wait?position={position}&timeout=5")
    assert response.status_code == 200, response.text
    assert response.json() == {"projection": "counter", "position": position, "processed": True}

    later = post(web, "thing-1", {"type": "Happened"}).json()["global_position"]
    assert_error(get(web, f"/api/projections/counter/wait?position={later}&timeout=0.3"), 504,
                 "'counter'", f"did not process position {later}")  # fmt: skip
    assert_error(get(web, f"/api/projections/elsewhere/wait?position={position}"), 404, "'elsewhere'")
    assert_error(get(web, f"/api/projections/never_ran/wait?position={position}"), 404, "'never_ran'")
    assert_error(get(web, "/api/projections/counter/wait"), 422, "position: missing")
    assert_error(get(web, "/api/projections/counter/wait?position=x"), 422, "position='x'")
    assert_error(get(web, f"/api/projections/counter/wait?position={position}&timeout=nan"), 422, "timeout")
    assert_error(get(web, "/api/projections/counter/wait?position=999999"), 422, "position=999999: no event")


def test_a_token_guards_every_endpoint(serve_web: Callable[..., WebServer]) -> None:
    web = serve_web(token="s3cret")
    assert_error(get(web, "/api/streams/order-1"), 401, "no Authorization header")
    assert_error(get(web, "/api/events"), 401)
    wrong = get(web, "/api/streams/order-1", headers={"Authorization": "Bearer guess"})
    assert_error(wrong, 401, "wrong bearer token")
    assert wrong.headers["www-authenticate"].startswith("Bearer")
    assert post(web, "order-1", {"type": "A"}, headers=web.auth_headers()).status_code == 201
    assert get(web, "/api/streams/order-1", headers=web.auth_headers()).status_code == 200


def test_serve_refuses_a_public_address_without_a_token() -> None:
    environment = {key: value for key, value in os.environ.items() if not key.startswith("EVENTSTORE_")}
    result = subprocess.run(
        [str(Path(sys.executable).with_name("eventstore")), "serve", "--host", "0.0.0.0"],
        capture_output=True, text=True, timeout=30, env=environment,
    )  # fmt: skip
    assert result.returncode == 1, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: --host 0.0.0.0 "), result.stderr
    assert "--token" in lines[0] and "EVENTSTORE_WEB_TOKEN" in lines[0]


def test_create_app_names_the_extra_when_starlette_is_missing(monkeypatch: pytest.MonkeyPatch) -> None:
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "starlette" else real(name, *a))
    with pytest.raises(ConfigurationError, match=r"pip install 'eventstore\[web\]'"):
        from eventstore.web import create_app

        create_app(object())  # type: ignore[arg-type]


def test_serve_runs_the_app_on_any_address_with_a_token_until_ctrl_c(database_url: str) -> None:
    port = free_port()
    environment = {key: value for key, value in os.environ.items() if not key.startswith("EVENTSTORE_")}
    environment |= {"EVENTSTORE_URL": database_url, "EVENTSTORE_WEB_TOKEN": "t0ken", "EVENTSTORE_PORT": str(port)}
    process = subprocess.Popen(
        [str(Path(sys.executable).with_name("eventstore")), "serve", "--host", "0.0.0.0"],
        stderr=subprocess.PIPE, text=True, env=environment,
    )  # fmt: skip
    try:
        assert process.stderr is not None
        seen = []
        for line in process.stderr:  # until uvicorn says it listens (or the command ends)
            seen.append(line)
            if "Uvicorn running on" in line:
                break
        assert "token required" in "".join(seen), seen
        base = f"http://127.0.0.1:{port}"
        assert httpx.get(f"{base}/api/streams/order-1", timeout=10).status_code == 401
        headers = {"Authorization": "Bearer t0ken"}
        assert httpx.post(f"{base}/api/streams/order-1", json={"type": "A"}, headers=headers).status_code == 201
        assert httpx.get(f"{base}/api/streams/order-1", headers=headers).json()[0]["type"] == "A"
        scraped = httpx.get(f"{base}/metrics", headers=headers, timeout=10)
        assert scraped.status_code == 200 and scraped.headers["content-type"].startswith("text/plain")
        assert 'eventstore_appends_total{category="order",outcome="appended"} 1.0' in scraped.text
        assert 'eventstore_projection_lag_events{projection="order_summaries"} 1.0' in scraped.text
        assert httpx.get(f"{base}/metrics", timeout=10).status_code == 401
        process.send_signal(signal.SIGINT)
        assert process.wait(timeout=15) == 0
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
        if process.stderr is not None:
            process.stderr.close()


def other_backends(engine: sa.Engine) -> int:
    """Sessions of this test's database, other than the one counting."""
    counted = "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() AND pid <> pg_backend_pid()"
    with engine.connect() as connection:
        return int(connection.execute(sa.text(counted)).scalar_one())


def test_the_app_closes_the_dashboard_store_at_shutdown(database_url: str, engine: sa.Engine) -> None:
    """The dashboard reads through a sync store of its own; the app's lifespan closes it (the caller's store stays)."""
    import asyncio
    import time

    from eventstore.store import AsyncEventStore
    from eventstore.web import create_app

    def backends() -> int:
        return other_backends(engine)

    async def scenario() -> tuple[int, int, bool]:
        async with AsyncEventStore(database_url) as store:
            app = create_app(store)
            async with app.router.lifespan_context(app):  # type: ignore[attr-defined]
                await app.state.dashboard.snapshot_fragments("")  # type: ignore[attr-defined]
                during = backends()
            # A backend leaves pg_stat_activity shortly after its client closed the connection.
            deadline = time.monotonic() + 10
            while (after := backends()) >= during and time.monotonic() < deadline:
                await asyncio.sleep(0.05)
            return during, after, await store.head_position() == 0

    during, after, store_still_usable = asyncio.run(scenario())
    assert after < during  # the dashboard's pooled connections are gone
    assert store_still_usable


@pytest.mark.parametrize("close_store", [False, True])
def test_close_store_hands_the_store_to_the_app_which_closes_it_at_shutdown(
    close_store: bool, database_url: str, engine: sa.Engine
) -> None:
    """``create_app(store, close_store=True)`` (a uvicorn factory, ``serve --workers``): the lifespan closes it."""
    import asyncio
    import time

    from eventstore.store import AsyncEventStore
    from eventstore.web import create_app

    def backends() -> int:
        return other_backends(engine)

    async def scenario() -> int:
        store = AsyncEventStore(database_url)
        app = create_app(store, close_store=close_store)
        async with app.router.lifespan_context(app):  # type: ignore[attr-defined]
            await store.head_position()  # one of the store's pooled connections is open
        deadline = time.monotonic() + 10  # a backend leaves pg_stat_activity shortly after its client closed
        while (left := backends()) > 0 and close_store and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        await store.close()
        return left

    left = asyncio.run(scenario())
    assert (left == 0) is close_store
