"""Writer processes: each appends, for a timed window, through one contender.

A pool of long-lived processes (spawned once, so imports and connections are
not measured) receives commands over a pipe. For a measurement the parent sends
every writer the same start time; each writer warms up its connection, waits
for the start, appends until the window closes, and reports how many appends it
committed inside the window.

Contenders, each writing new streams (``expected_version=NO_STREAM``) of 1 or
10 events with the same JSON payload:

- ``eventstore``: :meth:`eventstore.EventStore.append`.
- ``eventstore_no_notify``: the same with ``EventStore(notify=False)``: no
  wake-up at all (the wake-up's cost).
- ``raw``: one autocommit psycopg ``INSERT ... SELECT FROM unnest(...)`` per append into an
  identical ``events`` table without triggers and without the gap rule's
  per-stream look-up: the physical limit.
- ``raw_notify_in_commit``: the raw insert into a table whose NOTIFY trigger
  fires, i.e. notifying inside the writing transaction (the design not chosen).
- ``eventsourcing``: the eventsourcing library saving a new aggregate with the
  same number of events.
"""

from __future__ import annotations

import contextlib
import json
import multiprocessing
import multiprocessing.connection
import os
import time
import uuid
from dataclasses import dataclass
from typing import Any

__all__ = ["PAYLOAD", "Targets", "WriterPool"]

PAYLOAD: dict[str, Any] = {
    "amount": 4200,
    "currency": "EUR",
    "customer": "customer-17",
    "note": "a typical small event of about one hundred and fifty bytes of JSON",
}

# One autocommit statement (one round trip, like eventstore's append); arrays in
# binary, which needs no per-element escaping.
_RAW_INSERT = """
INSERT INTO events (transaction_order, event_id, stream_id, stream_version, event_type, data, metadata)
SELECT pg_current_xact_id(), e.event_id, %(stream_id)s, e.ordinal, e.event_type, e.data::jsonb, e.metadata::jsonb
FROM unnest(%(event_ids)b::uuid[], %(event_types)b::text[], %(datas)b::text[], %(metadatas)b::text[])
     WITH ORDINALITY AS e(event_id, event_type, data, metadata, ordinal)
"""

# The same insert behind one writer lock, taken first and held until the commit.
_RAW_INSERT_GLOBAL_LOCK = _RAW_INSERT.replace(
    "FROM unnest(", "FROM (SELECT pg_advisory_xact_lock(4242)) AS writer_lock, unnest(", 1
)


@dataclass(frozen=True)
class Targets:
    """Where each contender writes (URLs are SQLAlchemy ``postgresql+psycopg://`` ones)."""

    eventstore: str
    eventstore_no_notify: str
    raw: str
    raw_notify_in_commit: str
    eventsourcing: dict[str, str]


