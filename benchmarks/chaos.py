"""Chaos soak: writers, competing runners and a fault loop; then prove nothing was lost or repeated.

``python -m benchmarks.chaos [--short] [--seconds N] [--url URL] [--seed S] [--stall-seconds S] [--no-pgbouncer]
[--json] [--keep-logs DIR]`` from the repository root (the PgBouncer leg starts PgBouncer with the starter
in ``tests/poolers/conftest.py``). The long form writes for 240 s (about 6 minutes in all on 2 cores);
``--short`` is the 30 s form (the test suite runs it for 20 s).

- 8 writer processes append order life cycles (``projections.orders`` schema)
  to many streams. Per append, at random: a plain append; a transaction held
  open for a random time before commit; a transaction rolled back on purpose
  (its event ids are remembered); an append retried with the same event ids
  (must come back ``already_stored``); or a **contended append** to one of 3
  shared streams (``tally-0`` .. ``tally-2``) that every writer appends to:
  with ``expected_version`` (optimistic concurrency: on
  ``WrongExpectedVersion`` the writer re-reads the version and appends new
  events; the refused ones are remembered), with ``ANY``, or with
  ``expected_version`` in a transaction held open (a quarter of those rolled
  back). A failed append (server restart) is retried with the same event ids
  until it succeeds or is refused. Two writers go through the PgBouncer (their
  own transactions on an engine with ``prepare_threshold=None``).
- 3 runner processes run ``projections.ALL`` plus ``chaos_ledger`` (every
  event). Every projection is wrapped so that, in the transaction of its
  batch, it also writes one ledger row per event it processes, with the
  lease (owner, fencing token) its checkpoint row holds in that transaction.
- Two legs. **PgBouncer transaction mode** (first half; ``default_pool_size``
  4): 3 runners through the PgBouncer, 2 with ``listen_url`` = the direct
  URL and 1 without it, which must fall back to polling with one WARNING.
  **Direct** (second half): 3 direct runners start, then those through
  PgBouncer are SIGTERMed (a handover by release). Without
  ``/usr/sbin/pgbouncer`` both halves are direct and the reason is printed.
- A **stall**: early on (10 % in; short form 15 %), a transaction in the
  cluster's ``postgres`` database takes an xid and stays open for 30 s (short
  form 5 s) while the writers go on; meanwhile ``admin.projection_status``
  must report events held back, blocked by that pid.
- A fault loop at random moments: SIGKILLs the active runner (the one
  holding most projection leases: ``projection_checkpoints.owner``, a live
  process of the soak's), terminates the listener backends
  (``pg_terminate_backend``), restarts the PostgreSQL server (never during
  the stall or the leg switch; the short form only in the direct leg, as
  PgBouncer waits ``server_login_retry``, 15 s, before it logs in again
  after a restart), SIGTERMs a runner (must exit 0). Each leg's first fault
  is a SIGKILL (the leg is extended until it had one). Dead runners
  are replaced by runners of the current leg (from spare processes that have
  already imported everything). After a SIGKILL the loop waits for the
  takeover before its next fault; a monitor samples the leases every 0.2 s
  to time it.

At the end it waits for catch-up and checks: every acknowledged append is
stored exactly once, at the stream version it was acknowledged with, and
nothing else is stored; every stream's versions are gapless 1..n; no
rolled-back or refused event is stored or processed; every stored event was
processed exactly once by every projection whose filters match it, in the
global order (hence per-stream order); every batch was committed under the
applying runner's own lease, fencing tokens only grow, batches never
interleave, and owners change no more often than runners ended or lost a
lease; no event behind the stall was applied before it ended; every takeover
after a SIGKILL took under 5 s (the short form: 10 s, as CI shares two cores
with other work: it only catches a broken takeover); no projection failed;
each read model equals a recomputation and a rebuild from the events
(``admin.rebuild``). It prints the
figures and exits 1 on any violation (or if fewer faults than required
happened).

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
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
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

from eventstore import ANY, EventStore, NewEvent, Projection, ProjectionRunner, WrongExpectedVersion
from eventstore.errors import DatabaseUnavailable, EventStoreError

ROOT = Path(__file__).resolve().parents[1]
LEDGER = "chaos_ledger"
LEDGER_PROJECTION = "chaos_ledger"
WRITERS = 8
RUNNERS = 3
SHARED_CATEGORY = "tally"
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
    lease_token         bigint,
    lease_owner         text,
    applied_at          timestamptz NOT NULL DEFAULT clock_timestamp()
)
"""
_INDEX_LEDGER = f"CREATE INDEX IF NOT EXISTS {LEDGER}_position ON {LEDGER} (projection_name, global_position)"
# One row per application (no unique key, so a repeat is counted, not refused), with
# the checkpoint and the lease (owner, fencing token) of the row this batch's
# transaction locked: enough to explain any repeat, and to prove who applied it.
_RECORD = sa.text(
    f"INSERT INTO {LEDGER} (projection_name, global_position, event_id, stream_id, stream_version, event_order, "
    "runner_pid, checkpoint_order, checkpoint_position, lease_token, lease_owner) "
    "SELECT :name, :position, :event_id, :stream_id, :version, CAST(:event_order AS xid8), :pid, "
    "c.transaction_order, c.global_position, c.lease_token, c.owner "
    "FROM projection_checkpoints c WHERE c.projection_name = :name"
)
_OWNER_PID = re.compile(r":(\d+)(?:/\d+)?$")  # eventstore.runner.ownership.owner_id(): host:pid or host:pid/N


def _pid_of(owner: str | None) -> int | None:
    match = _OWNER_PID.search(owner or "")
    return int(match.group(1)) if match else None


def shared_stream(index: int) -> str:
    return f"{SHARED_CATEGORY}-{index}"


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
    acknowledged: list[tuple[str, str, int]] = field(default_factory=list)
    """(event_id, stream_id, stream_version) of every event of an acknowledged append."""
    rolled_back: list[str] = field(default_factory=list)
    refused: list[str] = field(default_factory=list)
    """Event ids of appends refused with WrongExpectedVersion (never stored)."""
    counts: Counter[str] = field(default_factory=Counter)
    violations: list[str] = field(default_factory=list)

    def acknowledge(self, events: list[NewEvent], result: Any) -> None:
        first = result.stream_version - len(events) + 1
        self.acknowledged += [(str(event.event_id), result.stream_id, first + index) for index, event in
                              enumerate(events)]  # fmt: skip


class _CommitOutOfSync(Exception):
    """Our own transaction's COMMIT got an answer out of step (its outcome is unknown, as for a lost connection)."""


_TRANSIENT = (
    DatabaseUnavailable, sa.exc.OperationalError, sa.exc.InterfaceError, psycopg.OperationalError, _CommitOutOfSync,
)  # fmt: skip


def _rollback(transaction: sa.Transaction, report: WriterReport) -> None:
    """Roll back a transaction of ours: a lost connection or an out-of-step answer rolls it back just as well."""
    try:
        transaction.rollback()
    except sa.exc.InternalError:  # "received 2 results from command 'ROLLBACK'" (see _commit)
        report.counts["rollback_out_of_sync"] += 1
    except _TRANSIENT:
        pass


def _commit(transaction: sa.Transaction, report: WriterReport) -> None:
    """Commit a transaction of ours; an out-of-step answer is an unknown outcome (retried with the same ids).

    Seen through PgBouncer around a server restart: psycopg raises ``InternalError: received 2 results
    from command 'COMMIT'`` from the caller's own COMMIT (not an eventstore call); counted in the figures.
    """
    try:
        transaction.commit()
    except sa.exc.InternalError as error:
        report.counts["commit_out_of_sync"] += 1
        raise _CommitOutOfSync(str(error).splitlines()[0]) from error


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


