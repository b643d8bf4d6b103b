"""Measurement 7: what one runner costs with 1 and with 50 projections (issue 11's connection budget).

``python -m benchmarks.runner_scale [--quick] [--out DIR] [-v]`` runs only this
measurement (as ``python -m benchmarks --only runner_scale``); ``python -m
benchmarks --quick`` leaves it out unless ``--only`` names it (it takes 30-50 s).

For N in (1, 50), in a fresh database of the run's server, the parent starts
ONE runner process (``python -m benchmarks.runner_scale --child URL N``: a
:class:`~eventstore.ProjectionRunner` with default settings over N
``projections.Ledger`` instances, one row per event each), so that its threads
and CPU are its own, and measures:

- **connections held**: the ``pg_stat_activity`` rows whose ``client_port`` is
  one of the runner process's own TCP sockets to the server (its socket inodes
  in ``/proc/<pid>/fd`` matched in ``/proc/<pid>/net/tcp``), whatever their
  ``application_name``; sampled once every projection has applied a warm-up
  event and again after the latency pings (the figure reported: the pool opens
  connections as its workers first need them and keeps them);
- **threads**: ``Threads:`` of ``/proc/<pid>/status``;
- **idle CPU**: ``utime + stime`` of ``/proc/<pid>/stat`` over an idle window
  (10 s; quick: 3 s) with no appends, as % of one core (clock-tick resolution,
  10 ms, so 0.1% of a core over 10 s); the CPU of the PostgreSQL backends
  serving it over the same window is under "other";
- **append-to-applied latency**: the parent appends single events one at a
  time (200; quick: 30); after each one is applied everywhere the parent
  pauses 50-150 ms (``runner_scale_pause`` 0.1 s, jittered 0.5-1.5x), so each
  event finds the runner idle. The clock starts when ``EventStore.append`` returns
  and stops when the LAST of the N projections has committed the event. The
  runner process stamps each committed batch in its ``on_batch`` callback
  (called right after the commit) with ``time.time()`` and writes one line
  (``name position time``) to its stdout with one ``os.write``: a few
  microseconds per committed batch in the worker thread, the same per
  projection for 1 and 50, and no polling of the database by the parent.
  Under "other": when the FIRST projection committed it, and the runner
  process's CPU per event;
- with 50 projections, a **standby**: a second runner process of the same 50
  projections, started once the first owns them all; the new backends it
  opens during the idle window (``(pid, backend_start)`` of its backends at
  the start and the end of the window), next to ``pg_stat_database.sessions``
  of the database over the window (every session opened there by anyone, the
  short-lived ones included). It is stopped before the latency pings, so that
  both cases are pinged alike.

Nothing here asserts a timing; the figures go to the results table.
"""

from __future__ import annotations

import contextlib
import logging
import os
import random
import statistics
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg

from benchmarks.plan import Plan
from benchmarks.report import Results
from benchmarks.server import BenchServer

__all__ = ["measure_runner_scale"]

logger = logging.getLogger(__name__)

SECTION = "Runner scale: 1 vs 50 projections (one runner process, default settings)"
_ROOT = Path(__file__).resolve().parents[1]
_TIMEOUT = 60.0
_APPLIED_TIMEOUT = 30.0
_STABLE_FOR = 1.0
"""A standby's backends must stay the same this long before its idle window starts (its LISTEN probe is gone)."""
_BACKENDS = (
    "SELECT pid, application_name, backend_start FROM pg_stat_activity "
    "WHERE backend_type = 'client backend' AND client_port = ANY(%s)"
)
_SESSIONS = "SELECT sessions FROM pg_stat_database WHERE datname = %s"
_CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def _contender(count: int) -> str:
    return f"{count} projection{'s' if count != 1 else ''}"


# -- the runner process ----------------------------------------------------------


def _child(url: str, count: int) -> int:
    """Child process: one ProjectionRunner (default settings) over ``count`` ledgers; stamps each committed batch."""
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr, format="%(asctime)s runner %(name)s %(message)s")
    from eventstore import EventStore, ProjectionRunner, RecordedEvent
    from projections import Ledger

    def stamp(name: str, events: list[RecordedEvent]) -> None:
        at = time.time()
        # One write(2) of a short line is atomic on a pipe: no lock, no Python buffer, no extra thread.
        os.write(1, f"{name} {events[-1].global_position} {at:.6f}\n".encode())

    with EventStore(url) as store:
        ProjectionRunner(store, [Ledger(_name(number)) for number in range(count)], on_batch=stamp).run()
    return 0


def _name(number: int) -> str:
    return f"ledger_{number:02d}"


