"""Chaos soak: writers, competing runners and a fault loop; then prove nothing was lost or repeated.

``python -m benchmarks.chaos [--short] [--seconds N] [--url URL] [--seed S]``

- 8 writer processes append order life cycles (``projections.orders`` schema)
  to many streams. Per append, at random: a plain append; a transaction held
  open for a random time before commit; a transaction rolled back on purpose
  (its event ids are remembered); an append retried with the same event ids
  (must come back ``already_stored``). A failed append (server restart) is
  retried with the same event ids until it succeeds.
- 3 runner processes run ``projections.ALL`` plus ``chaos_ledger`` (every
  event). Every projection is wrapped so that, in the transaction of its
  batch, it also writes one ledger row per event it processes, unique per
  (projection, position), counting repeats.
- A fault loop at random moments: SIGKILLs the active runner (one holding
  projection locks), terminates the listener backends
  (``pg_terminate_backend``), restarts the PostgreSQL server, SIGTERMs a
  runner (must exit 0). Dead runners are replaced.

At the end it waits for catch-up and checks: every acknowledged append is
stored; no rolled-back event is stored or processed; every stored event was
processed exactly once by every projection whose filters match it, in the
global order (hence per-stream order); no projection failed; each read model
equals a rebuild from the events (``admin.rebuild``). It prints the figures
and exits 1 on any violation (or if fewer faults than required happened).

Without ``--url`` it runs a private PostgreSQL (embedded wheel) in a temporary
directory and can restart it; with ``--url`` the restart fault is skipped.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import logging
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
import types
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import psycopg
import sqlalchemy as sa

from eventstore import EventStore, NewEvent, Projection, ProjectionRunner
from eventstore.errors import DatabaseUnavailable, EventStoreError

ROOT = Path(__file__).resolve().parents[1]
LEDGER = "chaos_ledger"
LEDGER_PROJECTION = "chaos_ledger"
WRITERS = 8
RUNNERS = 3
_EXCLUDED_TABLES = {
    "events",
    "projection_checkpoints",
    "projection_failures",
    "alembic_version",
    LEDGER,
    "projection_ledger",
}  # ledgers record applied_at/applied_by: not reproducible by a rebuild

_CREATE_LEDGER = f"""
CREATE TABLE IF NOT EXISTS {LEDGER} (
    projection_name     text    NOT NULL,
    global_position     bigint  NOT NULL,
    event_id            uuid    NOT NULL,
    stream_id           text    NOT NULL,
    stream_version      integer NOT NULL,
    event_order         xid8    NOT NULL,
    seq                 bigint  GENERATED ALWAYS AS IDENTITY,
    runner_pid          integer NOT NULL,
    backend_pid         integer NOT NULL DEFAULT pg_backend_pid(),
    applied_by_xact     xid8    NOT NULL DEFAULT pg_current_xact_id(),
    checkpoint_order    xid8,
    checkpoint_position bigint,
    applied_at          timestamptz NOT NULL DEFAULT clock_timestamp()
)
"""
_INDEX_LEDGER = f"CREATE INDEX IF NOT EXISTS {LEDGER}_position ON {LEDGER} (projection_name, global_position)"
# One row per application (no unique key, so a repeat is counted, not refused), with
# the checkpoint this batch's transaction locked: enough to explain any repeat.
_RECORD = sa.text(
    f"INSERT INTO {LEDGER} (projection_name, global_position, event_id, stream_id, stream_version, event_order, "
    "runner_pid, checkpoint_order, checkpoint_position) "
    "SELECT :name, :position, :event_id, :stream_id, :version, CAST(:event_order AS xid8), :pid, "
    "c.transaction_order, c.global_position FROM projection_checkpoints c WHERE c.projection_name = :name"
)

logger = logging.getLogger("benchmarks.chaos")


# -- projections ------------------------------------------------------------------


class ChaosLedger(Projection):
    """Sees every event; its ledger rows are written by the wrapper below."""

    name = LEDGER_PROJECTION

    def setup(self, conn: sa.Connection) -> None:
        conn.execute(sa.text(_CREATE_LEDGER))
        conn.execute(sa.text(_INDEX_LEDGER))

    def apply(self, event: Any, conn: sa.Connection) -> bool:
        return True


def domain_projections() -> list[Projection]:
    """``projections.ALL`` plus the package's ``Ledger`` (every event, primary key per position)."""
    import projections

    return [*projections.ALL, projections.Ledger()]


