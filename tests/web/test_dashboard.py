"""The dashboard at ``/`` end to end: a real uvicorn, a real database, the page in real headless Chromium.

Chromium is Debian's (``apt-get install chromium``), driven by the
``playwright`` package (never ``playwright install``), with the flags that
keep it from connecting anywhere but the server under test: one browser for
the module (its start-up is most of a test's time on 2 cores), a fresh
context (profile, cookies, cache) for each test. Every wait is on a
condition in the page, never a sleep.
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
import re
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import psycopg
import pytest

from eventstore import EventStore, NewEvent, ProjectionRunner, admin
from projections import Ledger
from tests.runner.runner_helpers import append_many, running
from tests.web.conftest import WebServer

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--no-sandbox",  # root needs it on these machines
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
SCREENSHOT = os.environ.get("DASHBOARD_SCREENSHOT")
"""Where to save a screenshot of the page with a failed projection (docs/dashboard.png was made so)."""
TOKEN = "dashboard-test-token"


@pytest.fixture(scope="module")
def chromium() -> Iterator[Any]:
    """One headless Chromium for this module's tests (each gets a fresh context: its own profile, cookies, cache)."""
    if not Path(CHROMIUM).exists():
        pytest.skip(f"{CHROMIUM} is missing: apt-get install -y chromium")
    if importlib.util.find_spec("playwright") is None:
        pytest.skip("the playwright package is missing: pip install playwright (no browser download needed)")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
        try:
            yield browser
        finally:
            browser.close()


@contextlib.contextmanager
def browser_page(browser: Any) -> Iterator[tuple[Any, list[str]]]:
    """A page in a fresh context of ``browser``, and the console errors and page errors it reports."""
    problems: list[str] = []
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    try:
        page = context.new_page()

        def on_console(message: Any) -> None:
            if message.type == "error":
                problems.append(message.text)

        page.on("console", on_console)
        page.on("pageerror", lambda error: problems.append(str(error)))
        yield page, problems
    finally:
        context.close()


def test_the_page_follows_appends_without_a_reload(
    serve_web: Callable[..., WebServer], store: EventStore, chromium: Any
) -> None:
    from playwright.sync_api import expect

    store.append("order-1", [NewEvent("OrderPlaced", {"total": 1})])
    web = serve_web(projections=[Ledger("audit")], heartbeat_seconds=1)
    with browser_page(chromium) as (page, problems):
        page.goto(f"{web.base_url}/")
        expect(page.locator("#connection")).to_have_text("live")
        expect(page.locator("#head")).to_have_text("1")
        expect(page.locator('[data-projection="audit"]')).to_contain_text("no runner owns it (1 event behind)")

        last = 0
        for n in range(3):
            last = store.append(f"invoice-{n}", [NewEvent("InvoiceSent", {"n": n})]).global_position
        expect(page.locator("#head")).to_have_text(str(last))
        expect(page.locator("#log tbody tr").first).to_contain_text(f"{last}InvoiceSentinvoice-2")
        # The counts scan the table at most every 2 s, or 20 times as long as the last scan took (slow on a busy CI).
        expect(page.locator("#store")).to_contain_text("invoice3", timeout=15_000)
        assert page.evaluate("performance.getEntriesByType('navigation').length") == 1  # never reloaded

        # The log's filter form: a GET of the page; the filtered log stays live.
        page.locator("#log-filter input[name=category]").fill("invoice")
        page.locator("#log-filter button").click()
        page.wait_for_url(re.compile(r"category=invoice"))
        expect(page.locator("#connection")).to_have_text("live")
        store.append("order-2", [NewEvent("OrderPaid", {"total": 2})])
        invoice = store.append("invoice-9", [NewEvent("InvoiceSent", {"n": 9})]).global_position
        expect(page.locator("#log tbody tr").first).to_contain_text(f"{invoice}InvoiceSentinvoice-9")
        expect(page.locator("#log tbody tr")).to_have_count(4)
        expect(page.locator("#log")).not_to_contain_text("order-")
    assert httpx.get(f"{web.base_url}/", params={"type": "x" * 256}, timeout=10).status_code == 422
    assert problems == [], problems


