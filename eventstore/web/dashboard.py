"""The dashboard at ``/``: the store and each projection, live, and why a projection is behind, in words.

One place gathers the state (:func:`take_snapshot`: projection status,
open failures, head, recent events, counts), in a thread on a synchronous
:class:`~eventstore.store.EventStore`; :func:`render` turns it into HTML
fragments. One sampler task per app (:class:`Dashboard`) takes a snapshot
every second, or at once when the store wakes up (a ``subscribe(after="head")``
subscription), while at least one page is open, and fans the fragments out
to the pages' ``GET /dashboard/events`` streams through queues of one (a
slow page only misses intermediate states). The plots' history is kept in
memory, bounded, from the time the first page opens (:class:`History`):

- events/s: the head's advance, in 5 s steps over the last five minutes;
- per projection: its lag; its rate through the log and, while it rebuilds
  or catches up, an ETA (what is left over the net speed, as the head moves
  too); and "picked up after" (:class:`PickUp`): for each checkpoint move
  the sampler sees, from the append of the event at the checkpoint to the
  start of the batch that moved it there, both read from the database, so
  right whichever process runs the projection.

The event log takes filters as ``GET /api/events`` does (``?category=``,
``?type=``, ``?stream=``; :class:`LogFilter`): the page's form reloads it with
them, and its ``GET /dashboard/events`` carries them, so its log stays live
within them (one more query per snapshot for each distinct filter open).

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
import bisect
import contextlib
import html
import itertools
import json
import math
import string
import time
from collections import deque
from collections.abc import AsyncIterator, Collection, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlencode

import sqlalchemy as sa
from sse_starlette import EventSourceResponse, ServerSentEvent
from starlette.requests import Request
from starlette.responses import HTMLResponse, RedirectResponse, Response

from eventstore import admin
from eventstore.errors import EventStoreError, ProjectionError, ProjectionNotFound, first_line
from eventstore.projection import Projection
from eventstore.store import AsyncEventStore, EventStore, sql
from eventstore.store.sql import FENCE
from eventstore.store.stalls import format_duration
from eventstore.web.errors import RequestError

__all__ = ["Dashboard", "History", "LogFilter", "PickUp", "Snapshot", "log_filter", "render", "take_snapshot"]

HERE = Path(__file__).parent
STATIC = HERE / "static"
TEMPLATE = string.Template((HERE / "templates" / "dashboard.html").read_text(encoding="utf-8"))
TOKEN_COOKIE = "eventstore_token"

HISTORY_SECONDS = 300.0
"""How far back the plots of the head and of each projection's lag go (five minutes)."""
SAMPLE_SPACING = 1.0
"""Kept samples are about this far apart (the sampler runs up to five times a second under appends)."""
HISTORY_SAMPLES = int(HISTORY_SECONDS / SAMPLE_SPACING * 1.5)
"""A bound on each series, whatever the spacing."""
RATE_BUCKET_SECONDS = 5.0
"""The events/s plot's step."""
PROGRESS_WINDOW_SECONDS = 15.0
"""A catching-up projection's rate (and so its ETA) is over this many seconds of its samples."""
PICKUP_SAMPLES = 60
"""Pick-up times kept per projection (one per checkpoint move the sampler saw)."""
LOG_EVENTS = 15
COUNTS_MIN_SECONDS = 2.0
"""The category and type counts scan the table: at most this often (less often when the scan is slow)."""
COUNTS_LIMIT = 20

LOG_FILTER_VALUES = 20
"""At most this many values per log filter field; each at most :data:`LOG_FILTER_LENGTH` characters."""
LOG_FILTER_LENGTH = 255


def _recent(log: LogFilter) -> str:
    """The last readable events (within ``log``), newest first; parameters from :meth:`LogFilter.parameters`."""
    return (
        "SELECT global_position, stream_id, event_type, recorded_at FROM events "  # noqa: S608 - constant fragments
        f"WHERE transaction_order < {FENCE}{sql.filter_clause(log.categories, log.event_types, log.stream_ids)} "
        f"ORDER BY transaction_order DESC, global_position DESC LIMIT {LOG_EVENTS}"
    )


