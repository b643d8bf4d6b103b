"""Terminal output of the ``eventstore`` command: results, status lines, progress.

Results go to stdout (plain lines or ``--json``); status, progress and errors
go to stderr, so that ``eventstore log --json | jq`` stays clean. Nothing here
touches the database.
"""

from __future__ import annotations

import json
import logging
import sys
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import typer

from eventstore.types import RecordedEvent, event_record  # event_record: re-exported, its home is types

__all__ = [
    "emit_json",
    "event_line",
    "event_record",
    "print_events",
    "print_table",
    "progress_reporter",
    "status",
]

logger = logging.getLogger(__name__)


def status(message: str) -> None:
    """A status line on stderr (never mixed into results)."""
    typer.echo(message, err=True)


# -- results ------------------------------------------------------------------


def event_line(event: RecordedEvent) -> str:
    """One decoded line: position, time, stream@version, type and the data as compact JSON."""
    recorded = event.recorded_at.strftime("%H:%M:%S.%f")[:-3]
    data = json.dumps(event.data, ensure_ascii=False, separators=(",", ":"), sort_keys=True)
    return f"{event.global_position:>8}  {recorded}  {event.stream_id}@{event.stream_version}  {event.type}  {data}"


def emit_json(value: Any) -> None:
    """``value`` as JSON on stdout."""
    typer.echo(json.dumps(value, ensure_ascii=False, default=str, indent=2))


def print_events(events: Iterable[RecordedEvent], *, as_json: bool) -> int:
    """Events on stdout (lines, or one JSON array); returns how many."""
    count = 0
    if as_json:
        # Streamed item by item, so `log --json` over millions of events stays in bounded memory.
        for event in events:
            item = json.dumps(event_record(event), ensure_ascii=False, default=str, indent=2)
            typer.echo(("[\n" if count == 0 else ",\n") + _indent(item), nl=False)
            count += 1
        typer.echo("\n]" if count else "[]")
        return count
    for event in events:
        typer.echo(event_line(event))
        count += 1
    return count


def _indent(text: str) -> str:
    return "\n".join("  " + line for line in text.splitlines())


def print_table(columns: Sequence[str], rows: Sequence[Sequence[Any]], *, as_json: bool) -> None:
    """A table on stdout: aligned plain columns, or a JSON array of objects keyed by column."""
    if as_json:
        emit_json([dict(zip(columns, row, strict=True)) for row in rows])
        return
    cells = [[_cell(value) for value in row] for row in rows]
    widths = [max([len(column), *(len(row[index]) for row in cells)]) for index, column in enumerate(columns)]
    typer.echo("  ".join(column.upper().ljust(width) for column, width in zip(columns, widths, strict=True)).rstrip())
    for row in cells:
        typer.echo("  ".join(value.ljust(width) for value, width in zip(row, widths, strict=True)).rstrip())


def _cell(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.2f}"
    return str(value)


# -- progress -----------------------------------------------------------------


@contextmanager
def progress_reporter(description: str, *, log_every: float = 2.0) -> Iterator[Callable[[int, int], None]]:
    """A ``progress(done, total)`` callback: a rich bar on a TTY, periodic stderr lines otherwise."""
    if sys.stderr.isatty():
        from rich.console import Console
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

        columns = (
            TextColumn("{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("{task.fields[rate]} ev/s"),
            TimeRemainingColumn(),
        )
        with Progress(*columns, console=Console(stderr=True), transient=False) as bar:
            task = bar.add_task(description, total=None, rate="-")
            started = time.monotonic()

            def update(done: int, total: int) -> None:
                elapsed = max(time.monotonic() - started, 1e-6)
                bar.update(task, completed=done, total=max(total, done), rate=f"{done / elapsed:,.0f}")

            yield update
        return

    started = time.monotonic()
    last_line = started

    def log(done: int, total: int) -> None:
        nonlocal last_line
        now = time.monotonic()
        if done and now - last_line < log_every and done < total:
            return
        last_line = now
        elapsed = max(now - started, 1e-6)
        rate = done / elapsed
        eta = f", ETA {(total - done) / rate:.0f}s" if rate > 0 and total > done else ""
        status(f"{description}: {done}/{total} events ({rate:,.0f} events/s{eta})")

    yield log