def test_a_poison_event_shows_its_reason_and_retry_catches_up(
    serve_web: Callable[..., WebServer], store: EventStore, chromium: Any
) -> None:
    """With a token: the page gets it once from ?token=, and its Retry button's POST carries it."""
    from playwright.sync_api import expect

    billing = Ledger("billing", poison_types={"Bad"})
    audit = Ledger("audit")
    store.append("order-41", [NewEvent("OrderPlaced", {"total": 1})])
    poison = store.append("order-42", [NewEvent("Bad", {"amount": None})]).global_position
    store.append("order-43", [NewEvent("OrderPlaced", {"total": 3})])
    ProjectionRunner(store, [billing, audit], retry_attempts=1, retry_delay=0.01).run_until_caught_up()

    web = serve_web(projections=[billing, audit], token=TOKEN, heartbeat_seconds=1)
    with httpx.Client(base_url=web.base_url, timeout=10) as client:
        assert client.get("/").status_code == 401
        assert client.get("/", params={"token": "wrong"}).status_code == 401
        entered = client.get("/", params={"token": TOKEN})
        assert entered.status_code == 303
        assert "httponly" in entered.headers["set-cookie"].lower()
        assert client.post("/dashboard/projections/billing/retry").status_code == 401  # the cookie is not enough
        no_htmx = client.post("/dashboard/projections/billing/retry", headers=web.auth_headers())
        assert no_htmx.status_code == 403

    runner = ProjectionRunner(store, [billing, audit], poll_interval=2)
    with browser_page(chromium) as (page, problems), running(runner):
        page.goto(f"{web.base_url}/?token={TOKEN}")
        assert page.url == f"{web.base_url}/"  # the token left the address bar
        expect(page.locator("#connection")).to_have_text("live")
        row = page.locator('[data-projection="billing"]')
        expect(row).to_contain_text(f"stopped on event {poison} (Bad in order-42): ValueError")
        expect(row).to_contain_text("poison event Bad")
        expect(row.locator("details pre")).to_contain_text("Traceback")
        expect(page.locator('[data-projection="audit"]')).to_contain_text("caught up")
        if SCREENSHOT:
            page.screenshot(path=SCREENSHOT, full_page=True)

        billing.poison_types = frozenset()  # the fix, deployed to the runner's instance
        row.get_by_role("button", name="Retry").click()
        expect(page.locator("#flash")).to_have_text(f"billing: retrying event {poison}")
        expect(row.locator(".why")).to_have_text("caught up")
        expect(row).to_contain_text("idle")
    assert problems == [], problems


def test_a_stall_names_the_blocking_session(
    serve_web: Callable[..., WebServer],
    store: EventStore,
    blocker: psycopg.Connection[tuple[object, ...]],
    chromium: Any,
) -> None:
    from playwright.sync_api import expect

    web = serve_web(projections=[Ledger("stalled")], heartbeat_seconds=1)
    with browser_page(chromium) as (page, problems):
        page.goto(f"{web.base_url}/")
        expect(page.locator("#connection")).to_have_text("live")
        store.append("order-1", [NewEvent("OrderPlaced", {"total": 1})])  # committed after the blocker began
        row = page.locator('[data-projection="stalled"]')
        expect(row).to_contain_text(
            re.compile(
                rf"held back since \d\d:\d\d:\d\d UTC by pid {blocker.info.backend_pid} "
                r"\(app `billing-batch`, database `[^`]+`, idle in transaction for \d+ s\)"
            )
        )
        blocker.rollback()
        expect(row).to_contain_text("no runner owns it (1 event behind)")
    assert problems == [], problems


def test_picked_up_after_and_a_rebuilds_eta_appear_live(
    serve_web: Callable[..., WebServer], store: EventStore, chromium: Any
) -> None:
    """A runner applies an append: "picked up after" shows; a slow rebuild: its progress, rate and ETA show."""
    from playwright.sync_api import expect

    live = Ledger("live")
    slow = Ledger("slow", delay=0.02)  # 300 events: about 6 s, stopped once its ETA shows
    append_many(store, "order", 300)
    ProjectionRunner(store, [live]).run_until_caught_up()
    web = serve_web(projections=[live, slow], heartbeat_seconds=1)
    stop = threading.Event()
    errors: list[BaseException] = []

    def rebuild() -> None:
        try:
            admin.rebuild(store, slow, stop_event=stop, batch_size=10)
        except BaseException as error:  # reported below
            errors.append(error)

    rebuilder = threading.Thread(target=rebuild, name="test-rebuild", daemon=True)
    with browser_page(chromium) as (page, problems), running(ProjectionRunner(store, [live], poll_interval=5)):
        page.goto(f"{web.base_url}/")
        expect(page.locator("#connection")).to_have_text("live")
        live_row = page.locator('[data-projection="live"]')
        expect(live_row).to_contain_text("idle")
        expect(live_row.locator("td.pickup")).to_have_text("—")  # no batch seen yet

        store.append("order-live", [NewEvent("OrderPlaced", {"total": 1})])
        expect(live_row.locator("td.pickup b")).to_have_text(re.compile(r"^(\d+ ms|\d+\.\d s)$"))
        expect(live_row.locator("td.pickup")).to_contain_text(re.compile(r"batch at \d\d:\d\d:\d\d UTC"))

        rebuilder.start()
        try:
            slow_row = page.locator('[data-projection="slow"]')
            expect(slow_row.locator(".state")).to_have_text("rebuilding")
            expect(slow_row.locator(".progress")).to_contain_text(
                re.compile(r"\d+ of 301 \(\d+%\), (about \d+ (s|min)|under a second) left at [\d.,]+ events/s"),
                timeout=10_000,
            )
        finally:
            stop.set()
            rebuilder.join(15)
        expect(page.locator("#rate-plot")).to_contain_text(
            re.compile(r"events/s every 5 s, \d\d:\d\d:\d\d to \d\d:\d\d:\d\d UTC, peak [\d.,]+ events/s")
        )
        assert page.evaluate("performance.getEntriesByType('navigation').length") == 1  # never reloaded
    assert not rebuilder.is_alive() and not errors, errors
    assert problems == [], problems