def writer_main(
    url: str, writer: int, seconds: float, out: Path, seed: int, hold_max: float, shared: int, *, pooled: bool
) -> None:
    rng = random.Random(seed * 1000 + writer)
    store = EventStore(url)
    # The engine of the appends in a transaction of ours (append(connection=...)). Through a
    # transaction-mode pooler it needs prepare_threshold=None, as the README says of an engine
    # one passes in: store.engine, though the store made it from the URL and detects the pooler
    # for its own statements, keeps psycopg's automatic prepared statements and fails within a
    # few appends (ConfigurationError "prepared statement "_pg3_0" does not exist"); reported.
    engine = sa.create_engine(url, connect_args={"prepare_threshold": None}) if pooled else store.engine
    report = WriterReport()
    _ready_then_wait_for_go(out)
    orders: list[_Order] = []
    created = 0
    modes, weights = ["plain", "held", "rollback", "retry", "shared"], [5, 2, 1, 2, 3 if shared else 0]
    first_append_at = None
    deadline = time.monotonic() + seconds
    try:
        while time.monotonic() < deadline:
            first_append_at = first_append_at or time.time()
            mode = rng.choices(modes, weights=weights)[0]
            report.counts[mode] += 1
            if mode == "shared":
                stream_id = shared_stream(rng.randrange(shared))
                _append_shared(store, engine, stream_id, writer, rng, hold_max, report, deadline + 60)
                continue
            open_orders = [order for order in orders if order.status in ("placed", "paid")]
            if not open_orders or rng.random() < 0.35:
                created += 1
                order = _Order(f"order-w{writer}n{created}s{seed}")
                orders.append(order)
            else:
                order = rng.choice(open_orders)
            events, status = _next_events(order, rng, writer)
            try:
                result = _write_once(store, engine, order, events, mode, rng, hold_max, report)
            except _TRANSIENT:
                report.counts["failed_then_retried"] += 1
                if mode == "rollback":
                    report.rolled_back += [str(event.event_id) for event in events]
                    continue
                result = _retry_until_stored(store, order.stream_id, events, order.version, report, deadline + 60)
                if result is None:
                    report.violations.append(f"writer {writer}: could not store {order.stream_id} after retries")
                    continue
            except EventStoreError as error:  # WrongExpectedVersion, DuplicateEventId: must not happen here
                report.violations.append(f"writer {writer}: {type(error).__name__}: {error}")
                continue
            if mode == "rollback":
                continue
            report.acknowledge(events, result)
            order.version += len(events)
            order.status = status
    except Exception as error:  # an unexpected error ends this writer, and says so in its report
        report.violations.append(f"writer {writer} stopped: {type(error).__name__}: {str(error).splitlines()[0]}")
    store.close()
    engine.dispose()
    out.write_text(json.dumps({"acknowledged": report.acknowledged, "rolled_back": report.rolled_back,
                               "refused": report.refused, "counts": report.counts,
                               "violations": report.violations, "first_append_at": first_append_at,
                               "last_append_at": time.time()}))  # fmt: skip


def _ready_then_wait_for_go(out: Path) -> None:
    """Say this writer is ready (imports done), then wait for the soak's go: all writers start together."""
    out.with_suffix(".ready").touch()
    go = out.parent / "go"
    give_up_at = time.monotonic() + 120
    while not go.exists() and time.monotonic() < give_up_at:
        time.sleep(0.02)  # polls the condition (a file), not a guess at how long others take


def _write_once(
    store: EventStore, engine: sa.Engine, order: _Order, events: list[NewEvent], mode: str, rng: random.Random,
    hold_max: float, report: WriterReport,
) -> Any:  # fmt: skip
    if mode in ("held", "rollback"):
        with engine.connect() as connection:
            transaction = connection.begin()
            try:
                result = store.append(order.stream_id, events, expected_version=order.version, connection=connection)
                time.sleep(rng.uniform(0, hold_max))
            except BaseException:
                _rollback(transaction, report)
                raise
            if mode == "rollback":
                _rollback(transaction, report)
                report.rolled_back += [str(event.event_id) for event in events]
            else:
                _commit(transaction, report)
        return result
    result = store.append(order.stream_id, events, expected_version=order.version)
    if mode == "retry":
        again = store.append(order.stream_id, events, expected_version=order.version)
        if not again.already_stored or again.global_position != result.global_position:
            report.violations.append(f"retry of {order.stream_id}@{order.version} was not idempotent: {again}")
        report.counts["idempotent_retries"] += 1
    return result


def _retry_until_stored(
    store: EventStore, stream_id: str, events: list[NewEvent], expected: Any, report: WriterReport,
    give_up_at: float,
) -> Any:  # fmt: skip
    """Re-send an append whose outcome is unknown (same event ids); its result, or None after ``give_up_at``.

    Raises WrongExpectedVersion when the retry is refused: the first attempt was not stored either
    (the store checks the event ids before it reports a version mismatch).
    """
    delay = 0.05
    while time.monotonic() < give_up_at:
        try:
            result = store.append(stream_id, events, expected_version=expected)
        except _TRANSIENT:
            time.sleep(delay)
            delay = min(delay * 2, 1.0)
            continue
        if result.already_stored:
            report.counts["ambiguous_commit_found_stored"] += 1
        return result
    return None


def _stream_version(store: EventStore, stream_id: str, give_up_at: float) -> int:
    delay = 0.05
    while True:
        try:
            return store.stream_version(stream_id)
        except _TRANSIENT:
            if time.monotonic() > give_up_at:
                raise
            time.sleep(delay)
            delay = min(delay * 2, 1.0)


def _append_shared(
    store: EventStore, engine: sa.Engine, stream_id: str, writer: int, rng: random.Random, hold_max: float,
    report: WriterReport, give_up_at: float,
) -> None:  # fmt: skip
    """Append to a stream other writers append to as well, until it is stored (or rolled back on purpose).

    ``expected``: optimistic concurrency; on WrongExpectedVersion re-read the version and append new
    events (the refused ones are never stored). ``any``: ANY (the store retries lost races itself).
    ``held``: ``expected`` in a transaction held open, which keeps the next version from the others
    until it ends (a quarter are rolled back).
    """
    kind = rng.choices(["expected", "any", "held"], weights=[4, 2, 2])[0]
    report.counts[f"shared_{kind}"] += 1
    version = _stream_version(store, stream_id, give_up_at)
    attempt = 0
    while time.monotonic() < give_up_at:
        attempt += 1
        events = [NewEvent("Tallied", {"writer": writer, "attempt": attempt, "n": n})
                  for n in range(rng.choice((1, 1, 2)))]  # fmt: skip
        ids = [str(event.event_id) for event in events]
        expected: Any = ANY if kind == "any" else version
        try:
            try:
                if kind == "held":
                    result = _held_shared_append(store, engine, stream_id, events, version, rng, hold_max, report)
                    if result is None:
                        return  # rolled back on purpose
                else:
                    result = store.append(stream_id, events, expected_version=expected)
            except _TRANSIENT:
                report.counts["failed_then_retried"] += 1
                result = _retry_until_stored(store, stream_id, events, expected, report, give_up_at)
                if result is None:
                    report.violations.append(f"writer {writer}: could not store {stream_id} after retries")
                    return
        except WrongExpectedVersion:
            report.refused += ids
            report.counts["shared_refused_wrong_expected_version"] += 1
            version = _stream_version(store, stream_id, give_up_at)  # re-read, decide again
            continue
        except EventStoreError as error:
            report.violations.append(f"writer {writer}: {stream_id}: {type(error).__name__}: {error}")
            return
        if kind != "any" and result.stream_version != version + len(events):
            report.violations.append(f"writer {writer}: {stream_id} at {version} + {len(events)} events was "
                                     f"acknowledged at version {result.stream_version}")  # fmt: skip
        report.acknowledge(events, result)
        report.counts["shared_acknowledged"] += 1
        if attempt > 1:
            report.counts["shared_acknowledged_after_refusal"] += 1
        return
    report.violations.append(f"writer {writer}: no append to {stream_id} succeeded before the deadline")


