"""Measurement 5: append throughput of ``AsyncEventStore`` next to ``EventStore``, in one process each way.

Both contenders run in the benchmark's parent process (otherwise idle during
this measurement), each writing new streams of one event with the same JSON
payload as :mod:`benchmarks.writers` into its own migrated database:

- ``EventStore (threads)``: N threads sharing one :class:`eventstore.EventStore`.
- ``AsyncEventStore (tasks)``: N tasks sharing one
  :class:`eventstore.AsyncEventStore` in one event loop (kept across windows,
  so its connections stay warm, as the sync store's do).

Each writer appends a few times before its window opens (connections opened,
statements prepared), then appends until the window closes; events/s of all
writers together. Both stores keep at most 4 connections open between calls,
so at 8 writers both open and close connections beyond those 4 as they go:
that is each store's behaviour as shipped, measured the same way for both.
The order of the two contenders alternates every round.
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
_WARM_UP_APPENDS = 3


def _stream_id(prefix: str, counter: int) -> str:
    return f"{prefix}x{counter}"


class _SyncContender:
    """``writers`` threads on one EventStore, each appending single events to new streams."""

    def __init__(self, url: str) -> None:
        from eventstore import EventStore

        self.store = EventStore(url)

    def measure(self, writers: int, duration: float) -> float:
        from eventstore import NO_STREAM, NewEvent

        counts = [0] * writers
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
                while True:
                    self.store.append(
                        _stream_id(prefix, appended), [NewEvent("BenchEvent", PAYLOAD)], expected_version=NO_STREAM
                    )
                    if time.time() > end:
                        break
                    appended += 1
                counts[index] = appended
            except BaseException as error:  # reported by the parent thread
                errors.append(error)

        threads = [threading.Thread(target=write, args=(index,), daemon=True) for index in range(writers)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        if errors:
            raise RuntimeError(f"a sync writer thread failed: {errors[0]!r}") from errors[0]
        return sum(counts) / duration

    def close(self) -> None:
        self.store.engine.dispose()


class _AsyncContender:
    """``writers`` tasks on one AsyncEventStore, in one event loop that lives as long as the contender."""

    def __init__(self, url: str) -> None:
        from eventstore import AsyncEventStore

        self.runner = asyncio.Runner()
        self.store = AsyncEventStore(url)

    def measure(self, writers: int, duration: float) -> float:
        return self.runner.run(self._measure(writers, duration))

    async def _measure(self, writers: int, duration: float) -> float:
        from eventstore import NO_STREAM, NewEvent

        start = time.time() + 0.1 + 0.01 * writers

        async def write(index: int) -> int:
            prefix = f"async-{index}x{uuid.uuid4().hex[:8]}"
            for counter in range(_WARM_UP_APPENDS):
                await self.store.append(
                    _stream_id(prefix, -counter - 1), [NewEvent("BenchEvent", PAYLOAD)], expected_version=NO_STREAM
                )
            await asyncio.sleep(max(0.0, start - time.time()))
            end = start + duration
            appended = 0
            while True:
                await self.store.append(
                    _stream_id(prefix, appended), [NewEvent("BenchEvent", PAYLOAD)], expected_version=NO_STREAM
                )
                if time.time() > end:
                    return appended
                appended += 1

        counts = await asyncio.gather(*(write(index) for index in range(writers)))
        return sum(counts) / duration

    def close(self) -> None:
        try:
            self.runner.run(self.store.close())
        finally:
            self.runner.close()


def measure_async_append(
    server: BenchServer, results: Results, *, writer_counts: tuple[int, ...], repeats: int, duration: float
) -> None:
    """Every writer count, both contenders, ``repeats`` rounds, the contenders' order alternating each round."""
    sync = _SyncContender(server.url(server.create_database("bench_append_sync")))
    asynchronous = _AsyncContender(server.url(server.create_database("bench_append_async")))
    try:
        contenders = [(SYNC, sync.measure), (ASYNC, asynchronous.measure)]
        for writers in writer_counts:  # warm-up: every connection either store will keep
            for _, measure in contenders:
                measure(writers, 0.05)
        for round_number in range(repeats):
            for writers in writer_counts:
                case = f"{writers} writer{'s' if writers > 1 else ''}"
                order = contenders if round_number % 2 == 0 else contenders[::-1]
                for name, measure in order:
                    rate = measure(writers, duration)
                    logger.info("async append %s %s round %d: %.0f events/s", case, name, round_number + 1, rate)
                    results.add(SECTION, case, name, rate, unit="ev/s", compare_to=(SYNC,) if name == ASYNC else ())
    finally:
        sync.close()
        asynchronous.close()