class _Runner:
    """Parent side of one runner process: start it, follow its stamps, read its footprint from /proc."""

    def __init__(self, url: str, count: int, *, stamps: bool) -> None:
        self.count = count
        self.names = [_name(number) for number in range(count)]
        self.process = subprocess.Popen(
            [sys.executable, "-m", "benchmarks.runner_scale", "--child", url, str(count)],
            cwd=_ROOT,
            stdout=subprocess.PIPE if stamps else subprocess.DEVNULL,
        )
        self._condition = threading.Condition()
        self._latest: dict[str, tuple[int, float]] = {}
        if stamps:
            threading.Thread(target=self._follow, name="runner-stamps", daemon=True).start()

    @property
    def pid(self) -> int:
        return self.process.pid

    def _follow(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            name, position, at = line.split()
            with self._condition:
                self._latest[name.decode()] = (int(position), float(at))
                self._condition.notify_all()

    def applied(self, position: int, timeout: float = _APPLIED_TIMEOUT) -> tuple[float, float]:
        """Wait until every projection has committed ``position``; when the first and the last did (wall clock)."""
        deadline = time.monotonic() + timeout
        with self._condition:
            while True:
                reached = [self._latest.get(name, (0, 0.0)) for name in self.names]
                if all(reached_position >= position for reached_position, _ in reached):
                    return min(at for _, at in reached), max(at for _, at in reached)
                if self.process.poll() is not None:
                    raise RuntimeError(f"runner process exited with {self.process.returncode}")
                left = deadline - time.monotonic()
                if left <= 0:
                    lagging = [name for name, (got, _) in zip(self.names, reached, strict=True) if got < position]
                    raise TimeoutError(f"{len(lagging)} projection(s) did not apply {position} in {timeout} s")
                self._condition.wait(min(left, 0.5))

    def threads(self) -> int:
        for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
            if line.startswith("Threads:"):
                return int(line.split()[1])
        raise RuntimeError(f"no Threads: line in /proc/{self.pid}/status")

    def cpu_seconds(self) -> float:
        return _cpu_seconds(self.pid)

    def stop(self) -> None:
        """SIGTERM (a clean shutdown releases the leases), then SIGKILL if it does not exit in time."""
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        if self.process.stdout is not None:
            self.process.stdout.close()


def _cpu_seconds(pid: int) -> float:
    """utime + stime of ``pid`` from ``/proc/<pid>/stat`` (0.0 once it is gone)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / _CLOCK_TICKS


def _client_ports(pid: int, server_port: int) -> list[int]:
    """Local ports of ``pid``'s TCP sockets connected to ``server_port`` (its sockets' inodes, matched in net/tcp)."""
    inodes = set()
    with contextlib.suppress(OSError):
        for fd in os.listdir(f"/proc/{pid}/fd"):
            with contextlib.suppress(OSError):
                target = os.readlink(f"/proc/{pid}/fd/{fd}")
                if target.startswith("socket:["):
                    inodes.add(target[8:-1])
    ports = []
    for table in ("tcp", "tcp6"):
        with contextlib.suppress(OSError):
            for line in Path(f"/proc/{pid}/net/{table}").read_text().splitlines()[1:]:
                fields = line.split()
                local, remote, inode = fields[1], fields[2], fields[9]
                if inode in inodes and int(remote.rsplit(":", 1)[1], 16) == server_port:
                    ports.append(int(local.rsplit(":", 1)[1], 16))
    return ports


@dataclass(frozen=True)
class _Backend:
    pid: int
    application_name: str
    backend_start: Any


def _backends(monitor: psycopg.Connection[Any], runner: _Runner, server_port: int) -> list[_Backend]:
    """The server backends of ``runner``'s connections."""
    ports = _client_ports(runner.pid, server_port)
    if not ports:
        return []
    return [_Backend(*row) for row in monitor.execute(_BACKENDS, (ports,)).fetchall()]


def _by_name(backends: list[_Backend]) -> dict[str, float]:
    counts: dict[str, float] = {}
    for backend in backends:
        counts[backend.application_name or "(none)"] = counts.get(backend.application_name or "(none)", 0) + 1
    return counts


# -- the measurement -------------------------------------------------------------


def measure_runner_scale(server: BenchServer, results: Results, plan: Plan) -> None:
    """For each count in ``plan.runner_scale_counts``: connections, threads, idle CPU, latency; a standby at 50."""
    with psycopg.connect(
        server.libpq_url("postgres"), autocommit=True, application_name="bench-runner-scale-monitor"
    ) as monitor:
        for count in plan.runner_scale_counts:
            database = server.create_database(f"bench_runner_scale_{count}")
            with _case(server, database, count) as (store, runner):
                _measure_one(monitor, server, database, store, runner, results, plan)
    results.notes.append(
        "runner scale: before the rewrite (issue 11), one runner of 50 projections held 54 connections and "
        "53 threads, and standbys reconnected every second to retry their locks (not measured in this run)"
    )


