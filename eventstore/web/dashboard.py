"""The dashboard at ``/``: the store and each projection, live, and why a projection is behind, in words.

One place gathers the state (:func:`take_snapshot`: projection status,
open failures, head, recent events, counts), in a thread on a synchronous
:class:`~eventstore.store.EventStore`; :func:`render` turns it into HTML
fragments. One sampler task per app (:class:`Dashboard`) takes a snapshot
every second, or at once when the store wakes up (a ``subscribe(after="head")``
subscription), while at least one page is open, and fans the fragments out
to the pages' ``GET /dashboard/events`` streams through queues of one (a
slow page only misses intermediate states). Rates and lag history are kept
in memory, bounded (:data:`HISTORY_SAMPLES`).

The page is server-rendered and swaps the fragments in with the vendored
htmx and its SSE extension (``static/``, see ``static/NOTICE``): no build
step, nothing fetched from elsewhere.

Retry and Skip are ``POST /dashboard/projections/{name}/retry|skip``
(:func:`eventstore.admin.retry` / :func:`~eventstore.admin.skip` in a
thread). They need the ``HX-Request`` header htmx sends, which a cross-site
form cannot send, so another site cannot press them through a browser.

With a token (:mod:`eventstore.web.auth`): open ``/?token=<token>`` once; the
page sets an HttpOnly, SameSite=Strict cookie, redirects to ``/`` (so the
token leaves the address bar) and carries the token in its own POSTs'
``Authorization`` header.
"""

from __future__ import annotations

import asyncio
import contextlib
import html
import itertools
import json
import string
import time
from collections import deque
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import quote

from sse_starlette import EventSourceResponse, ServerSentEvent
from starlette.requests import Request
from starlette.responses import HTMLResponse, RedirectResponse, Response

from eventstore import admin
from eventstore.errors import EventStoreError, ProjectionError, ProjectionNotFound, first_line
from eventstore.projection import Projection
from eventstore.store import AsyncEventStore, EventStore
from eventstore.store.sql import FENCE
from eventstore.store.stalls import format_duration
from eventstore.web.errors import RequestError

__all__ = ["Dashboard", "Snapshot", "render", "take_snapshot"]

HERE = Path(__file__).parent
STATIC = HERE / "static"
TEMPLATE = string.Template((HERE / "templates" / "dashboard.html").read_text(encoding="utf-8"))
TOKEN_COOKIE = "eventstore_token"

HISTORY_SAMPLES = 300
"""Samples kept for the plots (one a second at most: five minutes)."""
LOG_EVENTS = 15
COUNTS_MIN_SECONDS = 2.0
"""The category and type counts scan the table: at most this often (less often when the scan is slow)."""
COUNTS_LIMIT = 20

_RECENT = (
    "SELECT global_position, stream_id, event_type, recorded_at FROM events "  # noqa: S608 - constant
    f"WHERE transaction_order < {FENCE} ORDER BY transaction_order DESC, global_position DESC LIMIT {LOG_EVENTS}"
)
_COUNTS = "SELECT {column} AS name, count(*) AS n FROM events GROUP BY 1 ORDER BY 2 DESC, 1 LIMIT {limit}"


@dataclass(frozen=True, slots=True)
class RecentEvent:
    position: int
    stream_id: str
    event_type: str
    recorded_at: datetime


@dataclass(frozen=True, slots=True)
class Snapshot:
    """Everything the page shows at one moment (the one place that gathers it)."""

    taken_at: datetime
    head: int
    statuses: list[admin.ProjectionStatus]
    failures: dict[str, admin.ProjectionFailure]
    recent: list[RecentEvent]
    categories: list[tuple[str, int]]
    event_types: list[tuple[str, int]]