def _with_ledger(projection: Projection) -> Projection:
    """Make ``projection`` also record a ledger row per processed event, in its batch transaction.

    The worker calls ``apply_batch`` once per batch when the class overrides it, else ``apply`` per event:
    the wrapper goes around the one it calls.
    """
    pid = os.getpid()

    def record(name: str, events: list[Any], conn: sa.Connection) -> None:
        rows = [
            {"name": name, "position": event.global_position, "event_id": event.event_id,
             "stream_id": event.stream_id, "version": event.stream_version, "pid": pid,
             "event_order": str(event.transaction_order)}
            for event in events
        ]  # fmt: skip
        if rows:
            conn.execute(_RECORD, rows)

    if type(projection).apply_batch is not Projection.apply_batch:
        original_batch = projection.apply_batch

        def apply_batch(self: Projection, events: list[Any], conn: sa.Connection) -> None:
            record(self.name, events, conn)
            original_batch(events, conn)

        projection.apply_batch = types.MethodType(apply_batch, projection)  # type: ignore[method-assign]
        return projection

    original = projection.apply

    def apply(self: Projection, event: Any, conn: sa.Connection) -> bool:
        record(self.name, [event], conn)
        return bool(original(event, conn))

    projection.apply = types.MethodType(apply, projection)  # type: ignore[method-assign]
    return projection


def runner_projections() -> list[Projection]:
    return [_with_ledger(projection) for projection in [*domain_projections(), ChaosLedger()]]


# -- writer process -----------------------------------------------------------------


@dataclass
class _Order:
    stream_id: str
    version: int = 0
    status: str = "new"


@dataclass
class WriterReport:
    acknowledged: list[str] = field(default_factory=list)
    rolled_back: list[str] = field(default_factory=list)
    counts: Counter[str] = field(default_factory=Counter)
    violations: list[str] = field(default_factory=list)


_TRANSIENT = (DatabaseUnavailable, sa.exc.OperationalError, sa.exc.InterfaceError, psycopg.OperationalError)


def _next_events(order: _Order, rng: random.Random, writer: int) -> tuple[list[NewEvent], str]:
    order_id = order.stream_id.split("-", 1)[1]
    if order.status == "new":
        placed = NewEvent("OrderPlaced", {
            "order_id": order_id, "customer_id": f"customer-{rng.randrange(12)}",
            "total": rng.choice([240, 825, 1250, 3900, 14900, 42000, 60000]) * rng.randint(1, 3),
            "placed_at": (datetime.now(UTC) - timedelta(days=rng.randint(0, 2))).isoformat(),
        })  # fmt: skip
        if rng.random() < 0.3:  # two events in one append
            return [placed, NewEvent("OrderPaid", {"order_id": order_id, "amount": placed.data["total"]})], "paid"
        return [placed], "placed"
    if order.status == "placed":
        if rng.random() < 0.85:
            return [NewEvent("OrderPaid", {"order_id": order_id, "amount": rng.randint(100, 90000)})], "paid"
        return [NewEvent("OrderCancelled", {"order_id": order_id, "reason": "changed mind"})], "cancelled"
    if rng.random() < 0.9:
        return [NewEvent("OrderShipped", {"order_id": order_id, "carrier": rng.choice(["ups", "dhl"])})], "shipped"
    return [NewEvent("OrderCancelled", {"order_id": order_id, "reason": "out of stock"})], "cancelled"