def _held_shared_append(
    store: EventStore, engine: sa.Engine, stream_id: str, events: list[NewEvent], version: int, rng: random.Random,
    hold_max: float, report: WriterReport,
) -> Any:  # fmt: skip
    """``expected_version`` in a transaction held open; the result, or None when rolled back on purpose."""
    with engine.connect() as connection:
        transaction = connection.begin()
        try:
            result = store.append(stream_id, events, expected_version=version, connection=connection)
            time.sleep(rng.uniform(0, hold_max / 2))
        except BaseException:
            _rollback(transaction, report)
            raise
        if rng.random() < 0.25:
            _rollback(transaction, report)
            report.rolled_back += [str(event.event_id) for event in events]
            report.counts["shared_rolled_back"] += 1
            return None
        _commit(transaction, report)
        return result


# -- runner process -------------------------------------------------------------------


def runner_main(url: str, listen_url: str | None, stall_warning_after: float, ready: Path | None) -> None:
    """A runner process: imports and builds its runner, waits for its go file (a spare waits there), runs."""
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(process)d %(levelname)s %(name)s: %(message)s")
    store = EventStore(url)
    runner = ProjectionRunner(
        store,
        runner_projections(),
        listen_url=listen_url,
        poll_interval=1.0,
        held_back_interval=0.1,
        lock_retry_interval=0.2,
        reconnect_max_delay=0.5,
        liveness_interval=1.0,
        stall_warning_after=stall_warning_after,
        shutdown_timeout=8.0,
    )
    if ready is not None:
        go = ready.with_suffix(".go")
        while not go.exists():  # a spare, started ahead so that a replacement runs at once
            time.sleep(0.02)

        def say_ready() -> None:
            give_up_at = time.monotonic() + 60
            while not runner.running and time.monotonic() < give_up_at:
                time.sleep(0.05)
            ready.touch()

        threading.Thread(target=say_ready, name="chaos-ready", daemon=True).start()
    runner.run()
    store.close()


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
    legs: dict[str, Counter[str]] = field(default_factory=dict)
    """Per leg (``direct``, ``pgbouncer``): its faults and the ledger rows its runners applied."""
    pgbouncer_skipped: str | None = None
    """Why the PgBouncer leg did not run (None: it ran)."""
    stall: dict[str, Any] = field(default_factory=dict)
    timeline: dict[str, float] = field(default_factory=dict)
    """Seconds after the writers' start: their first and last appends, the leg switch."""
    takeovers: list[float] = field(default_factory=list)
    """Seconds from each SIGKILL of the active runner until all its projections had a live new owner."""

    def as_dict(self) -> dict[str, Any]:
        return {"seconds": round(self.seconds, 1), "events": self.events, "streams": self.streams,
                "projections": self.projections, "catch_up_seconds": round(self.catch_up_seconds, 2),
                "faults": dict(self.faults), "writes": dict(self.writes), "checks": self.checks,
                "legs": {leg: dict(counts) for leg, counts in self.legs.items()},
                "pgbouncer_skipped": self.pgbouncer_skipped, "stall": self.stall,
                "takeovers": [round(seconds, 2) for seconds in self.takeovers], "timeline": self.timeline,
                "violations": self.violations}  # fmt: skip

    def leg(self, name: str) -> Counter[str]:
        return self.legs.setdefault(name, Counter())


# Runner kinds: where the store URL and the LISTEN URL go.
DIRECT, BOUNCED_LISTEN, BOUNCED_POLL = "direct", "pgbouncer+listen_url", "pgbouncer polling"


class _Processes:
    """The child processes this soak started (and only those)."""

    def __init__(self, url: str, workdir: Path, stall_warning_after: float) -> None:
        self.url = url
        self.bouncer_url: str | None = None
        self.workdir = workdir
        self.stall_warning_after = stall_warning_after
        self.leg = "direct"
        self.runners: list[subprocess.Popen[bytes]] = []
        self.writers: list[subprocess.Popen[bytes]] = []
        self.expected_exit: dict[int, int] = {}
        self.logs: dict[int, Path] = {}
        self.started: dict[int, float] = {}
        self.kinds: dict[int, str] = {}
        self.ended: Counter[str] = Counter()
        self._count = 0
        self._runners_started = 0
        self.moments: dict[str, float] = {}
        self.ready: dict[int, Path] = {}
        # Spare runner processes per kind, imported and waiting for their go file: on a machine
        # shared with other work, starting an interpreter takes seconds, and a replacement that
        # is not there yet would make takeovers look slow and the kills rare.
        self.spares: dict[str, list[tuple[subprocess.Popen[bytes], Path]]] = {}

    def _spawn(
        self, arguments: list[str], name: str, url: str, listen_url: str | None = None
    ) -> subprocess.Popen[bytes]:
        env = {**os.environ, "EVENTSTORE_CHAOS_URL": url, "PYTHONPATH": str(ROOT)}
        env.pop("EVENTSTORE_CHAOS_LISTEN_URL", None)
        if listen_url:
            env["EVENTSTORE_CHAOS_LISTEN_URL"] = listen_url
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

    def spare(self, kind: str) -> None:
        """Start a spare runner process of ``kind`` (it waits for its go file before it runs)."""
        self._runners_started += 1
        ready = self.workdir / f"runner-{self._runners_started}.ready"
        arguments = ["--role", "runner", "--stall-warning-after", str(self.stall_warning_after), "--out", str(ready)]
        if kind == DIRECT:
            process = self._spawn(arguments, "runner", self.url)
        else:
            assert self.bouncer_url is not None
            listen = self.url if kind == BOUNCED_LISTEN else None
            process = self._spawn(arguments, "runner-pgbouncer", self.bouncer_url, listen)
        self.spares.setdefault(kind, []).append((process, ready))

    def start_runner(self, kind: str = DIRECT) -> Path:
        """Run a runner of ``kind`` (a spare if one waits, then a new spare); the file it creates once running."""
        if not self.spares.get(kind):
            self.spare(kind)
        process, ready = self.spares[kind].pop(0)
        ready.with_suffix(".go").touch()
        self.started[process.pid] = time.monotonic()
        self.kinds[process.pid] = kind
        self.ready[process.pid] = ready
        self.runners.append(process)
        if not self.spares[kind] and (kind == DIRECT) == (self.leg == "direct"):
            self.spare(kind)
        return ready

    def ready_standby(self, victim: int) -> bool:
        """Whether a runner other than ``victim`` runs and may take over."""
        return any(
            process.pid != victim and process.poll() is None and process.pid not in self.expected_exit
            and self.ready[process.pid].exists()
            for process in self.runners
        )  # fmt: skip

    def discard_spares(self, kind: str | None = None) -> None:
        """Stop the spare processes (of ``kind``); they never ran a runner, SIGTERM ends them with 0."""
        for spare_kind, spares in self.spares.items():
            if kind is not None and spare_kind != kind:
                continue
            for process, _ in spares:
                process.terminate()
            for process, _ in spares:
                with contextlib.suppress(subprocess.TimeoutExpired):
                    process.wait(timeout=10)
            spares.clear()

    def start_writer(self, writer: int, settings: SoakSettings, url: str) -> None:
        out = self.workdir / f"writer-{writer}.json"
        pooled = ["--pooled"] if url == self.bouncer_url else []
        self.writers.append(self._spawn(["--role", "writer", "--writer", str(writer),
                                         "--seconds", str(settings.seconds), "--seed", str(settings.seed),
                                         "--hold-max", str(settings.hold_max), "--shared", str(settings.shared_streams),
                                         "--out", str(out), *pooled], f"writer{writer}", url))  # fmt: skip

    def switch_to_direct(self) -> None:
        """Start the direct leg's runners, then SIGTERM those through PgBouncer (they release their leases)."""
        self.leg = "direct"
        self.moments["leg_switch_started"] = time.monotonic()
        ready = [self.start_runner(DIRECT) for _ in range(3)]
        _wait_for_files(ready, timeout=30)  # standing by, so that the handover is at once
        self.moments["direct_runners_running"] = time.monotonic()
        for process in self.runners:
            if self.kinds[process.pid] != DIRECT and process.poll() is None and process.pid not in self.expected_exit:
                # Let a just-started interpreter reach its SIGTERM handler first.
                time.sleep(max(0.0, self.started[process.pid] + 1.0 - time.monotonic()))
                self.expected_exit[process.pid] = 0
                process.send_signal(signal.SIGTERM)
        self.moments["pgbouncer_runners_stopped"] = time.monotonic()
        self.discard_spares(BOUNCED_LISTEN)
        self.discard_spares(BOUNCED_POLL)

    def reap_runners(self, figures: Figures, *, replace: bool = True) -> None:
        """Replace runners that ended (by one of the current leg); an exit nobody asked for is a violation."""
        for process in list(self.runners):
            code = process.poll()
            if code is None:
                continue
            self.runners.remove(process)
            self.ended[self.kinds[process.pid]] += 1
            expected = self.expected_exit.pop(process.pid, None)
            if code != expected:
                tail = self.log_tail(process.pid)
                figures.violations.append(f"runner {process.pid} exited {code} (expected {expected}): {tail}")
            kind = self.kinds[process.pid]
            if not replace or (self.leg == "direct" and kind != DIRECT):
                continue  # the runners through PgBouncer were stopped for the direct leg
            self.start_runner(kind)

    def stop_all(self) -> None:
        spares = [process for spares in self.spares.values() for process, _ in spares]
        for process in [*self.runners, *self.writers, *spares]:
            if process.poll() is None:
                process.kill()
                process.wait()


