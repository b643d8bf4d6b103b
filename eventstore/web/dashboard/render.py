"""The page's HTML fragments from a :class:`~.snapshot.Snapshot` and the :class:`~.history.History`.

:func:`render` gives the live fragments (store, projections, log) by SSE event
name; the words and numbers in them (:func:`why`, :func:`eta`,
:func:`rate_text`, :func:`seconds_text`) and the inline SVG plots
(:func:`plot`) are here too. Every value from the store is HTML-escaped.
"""

from __future__ import annotations

import html
import math
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from urllib.parse import quote

from eventstore import admin
from eventstore.errors import first_line
from eventstore.store.stalls import format_duration

from .filters import LogFilter
from .history import PROGRESS_WINDOW_SECONDS, RATE_BUCKET_SECONDS, History
from .snapshot import Snapshot

__all__ = [
    "PICKUP_TITLE",
    "eta",
    "pickup_cell",
    "plot",
    "progress",
    "rate_text",
    "render",
    "render_log",
    "render_log_form",
    "render_projections",
    "render_store",
    "render_unavailable",
    "seconds_text",
    "why",
]


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


def render_unavailable(error: BaseException) -> dict[str, str]:
    """The store fragment when a snapshot cannot be taken: the error's first line."""
    message = f"<h2>Store</h2><p class='why problem'>cannot read the store: {_e(first_line(error))}</p>"
    return {"store": message}