def writer_main(url: str, writer: int, seconds: float, out: Path, seed: int, hold_max: float) -> None:
    rng = random.Random(seed * 1000 + writer)
    store = EventStore(url)
    report = WriterReport()
    orders: list[_Order] = []
    created = 0
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        open_orders = [order for order in orders if order.status in ("placed", "paid")]
        if not open_orders or rng.random() < 0.35:
            created += 1
            order = _Order(f"order-w{writer}n{created}s{seed}")
            orders.append(order)
        else:
            order = rng.choice(open_orders)
        events, status = _next_events(order, rng, writer)
        mode = rng.choices(["plain", "held", "rollback", "retry"], weights=[5, 2, 1, 2])[0]
        report.counts[mode] += 1
        try:
            _write_once(store, order, events, mode, rng, hold_max, report)
        except _TRANSIENT:
            report.counts["failed_then_retried"] += 1
            if mode == "rollback":
                report.rolled_back += [str(event.event_id) for event in events]
                continue
            if not _retry_until_stored(store, order, events, report, deadline + 60):
                report.violations.append(f"writer {writer}: could not store {order.stream_id} after retries")
                continue
        except EventStoreError as error:  # WrongExpectedVersion, DuplicateEventId: must not happen here
            report.violations.append(f"writer {writer}: {type(error).__name__}: {error}")
            continue
        if mode == "rollback":
            continue
        report.acknowledged += [str(event.event_id) for event in events]
        order.version += len(events)
        order.status = status
    store.engine.dispose()
    out.write_text(json.dumps({"acknowledged": report.acknowledged, "rolled_back": report.rolled_back,
                               "counts": report.counts, "violations": report.violations}))  # fmt: skip


def _write_once(
    store: EventStore, order: _Order, events: list[NewEvent], mode: str, rng: random.Random,
    hold_max: float, report: WriterReport,
) -> None:  # fmt: skip
    if mode in ("held", "rollback"):
        with store.engine.connect() as connection:
            transaction = connection.begin()
            try:
                store.append(order.stream_id, events, expected_version=order.version, connection=connection)
                time.sleep(rng.uniform(0, hold_max))
            except BaseException:
                transaction.rollback()
                raise
            if mode == "rollback":
                transaction.rollback()
                report.rolled_back += [str(event.event_id) for event in events]
            else:
                transaction.commit()
        return
    result = store.append(order.stream_id, events, expected_version=order.version)
    if mode == "retry":
        again = store.append(order.stream_id, events, expected_version=order.version)
        if not again.already_stored or again.global_position != result.global_position:
            report.violations.append(f"retry of {order.stream_id}@{order.version} was not idempotent: {again}")
        report.counts["idempotent_retries"] += 1


def _retry_until_stored(
    store: EventStore, order: _Order, events: list[NewEvent], report: WriterReport, give_up_at: float
) -> bool:
    delay = 0.05
    while time.monotonic() < give_up_at:
        try:
            result = store.append(order.stream_id, events, expected_version=order.version)
        except _TRANSIENT:
            time.sleep(delay)
            delay = min(delay * 2, 1.0)
            continue
        if result.already_stored:
            report.counts["ambiguous_commit_found_stored"] += 1
        return True
    return False


# -- runner process -------------------------------------------------------------------


def runner_main(url: str) -> None:
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(process)d %(levelname)s %(name)s: %(message)s")
    store = EventStore(url)
    runner = ProjectionRunner(
        store,
        runner_projections(),
        poll_interval=1.0,
        held_back_interval=0.1,
        lock_retry_interval=0.2,
        reconnect_max_delay=0.5,
        liveness_interval=1.0,
        shutdown_timeout=8.0,
    )
    runner.run()
    store.engine.dispose()


# -- the soak --------------------------------------------------------------------------