@contextlib.contextmanager
def _case(server: BenchServer, database: str, count: int) -> Iterator[tuple[Any, _Runner]]:
    from eventstore import EventStore

    store = EventStore(server.url(database))
    runner = _Runner(server.url(database), count, stamps=True)
    try:
        yield store, runner
    finally:
        runner.stop()
        store.close()
        store.engine.dispose()


def _append(store: Any, number: int) -> tuple[int, float]:
    """Append one event to a new stream; (its position, wall-clock time the call returned)."""
    from eventstore import NewEvent

    position = store.append(f"scale-{uuid.uuid4().hex[:12]}", [NewEvent("Ping", {"n": number})]).global_position
    return int(position), time.time()


def _measure_one(
    monitor: psycopg.Connection[Any],
    server: BenchServer,
    database: str,
    store: Any,
    runner: _Runner,
    results: Results,
    plan: Plan,
) -> None:
    contender = _contender(runner.count)
    compare = ("1 projection",) if runner.count != 1 else ()
    server_port = server.local.port
    began = time.monotonic()
    position, _ = _append(store, 0)  # warm-up: every projection owned, set up and caught up
    runner.applied(position, timeout=_TIMEOUT)
    logger.info("runner scale %s: all applied the warm-up event %.1f s after start", contender,
                time.monotonic() - began)  # fmt: skip
    warm_backends = _backends(monitor, runner, server_port)

    standby = None
    if runner.count >= plan.runner_scale_standby_from:
        standby = _Runner(server.url(database), runner.count, stamps=False)
    try:
        _idle_window(monitor, server_port, database, runner, standby, results, plan, compare=compare)
    finally:
        if standby is not None:  # the latency phase runs without it, as the 1-projection case does
            standby.stop()
    _latency(store, runner, results, plan, compare=compare)

    held = _backends(monitor, runner, server_port)
    names = _by_name(held)
    listen, pool = names.get("eventstore-listener", 0.0), names.get("eventstore-runner", 0.0)
    results.add(
        SECTION,
        "connections held by the runner process",
        contender,
        float(len(held)),
        unit="connections",
        compare_to=compare,
        extra={"after the warm-up": float(len(warm_backends)), "LISTEN": listen, "pool": pool,
               "other": len(held) - listen - pool},
    )  # fmt: skip
    threads = runner.threads()
    results.add(SECTION, "threads of the runner process", contender, float(threads), unit="threads",
                compare_to=compare)  # fmt: skip
    logger.info("runner scale %s: %d connections %s, %d threads", contender, len(held), names, threads)


def _idle_window(
    monitor: psycopg.Connection[Any],
    server_port: int,
    database: str,
    runner: _Runner,
    standby: _Runner | None,
    results: Results,
    plan: Plan,
    *,
    compare: tuple[str, ...],
) -> None:
    """No appends for a while: the runner's CPU and its backends' CPU; the standby's new backends."""
    contender = _contender(runner.count)
    standby_before = _settled(monitor, standby, server_port) if standby is not None else []
    backends_cpu_before = {
        backend.pid: _cpu_seconds(backend.pid) for backend in _backends(monitor, runner, server_port)
    }
    sessions_before = _sessions(monitor, database)
    cpu_before = runner.cpu_seconds()
    standby_cpu_before = standby.cpu_seconds() if standby is not None else 0.0
    began = time.monotonic()
    time.sleep(plan.runner_scale_idle_seconds)
    cpu = runner.cpu_seconds() - cpu_before
    window = time.monotonic() - began
    standby_cpu = standby.cpu_seconds() - standby_cpu_before if standby is not None else 0.0
    backends_cpu = sum(_cpu_seconds(pid) - before for pid, before in backends_cpu_before.items())
    sessions_opened = _sessions(monitor, database) - sessions_before
    results.add(
        SECTION,
        "idle CPU of the runner process",
        contender,
        cpu / window * 100.0,
        unit="% of a core",
        compare_to=compare,
        extra={"window s": window, "its backends' CPU %": backends_cpu / window * 100.0},
    )
    logger.info("runner scale %s: idle CPU %.2f%% (its backends %.2f%%) over %.1f s", contender,
                cpu / window * 100.0, backends_cpu / window * 100.0, window)  # fmt: skip
    if standby is None:
        return
    standby_after = _backends(monitor, standby, server_port)
    known = {(backend.pid, backend.backend_start) for backend in standby_before}
    new = [backend for backend in standby_after if (backend.pid, backend.backend_start) not in known]
    results.add(
        SECTION,
        "standby runner: new backends during the idle window",
        contender,
        float(len(new)),
        unit="backends",
        extra={
            "standby's connections": float(len(standby_after)),
            "standby's threads": float(standby.threads()),
            "standby's CPU %": standby_cpu / window * 100.0,
            "sessions opened in the database (anyone)": float(sessions_opened),
        },
    )
    logger.info("runner scale standby: %d new backends, %d held %s, %d threads, CPU %.2f%%; %d sessions opened in "
                "the database", len(new), len(standby_after), _by_name(standby_after), standby.threads(),
                standby_cpu / window * 100.0, sessions_opened)  # fmt: skip