def take_snapshot(
    store: EventStore, projections: Sequence[Projection | str], counts: tuple[list[Any], list[Any]] | None = None
) -> Snapshot:
    """Status, open failures, head, recent events and counts (``counts``: reuse these instead of scanning)."""
    statuses = admin.projection_status(store, projections) if projections else []
    failures = {}
    for status in statuses:
        if status.state == "failed":
            open_failures = admin.list_failures(store, status.name, open_only=True)
            if open_failures:
                failures[status.name] = open_failures[-1]
    with store.engine.connect() as connection:
        recent = [RecentEvent(*row) for row in connection.exec_driver_sql(_RECENT).all()]
        if counts is None:
            counts = (_counts(connection, "category"), _counts(connection, "event_type"))
    head = statuses[0].head if statuses else store.head_position()
    return Snapshot(
        taken_at=datetime.now(UTC),
        head=head,
        statuses=statuses,
        failures=failures,
        recent=recent,
        categories=list(counts[0]),
        event_types=list(counts[1]),
    )


def _counts(connection: Any, column: str) -> list[Any]:
    rows = connection.exec_driver_sql(_COUNTS.format(column=column, limit=COUNTS_LIMIT)).all()
    return [(row.name, int(row.n)) for row in rows]


@dataclass
class History:
    """Bounded samples for the plots: (monotonic time, head) and each projection's (time, lag in events)."""

    heads: deque[tuple[float, int]] = field(default_factory=lambda: deque(maxlen=HISTORY_SAMPLES))
    lags: dict[str, deque[tuple[float, int]]] = field(default_factory=dict)

    def add(self, snapshot: Snapshot, now: float) -> None:
        self.heads.append((now, snapshot.head))
        for status in snapshot.statuses:
            self.lags.setdefault(status.name, deque(maxlen=HISTORY_SAMPLES)).append((now, status.lag_events))

    def rates(self) -> list[float]:
        """Events per second between consecutive samples (head advance; rolled-back appends leave gaps)."""
        samples = list(self.heads)
        return [max(0, h2 - h1) / max(t2 - t1, 1e-3) for (t1, h1), (t2, h2) in itertools.pairwise(samples)]

    def rate(self, seconds: float = 60.0) -> float:
        if len(self.heads) < 2:
            return 0.0
        end_time, end_head = self.heads[-1]
        start_time, start_head = next(((t, h) for t, h in self.heads if t >= end_time - seconds), self.heads[0])
        return max(0, end_head - start_head) / max(end_time - start_time, 1e-3)


# -- rendering -----------------------------------------------------------------------------------------------


def _e(value: object) -> str:
    return html.escape(str(value))


def plot(values: Sequence[float], *, width: int = 180, height: int = 36, label: str = "") -> str:
    """A small inline SVG line plot of ``values`` (oldest first), scaled to its maximum."""
    if len(values) < 2:
        values = [values[0], values[0]] if values else [0.0, 0.0]
    top = max(max(values), 1e-9)
    step = width / (len(values) - 1)
    points = " ".join(f"{i * step:.1f},{height - 2 - (v / top) * (height - 4):.1f}" for i, v in enumerate(values))
    return (
        f'<svg class="plot" width="{width}" height="{height}" viewBox="0 0 {width} {height}" role="img" '
        f'aria-label="{_e(label)}"><polyline points="{points}"/></svg>'
    )