@dataclass
class Figures:
    seconds: float = 0.0
    faults: Counter[str] = field(default_factory=Counter)
    writes: Counter[str] = field(default_factory=Counter)
    checks: dict[str, int] = field(default_factory=dict)
    violations: list[str] = field(default_factory=list)
    events: int = 0
    streams: int = 0
    projections: int = 0
    catch_up_seconds: float = 0.0

    def as_dict(self) -> dict[str, Any]:
        return {"seconds": round(self.seconds, 1), "events": self.events, "streams": self.streams,
                "projections": self.projections, "catch_up_seconds": round(self.catch_up_seconds, 2),
                "faults": dict(self.faults), "writes": dict(self.writes), "checks": self.checks,
                "violations": self.violations}  # fmt: skip


class _Processes:
    """The child processes this soak started (and only those)."""

    def __init__(self, url: str, workdir: Path) -> None:
        self.url = url
        self.workdir = workdir
        self.runners: list[subprocess.Popen[bytes]] = []
        self.writers: list[subprocess.Popen[bytes]] = []
        self.expected_exit: dict[int, int] = {}
        self.logs: dict[int, Path] = {}
        self.started: dict[int, float] = {}
        self._count = 0

    def _spawn(self, arguments: list[str], name: str) -> subprocess.Popen[bytes]:
        env = {**os.environ, "EVENTSTORE_CHAOS_URL": self.url, "PYTHONPATH": str(ROOT)}
        self._count += 1
        log = (self.workdir / f"{name}-{self._count}.log").open("wb")
        # A SIGTERM that arrives before ProjectionRunner.run() installs its handler
        # (while the interpreter imports) must still mean "stop cleanly", exit 0.
        bootstrap = (
            "import signal, sys; signal.signal(signal.SIGTERM, lambda *_: sys.exit(0)); "
            "from benchmarks.chaos import main; sys.exit(main(sys.argv[1:]))"
        )
        process = subprocess.Popen(
            [sys.executable, "-c", bootstrap, *arguments], cwd=ROOT, env=env, stdout=log, stderr=log
        )
        log.close()
        self.logs[process.pid] = self.workdir / f"{name}-{self._count}.log"
        self.started[process.pid] = time.monotonic()
        return process

    def log_tail(self, pid: int) -> str:
        return self.logs[pid].read_text(errors="replace")[-1500:]

    def start_runner(self) -> None:
        self.runners.append(self._spawn(["--role", "runner"], "runner"))

    def start_writer(self, writer: int, seconds: float, seed: int, hold_max: float) -> None:
        out = self.workdir / f"writer-{writer}.json"
        self.writers.append(self._spawn(["--role", "writer", "--writer", str(writer), "--seconds", str(seconds),
                                         "--seed", str(seed), "--hold-max", str(hold_max), "--out", str(out)],
                                        f"writer{writer}"))  # fmt: skip

    def reap_runners(self, figures: Figures) -> None:
        """Replace runners that ended; an exit nobody asked for is a violation."""
        for process in list(self.runners):
            code = process.poll()
            if code is None:
                continue
            self.runners.remove(process)
            expected = self.expected_exit.pop(process.pid, None)
            if code != expected:
                tail = self.log_tail(process.pid)
                figures.violations.append(f"runner {process.pid} exited {code} (expected {expected}): {tail}")
            self.start_runner()

    def stop_all(self) -> None:
        for process in [*self.runners, *self.writers]:
            if process.poll() is None:
                process.kill()
                process.wait()


def _active_runner(
    engine: sa.Engine, runners: list[subprocess.Popen[bytes]], signalled: dict[int, int]
) -> subprocess.Popen[bytes] | None:
    """A live runner process that holds projection locks now (by checkpoint owner ``host:pid``)."""
    alive = {process.pid: process for process in runners if process.poll() is None and process.pid not in signalled}
    with engine.connect() as connection:
        owners = connection.execute(
            sa.text("SELECT owner FROM projection_checkpoints WHERE state = 'running' AND owner IS NOT NULL")
        ).scalars()
        counts = Counter(int(owner.rsplit(":", 1)[1]) for owner in owners if owner.rsplit(":", 1)[1].isdigit())
    for pid, _ in counts.most_common():
        if pid in alive:
            return alive[pid]
    return None


