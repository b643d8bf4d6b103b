"""The ``eventstore`` command: a thin typer layer over the library.

Every option can also come from an ``EVENTSTORE_*`` environment variable.
Results go to stdout, status to stderr. A user mistake prints one line
(``Error: ...``) and exits 1 (2 for usage errors); ``-v`` adds the traceback.
Business logic lives in the library (store, runner, admin) and in
:mod:`eventstore.demo`; output helpers in :mod:`eventstore.console`.
"""

from __future__ import annotations

import contextlib
import importlib
import logging
import sys
import threading
from dataclasses import dataclass, field
from typing import Annotated, Any

import typer
from typer._click.exceptions import ClickException  # typer vendors click; usage errors derive from this
from typer.core import TyperGroup

from eventstore.cli_database import Target, embedded_server, open_target
from eventstore.cli_projections import load_projections, pick, pick_one
from eventstore.console import (
    CliError,
    emit_json,
    event_line,
    event_record,
    parse_json_object,
    print_events,
    print_table,
    progress_reporter,
    report_error,
    status,
)
from eventstore.database import translate_driver_errors
from eventstore.errors import StreamNotFound, WrongExpectedVersion
from eventstore.store import EventStore
from eventstore.types import ANY, NO_STREAM, STREAM_EXISTS, ExpectedVersion, NewEvent

__all__ = ["app", "main"]


class _Group(TyperGroup):
    """Maps known errors to one line and an exit code, for every command (and for CliRunner)."""

    def invoke(self, ctx: Any) -> Any:
        try:
            return super().invoke(ctx)
        except (typer.Exit, typer.Abort, ClickException):
            raise
        except KeyboardInterrupt:
            status("interrupted")
            raise typer.Exit(130) from None
        except Exception as error:
            state = ctx.obj if isinstance(ctx.obj, State) else None
            code = report_error(error, verbose=bool(state and state.verbose))
            raise typer.Exit(code) from None


@dataclass
class State:
    """Global options, and the database opened on first use."""

    url: str | None
    home: str | None
    projections_module: str
    verbose: bool
    _target: Target | None = field(default=None, repr=False)
    _store: EventStore | None = field(default=None, repr=False)

    def target(self, *, auto_migrate: bool = True) -> Target:
        if self._target is None:
            self._target = open_target(self.url, home=self.home, auto_migrate=auto_migrate)
            if self._target.embedded is not None:
                status(f"using {self._target.description}; pass --url or set EVENTSTORE_URL for another database")
        return self._target

    def store(self) -> EventStore:
        if self._store is None:
            self._store = EventStore(self.target().engine)
        return self._store

    def close(self) -> None:
        """Close the pooled connections (the embedded server keeps running)."""
        if self._target is not None:
            self._target.engine.dispose()

    def projections(self) -> list[Any]:
        return load_projections(self.projections_module)


def _state(ctx: typer.Context) -> State:
    state = ctx.find_object(State)
    assert state is not None  # set by the app callback
    return state


app = typer.Typer(
    cls=_Group,
    name="eventstore",
    help="A PostgreSQL event store and projection runner.",
    no_args_is_help=True,
    add_completion=False,
    rich_markup_mode=None,
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)
projections_app = typer.Typer(cls=_Group, help="Run, inspect, rebuild and repair projections.", no_args_is_help=True)
streams_app = typer.Typer(cls=_Group, help="Work on single streams.", no_args_is_help=True)
server_app = typer.Typer(cls=_Group, help="The embedded PostgreSQL used without --url.", no_args_is_help=True)
app.add_typer(projections_app, name="projections")
app.add_typer(streams_app, name="streams")
app.add_typer(server_app, name="server")

JsonOption = Annotated[bool, typer.Option("--json", envvar="EVENTSTORE_JSON", help="Print JSON instead of text.")]


