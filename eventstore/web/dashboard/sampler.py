"""One sampler per app, :class:`Dashboard`: snapshots while pages are open, fanned out to them.

It takes a snapshot every second, or at once when the store wakes up (a
``subscribe(after="head")`` subscription), while at least one page is open,
and fans the rendered fragments out to the pages' ``GET /dashboard/events``
streams through queues of one (a slow page only misses intermediate states).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncGenerator, Collection, Sequence
from typing import Any

from eventstore.errors import EventStoreError
from eventstore.projection import Projection
from eventstore.store import AsyncEventStore, EventStore

from .filters import LogFilter
from .history import History
from .render import render, render_unavailable
from .snapshot import Snapshot, take_snapshot

__all__ = ["COUNTS_MIN_SECONDS", "Dashboard"]

COUNTS_MIN_SECONDS = 2.0
"""The category and type counts scan the table: at most this often (less often when the scan is slow)."""


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
        try:
            if task is not None and not task.done():
                task.cancel()
                # gather, not `suppress(CancelledError): await task`, which would also swallow a cancel of
                # whoever awaits this (a shutdown that gives up waiting).
                (outcome,) = await asyncio.gather(task, return_exceptions=True)
                if isinstance(outcome, Exception):  # the sampler's own failure (a bug) is not hidden by the close
                    raise outcome
        finally:
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
            return render_unavailable(error)
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

    async def follow(self, base: str, log: LogFilter | None = None) -> AsyncGenerator[dict[str, str], None]:
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
                    snapshot, failed = None, render_unavailable(error)
                if snapshot is not None:
                    self.history.add(snapshot, time.monotonic())
                rendered: dict[tuple[str, LogFilter], dict[str, str]] = {}
                for queue, key in list(self._pages.items()):
                    if key not in rendered:
                        rendered[key] = failed if snapshot is None else render(snapshot, self.history, *key)
                    if queue.full():
                        queue.get_nowait()  # a slow page misses an intermediate state, never the latest
                    queue.put_nowait(rendered[key])
                # asyncio.timeout, not wait_for: on Python 3.11 wait_for drops a cancel that comes just
                # as the event is set, and this loop would never end (the hub's reader had that bug).
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(1.0):
                        await self._wake.wait()
                await asyncio.sleep(0.2)  # at most five snapshots a second under a stream of appends
        finally:
            listener.cancel()
            await asyncio.gather(listener, return_exceptions=True)

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
