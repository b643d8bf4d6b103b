"""``eventstore demo``: concurrent order writers, live projections, then a full check.

The demo runs a :class:`~eventstore.ProjectionRunner` for the given
projections in a background thread, lets several writer threads append a
realistic order workload (place, pay, ship or cancel orders of a handful of
customers) for a bounded time or number of events, shows what happens live
(events appended, each projection's position and lag, and the wake-up latency
from an event's commit to its projection's commit), waits until every
projection has caught up with the head, and finally compares every read model
with a recomputation from the events. :func:`run_demo` returns a
:class:`DemoReport`; its ``problems`` list is empty when everything agrees.
"""

from __future__ import annotations

import importlib
import importlib.util
import logging
import random
import statistics
import sys
import threading
import time
import uuid
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import typer

from eventstore.demo.view import LiveView, LogView, View, status
from eventstore.errors import ProjectionTimeout
from eventstore.store import EventStore
from eventstore.types import RecordedEvent

__all__ = ["DemoReport", "DemoSettings", "first_party_projections", "run_demo"]

logger = logging.getLogger(__name__)

_CATCH_UP_TIMEOUT = 60.0


def first_party_projections() -> str:
    """The module name of the first-party order projections.

    ``eventstore.demo.projections`` in an installed wheel; in a source
    checkout (an editable install), the repository's top-level
    ``projections`` package, which the wheel build maps to that name.
    """
    if importlib.util.find_spec("eventstore.demo.projections") is not None:
        return "eventstore.demo.projections"
    return "projections"


@dataclass(frozen=True)
class DemoSettings:
    """How long and how hard the demo writes."""

    duration: float = 12.0
    """Seconds of writing (the demo ends earlier when ``events`` is reached)."""
    events: int | None = None
    """Stop writing after about this many events (None: only ``duration`` counts)."""
    writers: int = 4
    """Concurrent writer threads."""
    live: bool | None = None
    """Rich live view (None: when stdout is a terminal)."""
    seed: int | None = None


@dataclass
class ProjectionOutcome:
    """What one projection did during the demo."""

    name: str
    events: int = 0
    batches: int = 0
    position: int = 0
    latencies: deque[float] = field(default_factory=lambda: deque(maxlen=10_000))

    def latency_summary(self) -> str:
        if not self.latencies:
            return "-"
        ordered = sorted(self.latencies)
        p95 = ordered[min(len(ordered) - 1, int(len(ordered) * 0.95))]
        return (
            f"p50 {statistics.median(ordered) * 1000:.0f} ms, p95 {p95 * 1000:.0f} ms, max {ordered[-1] * 1000:.0f} ms"
        )


@dataclass
class DemoReport:
    """The outcome of a demo run."""

    appended: int = 0
    seconds: float = 0.0
    head: int = 0
    projections: dict[str, ProjectionOutcome] = field(default_factory=dict)
    verified: list[str] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems


class Counters:
    """Thread-safe counters shared by writers, the runner callback and the view."""

    def __init__(self, names: Sequence[str], started_at: datetime) -> None:
        self.lock = threading.Lock()
        self.appended = 0
        self.started_at = started_at
        self.outcomes = {name: ProjectionOutcome(name) for name in names}

    def add_appended(self, count: int) -> int:
        with self.lock:
            self.appended += count
            return self.appended

    def on_batch(self, projection_name: str, events: list[RecordedEvent]) -> None:
        """The runner's ``on_batch``: called after each committed batch."""
        now = datetime.now(UTC)
        with self.lock:
            outcome = self.outcomes.setdefault(projection_name, ProjectionOutcome(projection_name))
            outcome.batches += 1
            outcome.events += len(events)
            if events:
                outcome.position = max(outcome.position, events[-1].global_position)
            for event in events:
                # Only events written by this run: older ones were waiting, not late.
                if event.recorded_at >= self.started_at:
                    outcome.latencies.append((now - event.recorded_at).total_seconds())


