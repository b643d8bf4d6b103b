"""``eventstore server ...``: the embedded PostgreSQL used when no --url is given."""

from __future__ import annotations

import typer

from eventstore.cli.context import state
from eventstore.cli.errors import CliError, reports_errors
from eventstore.cli.target import EMBEDDED_DATABASE, embedded_server

__all__ = ["server_app"]

server_app = typer.Typer(help="The embedded PostgreSQL used without --url.", no_args_is_help=True)


@server_app.command("status")
@reports_errors
def server_status(ctx: typer.Context) -> None:
    """Whether the embedded server runs, where, and its data directory."""
    server = embedded_server(state(ctx).home)
    if server.is_running():
        typer.echo(f"running: PostgreSQL {server.version()} on 127.0.0.1:{server.port}, data in {server.data_dir}")
        typer.echo(f"url: {server.libpq_url(EMBEDDED_DATABASE)}")
    else:
        typer.echo(f"stopped (data in {server.data_dir})")


@server_app.command("url")
@reports_errors
def server_url(ctx: typer.Context) -> None:
    """Print the embedded database's URL, for --url, psql or EventStore(...) (starts the server if needed)."""
    target = state(ctx).target()
    if target.embedded is None:
        raise CliError(
            "`server url` prints the embedded server's URL, but --url (or EVENTSTORE_URL) names another database; "
            "run it without --url and with EVENTSTORE_URL unset"
        )
    typer.echo(target.embedded.libpq_url(EMBEDDED_DATABASE))


@server_app.command("stop")
@reports_errors
def server_stop(ctx: typer.Context) -> None:
    """Stop the embedded server (data is kept; the next command starts it again)."""
    server = embedded_server(state(ctx).home)
    if not server.is_running():
        typer.echo("not running")
        return
    server.stop()
    typer.echo(f"stopped the embedded PostgreSQL (data kept in {server.data_dir})")