def _wait_for_files(paths: list[Path], *, timeout: float) -> bool:
    """Wait until every one of ``paths`` exists (processes say so when ready); False after ``timeout``."""
    deadline = time.monotonic() + timeout
    while not all(path.exists() for path in paths):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


# The lease holders: ``owner`` stays set until the lease is released or taken over (a new token).
# Not ``lease_expires_at > now()``: a batch renews the lease in its own transaction, so while a batch
# runs longer than lease_ttl (a loaded machine, a catch-up) the committed expiry is in the past though
# its owner is alive and nobody can take the row (its owner shows in ``projection_status`` only once it commits).
# A dead holder is told apart by its pid: the soak knows which of its processes live.
_LEASES = sa.text("SELECT projection_name, owner FROM projection_checkpoints WHERE owner IS NOT NULL")


def _live_leases(engine: sa.Engine) -> dict[str, str]:
    """Each leased projection's owner (``host:pid``)."""
    with engine.connect() as connection:
        return {row.projection_name: row.owner for row in connection.execute(_LEASES)}


def _active_runner(
    engine: sa.Engine, runners: list[subprocess.Popen[bytes]], signalled: dict[int, int]
) -> tuple[subprocess.Popen[bytes], list[str]] | None:
    """A live runner process holding projection leases (most first), with the projections it holds."""
    alive = {process.pid: process for process in runners if process.poll() is None and process.pid not in signalled}
    held: dict[int, list[str]] = {}
    for name, owner in _live_leases(engine).items():
        pid = _pid_of(owner)
        if pid is not None:
            held.setdefault(pid, []).append(name)
    for pid, names in sorted(held.items(), key=lambda item: -len(item[1])):
        if pid in alive:
            return alive[pid], names
    return None


def _wait_for_runners(engine: sa.Engine, projections: int, *, timeout: float) -> None:
    """Wait until every projection is leased by a runner (the fault loop needs a target)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if len(_live_leases(engine)) >= projections:
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


def _wait_for_owners(engine: sa.Engine, pids: set[int], *, timeout: float) -> None:
    """Wait until every projection is leased by one of ``pids`` (at most ``timeout`` seconds)."""
    count = len(domain_projections()) + 1
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        leases = _live_leases(engine)
        if len(leases) >= count and all(_pid_of(owner) in pids for owner in leases.values()):
            return
        time.sleep(0.1)


def _wait_for_takeover(engine: sa.Engine, pid: int, names: list[str], *, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        leases = _live_leases(engine)
        if all(_pid_of(leases.get(name)) not in (None, pid) for name in names):
            return
        time.sleep(0.1)


class _Monitor:
    """Samples the live leases every 0.2 s (to time takeovers), in a thread of the soak process."""

    def __init__(self, url: str) -> None:
        self.engine = sa.create_engine(url, poolclass=sa.NullPool)
        self.samples: list[tuple[float, dict[str, str]]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="chaos-lease-monitor", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(10)
        self.engine.dispose()

    def _run(self) -> None:
        while not self._stop.wait(0.2):
            try:
                leases = _live_leases(self.engine)
            except (sa.exc.OperationalError, sa.exc.InterfaceError, psycopg.OperationalError):
                continue  # the server is restarting
            self.samples.append((time.monotonic(), leases))

    def takeover(self, killed_at: float, pid: int, names: list[str]) -> float | None:
        """Seconds from ``killed_at`` until every one of ``names`` had a live lease of another owner."""
        for at, leases in self.samples:
            if at > killed_at and all(_pid_of(leases.get(name)) not in (None, pid) for name in names):
                return at - killed_at
        return None


class _Stall(threading.Thread):
    """A transaction that takes an xid and stays open for ``seconds`` while the writers go on.

    It runs in the cluster's ``postgres`` database when it can connect there (the fence is
    cluster-wide), else in the soak's own. While it is open, ``admin.projection_status`` must
    report events held back, blocked by its pid.
    """

    def __init__(self, url: str, *, start_in: float, seconds: float) -> None:
        super().__init__(name="chaos-stall", daemon=True)
        self.url = url
        self.start_in = start_in
        self.seconds = seconds
        self.figures: dict[str, Any] = {}
        self.xid: str | None = None
        self.pid: int | None = None
        self.ended_at: datetime | None = None
        self.window: tuple[float, float] | None = None
        self.cancel = threading.Event()
        self.open = threading.Event()
        """Set while the stall's transaction holds its xid."""

    def run(self) -> None:
        from eventstore import admin

        if self.cancel.wait(self.start_in):
            return
        libpq = sa.make_url(self.url).set(drivername="postgresql")
        targets = [libpq.set(database="postgres"), libpq]
        status_store = EventStore(self.url)
        names = [projection.name for projection in [*domain_projections(), ChaosLedger()]]
        seen = held_max = checks = 0
        try:
            for target in targets:
                try:
                    connection = psycopg.connect(target.render_as_string(hide_password=False), connect_timeout=5)
                    break
                except psycopg.OperationalError:
                    continue
            else:
                self.figures["interrupted"] = "could not connect"
                return
            with connection:
                started = time.monotonic()
                row = connection.execute("SELECT pg_current_xact_id()::text, pg_backend_pid(), current_database()")
                self.xid, self.pid, database = row.fetchone()  # type: ignore[misc]
                self.open.set()
                self.figures.update(seconds=self.seconds, database=database, pid=self.pid)
                while time.monotonic() - started < self.seconds:
                    if self.cancel.wait(min(1.0, max(0.0, self.seconds - (time.monotonic() - started)))):
                        break
                    if time.monotonic() - started < 1.0:
                        continue
                    with contextlib.suppress(EventStoreError):
                        checks += 1
                        statuses = admin.projection_status(status_store, names)
                        held_max = max([held_max, *(status.held_back for status in statuses)])
                        if any(status.held_back and any(b.pid == self.pid for b in status.blocked_by)
                               for status in statuses):  # fmt: skip
                            seen += 1
                self.ended_at = connection.execute("SELECT clock_timestamp()").fetchone()[0]  # type: ignore[index]
                connection.commit()
                self.open.clear()
                self.window = (started, time.monotonic())
        except psycopg.OperationalError as error:
            self.figures["interrupted"] = str(error).splitlines()[0]
        finally:
            status_store.close()
            self.figures.update(status_checks=checks, status_saw_blocker=seen, held_back_max=held_max)


