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
  per-stream look-up: the limit on the same table.
- ``raw_notify_in_commit``: the raw insert into a table whose NOTIFY trigger
  fires, i.e. notifying inside the writing transaction (the design not chosen).
- ``raw_minimal``: one autocommit ``INSERT ... VALUES`` per append (one row per
  event) into a minimal table (:data:`MINIMAL_TABLE`: the primary key and the
  stream/version unique index only): the absolute limit of storing an event.
- ``eventstore_statement``: eventstore's own append statement and validation
  (``prepare_append``, ``sql.APPEND``) run by raw psycopg, without the store
  around it (protocol, telemetry, append connections, wake-up).
- any name of :attr:`Targets.variants`: :meth:`eventstore.EventStore.append`
  into that database (the breakdown's variants of the events table).
- ``eventsourcing``: the eventsourcing library saving a new aggregate with the
  same number of events.

Each writer also reports its own CPU time per append inside the window
(``time.process_time()``: the client's cost), and :class:`ServerCpu` reads the
server processes' CPU time from ``/proc`` (the server's cost).
"""

from __future__ import annotations

import contextlib
import json
import multiprocessing
import multiprocessing.connection
import os
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

__all__ = ["MINIMAL_TABLE", "PAYLOAD", "Sample", "ServerCpu", "Targets", "WriterPool"]

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

# The absolute limit: the same columns a client must send, no generated column,
# no checks, no triggers, no gap-rule order key, and only the two indexes every
# event store needs (the position and one version per stream).
MINIMAL_TABLE = """
CREATE TABLE events (
    global_position bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    stream_id       text        NOT NULL,
    stream_version  integer     NOT NULL,
    event_type      text        NOT NULL,
    event_id        uuid        NOT NULL,
    data            jsonb       NOT NULL,
    metadata        jsonb       NOT NULL,
    recorded_at     timestamptz NOT NULL DEFAULT now(),
    UNIQUE (stream_id, stream_version)
)
"""

_MINIMAL_ROW = "(%s, %s, %s, %s, %s, %s)"


def _minimal_insert(events: int) -> str:
    """One ``INSERT ... VALUES`` of ``events`` rows (the text psycopg prepares after 5 runs, one per size)."""
    rows = ", ".join([_MINIMAL_ROW] * events)
    return f"INSERT INTO events (stream_id, stream_version, event_type, event_id, data, metadata) VALUES {rows}"


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
    raw_minimal: str = ""
    eventstore_statement: str = ""
    variants: dict[str, str] = field(default_factory=dict)
    """More ``EventStore`` contenders, by name: the URL of the database each appends to."""


class Sample(NamedTuple):
    """One measurement of one contender: all writers together."""

    events_per_second: float
    client_cpu_us: float
    """The writers' own CPU time per append (``time.process_time()``), in microseconds."""
    server_cpu_us: float | None
    """The server processes' CPU time per append, in microseconds (None when not read)."""
    appends: int


class ServerCpu:
    """CPU time of a PostgreSQL server's processes, read from ``/proc``.

    The postmaster and its children (backends, WAL writer, checkpointer,
    autovacuum): only this run's server, whatever else runs on the machine.
    A process that exits between two readings loses its share (autovacuum
    workers; rare in a window of seconds).
    """

    def __init__(self, postmaster_pid: int) -> None:
        self.postmaster_pid = postmaster_pid
        self._ticks = os.sysconf("SC_CLK_TCK")

    def read(self) -> dict[int, float]:
        """Seconds of CPU per process id (``schedstat``'s nanoseconds; ``stat``'s clock ticks without it)."""
        seconds: dict[int, float] = {}
        for pid in [self.postmaster_pid, *self._children()]:
            try:
                seconds[pid] = int(Path(f"/proc/{pid}/schedstat").read_text().split()[0]) / 1e9
            except (OSError, IndexError, ValueError):
                try:
                    # After the command: utime and stime are fields 14 and 15 of stat(5).
                    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
                    seconds[pid] = (int(fields[11]) + int(fields[12])) / self._ticks
                except (OSError, IndexError, ValueError):
                    continue  # exited
        return seconds

    def _children(self) -> list[int]:
        pid = self.postmaster_pid
        try:
            return [int(child) for child in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
        except OSError:  # a kernel without CONFIG_PROC_CHILDREN: scan every process's parent
            children = []
            for entry in Path("/proc").iterdir():
                if entry.name.isdigit():
                    try:
                        if int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1]) == pid:
                            children.append(int(entry.name))
                    except (OSError, IndexError, ValueError):
                        continue
            return children

    @staticmethod
    def between(before: dict[int, float], after: dict[int, float]) -> float:
        """CPU seconds spent between two readings (processes started in between count in full)."""
        return sum(value - before.get(pid, 0.0) for pid, value in after.items())