def _wait_for_runners(engine: sa.Engine, projections: int, *, timeout: float) -> None:
    """Wait until every projection is owned by a running runner (the fault loop needs a target)."""
    deadline = time.monotonic() + timeout
    query = sa.text("SELECT count(*) FROM projection_checkpoints WHERE state = 'running' AND owner IS NOT NULL")
    while time.monotonic() < deadline:
        with engine.connect() as connection:
            if connection.execute(query).scalar_one() >= projections:
                return
        time.sleep(0.1)
    raise TimeoutError(f"the runners did not take their {projections} projections within {timeout} s")


def _terminate_listeners(engine: sa.Engine) -> int:
    with engine.connect() as connection:
        terminated = connection.execute(
            sa.text(
                "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
                "WHERE application_name = 'eventstore-listener' AND datname = current_database()"
            )
        ).scalar_one()
        connection.commit()
    return int(terminated)


def _fault_loop(
    processes: _Processes, engine: sa.Engine, figures: Figures, *, seconds: float, restart: Callable[[], None] | None,
    rng: random.Random, interval: tuple[float, float], restarts: int,
) -> None:  # fmt: skip
    start = time.monotonic()
    end = start + seconds
    restart_at = sorted(start + seconds * (index + 1) / (restarts + 1) for index in range(restarts)) if restart else []
    while time.monotonic() < end:
        time.sleep(rng.uniform(*interval))
        processes.reap_runners(figures)
        try:
            if restart_at and time.monotonic() >= restart_at[0]:
                restart_at.pop(0)
                assert restart is not None
                restart()
                figures.faults["server_restart"] += 1
                continue
            kind = rng.choices(["kill_active_runner", "terminate_listeners", "sigterm_runner"], weights=[6, 2, 2])[0]
            if kind == "kill_active_runner":
                # Right after a takeover no live runner may own a lock yet: give one a moment.
                victim = None
                patience = time.monotonic() + 3.0
                while victim is None and time.monotonic() < patience:
                    processes.reap_runners(figures)
                    victim = _active_runner(engine, processes.runners, processes.expected_exit)
                    if victim is None:
                        time.sleep(0.1)
                if victim is not None:
                    processes.expected_exit[victim.pid] = -signal.SIGKILL
                    victim.kill()
                    figures.faults[kind] += 1
                else:
                    figures.faults["no_active_runner_to_kill"] += 1
            elif kind == "terminate_listeners":
                figures.faults[kind] += 1
                figures.faults["listener_backends_terminated"] += _terminate_listeners(engine)
            else:
                # Only runners old enough to have installed their signal handlers
                # (before that, SIGTERM kills the interpreter: not a runner fault).
                alive = [
                    process
                    for process in processes.runners
                    if process.poll() is None
                    and process.pid not in processes.expected_exit
                    and time.monotonic() - processes.started[process.pid] > 1
                ]
                if alive:
                    victim = rng.choice(alive)
                    processes.expected_exit[victim.pid] = 0
                    victim.send_signal(signal.SIGTERM)
                    figures.faults[kind] += 1
        except (sa.exc.OperationalError, sa.exc.InterfaceError, psycopg.OperationalError):
            engine.dispose()  # the server is restarting; try the next fault later
            figures.faults["fault_skipped_server_down"] += 1


def _wait_for_catch_up(url: str, figures: Figures, timeout: float) -> None:
    store = EventStore(url)
    start = time.monotonic()
    try:
        head = store.head_position()
        names = [projection.name for projection in [*domain_projections(), ChaosLedger()]]
        watcher = ProjectionRunner(store, [_Named(name) for name in names])
        watcher.wait_until_processed(head, timeout=timeout)
    except TimeoutError as error:
        figures.violations.append(f"catch-up: {error}")
    finally:
        figures.catch_up_seconds = time.monotonic() - start
        store.engine.dispose()


