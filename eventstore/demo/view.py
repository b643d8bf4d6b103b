"""What the demo shows while it runs: a rich table on a terminal, log lines otherwise."""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import typer

from eventstore import admin
from eventstore.store import EventStore

if TYPE_CHECKING:
    from eventstore.demo.run import Counters

__all__ = ["LiveView", "LogView", "View", "status"]


def status(message: str) -> None:
    """A status line on stderr."""
    typer.echo(message, err=True)


class View:
    """Per-projection position, lag and latency, refreshed while the demo runs."""

    interval = 1.0

    def __init__(self, store: EventStore, projections: Sequence[Any], counters: Counters) -> None:
        self.store = store
        self.projections = list(projections)
        self.counters = counters
        self.started = time.monotonic()

    def __enter__(self) -> View:
        return self

    def __exit__(self, *exc: object) -> None:
        return None

    def rows(self) -> list[tuple[str, int, int, int, str]]:
        """(name, position, head, lag events, latency) per projection."""
        statuses = {s.name: s for s in admin.projection_status(self.store, self.projections)}
        rows = []
        with self.counters.lock:
            outcomes = dict(self.counters.outcomes)
        for projection in self.projections:
            item = statuses.get(projection.name)
            outcome = outcomes.get(projection.name)
            latency = "-"
            if outcome is not None and outcome.latencies:
                latency = f"{outcome.latencies[-1] * 1000:.0f} ms"
            position = getattr(item, "position", 0) or 0
            head = getattr(item, "head", 0) or 0
            lag = getattr(item, "lag_events", 0) or 0
            rows.append((projection.name, position, head, lag, latency))
        return rows

    def refresh(self, *, phase: str) -> None:
        raise NotImplementedError


class LogView(View):
    """Plain log lines (not a terminal)."""

    def refresh(self, *, phase: str) -> None:
        elapsed = time.monotonic() - self.started
        parts = [f"{name} @{position} lag {lag} latency {latency}" for name, position, _, lag, latency in self.rows()]
        status(f"[{elapsed:5.1f}s] {phase}: {self.counters.appended} events appended; " + "; ".join(parts))


class LiveView(View):
    """A rich table redrawn in place (terminal)."""

    interval = 0.25

    def __enter__(self) -> View:
        from rich.console import Console
        from rich.live import Live

        self.live = Live(console=Console(), refresh_per_second=8, transient=False)
        self.live.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        self.live.__exit__(None, None, None)

    def refresh(self, *, phase: str) -> None:
        from rich.table import Table

        elapsed = time.monotonic() - self.started
        rate = self.counters.appended / elapsed if elapsed else 0.0
        table = Table(
            title=f"eventstore demo: {phase}, {elapsed:.1f}s, {self.counters.appended} events ({rate:,.0f}/s)"
        )
        for column in ("projection", "position", "head", "lag (events)", "wake-up latency"):
            table.add_column(column, justify="left" if column == "projection" else "right")
        for name, position, head, lag, latency in self.rows():
            table.add_row(name, str(position), str(head), str(lag), latency)
        self.live.update(table)