@contextlib.contextmanager
def _pgbouncer(url: str, settings: SoakSettings, figures: Figures) -> Iterator[str | None]:
    """A PgBouncer in transaction mode in front of ``url``; yields its URL, or None (reason in the figures)."""
    bouncer = directory = None
    if not settings.pgbouncer:
        figures.pgbouncer_skipped = "turned off (--no-pgbouncer)"
    else:
        try:
            import pytest

            from tests.poolers.conftest import pgbouncer_binary, start_pgbouncer
        except ImportError as error:
            figures.pgbouncer_skipped = f"cannot import the PgBouncer starter ({error}); run from the repository root"
        else:
            if pgbouncer_binary() is None:
                figures.pgbouncer_skipped = "pgbouncer is not installed (apt-get install -y pgbouncer)"
            else:
                # Its own directory under /tmp: as root, PgBouncer runs as an unprivileged user who reads the ini.
                directory = Path(tempfile.mkdtemp(prefix="eventstore-chaos-pgbouncer-"))
                try:
                    bouncer = start_pgbouncer(directory, url, "transaction", pool_size=settings.pool_size)
                except pytest.skip.Exception as skipped:
                    figures.pgbouncer_skipped = str(skipped)
    try:
        yield bouncer.url if bouncer is not None else None
    finally:
        if bouncer is not None:
            bouncer.stop()
        if directory is not None:
            shutil.rmtree(directory, ignore_errors=True)


def _restart_times(start: float, settings: SoakSettings, avoid: list[tuple[float, float]]) -> list[float]:
    """``settings.restarts`` moments spread over the write phase, each moved out of the windows in ``avoid``
    to the nearest moment that is in none (within the write phase)."""
    end = start + settings.seconds
    edges = sorted({start + 1, end - 1, *(low - 1 for low, _ in avoid), *(high + 1 for _, high in avoid)})
    free = [at for at in edges if start < at < end and not any(low <= at <= high for low, high in avoid)]
    times = []
    for index in range(settings.restarts):
        at = start + settings.seconds * (index + 1) / (settings.restarts + 1)
        if any(low <= at <= high for low, high in avoid) and free:
            at = min(free, key=lambda edge: abs(edge - at))
        times.append(at)
    return sorted(times)


def _fault_loop(
    processes: _Processes, engine: sa.Engine, figures: Figures, *, settings: SoakSettings,
    restart: Callable[[], None] | None, rng: random.Random, switch_at: float | None, stall: _Stall | None,
    kills: list[tuple[float, int, list[str]]], restarts: list[float], faults_at: list[float],
) -> None:  # fmt: skip
    """Faults at random moments for ``settings.seconds``; ``kills``, ``restarts`` and ``faults_at`` (any fault
    that may change who owns a projection) record when."""
    start = time.monotonic()
    end = start + settings.seconds
    avoid = [(switch_at - 2, switch_at + 3)] if switch_at else []
    if stall is not None:
        avoid.append((start + stall.start_in - 3, start + stall.start_in + stall.seconds + 3))
    if switch_at is not None and not settings.restarts_in_pgbouncer_leg:
        avoid.append((start, switch_at + 3))  # PgBouncer then waits server_login_retry (15 s) to reconnect
    restart_at = _restart_times(start, settings, avoid) if restart else []
    switched_at = -1e9

    def may_restart(now: float) -> bool:
        # The schedule is a plan: the loop runs late after a takeover wait, so check again now. Never
        # during the stall (a restart would end it) or around the leg switch.
        if any(low <= now <= high for low, high in avoid) or now - switched_at < 3:
            return False
        if stall is not None and stall.open.is_set():
            return False
        return not (processes.leg == "pgbouncer" and not settings.restarts_in_pgbouncer_leg)

    # A leg whose first SIGKILL has not happened yet (a loaded machine: slow handovers) goes on for up
    # to ``kill_grace`` more seconds, after the writers stopped if need be: every leg proves a takeover.
    while time.monotonic() < end or (
        not figures.leg(processes.leg)["kill_active_runner"] and time.monotonic() < end + settings.kill_grace
    ):
        time.sleep(rng.uniform(*settings.interval))
        processes.reap_runners(figures)
        leg = figures.leg(processes.leg)
        if switch_at is not None and time.monotonic() >= switch_at:
            switch_at = None
            faults_at.append(time.monotonic())
            processes.switch_to_direct()
            # The handover is done when the direct runners hold every lease: the leg's first kill needs one.
            _wait_for_owners(engine, {pid for pid, kind in processes.kinds.items() if kind == DIRECT}, timeout=15)
            processes.moments["direct_runners_own_all"] = time.monotonic()
            switched_at = time.monotonic()
            figures.faults["leg_switch_to_direct"] += 1
            continue
        try:
            if restart_at and time.monotonic() >= restart_at[0] and may_restart(time.monotonic()):
                restart_at.pop(0)
                assert restart is not None
                restarts.append(time.monotonic())
                faults_at.append(time.monotonic())
                restart()
                figures.faults["server_restart"] += 1
                leg["server_restart"] += 1
                continue
            kinds = ["kill_active_runner", "terminate_listeners", "sigterm_runner"]
            # Each leg's first fault is a SIGKILL of the active runner: every leg proves a takeover.
            kind = kinds[0] if not leg[kinds[0]] else rng.choices(kinds, weights=[6, 2, 2])[0]
            if restart_at and restart_at[0] - time.monotonic() < 4 and leg[kinds[0]]:
                kind = kinds[1]  # a quick fault: a takeover wait now would run into the restart's window
            if kind == "kill_active_runner":
                # Right after a takeover no live runner may hold a lease yet, or no other runner
                # be running to take over (a replacement still starting): give them a moment.
                active = None
                patience = time.monotonic() + 5.0
                while time.monotonic() < patience:
                    processes.reap_runners(figures)
                    active = _active_runner(engine, processes.runners, processes.expected_exit)
                    if active is not None and processes.ready_standby(active[0].pid):
                        break
                    time.sleep(0.1)
                if active is not None and not processes.ready_standby(active[0].pid):
                    figures.faults["no_standby_to_take_over"] += 1
                elif active is not None:
                    victim, names = active
                    processes.expected_exit[victim.pid] = -signal.SIGKILL
                    victim.kill()
                    killed_at = time.monotonic()
                    kills.append((killed_at, victim.pid, names))
                    faults_at.append(killed_at)
                    figures.faults[kind] += 1
                    leg[kind] += 1
                    # No other fault until the standby took over (the monitor times it), at most 10 s.
                    _wait_for_takeover(engine, victim.pid, names, timeout=10.0)
                else:
                    figures.faults["no_active_runner_to_kill"] += 1
            elif kind == "terminate_listeners":
                figures.faults[kind] += 1
                figures.faults["listener_backends_terminated"] += _terminate_listeners(engine)
                leg[kind] += 1
            else:
                # Only runners that run (their signal handlers installed: before that, SIGTERM
                # ends the interpreter, not a runner), and never the last one that could take over.
                alive = [
                    process
                    for process in processes.runners
                    if process.poll() is None
                    and process.pid not in processes.expected_exit
                    and processes.ready[process.pid].exists()
                ]
                if len(alive) > 1:
                    victim = rng.choice(alive)
                    processes.expected_exit[victim.pid] = 0
                    victim.send_signal(signal.SIGTERM)
                    faults_at.append(time.monotonic())
                    figures.faults[kind] += 1
                    leg[kind] += 1
                else:
                    figures.faults["sigterm_skipped_last_runner"] += 1
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
        store.close()


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


