"""``eventstore projections ...``: list, status, run, rebuild, reset, failures, retry, skip."""

from __future__ import annotations

import contextlib
import dataclasses
import threading
from typing import Annotated, Any

import typer

from eventstore.cli.context import state
from eventstore.cli.errors import EXIT_PROJECTION_FAILED, CliError, reports_errors
from eventstore.cli.loading import pick, pick_one
from eventstore.cli.options import JsonOption, position_error
from eventstore.cli.output import emit_json, print_table, progress_reporter, status
from eventstore.database import url_of
from eventstore.errors import ConfigurationError, UnknownPosition, first_line
from eventstore.store import EventStore
from eventstore.store.validation import MAX_INT64

__all__ = ["projections_app"]

projections_app = typer.Typer(help="Run, inspect, rebuild and repair projections.", no_args_is_help=True)

NameArgument = Annotated[
    str, typer.Argument(metavar="NAME", help="Projection name (see `eventstore projections list`).")
]


def failed_error(store: EventStore, names: list[str]) -> CliError:
    """The error for projections stopped on a poison event: which, where, why, and the commands that help."""
    from eventstore import admin

    lines = []
    for item in admin.projection_status(store, names):
        if item.state != "failed":
            continue
        event = f"the event at position {item.failed_position}"
        for failure in admin.list_failures(store, item.name, open_only=True):
            if failure.global_position == item.failed_position:
                event = f"the {failure.event_type} event of {failure.stream_id} at position {item.failed_position}"
        lines.append(
            f"projection {item.name!r} stopped on {event}: {first_line(item.last_error)}; "
            f"see it with `eventstore projections failures {item.name} --open --traceback`, then fix the "
            f"projection and run `eventstore projections retry {item.name}` "
            f"(or `eventstore projections skip {item.name}`)"
        )
    return CliError(" | ".join(lines) or "a projection stopped on a poison event", exit_code=EXIT_PROJECTION_FAILED)


@projections_app.command("list")
@reports_errors
def projections_list(ctx: typer.Context, as_json: JsonOption = False) -> None:
    """The projections of the --projections module."""
    rows = [
        (
            p.name,
            ",".join(p.categories) or "*",
            ",".join(p.event_types) or "*",
            p.on_error,
            f"{type(p).__module__}.{type(p).__qualname__}",
        )
        for p in state(ctx).projections()
    ]
    print_table(("name", "categories", "event_types", "on_error", "class"), rows, as_json=as_json)


@projections_app.command("status")
@reports_errors
def projections_status(ctx: typer.Context, as_json: JsonOption = False) -> None:
    """Position, lag and state of each projection; what holds it back; the NOTIFY queue's usage."""
    from eventstore import admin

    context = state(ctx)
    statuses = admin.projection_status(context.store(), context.projections())
    columns = ("name", "state", "position", "head", "lag_events", "held_back", "lag_seconds", "owner", "last_error")
    if as_json:
        emit_json(
            [
                {
                    **{column: getattr(item, column) for column in columns},
                    "failed_position": item.failed_position,
                    "blocked_by": [dataclasses.asdict(blocker) for blocker in item.blocked_by],
                    "notify_queue_usage": item.notify_queue_usage,
                    "unowned_since": item.unowned_since.isoformat() if item.unowned_since else None,
                }
                for item in statuses
            ]
        )
        return
    print_table(columns, [tuple(getattr(item, column) for column in columns) for item in statuses], as_json=False)
    blockers = {blocker.pid: blocker for item in statuses for blocker in item.blocked_by}
    for blocker in blockers.values():
        status(f"events held back by {blocker.describe()}; they are applied once its transaction ends")
    if statuses and statuses[0].notify_queue_usage >= 0.5:
        status(
            f"the NOTIFY queue is {statuses[0].notify_queue_usage:.0%} full: wake-ups are skipped and runners "
            "poll; find the listener that stopped reading (pg_stat_activity, LISTEN sessions)"
        )