def run_demo(
    store: EventStore,
    projections: Sequence[Any],
    settings: DemoSettings,
    *,
    verify: Callable[[EventStore, Any], list[str]] | None = None,
) -> DemoReport:
    """Run the demo (see the module docstring); the caller has applied the schema.

    ``verify(store, projection)`` returns the differences between a read model
    and a recomputation from the events (``projections.verify``); without it
    the check is reported as a problem.

    Raises:
        KeyboardInterrupt: after stopping writers and the runner cleanly.
    """
    from eventstore.runner import ProjectionRunner

    started_at = datetime.now(UTC)
    counters = Counters([p.name for p in projections], started_at)
    runner = ProjectionRunner(store, list(projections), poll_interval=1.0, on_batch=counters.on_batch)
    runner_errors: list[BaseException] = []

    def run_runner() -> None:
        try:
            runner.run()
        except BaseException as error:  # reported as a demo problem
            runner_errors.append(error)
            logger.exception("the projection runner failed")

    runner_thread = threading.Thread(target=run_runner, name="demo-runner", daemon=True)
    runner_thread.start()

    stop_writing = threading.Event()
    writer_errors: list[BaseException] = []
    seed = settings.seed if settings.seed is not None else random.randrange(1 << 30)
    writers = [
        threading.Thread(
            target=_writer,
            args=(store, random.Random(seed + index), index, counters, settings.events, stop_writing, writer_errors),
            name=f"demo-writer-{index}",
            daemon=True,
        )
        for index in range(settings.writers)
    ]
    live = settings.live if settings.live is not None else sys.stdout.isatty()
    status(
        f"demo: {settings.writers} writers for up to {settings.duration:g}s"
        + (f" or {settings.events} events" if settings.events else "")
        + f"; projections: {', '.join(p.name for p in projections)}"
    )
    clock = time.monotonic()
    report = DemoReport()
    view = LiveView(store, projections, counters) if live else LogView(store, projections, counters)
    try:
        for writer in writers:
            writer.start()
        deadline = clock + settings.duration
        with view:
            while time.monotonic() < deadline and any(w.is_alive() for w in writers):
                view.refresh(phase="writing")
                stop_writing.wait(view.interval)
            stop_writing.set()
            for writer in writers:
                writer.join()
            view.refresh(phase="catching up")
            catch_up_deadline = time.monotonic() + _CATCH_UP_TIMEOUT
            # The projections' own write transactions hold back later events
            # (the gap rule's fence), so the head can still move: repeat until
            # it is stable and nothing waits behind an open transaction.
            while True:
                report.head = store.head_position()
                for projection in projections:
                    _wait_caught_up(runner, projection.name, report.head, catch_up_deadline, view, runner_errors)
                if runner_errors or (not store.held_back() and store.head_position() == report.head):
                    break
                if time.monotonic() >= catch_up_deadline:
                    status(f"events are still held back by an open transaction; checking up to position {report.head}")
                    break
                stop_writing.wait(0.05)  # already set: a short pause before looking at the head again
            view.refresh(phase="caught up")
    finally:
        stop_writing.set()
        runner.stop()
        runner_thread.join(timeout=30)
    report.seconds = time.monotonic() - clock
    report.appended = counters.appended
    report.projections = counters.outcomes
    report.problems.extend(f"writer failed: {type(e).__name__}: {e}" for e in writer_errors)
    report.problems.extend(f"runner failed: {type(e).__name__}: {e}" for e in runner_errors)
    _verify(store, projections, report, verify)
    _print_summary(report)
    return report


def _wait_caught_up(
    runner: Any, name: str, head: int, deadline: float, view: View, runner_errors: list[BaseException]
) -> None:
    while not runner_errors:
        try:
            runner.wait_until_processed(head, timeout=min(0.5, max(deadline - time.monotonic(), 0.01)))
            return
        except ProjectionTimeout:
            if time.monotonic() >= deadline:
                raise ProjectionTimeout(
                    f"projection {name!r} did not reach position {head} in {_CATCH_UP_TIMEOUT:g}s"
                ) from None
            view.refresh(phase="catching up")