def _verify(
    url: str, reports: list[dict[str, Any]], figures: Figures, processes: _Processes, *,
    kills: list[tuple[float, int, list[str]]], restarts: list[float], monitor: _Monitor, stall: _Stall | None,
    faults_at: list[float], takeover_limit: float,
) -> None:  # fmt: skip
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
                f"runner_pid, lease_token, lease_owner, applied_by_xact::text AS xact "
                f"FROM {LEDGER} ORDER BY projection_name, seq")).all()  # fmt: skip
            failed = connection.execute(sa.text(
                "SELECT projection_name, state, last_error FROM projection_checkpoints "
                "WHERE state = 'failed' OR last_error IS NOT NULL")).all()  # fmt: skip
            failures = connection.execute(sa.text("SELECT count(*) FROM projection_failures")).scalar_one()
            gaps = connection.execute(sa.text(
                "SELECT count(*) FROM (SELECT stream_id FROM events GROUP BY stream_id "
                "HAVING min(stream_version) <> 1 OR max(stream_version) <> count(*)) AS s")).scalar_one()  # fmt: skip
            past_fence = 0
            if stall is not None and stall.ended_at is not None and stall.xid is not None:
                # Events of transactions younger than the stall's were held back by the fence until it ended.
                past_fence = connection.execute(sa.text(
                    f"SELECT count(*) FROM {LEDGER} WHERE event_order > CAST(:xid AS xid8) AND applied_at < :ended"),
                    {"xid": stall.xid, "ended": stall.ended_at}).scalar_one()  # fmt: skip
                checks["applied_past_the_stall_fence"] = int(past_fence)
        figures.events = len(events)
        figures.streams = len({row.stream_id for row in events})
        stored = {row.event_id: row for row in events}
        acknowledged = {event_id: (stream_id, version) for report in reports
                        for event_id, stream_id, version in report["acknowledged"]}  # fmt: skip
        acknowledged_count = sum(len(report["acknowledged"]) for report in reports)
        rolled_back = {event_id for report in reports for event_id in report["rolled_back"]}
        refused = {event_id for report in reports for event_id in report["refused"]}
        processed_ids = {row.event_id for row in ledger}
        shared = [row for row in events if row.category == SHARED_CATEGORY]
        checks["acknowledged_events"] = acknowledged_count
        checks["acknowledged_twice"] = acknowledged_count - len(acknowledged)
        checks["acknowledged_but_missing"] = len(acknowledged.keys() - stored.keys())
        checks["acknowledged_at_another_version"] = sum(
            1 for event_id, place in acknowledged.items()
            if event_id in stored and (stored[event_id].stream_id, stored[event_id].stream_version) != place
        )  # fmt: skip
        checks["stored_but_not_acknowledged"] = len(stored.keys() - acknowledged.keys())
        checks["streams_with_version_gaps"] = int(gaps)
        checks["shared_streams"] = len({row.stream_id for row in shared})
        checks["shared_stream_events"] = len(shared)
        checks["rolled_back_events"] = len(rolled_back)
        checks["rolled_back_but_stored"] = len(rolled_back & stored.keys())
        checks["rolled_back_but_processed"] = len(rolled_back & processed_ids)
        checks["refused_events"] = len(refused)
        checks["refused_but_stored"] = len(refused & stored.keys())
        checks["refused_but_processed"] = len(refused & processed_ids)
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
        _check_ownership(
            by_projection,
            figures,
            processes,
            kills=kills,
            restarts=restarts,
            monitor=monitor,
            faults_at=faults_at,
            takeover_limit=takeover_limit,
        )

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
        store.close()
        engine.dispose()
    zero = ["acknowledged_twice", "acknowledged_but_missing", "acknowledged_at_another_version",
            "stored_but_not_acknowledged", "streams_with_version_gaps", "rolled_back_but_stored",
            "rolled_back_but_processed", "refused_but_stored", "refused_but_processed", "failed_projections",
            "projection_failures_rows", "missed_events", "processed_twice", "processed_but_not_stored",
            "projections_out_of_global_order", "stream_order_violations", "applied_under_another_lease",
            "lease_tokens_going_back", "lease_tokens_of_two_runners", "batches_interleaved",
            "owner_switches_beyond_handovers", "takeovers_over_limit", "kills_without_takeover",
            "applied_past_the_stall_fence", "listen_url_runners_that_fell_back_to_polling",
            "read_models_differing_from_rebuild", "read_models_differing_from_recomputation"]  # fmt: skip
    figures.violations += [f"{name} = {checks[name]}" for name in zero if checks.get(name)]
    if stall is not None:
        _check_stall(stall, figures)