def _clock(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime("%H:%M:%S")


def _events(count: int) -> str:
    return f"{count} event" if count == 1 else f"{count} events"


def why(status: admin.ProjectionStatus, failure: admin.ProjectionFailure | None, now: datetime) -> tuple[str, str]:
    """Why the projection is where it is, in words (HTML), and a class: ``ok``, ``warning`` or ``problem``."""
    if status.state == "failed":
        if failure is not None:
            where = f"{failure.event_type or 'event'} in {failure.stream_id or 'an unknown stream'}"
            text = f"stopped on event {failure.global_position} ({_e(where)}): {_e(failure.error)}"
            if failure.traceback:
                text += f"<details><summary>traceback</summary><pre>{_e(failure.traceback)}</pre></details>"
        else:
            text = f"stopped on event {status.failed_position}: {_e(status.last_error or 'unknown error')}"
        return text, "problem"
    if status.blocked_by:
        first = status.blocked_by[0]
        since = ""
        if first.transaction_seconds is not None:
            since = f" since {_clock(now - timedelta(seconds=first.transaction_seconds))} UTC"
        others = f" (and {len(status.blocked_by) - 1} more)" if len(status.blocked_by) > 1 else ""
        return f"held back{since} by {_e(first.describe())}{others}", "warning"
    if status.state == "stopped":
        since = f" since {_clock(status.unowned_since)} UTC" if status.unowned_since is not None else ""
        if status.lag_events:
            return f"no runner owns it{since} ({_events(status.lag_events)} behind)", "problem"
        return f"caught up (no runner owns it{since})", "ok"
    if status.lag_events == 0:
        return "caught up", "ok"
    verb = "rebuilding" if status.state == "rebuilding" else "catching up"
    oldest = format_duration(status.lag_seconds)
    return f"{verb}: {_events(status.lag_events)} to go, the oldest from {oldest} ago", "ok"


def render_store(snapshot: Snapshot, history: History) -> str:
    rows = []
    for title, counts in (("Categories", snapshot.categories), ("Event types", snapshot.event_types)):
        body = "".join(f'<tr><td>{_e(name)}</td><td class="n">{n}</td></tr>' for name, n in counts)
        rows.append(
            f'<table><thead><tr><th>{title}</th><th class="n">events</th></tr></thead>'
            f"<tbody>{body or '<tr><td class=muted colspan=2>none yet</td></tr>'}</tbody></table>"
        )
    rates = history.rates()
    return (
        "<h2>Store</h2><div class=figures>"
        f'<div class=figure>head position<b id="head">{snapshot.head}</b></div>'
        f'<div class=figure>events/s (last minute)<b id="rate">{history.rate():.1f}</b></div>'
        f"<div class=figure>{plot(rates, width=320, height=48, label='events per second')}"
        f"<div class=muted>events/s, last {len(rates)} samples</div></div></div>"
        f"<div class=counts>{''.join(rows)}</div>"
    )


def render_projections(snapshot: Snapshot, history: History, base: str) -> str:
    if not snapshot.statuses:
        return "<h2>Projections</h2><p class=muted>none given to create_app(projections=...)</p>"
    rows = []
    for status in snapshot.statuses:
        failure = snapshot.failures.get(status.name)
        text, kind = why(status, failure, snapshot.taken_at)
        buttons = ""
        if status.state == "failed":
            url = _e(f"{base}/dashboard/projections/{quote(status.name, safe='')}")
            buttons = (
                f'<div><button hx-post="{url}/retry" hx-swap="none">Retry</button>'
                f'<button hx-post="{url}/skip" hx-swap="none" '
                f'hx-confirm="Skip event {status.failed_position} for {_e(status.name)}?">Skip</button></div>'
            )
        lags = [float(lag) for _, lag in history.lags.get(status.name, ())]
        queue = ""
        if status.notify_queue_usage >= 0.01:
            queue = f"<div class=warning>NOTIFY queue {status.notify_queue_usage:.0%} full</div>"
        state_class = "state-" + status.state.replace(" ", "-")
        rows.append(
            f'<tr data-projection="{_e(status.name)}"><td><b>{_e(status.name)}</b></td>'
            f'<td><span class="state {state_class}">{_e(status.state)}</span></td>'
            f"<td>{_e(status.owner or '—')}</td>"
            f'<td class="n">{status.position}</td>'
            f'<td class="n">{status.lag_events}</td>'
            f'<td class="n">{status.lag_seconds:.1f}</td>'
            f"<td>{plot(lags, label=f'lag of {status.name}')}</td>"
            f'<td class="why-cell"><div class="why {kind}">{text}</div>{buttons}{queue}</td></tr>'
        )
    return (
        "<h2>Projections</h2><table><thead><tr><th>name</th><th>state</th><th>owner</th>"
        '<th class="n">position</th><th class="n">lag (events)</th><th class="n">lag (s)</th>'
        f"<th>lag history</th><th>why</th></tr></thead><tbody>{''.join(rows)}</tbody></table>"
    )


def render_log(snapshot: Snapshot) -> str:
    rows = "".join(
        f'<tr><td class="n">{event.position}</td><td>{_e(event.event_type)}</td><td>{_e(event.stream_id)}</td>'
        f"<td>{_clock(event.recorded_at)}</td></tr>"
        for event in snapshot.recent
    )
    return (
        f"<h2>Last {LOG_EVENTS} events</h2><table><thead><tr><th class=n>position</th><th>type</th>"
        f"<th>stream</th><th>recorded (UTC)</th></tr></thead><tbody>"
        f"{rows or '<tr><td class=muted colspan=4>no events yet</td></tr>'}</tbody></table>"
    )


def render(snapshot: Snapshot, history: History, base: str) -> dict[str, str]:
    """The page's fragments, by SSE event name (the ids of the sections they replace)."""
    return {
        "store": render_store(snapshot, history),
        "projections": render_projections(snapshot, history, base),
        "log": render_log(snapshot),
    }


def _unavailable(error: BaseException) -> dict[str, str]:
    message = f"<h2>Store</h2><p class='why problem'>cannot read the store: {_e(first_line(error))}</p>"
    return {"store": message}


# -- the sampler and its subscribers -------------------------------------------------------------------------


class Dashboard:
    """One app's sampler: snapshots while pages are open, fanned out to them (bounded queues of one)."""

    def __init__(self, store: AsyncEventStore, projections: Sequence[Projection | str]) -> None:
        self.store = store
        self.projections = list(projections)
        self.names = {p if isinstance(p, str) else p.name for p in self.projections}
        self.history = History()
        self.latest: dict[str, dict[str, str]] = {}
        self._sync: EventStore | None = None
        self._pages: dict[asyncio.Queue[tuple[str, dict[str, str]]], str] = {}
        self._task: asyncio.Task[None] | None = None
        self._wake: asyncio.Event | None = None
        self._counts: tuple[list[Any], list[Any]] | None = None
        self._counts_at = 0.0
        self._counts_took = 0.0
        self._counted_head = -1

    def sync_store(self) -> EventStore:
        if self._sync is None:
            self._sync = EventStore(self.store.url.render_as_string(hide_password=False))
        return self._sync

    def close(self) -> None:
        """Close the sync store the snapshots are read with (it reopens if a page comes back)."""
        if self._sync is not None:
            self._sync.close()
            self._sync = None

    async def aclose(self) -> None:
        """Stop the sampler and close the sync store: the app's shutdown."""
        task, self._task = self._task, None
        if task is not None and not task.done():
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self.close()

    def wake(self) -> None:
        if self._wake is not None:
            self._wake.set()

    async def snapshot_fragments(self, base: str) -> dict[str, str]:
        """One snapshot now, rendered (the page's first paint)."""
        try:
            snapshot = await asyncio.to_thread(self._take)
        except EventStoreError as error:
            return _unavailable(error)
        return render(snapshot, self.history, base)

    def _take(self) -> Snapshot:
        # The counts scan the table: again only when the head moved, and at most every 2 s or 20 times
        # as long as the last scan took (a big store is counted less often).
        due = time.monotonic() - self._counts_at >= max(COUNTS_MIN_SECONDS, 20 * self._counts_took)
        moved = not self.history.heads or self.history.heads[-1][1] != self._counted_head
        refresh = self._counts is None or (due and moved)
        started = time.monotonic()
        snapshot = take_snapshot(self.sync_store(), self.projections, None if refresh else self._counts)
        if refresh:
            self._counts = (snapshot.categories, snapshot.event_types)
            self._counts_at, self._counts_took = time.monotonic(), time.monotonic() - started
            self._counted_head = snapshot.head
        return snapshot

    async def follow(self, base: str) -> AsyncIterator[dict[str, str]]:
        """Fragments for one page, as long as it stays; starts the sampler for the first page."""
        queue: asyncio.Queue[tuple[str, dict[str, str]]] = asyncio.Queue(maxsize=1)
        self._pages[queue] = base
        if self._task is None or self._task.done():
            self._wake = asyncio.Event()
            self._task = asyncio.create_task(self._sample(), name="eventstore-dashboard")
        try:
            while True:
                _, fragments = await queue.get()
                yield fragments
        finally:
            del self._pages[queue]

    async def _sample(self) -> None:
        assert self._wake is not None
        listener = asyncio.create_task(self._listen(), name="eventstore-dashboard-wake-ups")
        try:
            while self._pages:
                self._wake.clear()
                failed: dict[str, str] = {}
                try:
                    snapshot: Snapshot | None = await asyncio.to_thread(self._take)
                except EventStoreError as error:
                    snapshot, failed = None, _unavailable(error)
                if snapshot is not None:
                    self.history.add(snapshot, time.monotonic())
                rendered: dict[str, dict[str, str]] = {}
                for queue, base in list(self._pages.items()):
                    if base not in rendered:
                        rendered[base] = failed if snapshot is None else render(snapshot, self.history, base)
                    if queue.full():
                        queue.get_nowait()  # a slow page misses an intermediate state, never the latest
                    queue.put_nowait((base, rendered[base]))
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), timeout=1.0)
                await asyncio.sleep(0.2)  # at most five snapshots a second under a stream of appends
        finally:
            listener.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await listener

    async def _listen(self) -> None:
        """Wake the sampler when events arrive (one shared LISTEN: the store's subscription hub)."""
        while True:
            try:
                async with self.store.subscribe(after="head", max_buffered=100) as feed:
                    async for _ in feed:
                        self.wake()
            except EventStoreError:
                pass
            await asyncio.sleep(1.0)


