"""examples/orders_app end to end: a real uvicorn server, a real database, and the page in real headless Chromium.

Chromium is Debian's (``apt-get install chromium``), driven by the ``playwright``
package (never ``playwright install``), with the flags that keep it from
connecting anywhere but the server under test.
"""

from __future__ import annotations

import asyncio
import importlib.util
import os
import re
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import sqlalchemy as sa
import uvicorn

from eventstore import EventStore
from examples.orders_app.app import create_orders_app
from projections.orders import place, stream_id_of

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--no-sandbox",  # root needs it on these machines
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
SCREENSHOT = os.environ.get("ORDERS_APP_SCREENSHOT")
"""Where to save a screenshot of the page after the browser test (docs/orders-app.png was made so)."""


class OrdersServer:
    """The order app under uvicorn, in a thread with its own event loop, on 127.0.0.1 and a free port.

    The socket listens before the thread starts, so a first request waits in
    the backlog until uvicorn accepts it; :meth:`start` returns once the app
    answers (its lifespan, which starts the projection runner, has run).
    """

    def __init__(self, url: str) -> None:
        self.socket = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.socket.bind(("127.0.0.1", 0))
        self.socket.listen(64)
        self.base_url = f"http://127.0.0.1:{self.socket.getsockname()[1]}"
        config = uvicorn.Config(create_orders_app(url), log_level="warning", timeout_graceful_shutdown=5)
        self.server = uvicorn.Server(config)
        self.failure: BaseException | None = None
        self.thread = threading.Thread(target=self._run, name="orders-app-under-test", daemon=True)

    def _run(self) -> None:
        try:
            asyncio.run(self.server.serve(sockets=[self.socket]))
        except BaseException as error:  # reported by stop()
            self.failure = error

    def start(self) -> OrdersServer:
        self.thread.start()
        try:
            response = httpx.get(f"{self.base_url}/orders", timeout=15)
            assert response.status_code == 200, response.text
        except BaseException:
            self._shut_down()  # its projection runner too: nothing of this test may outlive it
            raise
        return self

    def stop(self) -> None:
        self._shut_down()
        assert not self.thread.is_alive(), "uvicorn did not stop within 20 s"
        assert self.failure is None, self.failure

    def _shut_down(self) -> None:
        self.server.should_exit = True
        self.thread.join(20)
        self.socket.close()


@pytest.fixture
def orders_app(database_url: str) -> Iterator[OrdersServer]:
    server = OrdersServer(database_url).start()
    yield server
    server.stop()


def test_post_orders_answers_from_the_read_model_at_once(orders_app: OrdersServer, database_url: str) -> None:
    with httpx.Client(base_url=orders_app.base_url, timeout=10) as client:
        response = client.post("/orders", json={"customer_id": "alice", "total": 1250})
        assert response.status_code == 201, response.text
        order = response.json()
        # The row of order_summaries, so the projection had applied the append before the answer.
        assert order["customer_id"] == "alice"
        assert order["total"] == 1250
        assert order["status"] == "placed"
        assert re.fullmatch(r"\d{4}-\d{2}-\d{2}", order["placed_on"])
        with EventStore(database_url) as store:
            [event] = store.read_stream(stream_id_of(order["order_id"]))
        assert event.type == "OrderPlaced"
        assert order["last_position"] == event.global_position

        listing = client.get("/orders").json()
        assert listing["position"] >= event.global_position
        assert [row["order_id"] for row in listing["orders"]] == [order["order_id"]]

        for bad, field in [
            ({"customer_id": " ", "total": 5}, "customer_id"),
            ({"customer_id": "bo", "total": 0}, "total"),
        ]:
            response = client.post("/orders", json=bad)
            assert response.status_code == 422
            assert response.json()["error"].startswith(f"{field}:")
        assert client.post("/orders", content=b"not json").status_code == 422


def _playwright() -> Any:
    if not Path(CHROMIUM).exists():
        pytest.skip(f"{CHROMIUM} is missing: apt-get install -y chromium")
    if importlib.util.find_spec("playwright") is None:
        pytest.skip("the playwright package is missing: pip install playwright (no browser download needed)")
    from playwright.sync_api import sync_playwright

    return sync_playwright