def _check_ownership(
    by_projection: dict[str, list[Any]], figures: Figures, processes: _Processes, *,
    kills: list[tuple[float, int, list[str]]], restarts: list[float], monitor: _Monitor, faults_at: list[float],
    takeover_limit: float,
) -> None:  # fmt: skip
    """No projection applied by two runners at once: every batch under the applier's own lease, in token order."""
    checks = figures.checks
    foreign = going_back = shared_tokens = interleaved = switches = beyond = 0
    lease_lost = _count_in_logs(processes, r"projection (\S+): lease lost")
    runner_ends = sum(processes.ended.values())
    for name, rows in by_projection.items():
        pids_of_token: dict[int, set[int]] = {}
        finished: set[str] = set()
        projection_switches = 0
        for index, row in enumerate(rows):
            if _pid_of(row.lease_owner) != row.runner_pid:
                foreign += 1
            pids_of_token.setdefault(row.lease_token, set()).add(row.runner_pid)
            if index:
                previous = rows[index - 1]
                going_back += row.lease_token < previous.lease_token
                if row.xact != previous.xact:
                    finished.add(previous.xact)
                    interleaved += row.xact in finished  # a batch resumed after another one committed
                if row.runner_pid != previous.runner_pid:
                    projection_switches += 1
        shared_tokens += sum(1 for pids in pids_of_token.values() if len(pids) > 1)
        # An owner changes only when a runner ended, a server restart expired the leases, or a lease was lost.
        handovers = runner_ends + len(restarts) + lease_lost.get(name, 0)
        beyond += max(0, projection_switches - handovers)
        switches += projection_switches
        for row in rows:
            kind = processes.kinds.get(row.runner_pid)
            leg = {DIRECT: "direct", BOUNCED_LISTEN: "pgbouncer", BOUNCED_POLL: "pgbouncer"}.get(kind or "", "unknown")
            figures.leg(leg)["ledger_rows"] += 1
            if kind == BOUNCED_POLL:
                figures.leg(leg)["ledger_rows_by_polling_runner"] += 1
    checks.update(applied_under_another_lease=foreign, lease_tokens_going_back=going_back,
                  lease_tokens_of_two_runners=shared_tokens, batches_interleaved=interleaved, owner_switches=switches,
                  lease_losses_logged=sum(lease_lost.values()), runners_ended=runner_ends,
                  owner_switches_beyond_handovers=beyond)  # fmt: skip

    # Takeover after each SIGKILL of the active runner (not timed when another fault came in between).
    late = unseen = unmeasured = 0
    for killed_at, pid, names in kills:
        took = monitor.takeover(killed_at, pid, names)
        if took is None:
            unseen += 1
        elif any(killed_at - 1 <= at <= killed_at + took for at in restarts) or any(
            killed_at < at <= killed_at + took for at in faults_at
        ):
            unmeasured += 1
        else:
            figures.takeovers.append(took)
            late += took > takeover_limit
    checks.update(takeovers_over_limit=late, kills_without_takeover=unseen, takeovers_across_another_fault=unmeasured)

    # Runners with listen_url listen directly; the one without falls back to polling with one WARNING each.
    fallback = _count_in_logs(processes, "does not deliver notifications", by_pid=True)
    checks["listen_url_runners_that_fell_back_to_polling"] = sum(
        1 for pid, count in fallback.items() if count and processes.kinds.get(int(pid)) != BOUNCED_POLL
    )
    polling = [pid for pid, kind in processes.kinds.items() if kind == BOUNCED_POLL]
    if polling:
        checks["polling_runners"] = len(polling)
        checks["polling_runners_that_warned"] = sum(1 for pid in polling if fallback.get(str(pid)))
        checks["polling_runners_that_warned_twice"] = sum(1 for pid in polling if fallback.get(str(pid), 0) > 1)


def _count_in_logs(processes: _Processes, pattern: str, *, by_pid: bool = False) -> Counter[str]:
    """Lines of the runners' logs matching ``pattern``: per first group (projection name), or per runner pid."""
    counts: Counter[str] = Counter()
    compiled = re.compile(pattern)
    for pid in processes.kinds:
        path = processes.logs.get(pid)
        if path is None or not path.exists():
            continue
        for line in path.read_text(errors="replace").splitlines():
            match = compiled.search(line)
            if match:
                counts[str(pid) if by_pid or not match.groups() else match.group(1)] += 1
    return counts


def _check_stall(stall: _Stall, figures: Figures) -> None:
    stalled = figures.stall
    stalled.update(stall.figures)
    stalled["seen_by_status"] = "yes" if stall.figures.get("status_saw_blocker") else "no"
    if "interrupted" in stall.figures:
        figures.violations.append(f"the stall was interrupted: {stall.figures['interrupted']}")
    elif not stall.figures.get("status_saw_blocker"):
        figures.violations.append(
            f"during the {stall.seconds:.0f} s stall admin.projection_status never reported events held back "
            f"blocked by pid {stall.pid} ({stall.figures.get('status_checks', 0)} checks, held_back up to "
            f"{stall.figures.get('held_back_max', 0)})"
        )


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
    min_kills_per_leg: int = 5
    catch_up_timeout: float = 120.0
    shared_streams: int = 3
    stall_seconds: float = 30.0
    stall_at: float = 0.1
    """When the stall starts, as a share of ``seconds``."""
    pgbouncer: bool = True
    pgbouncer_writers: int = 2
    pool_size: int = 4
    kill_grace: float = 30.0
    restarts_in_pgbouncer_leg: bool = True
    """After a failed login (the server restarting) PgBouncer waits ``server_login_retry`` (15 s) to retry."""
    takeover_limit: float = 5.0
    """Seconds a takeover after SIGKILL may take (the issue's promise; lease_ttl 3 s + lock_retry_interval)."""
    keep_logs: Path | None = None
    """Copy the processes' logs and reports there at the end."""


# The short form's stall is in the PgBouncer leg (first) and its restart in the direct leg (second):
# PgBouncer waits server_login_retry (15 s) before it reconnects after a failed login during a restart,
# which would leave the short PgBouncer leg without a server.
SHORT = SoakSettings(seconds=30.0, interval=(0.8, 1.6), restarts=1, hold_max=0.2, min_kills=2, min_kills_per_leg=1,
                     catch_up_timeout=40.0, stall_seconds=5.0, stall_at=0.15, restarts_in_pgbouncer_leg=False,
                     takeover_limit=10.0)  # fmt: skip  # CI shares 2 cores: only catch a broken takeover