# The event at each checkpoint: when it was appended, and when the batch that moved the checkpoint there began.
_PICKUPS = sa.text(
    "SELECT c.projection_name AS name, c.global_position AS position, c.updated_at, e.recorded_at "
    "FROM projection_checkpoints c LEFT JOIN events e ON e.global_position = c.global_position "
    "WHERE c.projection_name = ANY(CAST(:names AS text[]))"
)
_COUNTS = "SELECT {column} AS name, count(*) AS n FROM events GROUP BY 1 ORDER BY 2 DESC, 1 LIMIT {limit}"


@dataclass(frozen=True, slots=True)
class RecentEvent:
    position: int
    stream_id: str
    event_type: str
    recorded_at: datetime


@dataclass(frozen=True, slots=True)
class LogFilter:
    """The event log's filters (query parameters ``category``, ``type``, ``stream``, as ``GET /api/events``).

    Values of one field are alternatives, fields combine; empty: every event.
    """

    categories: tuple[str, ...] = ()
    event_types: tuple[str, ...] = ()
    stream_ids: tuple[str, ...] = ()

    def __bool__(self) -> bool:
        return bool(self.categories or self.event_types or self.stream_ids)

    def query(self) -> str:
        """The query string that gives this filter back (``category=order&type=OrderPlaced``)."""
        pairs = [("category", v) for v in self.categories] + [("type", v) for v in self.event_types]
        return urlencode(pairs + [("stream", v) for v in self.stream_ids])

    def parameters(self) -> dict[str, Any]:
        return sql.filter_parameters(self.categories, self.event_types, self.stream_ids)


def log_filter(query: Any) -> LogFilter:
    """The :class:`LogFilter` of a request's query (a starlette ``QueryParams``).

    A field repeats (``?category=order&category=invoice``) or takes comma-separated
    values (``?category=order,invoice``, as the page's form sends); empty values are ignored.

    Raises :class:`RequestError` (422) for more than :data:`LOG_FILTER_VALUES` values of a
    field or a value over :data:`LOG_FILTER_LENGTH` characters.
    """
    fields = []
    for name in ("category", "type", "stream"):
        split = (value.strip() for text in query.getlist(name) for value in text.split(","))
        values = tuple(dict.fromkeys(value for value in split if value))
        if len(values) > LOG_FILTER_VALUES:
            raise RequestError(422, f"query parameter {name}: at most {LOG_FILTER_VALUES} values, got {len(values)}")
        for value in values:
            if len(value) > LOG_FILTER_LENGTH:
                raise RequestError(
                    422, f"query parameter {name}={value[:20]!r}...: at most {LOG_FILTER_LENGTH} characters"
                )
        fields.append(values)
    return LogFilter(*fields)


@dataclass(frozen=True, slots=True)
class PickUp:
    """The event a checkpoint is at: when it was appended, and when the batch that moved the checkpoint there began.

    Both are the database's ``now()``, the start of a transaction, on one clock:
    ``recorded_at`` is the appending transaction's (the events column's default),
    ``batch_started_at`` the checkpoint's ``updated_at``, set by the batch's first
    statement (:data:`eventstore.runner.checkpoints._ADVANCE_FROM`) after the
    runner read the events. Other writers of the row (a lease taken or
    released, a failure recorded) also set ``updated_at``: :class:`History`
    trusts it only when it saw the checkpoint move under a held lease.
    """

    position: int
    batch_started_at: datetime
    recorded_at: datetime | None
    """None at position 0, or where the event is not readable (never expected: events are never deleted)."""

    @property
    def seconds(self) -> float | None:
        """``batch_started_at - recorded_at`` in seconds (clamped at 0), or None."""
        if self.recorded_at is None:
            return None
        return max(0.0, (self.batch_started_at - self.recorded_at).total_seconds())


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
    pickups: dict[str, PickUp] = field(default_factory=dict)
    """Each projection's :class:`PickUp`, by name (none for a projection without a checkpoint row)."""
    logs: dict[LogFilter, list[RecentEvent]] = field(default_factory=dict)
    """The last events within each filter asked for (``recent`` is the unfiltered log)."""