class _EchoHandler(logging.Handler):
    """Log records to the current stderr (resolved per record, so test runners can swap it)."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            typer.echo(self.format(record), err=True)
        except Exception:  # logging must never break the command
            self.handleError(record)


def _configure_logging(verbose: bool) -> None:
    package_logger = logging.getLogger("eventstore")
    for handler in list(package_logger.handlers):
        if isinstance(handler, _EchoHandler):
            package_logger.removeHandler(handler)
    handler = _EchoHandler()
    handler.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
    package_logger.addHandler(handler)
    package_logger.setLevel(logging.DEBUG if verbose else logging.WARNING)


@app.callback()
def _global_options(
    ctx: typer.Context,
    url: Annotated[
        str | None,
        typer.Option(
            "--url",
            metavar="URL",
            envvar="EVENTSTORE_URL",
            show_envvar=True,
            help="PostgreSQL URL (postgresql://user:pass@host:port/db). Default: the embedded server.",
        ),
    ] = None,
    projections: Annotated[
        str,
        typer.Option(
            "--projections",
            metavar="MODULE",
            envvar="EVENTSTORE_PROJECTIONS",
            show_envvar=True,
            help="Module holding the projections.",
        ),
    ] = "projections",
    home: Annotated[
        str | None,
        typer.Option(
            "--home",
            metavar="DIR",
            envvar="EVENTSTORE_HOME",
            show_envvar=True,
            help="Data directory of the embedded PostgreSQL (default: the per-user data dir).",
        ),
    ] = None,
    verbose: Annotated[
        bool, typer.Option("--verbose", "-v", envvar="EVENTSTORE_VERBOSE", help="Show tracebacks and debug logs.")
    ] = False,
) -> None:
    """A PostgreSQL event store and projection runner."""
    _configure_logging(verbose)
    state = State(url=url or None, home=home or None, projections_module=projections, verbose=verbose)
    ctx.obj = state
    ctx.call_on_close(state.close)


# -- store commands -------------------------------------------------------------


@app.command()
def migrate(
    ctx: typer.Context,
    sql: Annotated[
        bool, typer.Option("--sql", envvar="EVENTSTORE_SQL", help="Print the SQL instead of running it.")
    ] = False,
) -> None:
    """Apply the eventstore schema (idempotent); --sql prints it for review."""
    from eventstore.migrations import head_revision
    from eventstore.migrations import migrate as apply_schema

    state = _state(ctx)
    target = state.target(auto_migrate=False)
    if sql:
        typer.echo(apply_schema(target.engine, sql=True) or "", nl=False)
        return
    apply_schema(target.engine)
    typer.echo(f"schema is at revision {head_revision()} on {target.description}")


def _expected_version(value: str) -> int | ExpectedVersion:
    named = {"any": ANY, "no-stream": NO_STREAM, "exists": STREAM_EXISTS}
    if value.lower() in named:
        return named[value.lower()]
    if value.isdigit():
        return int(value)
    raise typer.BadParameter(f"{value!r} is not a version; use an integer >= 0, any, no-stream or exists")


@app.command()
def append(
    ctx: typer.Context,
    stream: Annotated[
        str, typer.Argument(metavar="STREAM", help="Stream id, e.g. order-42 (category = text before the first '-').")
    ],
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
    expected_version: Annotated[
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
    expected = _expected_version(expected_version)
    event = NewEvent(event_type, parse_json_object("--data", data) or {}, parse_json_object("--metadata", metadata))
    store = _state(ctx).store()
    try:
        result = store.append(stream, [event], expected_version=expected)
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


@app.command()
def read(
    ctx: typer.Context,
    stream: Annotated[str, typer.Argument(metavar="STREAM", help="Stream id.")],
    from_version: Annotated[int | None, typer.Option("--from-version", min=1, envvar="EVENTSTORE_FROM_VERSION")] = None,
    backwards: Annotated[bool, typer.Option("--backwards", envvar="EVENTSTORE_BACKWARDS")] = False,
    limit: Annotated[int | None, typer.Option("--limit", min=0, envvar="EVENTSTORE_LIMIT")] = None,
    as_json: JsonOption = False,
) -> None:
    """Print one stream's events in version order."""
    store = _state(ctx).store()
    events = store.read_stream(stream, from_version=from_version, backwards=backwards, limit=limit)
    if not events and store.stream_version(stream) == 0:
        raise CliError(f"{StreamNotFound(stream)}; list streams with `eventstore log` (check the spelling)")
    print_events(events, as_json=as_json)