def run_soak(url: str, settings: SoakSettings, *, restart: Callable[[], None] | None = None) -> Figures:
    """Run the soak against a migrated database at ``url``; returns the figures (violations listed)."""
    figures = Figures()
    rng = random.Random(settings.seed)
    engine = sa.create_engine(url, poolclass=sa.NullPool)
    with engine.begin() as connection:
        connection.execute(sa.text(_CREATE_LEDGER))
        connection.execute(sa.text(_INDEX_LEDGER))
    started = time.monotonic()
    kills: list[tuple[float, int, list[str]]] = []
    restarts: list[float] = []
    faults_at: list[float] = []
    write_start = time.monotonic()
    monitor = _Monitor(url)
    stall = (
        _Stall(url, start_in=settings.seconds * settings.stall_at, seconds=settings.stall_seconds)
        if settings.stall_seconds > 0 else None
    )  # fmt: skip
    with tempfile.TemporaryDirectory(prefix="eventstore-chaos-") as directory, \
            _pgbouncer(url, settings, figures) as bouncer_url:  # fmt: skip
        # Warn a runner of a stall well within the short stall, so that its WARNING shows in the logs.
        processes = _Processes(url, Path(directory), stall_warning_after=max(1.0, settings.stall_seconds / 3))
        processes.bouncer_url = bouncer_url
        try:
            if bouncer_url is not None:  # the PgBouncer leg first; the direct leg's runners wait as spares
                processes.leg = "pgbouncer"
                for kind in (BOUNCED_LISTEN, BOUNCED_LISTEN, BOUNCED_POLL):
                    processes.start_runner(kind)
                for _ in range(3):
                    processes.spare(DIRECT)
            else:
                for _ in range(settings.runners):
                    processes.start_runner(DIRECT)
            _wait_for_runners(engine, len(domain_projections()) + 1, timeout=90)
            monitor.start()
            for writer in range(settings.writers):
                bounced = bouncer_url is not None and writer >= settings.writers - settings.pgbouncer_writers
                processes.start_writer(writer, settings, bouncer_url if bounced and bouncer_url else url)
            workdir = Path(directory)
            if not _wait_for_files([workdir / f"writer-{writer}.ready" for writer in range(settings.writers)],
                                   timeout=90):  # fmt: skip
                figures.violations.append("the writers were not ready within 90 s")
            (workdir / "go").touch()  # the writers, the stall and the fault loop start together
            write_start, write_start_epoch = time.monotonic(), time.time()
            if stall is not None:
                stall.start()
            switch_at = write_start + settings.seconds / 2 if bouncer_url else None
            _fault_loop(processes, engine, figures, settings=settings, restart=restart, rng=rng,
                        switch_at=switch_at, stall=stall, kills=kills, restarts=restarts,
                        faults_at=faults_at)  # fmt: skip
            for process in processes.writers:
                if process.wait(timeout=settings.seconds + 120) != 0:
                    figures.violations.append(
                        f"writer {process.pid} exited {process.returncode}: " + processes.log_tail(process.pid)
                    )
            if stall is not None:
                stall.join(timeout=settings.stall_seconds + 30)
            processes.reap_runners(figures)
            _wait_for_catch_up(url, figures, settings.catch_up_timeout)
            processes.discard_spares()
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
            processes.reap_runners(figures, replace=False)
            monitor.stop()
            reports = []
            for writer in range(settings.writers):
                path = Path(directory) / f"writer-{writer}.json"
                if path.exists():
                    reports.append(json.loads(path.read_text()))
                else:
                    figures.violations.append(f"writer {writer} wrote no report")
            for report in reports:
                figures.writes.update(report["counts"])
            firsts = [report["first_append_at"] for report in reports if report.get("first_append_at")]
            if firsts:
                figures.timeline["writers_first_append_s"] = round(max(firsts) - write_start_epoch, 1)
                figures.timeline["writers_last_append_s"] = round(
                    max(report["last_append_at"] for report in reports) - write_start_epoch, 1
                )
            figures.timeline.update({name: round(at - write_start, 1) for name, at in processes.moments.items()})
            if stall is not None and stall.window is not None:
                figures.timeline["stall_from"] = round(stall.window[0] - write_start, 1)
                figures.timeline["stall_to"] = round(stall.window[1] - write_start, 1)
            _verify(url, reports, figures, processes, kills=kills, restarts=restarts, monitor=monitor, stall=stall,
                    faults_at=faults_at, takeover_limit=settings.takeover_limit)  # fmt: skip
            figures.stall["stall_warnings_logged"] = sum(
                _count_in_logs(processes, "events have been held back for", by_pid=True).values()
            )
        finally:
            if settings.keep_logs is not None:
                shutil.copytree(directory, settings.keep_logs, dirs_exist_ok=True)
                (settings.keep_logs / "leases.json").write_text(json.dumps({
                    "write_start": write_start, "kills": kills, "restarts": restarts, "samples": monitor.samples,
                }))  # fmt: skip
            if stall is not None:
                stall.cancel.set()
            monitor.stop()
            processes.stop_all()
            engine.dispose()
    figures.seconds = time.monotonic() - started
    if figures.faults["kill_active_runner"] < settings.min_kills:
        figures.violations.append(
            f"only {figures.faults['kill_active_runner']} runner kills; at least {settings.min_kills} required"
        )
    for leg, counts in figures.legs.items():
        if counts["kill_active_runner"] < settings.min_kills_per_leg:
            figures.violations.append(f"{leg} leg: only {counts['kill_active_runner']} runner kills; at least "
                                      f"{settings.min_kills_per_leg} required")  # fmt: skip
    if bouncer_url is not None and not figures.leg("pgbouncer")["ledger_rows"]:
        figures.violations.append("pgbouncer leg: its runners applied nothing")
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
    legs = "; ".join(f"{leg}: " + ", ".join(f"{name}={count}" for name, count in sorted(counts.items()))
                     for leg, counts in figures.legs.items())  # fmt: skip
    print("legs: " + legs + (f"; pgbouncer leg skipped: {figures.pgbouncer_skipped}" if figures.pgbouncer_skipped
                             else ""))  # fmt: skip
    print(
        "timeline (s after the writers' start): " + ", ".join(f"{name}={at}" for name, at in figures.timeline.items())
    )
    print("faults survived: " + ", ".join(f"{name}={count}" for name, count in sorted(figures.faults.items())))
    if figures.takeovers:
        print(f"takeover after SIGKILL: {len(figures.takeovers)} timed, median "
              f"{statistics.median(figures.takeovers):.1f} s, max {max(figures.takeovers):.1f} s")  # fmt: skip
    if figures.stall:
        stall = figures.stall
        print(f"stall: {stall.get('seconds', 0):.0f} s in database {stall.get('database')} (pid {stall.get('pid')}); "
              f"stall seen by status: {stall.get('seen_by_status', 'no')} ({stall.get('status_saw_blocker', 0)} of "
              f"{stall.get('status_checks', 0)} checks, held_back up to {stall.get('held_back_max', 0)}); "
              f"runner stall warnings logged: {stall.get('stall_warnings_logged', 0)}")  # fmt: skip
    print("writes: " + ", ".join(f"{name}={count}" for name, count in sorted(figures.writes.items())))
    print("checks: " + ", ".join(f"{name}={count}" for name, count in figures.checks.items()))
    print(f"violations: {len(figures.violations)}")
    if figures.violations:
        print(f"VIOLATIONS ({len(figures.violations)}):")
        for violation in figures.violations:
            print("  - " + violation.replace("\n", "\n    "))
    else:
        print("OK: no violations")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument(
        "--short", action="store_true", help="the short form (30 s of writes; the test suite runs it for 20 s)"
    )
    parser.add_argument(
        "--seconds",
        type=float,
        help="duration of the write + fault phase (the required kills and the restarts scale with it)",
    )
    parser.add_argument("--url", help="a migrated database (default: a private server, restartable)")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--stall-seconds", type=float, help="how long the stall holds its xid (0: no stall)")
    parser.add_argument("--no-pgbouncer", action="store_true", help="skip the PgBouncer transaction-mode leg")
    parser.add_argument("--json", action="store_true", help="print the figures as JSON too")
    parser.add_argument("--keep-logs", type=Path, help="copy the processes' logs and reports to this directory")
    parser.add_argument("--role", choices=["soak", "runner", "writer"], default="soak", help=argparse.SUPPRESS)
    parser.add_argument("--writer", type=int, default=0, help=argparse.SUPPRESS)
    parser.add_argument("--hold-max", type=float, default=0.4, help=argparse.SUPPRESS)
    parser.add_argument("--shared", type=int, default=0, help=argparse.SUPPRESS)
    parser.add_argument("--pooled", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--stall-warning-after", type=float, default=30.0, help=argparse.SUPPRESS)
    parser.add_argument("--out", type=Path, help=argparse.SUPPRESS)
    arguments = parser.parse_args(argv)

    if arguments.role == "runner":
        runner_main(os.environ["EVENTSTORE_CHAOS_URL"], os.environ.get("EVENTSTORE_CHAOS_LISTEN_URL"),
                    arguments.stall_warning_after, arguments.out)  # fmt: skip
        return 0
    if arguments.role == "writer":
        writer_main(os.environ["EVENTSTORE_CHAOS_URL"], arguments.writer, arguments.seconds, arguments.out,
                    arguments.seed, arguments.hold_max, arguments.shared, pooled=arguments.pooled)  # fmt: skip
        return 0

    settings = dataclasses.replace(SHORT) if arguments.short else SoakSettings()
    settings.seed = arguments.seed
    if arguments.seconds is not None:
        # The required kills and the restarts scale with the duration (the defaults are for the default's).
        scale = arguments.seconds / settings.seconds
        settings.min_kills = max(2, round(settings.min_kills * scale))
        settings.min_kills_per_leg = max(1, round(settings.min_kills_per_leg * scale))
        settings.restarts = max(1 if settings.restarts else 0, round(settings.restarts * scale))
        settings.seconds = arguments.seconds
    if arguments.stall_seconds is not None:
        settings.stall_seconds = arguments.stall_seconds
    settings.pgbouncer = not arguments.no_pgbouncer
    settings.keep_logs = arguments.keep_logs
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