_WARM_UP = 3
"""Appends before each window."""


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
        if contender in ("eventstore", "eventstore_no_notify") or contender in self.targets.variants:
            from eventstore import EventStore

            if contender in self.targets.variants:
                return EventStore(self.targets.variants[contender])
            return EventStore(getattr(self.targets, contender), notify=contender == "eventstore")
        if contender in ("raw", "raw_global_lock", "raw_notify_in_commit", "raw_minimal", "eventstore_statement"):
            import psycopg

            url = {
                "raw_notify_in_commit": self.targets.raw_notify_in_commit,
                "raw_minimal": self.targets.raw_minimal,
                "eventstore_statement": self.targets.eventstore_statement,
            }
            target = url.get(contender, self.targets.raw)
            return psycopg.connect(target.replace("postgresql+psycopg://", "postgresql://", 1), autocommit=True)
        if contender == "eventsourcing":
            from benchmarks.baseline_eventsourcing import BenchApplication

            return BenchApplication(env=self.targets.eventsourcing)
        raise ValueError(
            f"unknown contender {contender!r}; expected eventstore, eventstore_no_notify, raw, raw_global_lock, "
            "raw_notify_in_commit, raw_minimal, eventstore_statement, eventsourcing or one of "
            f"{sorted(self.targets.variants)}"
        )

    def append(self, contender: str, events: int) -> None:
        client = self.client(contender)
        if contender in ("eventstore", "eventstore_no_notify") or contender in self.targets.variants:
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
        elif contender == "raw_minimal":
            stream_id = self.stream_id()
            parameters: list[Any] = []
            for version in range(1, events + 1):
                # Each event's JSON encoded by the client, as any client must.
                data = json.dumps(PAYLOAD, ensure_ascii=False, separators=(",", ":"))
                parameters += (stream_id, version, "BenchEvent", uuid.uuid4(), data, "{}")
            client.execute(_minimal_insert(events), parameters)
        elif contender == "eventstore_statement":
            from eventstore import NO_STREAM, NewEvent
            from eventstore.store.sql import APPEND
            from eventstore.store.validation import prepare_append

            new_events = [NewEvent("BenchEvent", PAYLOAD) for _ in range(events)]
            prepared = prepare_append(
                self.stream_id(), new_events, NO_STREAM, max_append_events=10_000, max_event_bytes=1_048_576
            )
            client.execute(APPEND["off"], prepared.parameters).fetchall()
        else:
            from benchmarks.baseline_eventsourcing import save_order

            save_order(client, events, PAYLOAD)

    def run(
        self, contender: str, events: int, start: float, duration: float, stop: Any = None
    ) -> tuple[float, float, int, int]:
        """Appends per second from ``start`` until the first append that ends after the window.

        The rate is taken over the writer's own completed appends (the one that
        crosses the window's end included, with the time it ended), so a window
        shorter than one append under load still gives a real rate, never 0.
        Returns that rate, this process's CPU seconds over those appends, their number, and
        the number of appends including the warm-up's.
        """
        for _ in range(_WARM_UP):  # connect, prepare statements
            self.append(contender, events)
        while time.time() < start:
            time.sleep(min(0.005, max(0.0, start - time.time())))
        end = start + duration
        appends = 0
        cpu = time.process_time()
        while True:
            self.append(contender, events)
            appends += 1
            now = time.time()
            if now > end or (stop is not None and stop.is_set()):
                return appends / max(now - start, 1e-9), time.process_time() - cpu, appends, appends + _WARM_UP


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

    def collect(self) -> list[tuple[float, float, int, int]]:
        """Each writer's appends per second, CPU seconds and appends (in the window, and in all) since :meth:`start`."""
        results = []
        for pipe in self._pipes[: self._busy]:
            status, value = pipe.recv()
            if status != "ok":
                raise RuntimeError(f"writer process failed: {value}")
            results.append(value)
        return results

    def measure(self, writers: int, contender: str, events: int, duration: float) -> float:
        """Events per second committed by ``writers`` writers together over ``duration`` seconds."""
        return self.sample(writers, contender, events, duration).events_per_second

    def sample(
        self, writers: int, contender: str, events: int, duration: float, *, server: ServerCpu | None = None
    ) -> Sample:
        """:meth:`measure`, with the client's CPU per append and, given ``server``, the server's.

        The server's CPU is read before the writers start and after they all
        reported (a reading takes long enough on a loaded machine to miss part
        of a short window), so it covers the warm-up's appends too and is
        divided by all appends.
        """
        before = server.read() if server is not None else None
        self.start(writers, contender, events, duration)
        reports = self.collect()
        server_seconds = ServerCpu.between(before, server.read()) if server is not None and before else None
        appends = sum(report[2] for report in reports)
        all_appends = sum(report[3] for report in reports)
        return Sample(
            events_per_second=sum(report[0] for report in reports) * events,
            client_cpu_us=sum(report[1] for report in reports) / max(appends, 1) * 1e6,
            server_cpu_us=None if server_seconds is None else server_seconds / max(all_appends, 1) * 1e6,
            appends=appends,
        )

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