def _latency(store: Any, runner: _Runner, results: Results, plan: Plan, *, compare: tuple[str, ...]) -> None:
    """Append single events one at a time; each one's time from the append's return to its last commit."""
    contender = _contender(runner.count)
    last, first = [], []
    cpu_before = runner.cpu_seconds()
    for number in range(1, plan.runner_scale_events + 1):
        position, returned = _append(store, number)
        first_at, last_at = runner.applied(position)
        last.append((last_at - returned) * 1000.0)
        first.append((first_at - returned) * 1000.0)
        if last[-1] > 4 * statistics.median(last):
            logger.info("runner scale %s: event %d applied by the first projection after %.1f ms, the last after "
                        "%.1f ms", contender, number, first[-1], last[-1])  # fmt: skip
        # A pause once every projection applied it, so that each event finds the runner idle, whatever N.
        time.sleep(plan.runner_scale_pause * (0.5 + random.random()))
    cpu_per_event = (runner.cpu_seconds() - cpu_before) * 1000.0 / len(last)
    p50, p99 = _percentiles(last)
    first_p50, first_p99 = _percentiles(first)
    extra = {"events": float(len(last)), "max": max(last), "first projection p50": first_p50,
             "first projection p99": first_p99, "runner CPU ms/event": cpu_per_event}  # fmt: skip
    results.add(SECTION, "append-to-applied, p50", contender, p50, unit="ms", compare_to=compare, extra=extra)
    results.add(SECTION, "append-to-applied, p99", contender, p99, unit="ms", compare_to=compare, extra=extra)
    logger.info("runner scale %s: p50 %.2f p99 %.2f max %.2f ms (first projection p50 %.2f p99 %.2f); runner CPU "
                "%.1f ms/event", contender, p50, p99, max(last), first_p50, first_p99, cpu_per_event)  # fmt: skip


def _percentiles(samples: list[float]) -> tuple[float, float]:
    ordered = sorted(samples)
    return statistics.median(ordered), ordered[min(len(ordered) - 1, round(0.99 * (len(ordered) - 1)))]


def _settled(monitor: psycopg.Connection[Any], standby: _Runner, server_port: int) -> list[_Backend]:
    """Wait until the standby listens and has tried its leases, and its backends stayed the same for a while."""
    deadline = time.monotonic() + _TIMEOUT
    last: set[tuple[int, Any]] = set()
    since = time.monotonic()
    while time.monotonic() < deadline:
        if standby.process.poll() is not None:
            raise RuntimeError(f"standby runner exited with {standby.process.returncode}")
        backends = _backends(monitor, standby, server_port)
        current = {(backend.pid, backend.backend_start) for backend in backends}
        names = _by_name(backends)
        if current != last or "eventstore-listener" not in names or "eventstore-runner" not in names:
            last, since = current, time.monotonic()
        elif time.monotonic() - since >= _STABLE_FOR:
            return backends
        time.sleep(0.1)
    raise TimeoutError(f"the standby runner did not settle within {_TIMEOUT} s")


def _sessions(monitor: psycopg.Connection[Any], database: str) -> int:
    monitor.execute("SELECT pg_stat_clear_snapshot()")
    row = monitor.execute(_SESSIONS, (database,)).fetchone()
    return int(row[0]) if row and row[0] is not None else 0


def main(argv: list[str] | None = None) -> None:
    """``python -m benchmarks.runner_scale [--quick] [--out DIR] [-v]``: this measurement alone."""
    from benchmarks.cli import main as suite

    suite(["--only", "runner_scale", *(sys.argv[1:] if argv is None else argv)])


if __name__ == "__main__":
    if sys.argv[1:2] == ["--child"]:
        sys.exit(_child(sys.argv[2], int(sys.argv[3])))
    main()