@projections_app.command("run")
@reports_errors
def projections_run(
    ctx: typer.Context,
    names: Annotated[list[str] | None, typer.Argument(help="Projections to run (default: all).")] = None,
    poll_interval: Annotated[
        float,
        typer.Option(
            "--poll-interval",
            min=0.05,
            envvar="EVENTSTORE_POLL_INTERVAL",
            help="Seconds between fallback re-checks when no wake-up arrives.",
        ),
    ] = 5.0,
    until_caught_up: Annotated[
        bool,
        typer.Option(
            "--until-caught-up",
            envvar="EVENTSTORE_UNTIL_CAUGHT_UP",
            help="Process up to the current head, then exit (exit code 3 if a projection stopped on a poison event).",
        ),
    ] = False,
    metrics_port: Annotated[
        int | None,
        typer.Option(
            "--metrics-port",
            min=0,
            max=65535,
            envvar="EVENTSTORE_METRICS_PORT",
            help="Serve Prometheus metrics at http://HOST:PORT/metrics (0: any free port); needs eventstore[metrics].",
        ),
    ] = None,
    metrics_host: Annotated[
        str,
        typer.Option(
            "--metrics-host",
            envvar="EVENTSTORE_METRICS_HOST",
            help="Address the metrics server listens on (loopback by default; 0.0.0.0 for every interface).",
        ),
    ] = "127.0.0.1",
    listen_url: Annotated[
        str | None,
        typer.Option(
            "--listen-url",
            metavar="URL",
            envvar="EVENTSTORE_LISTEN_URL",
            show_envvar=True,
            help="Direct or session-mode URL of the same database for the runner's wake-up (LISTEN) connection, "
            "needed when --url goes through a transaction-mode pooler such as PgBouncer (without it the runner "
            "falls back to polling). Default: --url.",
        ),
    ] = None,
    connections: Annotated[
        int,
        typer.Option(
            "--connections",
            min=3,
            envvar="EVENTSTORE_RUNNER_CONNECTIONS",
            help="The most PostgreSQL connections this runner holds, its wake-up connection included, however "
            "many projections it runs (it applies connections-2 of them at a time).",
        ),
    ] = 6,
) -> None:
    """Run projection workers until Ctrl-C / SIGTERM (or --until-caught-up)."""
    from eventstore.runner import ProjectionRunner

    listen_url = listen_url or None
    if listen_url is not None:
        try:
            url_of(listen_url)
        except ConfigurationError:
            # Not the error's own text: it may quote the URL, password included.
            raise CliError(
                "--listen-url: invalid database URL; expected postgresql://USER:PASSWORD@HOST:PORT/DATABASE, "
                "a direct or session-mode connection to the same database as --url"
            ) from None
    context = state(ctx)
    selected = pick(context.projections(), names or [])
    store = context.store()
    with contextlib.ExitStack() as cleanup:
        if metrics_port is not None:
            from eventstore import metrics

            metrics.enable()
            cleanup.callback(metrics.disable)
            cleanup.callback(metrics.unwatch, metrics.watch(store, selected))
            server = cleanup.enter_context(metrics.serve(metrics_port, host=metrics_host))
            status(f"serving metrics on {server.url}")
        runner = ProjectionRunner(
            store, selected, poll_interval=poll_interval, listen_url=listen_url, connections=connections
        )
        status(f"running {', '.join(p.name for p in selected)}; Ctrl-C to stop")
        if until_caught_up:
            runner.run_until_caught_up()
            if runner.failed:
                raise failed_error(store, runner.failed)
            status("caught up")
            return
        runner.run()
    status("stopped")