@app.command()
def log(
    ctx: typer.Context,
    after: Annotated[
        int | None, typer.Option("--after", min=0, envvar="EVENTSTORE_AFTER", help="Start after this global position.")
    ] = None,
    limit: Annotated[int | None, typer.Option("--limit", "-n", min=0, envvar="EVENTSTORE_LIMIT")] = None,
    category: Annotated[list[str] | None, typer.Option("--category", "-c", envvar="EVENTSTORE_CATEGORY")] = None,
    event_type: Annotated[list[str] | None, typer.Option("--type", "-t", envvar="EVENTSTORE_TYPE")] = None,
    as_json: JsonOption = False,
) -> None:
    """Print all events in the global order (optionally filtered)."""
    store = _state(ctx).store()
    events = store.read_all(after=after, limit=limit, categories=category or None, event_types=event_type or None)
    count = print_events(events, as_json=as_json)
    status(f"{count} event(s)")


@app.command()
def tail(
    ctx: typer.Context,
    category: Annotated[list[str] | None, typer.Option("--category", "-c", envvar="EVENTSTORE_CATEGORY")] = None,
    event_type: Annotated[list[str] | None, typer.Option("--type", "-t", envvar="EVENTSTORE_TYPE")] = None,
    count: Annotated[
        int | None, typer.Option("--count", min=1, envvar="EVENTSTORE_COUNT", help="Stop after this many events.")
    ] = None,
    as_json: JsonOption = False,
) -> None:
    """Print events live as their transactions commit, until Ctrl-C (starts at the current head)."""
    store = _state(ctx).store()
    with contextlib.suppress(KeyboardInterrupt):  # Ctrl-C is how a tail normally ends
        _print_followed(store, category, event_type, count, as_json)


def _print_followed(
    store: EventStore, category: list[str] | None, event_type: list[str] | None, count: int | None, as_json: bool
) -> None:
    import json

    from eventstore.tailing import follow

    events = follow(
        store,
        categories=category or None,
        event_types=event_type or None,
        limit=count,
        ready=lambda head: status(f"tailing after position {head}; Ctrl-C to stop"),
    )
    for event in events:
        typer.echo(json.dumps(event_record(event), ensure_ascii=False) if as_json else event_line(event))


# -- projections ------------------------------------------------------------------


@projections_app.command("list")
def projections_list(ctx: typer.Context, as_json: JsonOption = False) -> None:
    """The projections of the --projections module."""
    rows = [
        (
            p.name,
            ",".join(getattr(p, "categories", ()) or ()) or "*",
            ",".join(getattr(p, "event_types", ()) or ()) or "*",
            getattr(p, "on_error", "stop"),
            f"{type(p).__module__}.{type(p).__qualname__}",
        )
        for p in _state(ctx).projections()
    ]
    print_table(("name", "categories", "event_types", "on_error", "class"), rows, as_json=as_json)


@projections_app.command("status")
def projections_status(ctx: typer.Context, as_json: JsonOption = False) -> None:
    """Position, lag and state of each projection."""
    from eventstore import admin

    state = _state(ctx)
    statuses = admin.projection_status(state.store(), state.projections())
    columns = ("name", "state", "position", "head", "lag_events", "lag_seconds", "owner", "last_error")
    rows = [tuple(getattr(item, column, None) for column in columns) for item in statuses]
    print_table(columns, rows, as_json=as_json)