class _Writer:
    """Lives in a writer process; holds one client per contender, created on first use."""

    def __init__(self, targets: Targets, index: int) -> None:
        self.targets = targets
        self.prefix = f"bench-{index}x{uuid.uuid4().hex[:8]}"
        self.counter = 0
        self.clients: dict[str, Any] = {}

    def stream_id(self) -> str:
        self.counter += 1
        return f"{self.prefix}x{self.counter}"

    def client(self, contender: str) -> Any:
        if contender not in self.clients:
            self.clients[contender] = self._connect(contender)
        return self.clients[contender]

    def _connect(self, contender: str) -> Any:
        if contender in ("eventstore", "eventstore_no_notify"):
            from eventstore import EventStore

            return EventStore(getattr(self.targets, contender), notify=contender == "eventstore")
        if contender in ("raw", "raw_global_lock", "raw_notify_in_commit"):
            import psycopg

            url = self.targets.raw_notify_in_commit if contender == "raw_notify_in_commit" else self.targets.raw
            return psycopg.connect(url.replace("postgresql+psycopg://", "postgresql://", 1), autocommit=True)
        if contender == "eventsourcing":
            from benchmarks.baseline_eventsourcing import BenchApplication

            return BenchApplication(env=self.targets.eventsourcing)
        raise ValueError(
            f"unknown contender {contender!r}; expected eventstore, eventstore_no_notify, raw, raw_global_lock, "
            "raw_notify_in_commit or eventsourcing"
        )

    def append(self, contender: str, events: int) -> None:
        client = self.client(contender)
        if contender in ("eventstore", "eventstore_no_notify"):
            from eventstore import NO_STREAM, NewEvent

            client.append(
                self.stream_id(), [NewEvent("BenchEvent", PAYLOAD) for _ in range(events)], expected_version=NO_STREAM
            )
        elif contender in ("raw", "raw_global_lock", "raw_notify_in_commit"):
            client.execute(
                # raw_global_lock: the gap technique we did not choose.
                _RAW_INSERT_GLOBAL_LOCK if contender == "raw_global_lock" else _RAW_INSERT,
                {
                    "stream_id": self.stream_id(),
                    "event_ids": [uuid.uuid4() for _ in range(events)],
                    "event_types": ["BenchEvent"] * events,
                    # Each event's JSON encoded, as any client must (the store also validates it).
                    "datas": [json.dumps(PAYLOAD, ensure_ascii=False, separators=(",", ":")) for _ in range(events)],
                    "metadatas": ["{}"] * events,
                },
            )
        else:
            from benchmarks.baseline_eventsourcing import save_order

            save_order(client, events, PAYLOAD)

    def run(self, contender: str, events: int, start: float, duration: float, stop: Any = None) -> float:
        """Appends per second from ``start`` until the first append that ends after the window.

        The rate is taken over the writer's own completed appends (the one that
        crosses the window's end included, with the time it ended), so a window
        shorter than one append under load still gives a real rate, never 0.
        """
        for _ in range(3):  # warm-up: connect, prepare statements
            self.append(contender, events)
        while time.time() < start:
            time.sleep(min(0.005, max(0.0, start - time.time())))
        end = start + duration
        appends = 0
        while True:
            self.append(contender, events)
            appends += 1
            now = time.time()
            if now > end or (stop is not None and stop.is_set()):
                return appends / max(now - start, 1e-9)


def _writer_main(connection: multiprocessing.connection.Connection, targets: Targets, index: int, stop: Any) -> None:
    writer = _Writer(targets, index)
    while True:
        command = connection.recv()
        if command is None:
            return
        try:
            connection.send(("ok", writer.run(**command, stop=stop)))
        except Exception as error:  # report to the parent instead of dying silently
            connection.send(("error", f"{type(error).__name__}: {error}"))


class WriterPool:
    """``size`` writer processes, started once and reused for every measurement."""

    def __init__(self, targets: Targets, size: int) -> None:
        context = multiprocessing.get_context("spawn")
        self._stop = context.Event()
        self._busy = 0
        self._pipes: list[multiprocessing.connection.Connection] = []
        self._processes: list[multiprocessing.process.BaseProcess] = []
        for index in range(size):
            parent_end, child_end = context.Pipe()
            process = context.Process(target=_writer_main, args=(child_end, targets, index, self._stop), daemon=True)
            process.start()
            self._pipes.append(parent_end)
            self._processes.append(process)

    def start(self, writers: int, contender: str, events: int, duration: float, *, delay: float = 0.15) -> float:
        """Start ``writers`` writers; returns the window's start time (collect with :meth:`collect`)."""
        if writers > len(self._pipes):
            raise ValueError(f"{writers} writers requested; the pool has {len(self._pipes)}")
        self._stop.clear()
        start = time.time() + delay
        for pipe in self._pipes[:writers]:
            pipe.send({"contender": contender, "events": events, "start": start, "duration": duration})
        self._busy = writers
        return start

    def stop(self) -> None:
        """Ask the running writers to finish their current append and report now."""
        self._stop.set()

    def collect(self) -> list[float]:
        """Appends per second committed by each writer started by the last :meth:`start`."""
        results = []
        for pipe in self._pipes[: self._busy]:
            status, value = pipe.recv()
            if status != "ok":
                raise RuntimeError(f"writer process failed: {value}")
            results.append(value)
        return results

    def measure(self, writers: int, contender: str, events: int, duration: float) -> float:
        """Events per second committed by ``writers`` writers together over ``duration`` seconds."""
        self.start(writers, contender, events, duration)
        return sum(self.collect()) * events

    def close(self) -> None:
        for pipe in self._pipes:
            with contextlib.suppress(BrokenPipeError, OSError):
                pipe.send(None)
        for process in self._processes:
            process.join(timeout=5)
            if process.is_alive():
                process.terminate()


def cpu_count() -> int:
    return os.cpu_count() or 1