class _Named(Projection):
    """A stand-in with only a name, to wait on checkpoints."""

    def __init__(self, name: str) -> None:
        self.name = name


def _snapshot(engine: sa.Engine) -> dict[str, list[str]]:
    with engine.connect() as connection:
        tables = (
            connection.execute(
                sa.text(
                    "SELECT table_name FROM information_schema.tables WHERE table_schema = 'public' "
                    "AND table_type = 'BASE TABLE' ORDER BY 1"
                )
            )
            .scalars()
            .all()
        )
        return {
            table: sorted(
                connection.execute(
                    sa.text(f'SELECT row_to_json(t)::text FROM "{table}" AS t')  # names from the catalog
                ).scalars()
            )
            for table in tables
            if table not in _EXCLUDED_TABLES
        }


def _verify(url: str, reports: list[dict[str, Any]], figures: Figures) -> None:
    from eventstore import admin

    engine = sa.create_engine(url, poolclass=sa.NullPool)
    store = EventStore(url)
    checks = figures.checks
    try:
        with engine.connect() as connection:
            events = connection.execute(sa.text(
                "SELECT event_id::text AS event_id, global_position, stream_id, stream_version, event_type, category "
                "FROM events ORDER BY transaction_order, global_position")).all()  # fmt: skip
            ledger = connection.execute(sa.text(
                f"SELECT projection_name, global_position, event_id::text AS event_id, stream_id, stream_version, "
                f"1 AS times FROM {LEDGER} ORDER BY projection_name, seq")).all()  # fmt: skip
            failed = connection.execute(sa.text(
                "SELECT projection_name, state, last_error FROM projection_checkpoints "
                "WHERE state = 'failed' OR last_error IS NOT NULL")).all()  # fmt: skip
            failures = connection.execute(sa.text("SELECT count(*) FROM projection_failures")).scalar_one()
        figures.events = len(events)
        figures.streams = len({row.stream_id for row in events})
        stored_ids = {row.event_id for row in events}
        acknowledged = {event_id for report in reports for event_id in report["acknowledged"]}
        rolled_back = {event_id for report in reports for event_id in report["rolled_back"]}
        checks["acknowledged_events"] = len(acknowledged)
        checks["acknowledged_but_missing"] = len(acknowledged - stored_ids)
        checks["rolled_back_events"] = len(rolled_back)
        checks["rolled_back_but_stored"] = len(rolled_back & stored_ids)
        checks["rolled_back_but_processed"] = len(rolled_back & {row.event_id for row in ledger})
        checks["failed_projections"] = len(failed)
        checks["projection_failures_rows"] = int(failures)
        for violation in [report_violation for report in reports for report_violation in report["violations"]]:
            figures.violations.append(violation)

        # Exactly once, in the global order, per projection.
        projections = [*domain_projections(), ChaosLedger()]
        figures.projections = len(projections)
        by_projection: dict[str, list[Any]] = {}
        for row in ledger:
            by_projection.setdefault(row.projection_name, []).append(row)
        missing = duplicated = extra = order_breaks = stream_order_breaks = processed = 0
        for projection in projections:
            wanted = [row for row in events if _matches(projection, row)]
            rows = by_projection.get(projection.name, [])
            processed += len(rows)
            seen = {row.global_position for row in rows}
            missing += len({row.global_position for row in wanted} - seen)
            extra += len(seen - {row.global_position for row in wanted})
            duplicated += len(rows) - len(seen)
            if [row.global_position for row in rows] != [row.global_position for row in wanted]:
                order_breaks += 1
            last: dict[str, int] = {}
            for row in rows:
                if row.stream_version <= last.get(row.stream_id, 0):
                    stream_order_breaks += 1
                last[row.stream_id] = row.stream_version
        checks.update(ledger_rows=processed, missed_events=missing, processed_twice=duplicated,
                      processed_but_not_stored=extra, projections_out_of_global_order=order_breaks,
                      stream_order_violations=stream_order_breaks)  # fmt: skip

        # Each read model equals an independent recomputation (projections.verify) ...
        from projections import verify

        problems = [problem for projection in domain_projections() for problem in verify(store, projection)]
        checks["read_models_differing_from_recomputation"] = len(problems)
        figures.violations += problems
        # ... and a rebuild from the events (admin.rebuild) yields the same tables.
        before = _snapshot(engine)
        for projection in domain_projections():
            admin.rebuild(store, projection)
        after = _snapshot(engine)
        differing = sorted(table for table in before.keys() | after.keys() if before.get(table) != after.get(table))
        checks["read_model_tables"] = len(before)
        checks["read_model_rows"] = sum(len(rows) for rows in before.values())
        checks["read_models_differing_from_rebuild"] = len(differing)
        if differing:
            figures.violations.append(f"read models differ from a rebuild: {', '.join(differing)}")
    finally:
        store.engine.dispose()
        engine.dispose()
    zero = ["acknowledged_but_missing", "rolled_back_but_stored", "rolled_back_but_processed", "failed_projections",
            "projection_failures_rows", "missed_events", "processed_twice", "processed_but_not_stored",
            "projections_out_of_global_order", "stream_order_violations",
            "read_models_differing_from_rebuild", "read_models_differing_from_recomputation"]  # fmt: skip
    figures.violations += [f"{name} = {checks[name]}" for name in zero if checks.get(name)]