# -- the workload ----------------------------------------------------------------

_CUSTOMERS = ("ada", "grace", "linus", "barbara", "ken", "margaret", "dennis", "frances")
_PRICES = (1250, 3900, 14900, 825, 42000, 240)  # cents


def _writer(
    store: EventStore,
    rng: random.Random,
    index: int,
    counters: Counters,
    limit: int | None,
    stop: threading.Event,
    errors: list[BaseException],
) -> None:
    """Place orders and move them through their life cycle until told to stop."""
    # The order domain's own append helpers keep the events well-formed.
    orders = importlib.import_module(f"{first_party_projections()}.orders")

    open_orders: list[tuple[str, int, str, int]] = []  # (stream_id, version, status, total in cents)
    serial = 0
    try:
        while not stop.is_set():
            if open_orders and rng.random() < 0.6:
                position = rng.randrange(len(open_orders))
                stream_id, version, state, total = open_orders[position]
                step = _next_step(state, rng)
                written = orders.advance(store, stream_id, step, rng=rng, expected_version=version, amount=total)
                if step in ("shipped", "cancelled"):
                    open_orders.pop(position)
                else:
                    open_orders[position] = (stream_id, version + written, step, total)
            else:
                serial += 1
                stream_id = orders.stream_id_of(f"{_RUN_ID}-{index}-{serial}")
                total = sum(rng.choice(_PRICES) * rng.randint(1, 3) for _ in range(rng.randint(1, 4)))
                written = orders.place(store, stream_id, customer=rng.choice(_CUSTOMERS), rng=rng, total=total)
                open_orders.append((stream_id, written, "placed", total))
            appended = counters.add_appended(written)
            if limit is not None and appended >= limit:
                stop.set()
    except BaseException as error:  # reported by run_demo
        errors.append(error)
        stop.set()


_RUN_ID = uuid.uuid4().hex[:6]
"""Part of every stream id: runs on the persistent embedded database never collide."""


def _next_step(state: str, rng: random.Random) -> str:
    if state == "placed":
        return "paid" if rng.random() < 0.85 else "cancelled"
    return "shipped" if rng.random() < 0.9 else "cancelled"


# -- verification ----------------------------------------------------------------


def _verify(
    store: EventStore,
    projections: Sequence[Any],
    report: DemoReport,
    verify: Callable[[EventStore, Any], list[str]] | None,
) -> None:
    """Compare each read model with a recomputation from the events."""
    if verify is None:
        report.problems.append("the projections module has no verify(store, projection); cannot check the read models")
        return
    for projection in projections:
        try:
            differences = verify(store, projection)
        except Exception as error:  # a failing check is a finding, not a crash
            report.problems.append(f"{projection.name}: verification failed: {type(error).__name__}: {error}")
            continue
        if differences:
            report.problems.append(f"{projection.name}: read model differs from the events: {'; '.join(differences)}")
        else:
            report.verified.append(projection.name)


# -- output -------------------------------------------------------------------------


def _print_summary(report: DemoReport) -> None:
    rate = report.appended / report.seconds if report.seconds else 0.0
    typer.echo(
        f"appended {report.appended} events in {report.seconds:.1f}s ({rate:,.0f} events/s); "
        f"every projection caught up with the head (position {report.head})"
    )
    for outcome in report.projections.values():
        typer.echo(
            f"  {outcome.name}: {outcome.events} events in {outcome.batches} batches; "
            f"wake-up latency {outcome.latency_summary()}"
        )
    for name in report.verified:
        typer.echo(f"  verified {name}: read model equals a recomputation from the events")
    for problem in report.problems:
        typer.echo(f"  PROBLEM {problem}")
    typer.echo("OK: every read model agrees with the events" if report.ok else "FAILED: see the problems above")
