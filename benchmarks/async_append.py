"""Measurement 5: append throughput of ``AsyncEventStore`` next to ``EventStore``, in one process each way.

Both contenders run in the benchmark's parent process (otherwise idle during
this measurement), each writing new streams of one event with the same JSON
payload as :mod:`benchmarks.writers` into its own migrated database:

- ``EventStore (threads)``: N threads sharing one :class:`eventstore.EventStore`.
- ``AsyncEventStore (tasks)``: N tasks sharing one
  :class:`eventstore.AsyncEventStore` in one event loop (kept across windows,
  so its connections stay warm, as the sync store's do).
- the same two with ``notify=False`` (full mode only): no wake-up after the
  commit. Both stores send their wake-up without waiting for its answer
  (read when the connection is next used); these two rows show what the
  wake-up still costs each store, and how much of any gap between the stores
  is the rest of the call.

Each writer appends a few times before its window opens (connections opened,
statements prepared), then appends until the window closes; events/s of all
writers together. Both stores keep at most 4 connections open between calls,
so at 8 writers both open and close connections beyond those 4 as they go:
that is each store's behaviour as shipped, measured the same way for both.
The order of the contenders rotates every round.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
import uuid

from benchmarks.report import Results
from benchmarks.server import BenchServer
from benchmarks.writers import PAYLOAD

__all__ = ["measure_async_append"]

logger = logging.getLogger(__name__)

SECTION = "Append throughput, asyncio vs sync store, one process (events/s, 1 event/append)"
SYNC = "EventStore (threads)"
ASYNC = "AsyncEventStore (tasks)"
SYNC_NO_NOTIFY = "EventStore notify=False (threads)"
ASYNC_NO_NOTIFY = "AsyncEventStore notify=False (tasks)"
_BASELINE = {ASYNC: (SYNC,), ASYNC_NO_NOTIFY: (SYNC_NO_NOTIFY,), SYNC_NO_NOTIFY: (), SYNC: ()}
_WARM_UP_APPENDS = 3


def _stream_id(prefix: str, counter: int) -> str:
    return f"{prefix}x{counter}"


class _SyncContender:
    """``writers`` threads on one EventStore, each appending single events to new streams."""

    def __init__(self, url: str, *, notify: bool = True) -> None:
        from eventstore import EventStore

        self.store = EventStore(url, notify=notify)

    def measure(self, writers: int, duration: float) -> float:
        from eventstore import NO_STREAM, NewEvent

        rates = [0.0] * writers
        errors: list[BaseException] = []
        start = time.time() + 0.1 + 0.01 * writers

        def write(index: int) -> None:
            prefix = f"sync-{index}x{uuid.uuid4().hex[:8]}"
            try:
                for counter in range(_WARM_UP_APPENDS):
                    self.store.append(
                        _stream_id(prefix, -counter - 1), [NewEvent("BenchEvent", PAYLOAD)], expected_version=NO_STREAM
                    )
                while time.time() < start:
                    time.sleep(min(0.005, max(0.0, start - time.time())))
                end = start + duration
                appended = 0
                while True:  # the rate over the writer's own completed appends (as benchmarks/writers.py)
                    self.store.append(
                        _stream_id(prefix, appended), [NewEvent("BenchEvent", PAYLOAD)], expected_version=NO_STREAM
                    )
                    appended += 1
                    if (now := time.time()) > end:
                        break
                rates[index] = appended / max(now - start, 1e-9)
            except BaseException as error:  # reported by the parent thread
                errors.append(error)

        threads = [threading.Thread(target=write, args=(index,), daemon=True) for index in range(writers)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        if errors:
            raise RuntimeError(f"a sync writer thread failed: {errors[0]!r}") from errors[0]
        return sum(rates)

    def close(self) -> None:
        self.store.engine.dispose()


class _AsyncContender:
    """``writers`` tasks on one AsyncEventStore, in one event loop that lives as long as the contender."""

    def __init__(self, url: str, *, notify: bool = True) -> None:
        from eventstore import AsyncEventStore

        self.runner = asyncio.Runner()
        self.store = AsyncEventStore(url, notify=notify)

    def measure(self, writers: int, duration: float) -> float:
        return self.runner.run(self._measure(writers, duration))

    async def _measure(self, writers: int, duration: float) -> float:
        from eventstore import NO_STREAM, NewEvent

        start = time.time() + 0.1 + 0.01 * writers

        async def write(index: int) -> float:
            prefix = f"async-{index}x{uuid.uuid4().hex[:8]}"
            for counter in range(_WARM_UP_APPENDS):
                await self.store.append(
                    _stream_id(prefix, -counter - 1), [NewEvent("BenchEvent", PAYLOAD)], expected_version=NO_STREAM
                )
            await asyncio.sleep(max(0.0, start - time.time()))
            end = start + duration
            appended = 0
            while True:  # the rate over the task's own completed appends (as benchmarks/writers.py)
                await self.store.append(
                    _stream_id(prefix, appended), [NewEvent("BenchEvent", PAYLOAD)], expected_version=NO_STREAM
                )
                appended += 1
                if (now := time.time()) > end:
                    return appended / max(now - start, 1e-9)

        rates = await asyncio.gather(*(write(index) for index in range(writers)))
        return sum(rates)

    def close(self) -> None:
        try:
            self.runner.run(self.store.close())
        finally:
            self.runner.close()


def measure_async_append(
    server: BenchServer,
    results: Results,
    *,
    writer_counts: tuple[int, ...],
    repeats: int,
    duration: float,
    without_wake_up: bool,
) -> None:
    """Every writer count, every contender, ``repeats`` rounds, the contenders' order rotating each round.

    ``without_wake_up`` adds the ``notify=False`` pair.
    """
    stores: list[tuple[str, _SyncContender | _AsyncContender]] = [
        (SYNC, _SyncContender(server.url(server.create_database("bench_append_sync")))),
        (ASYNC, _AsyncContender(server.url(server.create_database("bench_append_async")))),
    ]
    if without_wake_up:
        stores.append(
            (SYNC_NO_NOTIFY, _SyncContender(server.url(server.create_database("bench_append_sync_nn")), notify=False))
        )
        stores.append(
            (
                ASYNC_NO_NOTIFY,
                _AsyncContender(server.url(server.create_database("bench_append_async_nn")), notify=False),
            )
        )
    try:
        for writers in writer_counts:  # warm-up: every connection either store will keep
            for _, store in stores:
                store.measure(writers, 0.05)
        for round_number in range(repeats):
            for writers in writer_counts:
                case = f"{writers} writer{'s' if writers > 1 else ''}"
                shift = round_number % len(stores)
                for name, store in stores[shift:] + stores[:shift]:
                    rate = store.measure(writers, duration)
                    logger.info("async append %s %s round %d: %.0f events/s", case, name, round_number + 1, rate)
                    results.add(SECTION, case, name, rate, unit="ev/s", compare_to=_BASELINE[name])
    finally:
        for _, store in stores:
            store.close()
    if not without_wake_up:
        results.notes.append("asyncio vs sync append: the notify=False pair skipped in --quick; the full run has it")