# -- endpoints -----------------------------------------------------------------------------------------------


def _dashboard(request: Request) -> Dashboard:
    dashboard: Dashboard = request.app.state.dashboard
    return dashboard


def _base(request: Request) -> str:
    return str(request.scope.get("root_path", "")).rstrip("/")


async def page(request: Request) -> Response:
    """``GET /``: the page, with a first snapshot already in it."""
    base = _base(request)
    token: str | None = request.app.state.token
    if token is not None and "token" in request.query_params:
        # The middleware accepted the token from the query; keep it in a cookie and drop it from the address.
        response = RedirectResponse(f"{base}/", status_code=303)
        response.set_cookie(TOKEN_COOKIE, token, path=f"{base}/", httponly=True, samesite="strict")
        return response
    fragments = await _dashboard(request).snapshot_fragments(base)
    headers = {"Authorization": f"Bearer {token}"} if token is not None else {}
    body = TEMPLATE.substitute(
        base=_e(base),
        headers=_e(json.dumps(headers)),
        store=fragments.get("store", ""),
        projections=fragments.get("projections", ""),
        log=fragments.get("log", ""),
    )
    return HTMLResponse(body, headers={"Cache-Control": "no-store"})


async def events(request: Request) -> EventSourceResponse:
    """``GET /dashboard/events``: the page's fragments as SSE messages (event = the section to replace)."""
    dashboard = _dashboard(request)
    base = _base(request)

    async def messages() -> AsyncIterator[ServerSentEvent]:
        async for fragments in dashboard.follow(base):
            for name, fragment in fragments.items():
                yield ServerSentEvent(fragment, event=name)

    return EventSourceResponse(
        messages(),
        ping=request.app.state.heartbeat_seconds,
        ping_message_factory=lambda: ServerSentEvent(comment="ping"),
        headers={"Cache-Control": "no-store", "X-Accel-Buffering": "no"},
    )


async def retry(request: Request) -> Response:
    """``POST /dashboard/projections/{name}/retry``: :func:`eventstore.admin.retry`."""
    return await _resolve(request, "retry")


async def skip(request: Request) -> Response:
    """``POST /dashboard/projections/{name}/skip``: :func:`eventstore.admin.skip`."""
    return await _resolve(request, "skip")


async def _resolve(request: Request, action: str) -> Response:
    if request.headers.get("hx-request") != "true":
        raise RequestError(403, "send the HX-Request: true header (the dashboard's buttons do)")
    dashboard = _dashboard(request)
    name = request.path_params["name"]
    if name not in dashboard.names:
        raise RequestError(404, f"projection {name!r} is not one this app serves")
    operation = admin.retry if action == "retry" else admin.skip
    try:
        position = await asyncio.to_thread(operation, dashboard.sync_store(), name)
    except ProjectionNotFound:
        raise
    except ProjectionError as error:
        raise RequestError(409, str(error)) from error
    dashboard.wake()
    done = "retrying" if action == "retry" else "skipped"
    return HTMLResponse(f"{_e(name)}: {done} event {position}")