def _matches(projection: Projection, row: Any) -> bool:
    if projection.categories and row.category not in projection.categories:
        return False
    return not (projection.event_types and row.event_type not in projection.event_types)


@dataclass
class SoakSettings:
    seconds: float = 240.0
    seed: int = 1
    writers: int = WRITERS
    runners: int = RUNNERS
    interval: tuple[float, float] = (1.5, 4.0)
    restarts: int = 4
    hold_max: float = 0.4
    min_kills: int = 20
    catch_up_timeout: float = 120.0


SHORT = SoakSettings(seconds=30.0, interval=(0.8, 1.6), restarts=1, hold_max=0.2, min_kills=3, catch_up_timeout=40.0)


def run_soak(url: str, settings: SoakSettings, *, restart: Callable[[], None] | None = None) -> Figures:
    """Run the soak against a migrated database at ``url``; returns the figures (violations listed)."""
    figures = Figures()
    rng = random.Random(settings.seed)
    engine = sa.create_engine(url, poolclass=sa.NullPool)
    with engine.begin() as connection:
        connection.execute(sa.text(_CREATE_LEDGER))
        connection.execute(sa.text(_INDEX_LEDGER))
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="eventstore-chaos-") as directory:
        processes = _Processes(url, Path(directory))
        try:
            for _ in range(settings.runners):
                processes.start_runner()
            _wait_for_runners(engine, len(domain_projections()) + 1, timeout=90)
            for writer in range(settings.writers):
                processes.start_writer(writer, settings.seconds, settings.seed, settings.hold_max)
            _fault_loop(processes, engine, figures, seconds=settings.seconds, restart=restart, rng=rng,
                        interval=settings.interval, restarts=settings.restarts)  # fmt: skip
            for process in processes.writers:
                if process.wait(timeout=settings.seconds + 120) != 0:
                    figures.violations.append(
                        f"writer {process.pid} exited {process.returncode}: " + processes.log_tail(process.pid)
                    )
            processes.reap_runners(figures)
            _wait_for_catch_up(url, figures, settings.catch_up_timeout)
            for process in processes.runners:
                # Let a just-started interpreter reach its SIGTERM handler first.
                time.sleep(max(0.0, processes.started[process.pid] + 1.0 - time.monotonic()))
                if process.pid not in processes.expected_exit:  # never a second signal: that aborts
                    processes.expected_exit[process.pid] = 0
                    process.send_signal(signal.SIGTERM)
            for process in processes.runners:
                try:
                    process.wait(timeout=20)
                except subprocess.TimeoutExpired:
                    figures.violations.append(f"runner {process.pid} did not stop within 20 s of SIGTERM")
            processes.reap_runners(figures)
            for process in processes.runners:  # the replacements reap_runners started
                process.kill()
                process.wait()
            reports = []
            for writer in range(settings.writers):
                path = Path(directory) / f"writer-{writer}.json"
                if path.exists():
                    reports.append(json.loads(path.read_text()))
                else:
                    figures.violations.append(f"writer {writer} wrote no report")
            for report in reports:
                figures.writes.update(report["counts"])
            _verify(url, reports, figures)
        finally:
            processes.stop_all()
            engine.dispose()
    figures.seconds = time.monotonic() - started
    if figures.faults["kill_active_runner"] < settings.min_kills:
        figures.violations.append(
            f"only {figures.faults['kill_active_runner']} runner kills; at least {settings.min_kills} required"
        )
    return figures


