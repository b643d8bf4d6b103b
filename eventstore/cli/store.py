"""``eventstore migrate | append | read | log | tail``: the store's commands."""

from __future__ import annotations

import contextlib
import json
from typing import Annotated

import typer

from eventstore.cli.context import state
from eventstore.cli.errors import CliError, reports_errors
from eventstore.cli.options import JsonOption, append_error, expected_version, parse_json_object, position_error
from eventstore.cli.output import emit_json, event_line, event_record, print_events, status
from eventstore.errors import InvalidEvent, StreamNotFound, UnknownPosition, WrongExpectedVersion
from eventstore.store.validation import MAX_INT32, MAX_INT64
from eventstore.types import NewEvent

__all__ = ["register"]

StreamArgument = Annotated[
    str, typer.Argument(metavar="STREAM", help="Stream id, e.g. order-42 (category = text before the first '-').")
]
LimitOption = Annotated[
    int | None,
    typer.Option(
        "--limit", "-n", min=0, max=MAX_INT64, envvar="EVENTSTORE_LIMIT", help="Print at most this many events."
    ),
]
CategoryOption = Annotated[
    list[str] | None,
    typer.Option(
        "--category", "-c", envvar="EVENTSTORE_CATEGORY", help="Only this category (repeat for several), e.g. order."
    ),
]
TypeOption = Annotated[
    list[str] | None,
    typer.Option("--type", "-t", envvar="EVENTSTORE_TYPE", help="Only this event type (repeat for several)."),
]


@reports_errors
def migrate(
    ctx: typer.Context,
    sql: Annotated[
        bool, typer.Option("--sql", envvar="EVENTSTORE_SQL", help="Print the SQL instead of running it.")
    ] = False,
) -> None:
    """Apply the eventstore schema (idempotent); --sql prints it for review."""
    from eventstore.migrations import head_revision
    from eventstore.migrations import migrate as apply_schema

    target = state(ctx).target(auto_migrate=False)
    if sql:
        typer.echo(apply_schema(target.engine, sql=True) or "", nl=False)
        return
    apply_schema(target.engine)
    typer.echo(f"schema is at revision {head_revision()} on {target.description}")


@reports_errors
def append(
    ctx: typer.Context,
    stream: StreamArgument,
    event_type: Annotated[str, typer.Argument(metavar="TYPE", help="Event type, e.g. OrderPlaced.")],
    data: Annotated[
        str,
        typer.Option(
            "--data", "-d", metavar="JSON|@FILE", envvar="EVENTSTORE_DATA", help="JSON object, or @FILE (@- for stdin)."
        ),
    ] = "{}",
    metadata: Annotated[
        str | None,
        typer.Option(
            "--metadata", "-m", metavar="JSON|@FILE", envvar="EVENTSTORE_METADATA", help="JSON object, or @FILE."
        ),
    ] = None,
    expected: Annotated[
        str,
        typer.Option(
            "--expected-version",
            "-e",
            metavar="N|any|no-stream|exists",
            envvar="EVENTSTORE_EXPECTED_VERSION",
            help="N (version of the stream's last event, 0 = new), any, no-stream or exists.",
        ),
    ] = "any",
    as_json: JsonOption = False,
) -> None:
    """Append one event to a stream."""
    version = expected_version(expected)
    event = NewEvent(event_type, parse_json_object("--data", data) or {}, parse_json_object("--metadata", metadata))
    store = state(ctx).store()
    try:
        result = store.append(stream, [event], expected_version=version)
    except InvalidEvent as error:
        raise append_error(error) from error
    except WrongExpectedVersion as error:
        raise CliError(
            f"{error}; nothing was written. Read it with `eventstore read {stream}` and retry with "
            f"--expected-version {error.actual} (or any)"
        ) from error
    if as_json:
        emit_json({"stream_id": result.stream_id, "stream_version": result.stream_version,
                   "global_position": result.global_position, "event_id": str(event.event_id)})  # fmt: skip
    else:
        typer.echo(
            f"appended {event_type} to {result.stream_id}@{result.stream_version} at position {result.global_position}"
        )


@reports_errors
def read(
    ctx: typer.Context,
    stream: StreamArgument,
    from_version: Annotated[
        int | None,
        typer.Option(
            "--from-version",
            min=1,
            max=MAX_INT32,
            envvar="EVENTSTORE_FROM_VERSION",
            help="First version to print (going --backwards: the newest one).",
        ),
    ] = None,
    backwards: Annotated[
        bool, typer.Option("--backwards", envvar="EVENTSTORE_BACKWARDS", help="Newest first.")
    ] = False,
    limit: LimitOption = None,
    as_json: JsonOption = False,
) -> None:
    """Print one stream's events in version order."""
    store = state(ctx).store()
    events = store.read_stream(stream, from_version=from_version, backwards=backwards, limit=limit)
    if not events and store.stream_version(stream) == 0:
        raise CliError(f"{StreamNotFound(stream)}; list streams with `eventstore log` (check the spelling)")
    print_events(events, as_json=as_json)


@reports_errors
def log(
    ctx: typer.Context,
    after: Annotated[
        int | None,
        typer.Option(
            "--after",
            min=0,
            max=MAX_INT64,
            envvar="EVENTSTORE_AFTER",
            help="Start after this global position (default: from the first event).",
        ),
    ] = None,
    limit: LimitOption = None,
    category: CategoryOption = None,
    event_type: TypeOption = None,
    as_json: JsonOption = False,
) -> None:
    """Print all events in the global order (optionally filtered)."""
    store = state(ctx).store()
    try:
        events = store.read_all(after=after, limit=limit, categories=category or None, event_types=event_type or None)
    except UnknownPosition as error:
        raise position_error("--after", error, "or 0 for the first event") from error
    count = print_events(events, as_json=as_json)
    status(f"{count} event(s)")


@reports_errors
def tail(
    ctx: typer.Context,
    after: Annotated[
        int | None,
        typer.Option(
            "--after",
            min=0,
            max=MAX_INT64,
            envvar="EVENTSTORE_AFTER",
            help="Start after this global position (0: from the first event). Default: the current head.",
        ),
    ] = None,
    category: CategoryOption = None,
    event_type: TypeOption = None,
    count: Annotated[
        int | None,
        typer.Option("--count", min=1, max=MAX_INT64, envvar="EVENTSTORE_COUNT", help="Stop after this many events."),
    ] = None,
    as_json: JsonOption = False,
) -> None:
    """Print events live as their transactions commit, until Ctrl-C (from the current head, or --after P)."""
    from eventstore.store.follow import follow

    events = follow(
        state(ctx).store(),
        after=after,
        categories=category or None,
        event_types=event_type or None,
        limit=count,
        ready=lambda position: status(f"tailing after position {position}; Ctrl-C to stop"),
    )
    with contextlib.suppress(KeyboardInterrupt):  # Ctrl-C is how a tail normally ends
        try:
            for event in events:
                typer.echo(json.dumps(event_record(event), ensure_ascii=False) if as_json else event_line(event))
        except UnknownPosition as error:  # checked before the first event, so nothing was printed
            raise position_error(
                "--after", error, "0 for the first event, or leave it out to start at the head"
            ) from error


def register(app: typer.Typer) -> None:
    """Add these commands to ``app``."""
    for command in (migrate, append, read, log, tail):
        app.command()(command)
