"""Measurement 2: wake-up latency, from the commit of an append to the projection handler's call.

The parent notes the time, appends one event (one autocommit statement that
commits) and waits until the handler (in a ProjectionRunner in another
process) reports when it was called for that event. The baseline is a raw
psycopg LISTEN/NOTIFY round trip timed the same way: the parent inserts the same
row and notifies in one transaction, and a process listening on its own
autocommit connection notes when the notification arrived. Both clocks start
before the write, because a raw notification often arrives before the writer's
``commit()`` has even returned. Pings are paced (10 ms on average) so that each
finds the runner idle. Both are measured idle and while 4 writer processes
append batches of 10 to the same server.
"""

from __future__ import annotations

import logging
import multiprocessing
import queue
import random
import statistics
import time
import uuid
from typing import Any

from benchmarks.plan import Plan
from benchmarks.report import Results
from benchmarks.server import BenchServer
from benchmarks.writers import WriterPool

__all__ = ["measure_latency"]

logger = logging.getLogger(__name__)

SECTION = "Wake-up latency (append call -> handler called / notification received, ms)"
_CHANNEL = "bench_raw_ping"
_LOAD_WRITERS = 4
_TIMEOUT = 30.0
_PAUSE = 0.01


def _runner_main(url: str, received: Any, stop: Any) -> None:
    """Child process: a ProjectionRunner whose handler reports (global_position, time called)."""
    import threading

    from sqlalchemy.engine import Connection

    from eventstore import EventStore, Projection, ProjectionRunner, RecordedEvent, handles

    class LatencyProjection(Projection):
        name = "bench_latency"
        categories = ("latency",)

        @handles("Ping")
        def ping(self, event: RecordedEvent, conn: Connection) -> None:
            received.put((event.global_position, time.time()))

    runner = ProjectionRunner(EventStore(url), [LatencyProjection()], poll_interval=5.0)

    def stop_when_asked() -> None:
        stop.wait()
        runner.stop()

    threading.Thread(target=stop_when_asked, daemon=True).start()
    runner.run()


def _listener_main(libpq_url: str, received: Any, stop: Any) -> None:
    """Child process: LISTEN on a raw psycopg autocommit connection; report (payload, time received)."""
    import psycopg

    with psycopg.connect(libpq_url, autocommit=True) as connection:
        connection.execute("LISTEN " + _CHANNEL)
        received.put((-1, time.time()))  # listening
        while not stop.is_set():
            for notify in connection.notifies(timeout=0.5):
                received.put((int(notify.payload), time.time()))


class _Pinger:
    """Parent side of one contender: send a ping, wait for its echo, return the latency in ms."""

    def __init__(self, contender: str, server: BenchServer, *, raw_database: str = "bench_raw") -> None:
        context = multiprocessing.get_context("spawn")
        self.contender = contender
        self.received: Any = context.Queue()
        self.stop = context.Event()
        if contender == "eventstore":
            from eventstore import EventStore

            self.store = EventStore(server.url("bench_eventstore"))
            self.process = context.Process(
                target=_runner_main, args=(server.url("bench_eventstore"), self.received, self.stop), daemon=True
            )
        else:
            import psycopg

            self.connection = psycopg.connect(server.libpq_url(raw_database))
            self.process = context.Process(
                target=_listener_main, args=(server.libpq_url(raw_database), self.received, self.stop), daemon=True
            )
        self.process.start()
        self.sequence = 0
        if contender != "eventstore":
            self._expect(-1)
        self.ping()  # warm-up: the runner is listening once this comes back

    def ping(self) -> float:
        self.sequence += 1
        stream_id = f"latency-{uuid.uuid4().hex[:12]}"
        sent = time.time()
        if self.contender == "eventstore":
            from eventstore import NewEvent

            key = self.store.append(stream_id, [NewEvent("Ping", {"n": self.sequence})]).global_position
        else:
            self.connection.execute(
                "INSERT INTO events (transaction_order, event_id, stream_id, stream_version, event_type, data) "
                "VALUES (pg_current_xact_id(), %s, %s, 1, 'Ping', %s::jsonb)",
                (uuid.uuid4(), stream_id, f'{{"n": {self.sequence}}}'),
            )
            self.connection.execute("SELECT pg_notify(%s, %s)", (_CHANNEL, str(self.sequence)))
            self.connection.commit()
            key = self.sequence
        return (self._expect(key) - sent) * 1000.0

    def _expect(self, key: int) -> float:
        deadline = time.monotonic() + _TIMEOUT
        while True:
            try:
                got, at = self.received.get(timeout=max(0.01, deadline - time.monotonic()))
            except queue.Empty:
                raise TimeoutError(f"{self.contender}: no wake-up for {key} within {_TIMEOUT} s") from None
            if got == key:
                return float(at)

    def close(self) -> None:
        self.stop.set()
        self.process.join(timeout=15)
        if self.process.is_alive():
            self.process.terminate()
        if self.contender == "eventstore":
            self.store.engine.dispose()
        else:
            self.connection.close()


def measure_latency(server: BenchServer, pool: WriterPool, results: Results, plan: Plan) -> None:
    """p50/p99/max over ``plan.latency_events`` pings per round, idle and loaded, interleaved with the raw baseline."""
    try:
        from eventstore import ProjectionRunner  # noqa: F401 - probe for the runner
    except ImportError:
        results.notes.append("wake-up latency skipped: eventstore.ProjectionRunner is not available in this tree")
        return
    pingers = [_Pinger("eventstore", server), _Pinger("raw LISTEN/NOTIFY", server)]
    try:
        for round_number in range(plan.latency_repeats):
            for load in (False, True):
                order = pingers if round_number % 2 == 0 else pingers[::-1]
                for pinger in order:
                    if load:
                        pool.start(_LOAD_WRITERS, "eventstore", 10, 3600.0, delay=0.0)
                        time.sleep(0.3)  # let the writers get going
                    samples = []
                    for _ in range(plan.latency_events):
                        samples.append(pinger.ping())
                        # Pace the pings so that each finds the runner idle (its previous batch committed).
                        time.sleep(_PAUSE * (0.5 + random.random()))
                    if load:
                        pool.stop()
                        pool.collect()
                    _record(results, "idle" if not load else f"{_LOAD_WRITERS} writers loading", pinger, samples)
    finally:
        for pinger in pingers:
            pinger.close()


def _record(results: Results, case: str, pinger: _Pinger, samples: list[float]) -> None:
    ordered = sorted(samples)
    p99 = ordered[min(len(ordered) - 1, round(0.99 * (len(ordered) - 1)))]
    extra = {"p50": statistics.median(ordered), "max": ordered[-1]}
    logger.info("latency %s %s: p50 %.2f p99 %.2f max %.2f ms", case, pinger.contender, extra["p50"], p99, extra["max"])
    compare = ("raw LISTEN/NOTIFY",) if pinger.contender == "eventstore" else ()
    results.add(SECTION, f"{case}, p99", pinger.contender, p99, unit="ms", compare_to=compare, extra=extra)