def test_the_page_places_orders_and_shows_new_ones_live(
    orders_app: OrdersServer, database_url: str, tmp_path: Path
) -> None:
    sync_playwright = _playwright()
    from playwright.sync_api import expect

    problems: list[str] = []
    with sync_playwright() as playwright:
        # A fresh profile (--user-data-dir) for each run: nothing carried over, nothing to sync.
        browser = playwright.chromium.launch_persistent_context(
            str(tmp_path / "profile"), executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS
        )
        try:
            page = browser.new_page()

            def on_console(message: Any) -> None:
                if message.type == "error":
                    problems.append(message.text)

            page.on("console", on_console)
            page.on("pageerror", lambda error: problems.append(str(error)))
            page.goto(orders_app.base_url)
            expect(page.locator("#connection")).to_have_text("live")

            # Through the page's form: the answer comes from the read model, the row from the live stream.
            page.fill("input[name=customer_id]", "alice")
            page.fill("input[name=total]", "1250")
            page.click("button[type=submit]")
            expect(page.locator("#result")).to_have_text(re.compile(r"^Order \w+ for alice: placed, 12\.50$"))
            order_id = page.locator("#result").get_attribute("data-order-id")
            assert order_id
            expect(page.locator(f'#orders [data-order-id="{order_id}"]')).to_have_text(f"{order_id}alice12.50")

            # From outside the browser: the same live list shows it, with no reload.
            with EventStore(database_url) as store:
                place(store, stream_id_of("from-outside"), customer="bob", total=4200)
            expect(page.locator("#orders li")).to_have_count(2)
            expect(page.locator("#orders li").first).to_have_text("from-outsidebob42.00")
            assert page.evaluate("performance.getEntriesByType('navigation').length") == 1  # never reloaded

            if SCREENSHOT:
                page.screenshot(path=SCREENSHOT)
        finally:
            browser.close()
    assert problems == [], problems


def test_the_page_lists_existing_orders_then_follows_new_ones(
    orders_app: OrdersServer, database_url: str, tmp_path: Path
) -> None:
    """A page opened after some orders shows them from the read model; later ones arrive over SSE, none twice."""
    with httpx.Client(base_url=orders_app.base_url, timeout=10) as client:
        first = client.post("/orders", json={"customer_id": "carol", "total": 300}).json()
    sync_playwright = _playwright()
    from playwright.sync_api import expect

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch_persistent_context(
            str(tmp_path / "profile"), executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS
        )
        try:
            page = browser.new_page()
            page.goto(orders_app.base_url)
            expect(page.locator("#connection")).to_have_text("live")
            expect(page.locator("#orders li")).to_have_text([f"{first['order_id']}carol3.00"])
            with EventStore(database_url) as store:
                place(store, stream_id_of("later"), customer="dave", total=100)
            expect(page.locator("#orders li")).to_have_text(["laterdave1.00", f"{first['order_id']}carol3.00"])
        finally:
            browser.close()


def test_the_orders_list_is_empty_not_an_error_while_the_projection_is_being_set_up(
    database_url: str, engine: sa.Engine
) -> None:
    """The runner writes the projection's checkpoint row before its setup() creates the table: the list of
    orders must not assume the table from the checkpoint (held here between the two by the setup lock)."""
    from eventstore.runner.ownership import take_setup_lock

    server = OrdersServer(database_url)
    checkpoint_rows = sa.text("SELECT count(*) FROM projection_checkpoints WHERE projection_name = 'order_summaries'")
    try:
        with engine.begin() as holding:
            take_setup_lock(holding)  # the runner's setup() waits for it until this block ends
            server.thread.start()
            deadline = time.monotonic() + 20
            with engine.connect() as connection:
                while connection.execute(checkpoint_rows).scalar_one() == 0:
                    assert time.monotonic() < deadline, "the runner wrote no checkpoint row"
                    time.sleep(0.05)
            response = httpx.get(f"{server.base_url}/orders", timeout=15)
            assert response.status_code == 200, response.text
            assert response.json() == {"position": 0, "orders": []}
    finally:
        server.stop()
