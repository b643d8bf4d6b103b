"""``eventstore streams ...``: work on single streams."""

from __future__ import annotations

from typing import Annotated

import typer

from eventstore.cli.context import state
from eventstore.cli.errors import CliError, reports_errors
from eventstore.cli.loading import pick_one
from eventstore.cli.options import JsonOption
from eventstore.cli.output import print_events
from eventstore.errors import StreamNotFound

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
    if store.stream_version(stream) == 0:
        raise CliError(f"{StreamNotFound(stream)}; list streams with `eventstore log` (check the spelling)")
    if projection is None:
        print_events(store.read_stream(stream), as_json=as_json)
        return
    chosen = pick_one(context.projections(), projection)
    count = admin.replay_stream(store, chosen, stream)
    if count == 0:
        reached = admin.projection_status(store, [chosen])[0].position
        first = store.read_stream(stream, limit=1)[0].global_position
        raise CliError(
            f"replayed 0 events of {stream} through {projection}: the projection is at position {reached} and has "
            f"not reached this stream's events yet (the first is at position {first}), or its filters leave them out; "
            f"run `eventstore projections run {projection} --until-caught-up` first, then replay again"
        )
    typer.echo(f"replayed {count} event(s) of {stream} through {projection}")
