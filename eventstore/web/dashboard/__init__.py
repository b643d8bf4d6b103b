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
htmx and its SSE extension (``eventstore/web/static/``, see its ``NOTICE``): no
build step, nothing fetched from elsewhere.

Retry and Skip are ``POST /dashboard/projections/{name}/retry|skip``, and a
token, when the app has one, is kept in a cookie: see :mod:`.endpoints`.

The modules, lower ones first (each imports only those above it):

- :mod:`.filters`: :class:`LogFilter` and :func:`log_filter` (the log's filters, parsed from a query);
- :mod:`.snapshot`: :class:`Snapshot`, :func:`take_snapshot`, :class:`PickUp` (the one place that reads the store);
- :mod:`.history`: :class:`History` (the samples, rates and the ETA's numbers);
- :mod:`.render`: :func:`render` and its pieces, :func:`why`, :func:`eta`, :func:`plot` (HTML and words);
- :mod:`.sampler`: :class:`Dashboard` (the sampler and its subscribers);
- :mod:`.endpoints`: :func:`page`, :func:`events`, :func:`retry`, :func:`skip`, and :data:`STATIC`.

This package was one module, ``eventstore/web/dashboard.py``; the names it had are re-exported here.
"""

from __future__ import annotations

from .endpoints import STATIC, TEMPLATE, TOKEN_COOKIE, events, page, retry, skip
from .filters import LOG_FILTER_LENGTH, LOG_FILTER_VALUES, LogFilter, log_filter
from .history import (
    HISTORY_SAMPLES,
    HISTORY_SECONDS,
    PICKUP_SAMPLES,
    PROGRESS_WINDOW_SECONDS,
    RATE_BUCKET_SECONDS,
    SAMPLE_SPACING,
    History,
    Sample,
)
from .render import (
    PICKUP_TITLE,
    eta,
    pickup_cell,
    plot,
    progress,
    rate_text,
    render,
    render_log,
    render_log_form,
    render_projections,
    render_store,
    seconds_text,
    why,
)
from .sampler import COUNTS_MIN_SECONDS, Dashboard
from .snapshot import COUNTS_LIMIT, LOG_EVENTS, PickUp, RecentEvent, Snapshot, take_snapshot

__all__ = [
    # The public API, as before the split.
    "Dashboard",
    "History",
    "LogFilter",
    "PickUp",
    "Snapshot",
    "log_filter",
    "render",
    "take_snapshot",
    # What the app mounts (eventstore.web.app).
    "STATIC",
    "events",
    "page",
    "retry",
    "skip",
    # The old module's other public names (the tests import some of them).
    "COUNTS_LIMIT",
    "COUNTS_MIN_SECONDS",
    "HISTORY_SAMPLES",
    "HISTORY_SECONDS",
    "LOG_EVENTS",
    "LOG_FILTER_LENGTH",
    "LOG_FILTER_VALUES",
    "PICKUP_SAMPLES",
    "PICKUP_TITLE",
    "PROGRESS_WINDOW_SECONDS",
    "RATE_BUCKET_SECONDS",
    "RecentEvent",
    "SAMPLE_SPACING",
    "Sample",
    "TEMPLATE",
    "TOKEN_COOKIE",
    "eta",
    "pickup_cell",
    "plot",
    "progress",
    "rate_text",
    "render_log",
    "render_log_form",
    "render_projections",
    "render_store",
    "seconds_text",
    "why",
]
