"""``eventstore demo``: the main job, on the embedded PostgreSQL by default."""

from __future__ import annotations

import importlib
from typing import Annotated

import typer

from eventstore.cli.context import state
from eventstore.cli.errors import CliError, reports_errors
from eventstore.database import translate_driver_errors

__all__ = ["demo"]


@reports_errors
def demo(
    ctx: typer.Context,
    duration: Annotated[
        float, typer.Option("--duration", min=0.5, envvar="EVENTSTORE_DEMO_DURATION", help="Seconds of writing.")
    ] = 12.0,
    events: Annotated[
        int | None,
        typer.Option("--events", min=1, envvar="EVENTSTORE_DEMO_EVENTS", help="Stop after about this many events."),
    ] = None,
    writers: Annotated[
        int,
        typer.Option("--writers", min=1, max=64, envvar="EVENTSTORE_DEMO_WRITERS", help="Concurrent writer threads."),
    ] = 4,
    quick: Annotated[
        bool,
        typer.Option("--quick", envvar="EVENTSTORE_DEMO_QUICK", help="A short run (2 s, 2 writers) for smoke tests."),
    ] = False,
) -> None:
    """The main job: concurrent order writers, live projections, then a check of every read model."""
    from eventstore.demo import DemoSettings, run_demo
    from eventstore.migrations import migrate as apply_schema

    context = state(ctx)
    target = context.target(auto_migrate=False)
    with translate_driver_errors(target.engine):
        apply_schema(target.engine)
    settings = DemoSettings(duration=2.0 if quick else duration, events=events, writers=2 if quick else writers)
    projections = context.projections()  # reports an import failure in one line
    verify = getattr(importlib.import_module(context.module), "verify", None)
    report = run_demo(context.store(), projections, settings, verify=verify)
    if not report.ok:
        raise CliError(f"the demo found {len(report.problems)} problem(s), listed above (PROBLEM lines)")