@projections_app.command("run")
def projections_run(
    ctx: typer.Context,
    names: Annotated[list[str] | None, typer.Argument(help="Projections to run (default: all).")] = None,
    poll_interval: Annotated[float, typer.Option("--poll-interval", min=0.05, envvar="EVENTSTORE_POLL_INTERVAL")] = 5.0,
    until_caught_up: Annotated[
        bool,
        typer.Option(
            "--until-caught-up", envvar="EVENTSTORE_UNTIL_CAUGHT_UP", help="Process up to the current head, then exit."
        ),
    ] = False,
) -> None:
    """Run projection workers until Ctrl-C / SIGTERM (or --until-caught-up)."""
    from eventstore.runner import ProjectionRunner

    state = _state(ctx)
    selected = pick(state.projections(), names or [])
    runner = ProjectionRunner(state.store(), selected, poll_interval=poll_interval)
    status(f"running {', '.join(p.name for p in selected)}; Ctrl-C to stop")
    if until_caught_up:
        runner.run_until_caught_up()
        status("caught up")
        return
    runner.run()
    status("stopped")


@projections_app.command("rebuild")
def projections_rebuild(
    ctx: typer.Context,
    name: Annotated[str, typer.Argument(metavar="NAME", help="Projection name.")],
    from_position: Annotated[
        int | None,
        typer.Option(
            "--from-position", min=0, envvar="EVENTSTORE_FROM_POSITION", help="Replay events after this position."
        ),
    ] = None,
) -> None:
    """Reset a read model and replay the events into it (Ctrl-C leaves it resumable)."""
    from eventstore import admin

    state = _state(ctx)
    projection = pick_one(state.projections(), name)
    store = state.store()
    stop = threading.Event()
    outcome: dict[str, Any] = {}

    with progress_reporter(f"rebuilding {name}") as progress:

        def work() -> None:
            try:
                outcome["count"] = admin.rebuild(
                    store, projection, from_position=from_position, progress=progress, stop_event=stop
                )
            except BaseException as error:  # handed to the main thread
                outcome["error"] = error

        worker = threading.Thread(target=work, name=f"rebuild-{name}", daemon=True)
        worker.start()
        try:
            while worker.is_alive():
                worker.join(0.2)
        except KeyboardInterrupt:
            stop.set()
            status("stopping after the current batch...")
            worker.join()
            position = admin.projection_status(store, [projection])[0].position
            status(
                f"rebuild of {name} interrupted at position {position} (committed); continue with "
                f"`eventstore projections rebuild {name} --from-position {position}` "
                f"or `eventstore projections run {name}`"
            )
            raise typer.Exit(130) from None
    if "error" in outcome:
        raise outcome["error"]
    typer.echo(f"rebuilt {name}: {outcome.get('count', 0)} events applied")


@projections_app.command("reset")
def projections_reset(
    ctx: typer.Context, name: Annotated[str, typer.Argument(metavar="NAME", help="Projection name.")]
) -> None:
    """Clear a read model and move its checkpoint back to the start."""
    from eventstore import admin

    state = _state(ctx)
    admin.reset(state.store(), pick_one(state.projections(), name))
    typer.echo(f"reset {name}: read model cleared, checkpoint at 0")


@projections_app.command("failures")
def projections_failures(
    ctx: typer.Context,
    name: Annotated[str | None, typer.Argument(help="Only this projection.")] = None,
    as_json: JsonOption = False,
) -> None:
    """Events a projection failed on (poison events)."""
    from eventstore import admin

    state = _state(ctx)
    if name is not None:
        pick_one(state.projections(), name)
    failures = admin.list_failures(state.store(), name)
    columns = ("projection_name", "global_position", "stream_id", "event_type", "status", "error", "recorded_at")
    print_table(columns, [tuple(getattr(f, column, None) for column in columns) for f in failures], as_json=as_json)


@projections_app.command("retry")
def projections_retry(
    ctx: typer.Context, name: Annotated[str, typer.Argument(metavar="NAME", help="Projection name.")]
) -> None:
    """Retry a failed projection's poison event (a running worker picks it up)."""
    from eventstore import admin

    state = _state(ctx)
    position = admin.retry(state.store(), pick_one(state.projections(), name).name)
    typer.echo(f"retry of {name} requested at position {position}")


@projections_app.command("skip")
def projections_skip(
    ctx: typer.Context, name: Annotated[str, typer.Argument(metavar="NAME", help="Projection name.")]
) -> None:
    """Skip a failed projection's poison event and move on."""
    from eventstore import admin

    state = _state(ctx)
    position = admin.skip(state.store(), pick_one(state.projections(), name).name)
    typer.echo(f"skipped the event at position {position} for {name}")