@projections_app.command("rebuild")
@reports_errors
def projections_rebuild(
    ctx: typer.Context,
    name: NameArgument,
    from_position: Annotated[
        int | None,
        typer.Option(
            "--from-position",
            min=0,
            max=MAX_INT64,
            envvar="EVENTSTORE_FROM_POSITION",
            help="Keep the read model and re-apply the events after this position.",
        ),
    ] = None,
) -> None:
    """Reset a read model and replay the events into it (Ctrl-C leaves it resumable)."""
    from eventstore import admin

    context = state(ctx)
    projection = pick_one(context.projections(), name)
    store = context.store()
    if from_position:
        try:
            store.order_of(from_position)  # before the read model is touched
        except UnknownPosition as error:
            raise position_error("--from-position", error, "or leave it out to rebuild from the start") from error
    stop = threading.Event()
    outcome: dict[str, Any] = {}

    with progress_reporter(f"rebuilding {name}") as progress:
        # Waited for with an Event, not Thread.join: a join interrupted by Ctrl-C may
        # return at once afterwards (CPython before 3.13), and the rebuild thread would die
        # with the process before releasing the projection's lease.
        finished = threading.Event()

        def work() -> None:
            try:
                outcome["count"] = admin.rebuild(
                    store, projection, from_position=from_position, progress=progress, stop_event=stop
                )
            except BaseException as error:  # handed to the main thread
                outcome["error"] = error
            finally:
                finished.set()

        threading.Thread(target=work, name=f"rebuild-{name}", daemon=True).start()
        try:
            while not finished.wait(0.2):
                pass
        except KeyboardInterrupt:
            stop.set()
            status("stopping after the current batch...")
            finished.wait()
            position = admin.projection_status(store, [projection])[0].position
            status(
                f"rebuild of {name} interrupted at position {position} (committed); continue with "
                f"`eventstore projections rebuild {name} --from-position {position}` "
                f"or `eventstore projections run {name}`"
            )
            raise typer.Exit(130) from None
    if "error" in outcome:
        raise outcome["error"]
    if admin.projection_status(store, [projection])[0].state == "failed":
        raise failed_error(store, [name])
    typer.echo(f"rebuilt {name}: {outcome.get('count', 0)} events applied")


@projections_app.command("reset")
@reports_errors
def projections_reset(ctx: typer.Context, name: NameArgument) -> None:
    """Clear a read model and move its checkpoint back to the start."""
    from eventstore import admin

    context = state(ctx)
    admin.reset(context.store(), pick_one(context.projections(), name))
    typer.echo(f"reset {name}: read model cleared, checkpoint at 0")


@projections_app.command("failures")
@reports_errors
def projections_failures(
    ctx: typer.Context,
    name: Annotated[str | None, typer.Argument(metavar="[NAME]", help="Only this projection.")] = None,
    open_only: Annotated[
        bool,
        typer.Option("--open", envvar="EVENTSTORE_OPEN", help="Only failures not yet retried or skipped."),
    ] = False,
    with_traceback: Annotated[
        bool,
        typer.Option("--traceback", envvar="EVENTSTORE_TRACEBACK", help="Also print each stored traceback."),
    ] = False,
    as_json: JsonOption = False,
) -> None:
    """Events a projection failed on (poison events)."""
    from eventstore import admin

    context = state(ctx)
    if name is not None:
        pick_one(context.projections(), name)
    failures = admin.list_failures(context.store(), name, open_only=open_only)
    columns = ["projection_name", "global_position", "stream_id", "event_type", "status", "error", "recorded_at"]
    if with_traceback and as_json:
        columns.append("traceback")
    print_table(columns, [tuple(getattr(f, column, None) for column in columns) for f in failures], as_json=as_json)
    if with_traceback and not as_json:
        for failure in failures:
            typer.echo(f"\n{failure.projection_name} at position {failure.global_position}:")
            typer.echo((failure.traceback or "(no traceback stored)").rstrip())


@projections_app.command("retry")
@reports_errors
def projections_retry(ctx: typer.Context, name: NameArgument) -> None:
    """Retry a failed projection's poison event (a running worker picks it up)."""
    from eventstore import admin

    context = state(ctx)
    position = admin.retry(context.store(), pick_one(context.projections(), name).name)
    typer.echo(f"retry of {name} requested at position {position}")


@projections_app.command("skip")
@reports_errors
def projections_skip(ctx: typer.Context, name: NameArgument) -> None:
    """Skip a failed projection's poison event and move on."""
    from eventstore import admin

    context = state(ctx)
    position = admin.skip(context.store(), pick_one(context.projections(), name).name)
    typer.echo(f"skipped the event at position {position} for {name}")