def take_snapshot(
    store: EventStore,
    projections: Sequence[Projection | str],
    counts: tuple[list[Any], list[Any]] | None = None,
    *,
    log_filters: Collection[LogFilter] = (),
) -> Snapshot:
    """Status, open failures, head, recent events (also within each of ``log_filters``), pick-ups and counts.

    ``counts``: reuse these instead of scanning the table.
    """
    statuses = admin.projection_status(store, projections) if projections else []
    failures = {}
    for status in statuses:
        if status.state == "failed":
            open_failures = admin.list_failures(store, status.name, open_only=True)
            if open_failures:
                failures[status.name] = open_failures[-1]
    pickups: dict[str, PickUp] = {}
    with store.engine.connect() as connection:
        recent = [RecentEvent(*row) for row in connection.exec_driver_sql(_recent(LogFilter())).all()]
        logs = {
            log: [RecentEvent(*row) for row in connection.exec_driver_sql(_recent(log), log.parameters()).all()]
            for log in log_filters
            if log
        }
        if statuses:
            rows = connection.execute(_PICKUPS, {"names": [status.name for status in statuses]}).all()
            pickups = {row.name: PickUp(int(row.position), row.updated_at, row.recorded_at) for row in rows}
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
        pickups=pickups,
        logs=logs,
    )


def _counts(connection: Any, column: str) -> list[Any]:
    rows = connection.exec_driver_sql(_COUNTS.format(column=column, limit=COUNTS_LIMIT)).all()
    return [(row.name, int(row.n)) for row in rows]


Sample = tuple[float, int]
"""(monotonic time, value)."""


def _push(samples: deque[Sample], now: float, value: int) -> None:
    """Add a sample; samples stay about :data:`SAMPLE_SPACING` apart (the newest replaces the last until then)."""
    if len(samples) >= 2 and now - samples[-2][0] < SAMPLE_SPACING:
        samples[-1] = (now, value)
    else:
        samples.append((now, value))
    while samples[0][0] < now - HISTORY_SECONDS - RATE_BUCKET_SECONDS:
        samples.popleft()


def _at(samples: Sequence[Sample], times: Sequence[float], moment: float) -> int:
    """The value of the last sample at or before ``moment`` (the first one before them all)."""
    return samples[max(bisect.bisect_right(times, moment) - 1, 0)][1]