# -- streams --------------------------------------------------------------------


@streams_app.command("replay")
def streams_replay(
    ctx: typer.Context,
    stream: Annotated[str, typer.Argument(metavar="STREAM", help="Stream id.")],
    projection: Annotated[
        str | None,
        typer.Option(
            "--projection", "-p", envvar="EVENTSTORE_PROJECTION", help="Re-apply the stream through this projection."
        ),
    ] = None,
    as_json: JsonOption = False,
) -> None:
    """Replay one stream's events in order; with --projection, repair that stream's part of the read model."""
    state = _state(ctx)
    store = state.store()
    if store.stream_version(stream) == 0:
        raise CliError(f"{StreamNotFound(stream)}; list streams with `eventstore log` (check the spelling)")
    if projection is None:
        print_events(store.read_stream(stream), as_json=as_json)
        return
    from eventstore import admin

    chosen = pick_one(state.projections(), projection)
    try:
        count = admin.replay_stream(store, chosen, stream)
    except NotImplementedError as error:
        raise CliError(
            f"projection {projection!r} cannot replay a single stream: it does not implement forget_stream(); "
            f"use `eventstore projections rebuild {projection}` instead"
        ) from error
    typer.echo(f"replayed {count} event(s) of {stream} through {projection}")


# -- embedded server -----------------------------------------------------------------


@server_app.command("status")
def server_status(ctx: typer.Context) -> None:
    """Whether the embedded server runs, where, and its data directory."""
    server = embedded_server(_state(ctx).home)
    if server.is_running():
        typer.echo(f"running: PostgreSQL {server.version()} on 127.0.0.1:{server.port}, data in {server.data_dir}")
    else:
        typer.echo(f"stopped (data in {server.data_dir})")


@server_app.command("stop")
def server_stop(ctx: typer.Context) -> None:
    """Stop the embedded server (data is kept; the next command starts it again)."""
    server = embedded_server(_state(ctx).home)
    if not server.is_running():
        typer.echo("not running")
        return
    server.stop()
    typer.echo(f"stopped the embedded PostgreSQL (data kept in {server.data_dir})")


# -- demo ------------------------------------------------------------------------


@app.command()
def demo(
    ctx: typer.Context,
    duration: Annotated[
        float, typer.Option("--duration", min=0.5, envvar="EVENTSTORE_DEMO_DURATION", help="Seconds of writing.")
    ] = 12.0,
    events: Annotated[
        int | None,
        typer.Option("--events", min=1, envvar="EVENTSTORE_DEMO_EVENTS", help="Stop after about this many events."),
    ] = None,
    writers: Annotated[int, typer.Option("--writers", min=1, max=64, envvar="EVENTSTORE_DEMO_WRITERS")] = 4,
    quick: Annotated[
        bool,
        typer.Option("--quick", envvar="EVENTSTORE_DEMO_QUICK", help="A short run (2 s, 2 writers) for smoke tests."),
    ] = False,
) -> None:
    """The main job: concurrent order writers, live projections, then a check of every read model."""
    from eventstore.demo import DemoSettings, run_demo

    state = _state(ctx)
    target = state.target(auto_migrate=False)
    from eventstore.migrations import migrate as apply_schema

    with translate_driver_errors(target.engine):
        apply_schema(target.engine)
    settings = DemoSettings(duration=2.0 if quick else duration, events=events, writers=2 if quick else writers)
    projections = state.projections()  # reports an import failure in one line
    verify = getattr(importlib.import_module(state.projections_module), "verify", None)
    report = run_demo(state.store(), projections, settings, verify=verify)
    if not report.ok:
        raise CliError(f"the demo found {len(report.problems)} problem(s), listed above (PROBLEM lines)")


def main() -> None:
    """Entry point of the ``eventstore`` console script."""
    try:
        app()
    except KeyboardInterrupt:  # outside a command (e.g. while starting the embedded server)
        status("interrupted")
        sys.exit(130)
