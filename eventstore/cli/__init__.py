"""The ``eventstore`` command: a thin typer layer over the library.

Every option can also come from an ``EVENTSTORE_*`` environment variable.
Results go to stdout, status to stderr. A user mistake prints one line
(``Error: ...``) and exits 1 (2 for usage errors, 3 when a projection stopped
on a poison event); ``-v`` adds the traceback (:mod:`~eventstore.cli.errors`).

This module holds the typer app and its global options; each command group
has its module: :mod:`~eventstore.cli.store` (migrate, append, read, log,
tail), :mod:`~eventstore.cli.projections`, :mod:`~eventstore.cli.streams`,
:mod:`~eventstore.cli.server`, :mod:`~eventstore.cli.serve`, :mod:`~eventstore.cli.demo`. Business logic
lives in the library (store, runner, admin) and in :mod:`eventstore.demo`.
"""

from __future__ import annotations

import logging
from typing import Annotated

import typer

from eventstore.cli import store as store_commands
from eventstore.cli.context import State
from eventstore.cli.demo import demo
from eventstore.cli.doctor import doctor
from eventstore.cli.projections import projections_app
from eventstore.cli.serve import serve
from eventstore.cli.server import server_app
from eventstore.cli.streams import streams_app

__all__ = ["app", "main"]


app = typer.Typer(
    name="eventstore",
    help="A PostgreSQL event store and projection runner.",
    no_args_is_help=True,
    add_completion=False,
    rich_markup_mode=None,
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)
app.add_typer(projections_app, name="projections")
app.add_typer(streams_app, name="streams")
app.add_typer(server_app, name="server")
store_commands.register(app)
app.command()(demo)
app.command()(doctor)
app.command()(serve)


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
        str | None,
        typer.Option(
            "--projections",
            metavar="MODULE",
            envvar="EVENTSTORE_PROJECTIONS",
            show_envvar=True,
            help="Module holding the projections, importable from the current directory (e.g. bank.projections). "
            "Default: the demo's order projections.",
        ),
    ] = None,
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
    state = State(url=url or None, home=home or None, projections_module=projections or None, verbose=verbose)
    ctx.obj = state
    ctx.call_on_close(state.close)


def main() -> None:
    """Entry point of the ``eventstore`` console script."""
    app()