@contextlib.contextmanager
def _private_server() -> Iterator[tuple[str, Callable[[], None]]]:
    from benchmarks.server import bench_server

    with bench_server() as server:
        server.create_database("chaos")
        yield server.url("chaos"), server.local.restart


def print_figures(figures: Figures) -> None:
    print(f"chaos soak: {figures.seconds:.0f} s, {figures.events} events in {figures.streams} streams, "
          f"{figures.projections} projections, catch-up {figures.catch_up_seconds:.1f} s")  # fmt: skip
    print("faults survived: " + ", ".join(f"{name}={count}" for name, count in sorted(figures.faults.items())))
    print("writes: " + ", ".join(f"{name}={count}" for name, count in sorted(figures.writes.items())))
    print("checks: " + ", ".join(f"{name}={count}" for name, count in figures.checks.items()))
    if figures.violations:
        print(f"VIOLATIONS ({len(figures.violations)}):")
        for violation in figures.violations:
            print("  - " + violation.replace("\n", "\n    "))
    else:
        print("OK: no violations")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--short", action="store_true", help="the short form run by the test suite (about 60 s)")
    parser.add_argument("--seconds", type=float, help="duration of the write + fault phase")
    parser.add_argument("--url", help="a migrated database (default: a private server, restartable)")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--json", action="store_true", help="print the figures as JSON too")
    parser.add_argument("--role", choices=["soak", "runner", "writer"], default="soak", help=argparse.SUPPRESS)
    parser.add_argument("--writer", type=int, default=0, help=argparse.SUPPRESS)
    parser.add_argument("--hold-max", type=float, default=0.4, help=argparse.SUPPRESS)
    parser.add_argument("--out", type=Path, help=argparse.SUPPRESS)
    arguments = parser.parse_args(argv)

    if arguments.role == "runner":
        runner_main(os.environ["EVENTSTORE_CHAOS_URL"])
        return 0
    if arguments.role == "writer":
        writer_main(os.environ["EVENTSTORE_CHAOS_URL"], arguments.writer, arguments.seconds, arguments.out,
                    arguments.seed, arguments.hold_max)  # fmt: skip
        return 0

    settings = dataclasses.replace(SHORT) if arguments.short else SoakSettings()
    settings.seed = arguments.seed
    if arguments.seconds is not None:
        settings.seconds = arguments.seconds
    if arguments.url:
        figures = run_soak(arguments.url, settings)
    else:
        with _private_server() as (url, restart):
            figures = run_soak(url, settings, restart=restart)
    print_figures(figures)
    if arguments.json:
        print(json.dumps(figures.as_dict()))
    return 1 if figures.violations else 0


if __name__ == "__main__":
    sys.exit(main())
