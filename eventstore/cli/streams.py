"""``eventstore streams ...``: work on single streams."""

from __future__ import annotations

from typing import Annotated

import typer

from eventstore.cli.context import state
from eventstore.cli.errors import CliError, reports_errors
from eventstore.cli.loading import pick_one
from eventstore.cli.options import JsonOption
from eventstore.cli.output import print_events
from eventstore.errors import ProjectionNotFound, StreamNotFound

__all__ = ["streams_app"]

streams_app = typer.Typer(help="Work on single streams.", no_args_is_help=True)


@streams_app.command("replay")
@reports_errors
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
    from eventstore import admin

    context = state(ctx)
    store = context.store()
    events = store.read_stream(stream)
    if not events:
        raise CliError(f"{StreamNotFound(stream)}; list streams with `eventstore log` (check the spelling)")
    if projection is None:
        print_events(events, as_json=as_json)
        return
    chosen = pick_one(context.projections(), projection)
    handled = [event for event in events if chosen.selects(event)]
    if not handled:
        raise CliError(
            f"projection {projection!r} handles none of the {len(events)} event(s) of {stream} "
            f"(categories: {', '.join(chosen.categories) or 'all'}; event types: "
            f"{', '.join(chosen.event_types) or 'all'}), so there is nothing to replay; "
            "pick the projection that builds this stream's read model (see `eventstore projections list`)"
        )
    run_first = f"run `eventstore projections run {projection} --until-caught-up` first"
    try:
        count = admin.replay_stream(store, chosen, stream)
    except ProjectionNotFound as error:
        raise CliError(
            f"projection {projection!r} has never run, so its read model holds nothing of {stream} to replay; "
            f"{run_first} (it applies the stream's events itself)"
        ) from error
    if count == 0:
        reached = admin.projection_status(store, [chosen])[0].position
        raise CliError(
            f"projection {projection!r} is at position {reached} and has not reached {stream}'s events yet "
            f"(the first it handles is at position {handled[0].global_position}), so there is nothing to replay; "
            f"{run_first}, then replay again if the read model still looks wrong"
        )
    typer.echo(f"replayed {count} event(s) of {stream} through {projection}")
