"""How the ``eventstore`` command reports errors: one line, and an exit code.

Every command body runs under :func:`reports_errors`. A user mistake or a
known failure prints ``Error: ...`` (one line naming the problem and the fix)
and exits 1, or the code a :class:`CliError` carries; anything else is a bug
and also shows its traceback. ``-v`` adds the traceback to every error. Usage
errors (a missing argument, an unknown option) are typer's: exit code 2.
"""

from __future__ import annotations

import functools
import traceback
from collections.abc import Callable
from typing import Any, TypeVar

import sqlalchemy as sa
import typer

from eventstore.errors import DatabaseUnavailable, EventStoreError, first_line

__all__ = ["EXIT_PROJECTION_FAILED", "CliError", "describe_error", "report_error", "reports_errors"]

EXIT_PROJECTION_FAILED = 3
"""Exit code when a command ran but a projection stopped on a poison event."""

_Command = TypeVar("_Command", bound=Callable[..., Any])


class CliError(Exception):
    """A user mistake (or a job not done) the CLI reports in one line, exit code 1 unless given."""

    def __init__(self, message: str, *, exit_code: int = 1) -> None:
        super().__init__(message)
        self.exit_code = exit_code


def describe_error(error: BaseException) -> str | None:
    """The one-line message for an error the CLI knows, or None for a bug (shown with its traceback)."""
    if isinstance(error, DatabaseUnavailable):
        return first_line(error) + " (is the server running, and is --url / EVENTSTORE_URL right?)"
    if isinstance(error, CliError | EventStoreError):
        return first_line(error)
    if isinstance(error, sa.exc.OperationalError | sa.exc.InterfaceError):
        return f"database error: {first_line(error.orig)}"
    return None


def report_error(error: BaseException, *, verbose: bool) -> int:
    """Print ``error`` to stderr (one line; the traceback too when ``verbose``) and return the exit code."""
    message = describe_error(error)
    if verbose or message is None:
        typer.echo("".join(traceback.format_exception(error)).rstrip(), err=True)
    if message is None:
        message = f"unexpected error: {first_line(f'{type(error).__name__}: {error}')} (rerun with -v for details)"
    typer.echo(f"Error: {message}", err=True)
    return error.exit_code if isinstance(error, CliError) else 1


def reports_errors(command: _Command) -> _Command:
    """Run a command body, mapping its errors to one line and an exit code (see the module docstring)."""

    @functools.wraps(command)
    def run(*args: Any, **kwargs: Any) -> Any:
        try:
            return command(*args, **kwargs)
        except (typer.Exit, typer.Abort):
            raise
        except KeyboardInterrupt:
            typer.echo("interrupted", err=True)
            raise typer.Exit(130) from None
        except Exception as error:
            context = kwargs.get("ctx")
            verbose = bool(getattr(getattr(context, "obj", None), "verbose", False))
            raise typer.Exit(report_error(error, verbose=verbose)) from None

    return run  # type: ignore[return-value]