@dataclass
class History:
    """What the plots and rates need, in memory and bounded, from the snapshots the sampler took.

    Per series, samples about a second apart over :data:`HISTORY_SECONDS` (at most
    :data:`HISTORY_SAMPLES`): the head, and each projection's lag and position; and
    each projection's last :data:`PICKUP_SAMPLES` pick-up times (:class:`PickUp`).
    It starts empty when the app's first page opens.
    """

    heads: deque[Sample] = field(default_factory=lambda: deque(maxlen=HISTORY_SAMPLES))
    lags: dict[str, deque[Sample]] = field(default_factory=dict)
    positions: dict[str, deque[Sample]] = field(default_factory=dict)
    pickups: dict[str, deque[tuple[datetime, float]]] = field(default_factory=dict)
    """Per projection, (batch started at, seconds) for each checkpoint move seen, oldest first."""
    wall_offset: float = 0.0
    """Wall clock minus monotonic clock at the last sample: labels the plots' times."""
    _seen: dict[str, int] = field(default_factory=dict)
    _states: dict[str, str] = field(default_factory=dict)

    def add(self, snapshot: Snapshot, now: float) -> None:
        """Add a snapshot taken at monotonic time ``now``."""
        self.wall_offset = snapshot.taken_at.timestamp() - now
        _push(self.heads, now, snapshot.head)
        for status in snapshot.statuses:
            _push(self.lags.setdefault(status.name, deque(maxlen=HISTORY_SAMPLES)), now, status.lag_events)
            positions = self.positions.setdefault(status.name, deque(maxlen=HISTORY_SAMPLES))
            before, self._states[status.name] = self._states.get(status.name), status.state
            if positions and (status.position < positions[-1][1] or status.state != before):
                # Moved back (a rebuild or a reset), or began a rebuild or a catch-up: its rate starts now.
                positions.clear()
            _push(positions, now, status.position)
            self._note_pickup(status, snapshot.pickups.get(status.name))

    def _note_pickup(self, status: admin.ProjectionStatus, pickup: PickUp | None) -> None:
        # Trust updated_at only when the checkpoint moved since the last snapshot under a held lease
        # (a lease taken or released, or a failure, sets it too) and not in a rebuild (old events: no wake-up).
        if pickup is None:
            return
        before, self._seen[status.name] = self._seen.get(status.name), pickup.position
        if before is None or pickup.position <= before or pickup.seconds is None:
            return
        if status.owner is None or status.state in ("failed", "stopped", "rebuilding"):
            return
        samples = self.pickups.setdefault(status.name, deque(maxlen=PICKUP_SAMPLES))
        samples.append((pickup.batch_started_at, pickup.seconds))

    def wall(self, moment: float) -> datetime:
        """The UTC time of monotonic time ``moment``."""
        return datetime.fromtimestamp(moment + self.wall_offset, UTC)

    def rate_buckets(self, bucket: float = RATE_BUCKET_SECONDS) -> list[float]:
        """Events per second in whole ``bucket``-second steps ending at the last sample, oldest first.

        From the head's advance (an append rolled back leaves a gap in the
        positions, counted too); empty until the samples span one bucket.
        """
        if len(self.heads) < 2:
            return []
        samples = list(self.heads)
        times = [t for t, _ in samples]
        end = times[-1]
        count = int((end - max(times[0], end - HISTORY_SECONDS)) // bucket)
        edges = [end - (count - i) * bucket for i in range(count + 1)]
        values = [_at(samples, times, edge) for edge in edges]
        return [max(0, v2 - v1) / bucket for v1, v2 in itertools.pairwise(values)]

    def rate(self, seconds: float = 60.0) -> float:
        """The head's events per second over the last ``seconds`` (0 with fewer than two samples)."""
        return _rate_over(self.heads, seconds) or 0.0

    def progress_rates(self, name: str, seconds: float = PROGRESS_WINDOW_SECONDS) -> tuple[float, float] | None:
        """(positions per second of ``name``'s checkpoint, the head's events per second), over the same window.

        The window is the last ``seconds`` of its samples since its checkpoint last moved back or
        its state last changed (a rebuild or a catch-up began); None while that spans less than a second.
        """
        positions = list(self.positions.get(name, ()))
        span = _window(positions, seconds)
        if span is None:
            return None
        (start, first), (end, last) = span
        heads = list(self.heads)
        times = [t for t, _ in heads]
        head_advance = _at(heads, times, end) - _at(heads, times, start)
        return max(0, last - first) / (end - start), max(0, head_advance) / (end - start)


def _window(samples: Sequence[Sample], seconds: float) -> tuple[Sample, Sample] | None:
    """The first sample within ``seconds`` of the last, and the last; None unless they are a second apart."""
    if len(samples) < 2:
        return None
    end = samples[-1]
    start = next(sample for sample in samples if sample[0] >= end[0] - seconds)
    return (start, end) if end[0] - start[0] >= 1.0 else None


def _rate_over(samples: Sequence[Sample], seconds: float) -> float | None:
    """Advance per second over the last ``seconds`` of ``samples`` (see :func:`_window`)."""
    span = _window(samples, seconds)
    if span is None:
        return None
    (start, first), (end, last) = span
    return max(0, last - first) / (end - start)


# -- rendering -----------------------------------------------------------------------------------------------


def _e(value: object) -> str:
    return html.escape(str(value))


def plot(values: Sequence[float], *, width: int = 180, height: int = 36, label: str = "") -> str:
    """A small inline SVG line plot of ``values`` (oldest first), scaled to its maximum; ``label`` is its tooltip."""
    if len(values) < 2:
        values = [values[0], values[0]] if values else [0.0, 0.0]
    top = max(max(values), 1e-9)
    step = width / (len(values) - 1)
    points = " ".join(f"{i * step:.1f},{height - 2 - (v / top) * (height - 4):.1f}" for i, v in enumerate(values))
    return (
        f'<svg class="plot" width="{width}" height="{height}" viewBox="0 0 {width} {height}" role="img" '
        f'aria-label="{_e(label)}"><title>{_e(label)}</title><polyline points="{points}"/></svg>'
    )


def _clock(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime("%H:%M:%S")


def _events(count: int) -> str:
    return f"{count} event" if count == 1 else f"{count} events"


def rate_text(per_second: float) -> str:
    """``4,100 events/s``; one decimal under 10 (``2.5 events/s``)."""
    return f"{per_second:.1f} events/s" if per_second < 10 else f"{per_second:,.0f} events/s"


def seconds_text(seconds: float) -> str:
    """``12 ms`` under a second, ``3.4 s`` under two minutes, then :func:`format_duration` (``17 min``)."""
    if seconds < 1:
        return f"{seconds * 1000:.0f} ms"
    if seconds < 120:
        return f"{seconds:.1f} s"
    return format_duration(seconds)


def eta(position: int, head: int, rates: tuple[float, float] | None) -> str:
    """How long until a checkpoint at ``position`` reaches ``head``, in words: ``about 2 min left at 4,100 events/s``.

    ``rates`` is (the checkpoint's positions per second, the events per second
    appended meanwhile), see :meth:`History.progress_rates`. What is left is
    divided by the net speed, as the head moves too. Starts with "—" when the
    rate is unknown or zero, or appends arrive as fast as it applies.
    """
    if rates is None:
        return "— (measuring its rate)"
    rate, appended = rates
    if rate <= 0:
        return f"— (no progress in the last {PROGRESS_WINDOW_SECONDS:.0f} s)"
    closing = rate - appended
    if closing <= 0:
        return f"— at {rate_text(rate)}: events arrive as fast ({rate_text(appended)})"
    left = max(0, head - position) / closing
    when = "under a second" if left < 1 else f"about {format_duration(left)}"
    return f"{when} left at {rate_text(rate)}"


def progress(status: admin.ProjectionStatus, history: History) -> str:
    """A rebuilding or catching-up projection's progress (HTML): position of head, %, rate and ETA; else "".

    Catching up means running with its oldest unapplied event over a second
    old (so a live projection a batch behind does not flicker).
    """
    catching_up = status.state == "running" and status.lag_events > 0 and status.lag_seconds >= 1.0
    if status.state != "rebuilding" and not catching_up:
        return ""
    done = min(status.position / status.head, 1.0) if status.head else 0.0
    rates = history.progress_rates(status.name)
    left = eta(status.position, status.head, rates)
    text = f"{status.position:,} of {status.head:,} ({math.floor(done * 100)}%), {left}"
    return f'<div class="progress"><progress max="1" value="{done:.4f}"></progress> {_e(text)}</div>'


PICKUP_TITLE = (
    "picked up after: from the append (events.recorded_at, its transaction's start) to the start of the batch "
    "that moved the checkpoint to that event (the checkpoint's updated_at), both on the database's clock; "
    "the handlers and the batch's commit come after. One value per checkpoint move the dashboard saw "
    "under a runner, rebuilds left out."
)


def pickup_cell(samples: Sequence[tuple[datetime, float]]) -> str:
    """The "picked up after" cell: the latest value, a plot of the recent ones, the batch's time (UTC)."""
    if not samples:
        return f'<td class="pickup muted" title="{_e(PICKUP_TITLE)}">—</td>'
    moment, seconds = samples[-1]
    values = [value for _, value in samples]
    label = f"picked up after, last {len(values)} batches seen, peak {seconds_text(max(values))}"
    return (
        f'<td class="pickup" title="{_e(PICKUP_TITLE)}"><b>{seconds_text(seconds)}</b> '
        f"{plot(values, width=100, height=24, label=label)}"
        f'<div class="muted">batch at {_clock(moment)} UTC</div></td>'
    )


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
    buckets = history.rate_buckets()
    step = f"{RATE_BUCKET_SECONDS:.0f} s"
    if buckets:
        end = history.heads[-1][0]
        start = end - len(buckets) * RATE_BUCKET_SECONDS
        caption = (
            f"events/s every {step}, {_clock(history.wall(start))} to {_clock(history.wall(end))} UTC, "
            f"peak {rate_text(max(buckets))}"
        )
    else:
        caption = f"events/s every {step}: measuring (from when the first page opened)"
    return (
        "<h2>Store</h2><div class=figures>"
        f'<div class=figure>head position<b id="head">{snapshot.head}</b></div>'
        f'<div class=figure>events/s (last minute)<b id="rate">{history.rate():.1f}</b></div>'
        f"<div class=figure>{plot(buckets, width=320, height=48, label=caption)}"
        f'<div class=muted id="rate-plot">{_e(caption)}</div></div></div>'
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
        lag_samples = history.lags.get(status.name, ())
        lags = [float(lag) for _, lag in lag_samples]
        span = lag_samples[-1][0] - lag_samples[0][0] if lag_samples else 0.0
        queue = ""
        if status.notify_queue_usage >= 0.01:
            queue = f"<div class=warning>NOTIFY queue {status.notify_queue_usage:.0%} full</div>"
        state_class = "state-" + status.state.replace(" ", "-")
        lag_label = f"lag of {status.name} over the last {span:.0f} s, peak {max(lags, default=0):.0f} events"
        rows.append(
            f'<tr data-projection="{_e(status.name)}"><td><b>{_e(status.name)}</b></td>'
            f'<td><span class="state {state_class}">{_e(status.state)}</span></td>'
            f"<td>{_e(status.owner or '—')}</td>"
            f'<td class="n">{status.position}</td>'
            f'<td class="n">{status.lag_events}</td>'
            f'<td class="n">{status.lag_seconds:.1f}</td>'
            f"<td>{plot(lags, label=lag_label)}</td>"
            f"{pickup_cell(history.pickups.get(status.name, ()))}"
            f'<td class="why-cell"><div class="why {kind}">{text}</div>{progress(status, history)}'
            f"{buttons}{queue}</td></tr>"
        )
    return (
        "<h2>Projections</h2><table><thead><tr><th>name</th><th>state</th><th>owner</th>"
        '<th class="n">position</th><th class="n">lag (events)</th><th class="n">lag (s)</th>'
        f'<th>lag history</th><th title="{_e(PICKUP_TITLE)}">picked up after</th><th>why</th></tr></thead>'
        f"<tbody>{''.join(rows)}</tbody></table>"
    )


def render_log(snapshot: Snapshot, log: LogFilter | None = None) -> str:
    """The event log's table: the last events, within ``log`` when given."""
    events = snapshot.logs.get(log, []) if log else snapshot.recent
    rows = "".join(
        f'<tr><td class="n">{event.position}</td><td>{_e(event.event_type)}</td><td>{_e(event.stream_id)}</td>'
        f"<td>{_clock(event.recorded_at)}</td></tr>"
        for event in events
    )
    none = "no events within these filters yet" if log else "no events yet"
    return (
        "<table><thead><tr><th class=n>position</th><th>type</th>"
        "<th>stream</th><th>recorded (UTC)</th></tr></thead><tbody>"
        f"{rows or f'<tr><td class=muted colspan=4>{none}</td></tr>'}</tbody></table>"
    )


def render_log_form(base: str, log: LogFilter) -> str:
    """The log's filter form: a GET of the page with ``category``, ``type`` and ``stream`` (outside the live swaps)."""
    inputs = "".join(
        f'<label>{label} <input name="{name}" value="{_e(", ".join(values))}" placeholder="any" size="14"></label>'
        for label, name, values in (
            ("category", "category", log.categories),
            ("type", "type", log.event_types),
            ("stream", "stream", log.stream_ids),
        )
    )
    clear = f' <a href="{_e(base)}/">all events</a>' if log else ""
    return f'<form id="log-filter" method="get" action="{_e(base)}/">{inputs} <button>Filter</button>{clear}</form>'


def render(snapshot: Snapshot, history: History, base: str, log: LogFilter | None = None) -> dict[str, str]:
    """The page's fragments, by SSE event name (the ids of the elements they replace); ``log``: the log's filters."""
    return {
        "store": render_store(snapshot, history),
        "projections": render_projections(snapshot, history, base),
        "log": render_log(snapshot, log),
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
        self._pages: dict[asyncio.Queue[dict[str, str]], tuple[str, LogFilter]] = {}
        """Each open page's queue, and its (base path, log filter)."""
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

    async def snapshot_fragments(self, base: str, log: LogFilter | None = None) -> dict[str, str]:
        """One snapshot now, rendered (the page's first paint)."""
        log = log or LogFilter()
        try:
            snapshot = await asyncio.to_thread(self._take, {log})
        except EventStoreError as error:
            return _unavailable(error)
        return render(snapshot, self.history, base, log)

    def _take(self, log_filters: Collection[LogFilter] = ()) -> Snapshot:
        # The counts scan the table: again only when the head moved, and at most every 2 s or 20 times
        # as long as the last scan took (a big store is counted less often).
        due = time.monotonic() - self._counts_at >= max(COUNTS_MIN_SECONDS, 20 * self._counts_took)
        moved = not self.history.heads or self.history.heads[-1][1] != self._counted_head
        refresh = self._counts is None or (due and moved)
        started = time.monotonic()
        counts = None if refresh else self._counts
        snapshot = take_snapshot(self.sync_store(), self.projections, counts, log_filters=log_filters)
        if refresh:
            self._counts = (snapshot.categories, snapshot.event_types)
            self._counts_at, self._counts_took = time.monotonic(), time.monotonic() - started
            self._counted_head = snapshot.head
        return snapshot

    async def follow(self, base: str, log: LogFilter | None = None) -> AsyncIterator[dict[str, str]]:
        """Fragments for one page, as long as it stays; starts the sampler for the first page.

        Each distinct ``log`` filter among the open pages costs one more query per snapshot.
        """
        queue: asyncio.Queue[dict[str, str]] = asyncio.Queue(maxsize=1)
        self._pages[queue] = (base, log or LogFilter())
        if self._task is None or self._task.done():
            self._wake = asyncio.Event()
            self._task = asyncio.create_task(self._sample(), name="eventstore-dashboard")
        try:
            while True:
                yield await queue.get()
        finally:
            del self._pages[queue]

    async def _sample(self) -> None:
        assert self._wake is not None
        listener = asyncio.create_task(self._listen(), name="eventstore-dashboard-wake-ups")
        try:
            while self._pages:
                self._wake.clear()
                failed: dict[str, str] = {}
                log_filters = {log for _, log in self._pages.values()}
                try:
                    snapshot: Snapshot | None = await asyncio.to_thread(self._take, log_filters)
                except EventStoreError as error:
                    snapshot, failed = None, _unavailable(error)
                if snapshot is not None:
                    self.history.add(snapshot, time.monotonic())
                rendered: dict[tuple[str, LogFilter], dict[str, str]] = {}
                for queue, key in list(self._pages.items()):
                    if key not in rendered:
                        rendered[key] = failed if snapshot is None else render(snapshot, self.history, *key)
                    if queue.full():
                        queue.get_nowait()  # a slow page misses an intermediate state, never the latest
                    queue.put_nowait(rendered[key])
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
    """``GET /[?category=C][&type=T][&stream=S]``: the page, with a first snapshot in it; filters apply to its log."""
    base = _base(request)
    token: str | None = request.app.state.token
    if token is not None and "token" in request.query_params:
        # The middleware accepted the token from the query; keep it in a cookie and drop it from the address.
        response = RedirectResponse(f"{base}/", status_code=303)
        response.set_cookie(TOKEN_COOKIE, token, path=f"{base}/", httponly=True, samesite="strict")
        return response
    log = log_filter(request.query_params)
    fragments = await _dashboard(request).snapshot_fragments(base, log)
    headers = {"Authorization": f"Bearer {token}"} if token is not None else {}
    body = TEMPLATE.substitute(
        base=_e(base),
        events_url=_e(f"{base}/dashboard/events" + (f"?{log.query()}" if log else "")),
        log_form=render_log_form(base, log),
        log_events=LOG_EVENTS,
        headers=_e(json.dumps(headers)),
        store=fragments.get("store", ""),
        projections=fragments.get("projections", ""),
        log=fragments.get("log", ""),
    )
    return HTMLResponse(body, headers={"Cache-Control": "no-store"})


async def events(request: Request) -> EventSourceResponse:
    """``GET /dashboard/events[?category=C][&type=T][&stream=S]``: the page's fragments as SSE messages.

    The event name is the id of the element to replace; the filters apply to the log.
    """
    dashboard = _dashboard(request)
    base = _base(request)
    log = log_filter(request.query_params)

    async def messages() -> AsyncIterator[ServerSentEvent]:
        async for fragments in dashboard.follow(base, log):
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
