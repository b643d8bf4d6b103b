"""``eventstore doctor``: check the database the way an expert would (see :mod:`eventstore.doctor`).

Exit code 0: healthy (only ok and info findings); 1: warnings; 2: problems (a
problem beats a warning). One line per finding on stdout, then a summary;
``--json`` prints the findings as one JSON object instead.
"""

from __future__ import annotations

import dataclasses
from typing import Annotated

import typer

from eventstore.cli.context import state
from eventstore.cli.errors import CliError, reports_errors
from eventstore.cli.options import JsonOption
from eventstore.cli.output import emit_json
from eventstore.database import mask_url
from eventstore.errors import ConfigurationError, first_line

__all__ = ["EXIT_CODES", "doctor"]

EXIT_CODES = {"ok": 0, "info": 0, "warning": 1, "problem": 2}
"""The exit code for the worst finding's severity."""

_WORDS = {"ok": "OK", "info": "INFO", "warning": "WARNING", "problem": "PROBLEM"}


@reports_errors
def doctor(
    ctx: typer.Context,
    as_json: JsonOption = False,
    role_prefix: Annotated[
        str,
        typer.Option(
            "--role-prefix",
            metavar="PREFIX",
            envvar="EVENTSTORE_ROLE_PREFIX",
            help="Prefix of the least-privilege roles to check (<prefix>_writer, ...).",
        ),
    ] = "eventstore",
    transaction_age: Annotated[
        float,
        typer.Option(
            "--transaction-age",
            metavar="SECONDS",
            min=0,
            envvar="EVENTSTORE_DOCTOR_TRANSACTION_AGE",
            help="Warn about transactions idle, or holding back events, for this long.",
        ),
    ] = 10.0,
    stall_after: Annotated[
        float,
        typer.Option(
            "--stall-after",
            metavar="SECONDS",
            min=0,
            envvar="EVENTSTORE_DOCTOR_STALL_AFTER",
            help="Warn about a projection whose checkpoint has not moved for this long while events wait.",
        ),
    ] = 300.0,
) -> None:
    """Check the database: schema, triggers, pooler, stalls, NOTIFY queue, projections, roles, settings."""
    from eventstore.doctor import run_checks, worst
    from eventstore.roles import role_names

    try:
        role_names(role_prefix)
    except ConfigurationError as error:  # a usage error, before any connection
        raise CliError(f"--role-prefix: {first_line(error)}", exit_code=2) from error
    context = state(ctx)
    # Never migrate here: a missing schema is one of the findings.
    engine = context.target(auto_migrate=False).engine
    # Projections from --projections give their filters; without it, checkpoint rows are checked by name.
    projections = context.projections() if context.projections_module else None
    findings = run_checks(
        context.store(),
        projections,
        role_prefix=role_prefix,
        transaction_age=transaction_age,
        stall_after=stall_after,
    )
    code = EXIT_CODES[worst(findings)]
    counts = {severity: sum(f.severity == severity for f in findings) for severity in _WORDS}
    if as_json:
        emit_json(
            {
                "database": mask_url(engine),
                "exit_code": code,
                "counts": counts,
                "findings": [dataclasses.asdict(finding) for finding in findings],
            }
        )
    else:
        for finding in findings:
            advice = f" -> {finding.advice}" if finding.advice and finding.severity != "ok" else ""
            typer.echo(f"{_WORDS[finding.severity]:<8} {finding.check}: {finding.message}{advice}")
        verdict = {0: "healthy", 1: "warnings", 2: "problems"}[code]
        typer.echo(
            f"doctor: {verdict} ({counts['problem']} problem(s), {counts['warning']} warning(s), "
            f"{counts['info']} info, {counts['ok']} ok)"
        )
    raise typer.Exit(code)
