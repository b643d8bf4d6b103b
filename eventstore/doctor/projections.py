"""Checks of projections: failed or stalled ones, and ones marked as owned by a runner that died."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from eventstore.admin import projection_status
from eventstore.doctor.context import Context
from eventstore.doctor.findings import Finding, Severity
from eventstore.errors import first_line
from eventstore.runner.ownership import lock_owners
from eventstore.store.stalls import format_duration

__all__ = ["check_ownership", "check_projections"]

_CHECKPOINTS_SQL = """
    SELECT projection_name, state, owner, global_position, failed_position, last_error, updated_at,
           CAST(extract(epoch FROM now() - updated_at) AS float8) AS unchanged_seconds
    FROM projection_checkpoints ORDER BY projection_name
"""


def _checkpoint_rows(context: Context) -> tuple[list[Any], Mapping[str, str]]:
    with context.engine.connect() as connection:
        rows = list(connection.exec_driver_sql(_CHECKPOINTS_SQL).all())
        locks = lock_owners(connection, [row.projection_name for row in rows])
    return rows, locks


def check_projections(context: Context) -> list[Finding]:
    """A problem per failed projection, a warning per stalled one (readable events, checkpoint unmoved)."""
    rows, locks = _checkpoint_rows(context)
    stored = {row.projection_name: row for row in rows}
    given = {p if isinstance(p, str) else p.name: p for p in context.projections}
    items = [given.get(name, name) for name in sorted(set(given) | set(stored)) if name in stored]
    findings = []
    for status in projection_status(context.store, items) if items else []:
        row = stored[status.name]
        filters_known = not isinstance(given.get(status.name, status.name), str)
        details = {
            "projection": status.name,
            "state": status.state,
            "position": status.position,
            "lag_events": status.lag_events,
            "held_back": status.held_back,
            "unchanged_seconds": row.unchanged_seconds,
        }
        if status.state == "failed":
            findings.append(
                Finding(
                    "projections",
                    Severity.PROBLEM,
                    f"projection {status.name!r} failed at position {status.failed_position} "
                    f"(checkpoint at {status.position}): {first_line(status.last_error)}",
                    f"see it with `eventstore projections failures {status.name} --open --traceback`, fix the "
                    f"projection, then `eventstore projections retry {status.name}` (or skip)",
                    {**details, "failed_position": status.failed_position, "last_error": status.last_error},
                )
            )
            continue
        readable = status.lag_events - status.held_back
        if readable > 0 and row.unchanged_seconds >= context.stall_after:
            holder = (
                f"the runner holding its lease ({locks[status.name]}) made no progress"
                if status.name in locks
                else "no runner holds it"
            )
            unknown = "" if filters_known else " (counted without its filters; pass --projections to apply them)"
            findings.append(
                Finding(
                    "projections",
                    Severity.WARNING,
                    f"projection {status.name!r} is stalled: {readable} readable event(s) after position "
                    f"{status.position}{unknown} and its checkpoint unchanged for "
                    f"{format_duration(row.unchanged_seconds)}; {holder}",
                    "start a runner (`eventstore projections run`)"
                    if status.name not in locks
                    else "check that runner's logs for a slow handler or a hung connection; restarting it hands "
                    "the projection to a standby",
                    details,
                )
            )
    if not findings:
        findings.append(
            Finding("projections", Severity.OK, f"{len(items)} projection(s) with a checkpoint: none failed or stalled")
        )
    return findings


def check_ownership(context: Context) -> list[Finding]:
    """A warning per projection marked running, idle or rebuilding by an owner whose lease expired unreleased."""
    rows, locks = _checkpoint_rows(context)
    findings = []
    for row in rows:
        if row.state in ("running", "idle", "rebuilding") and row.owner and row.projection_name not in locks:
            findings.append(
                Finding(
                    "ownership",
                    Severity.WARNING,
                    f"projection {row.projection_name!r} is marked {row.state} by {row.owner} since "
                    f"{format_duration(row.unchanged_seconds)} ago, but its lease expired: that runner died "
                    "without releasing it",
                    "start a runner (`eventstore projections run`): it takes over from the stored checkpoint "
                    "and rewrites the state",
                    {
                        "projection": row.projection_name,
                        "state": row.state,
                        "owner": row.owner,
                        "unchanged_seconds": row.unchanged_seconds,
                    },
                )
            )
    return findings or [Finding("ownership", Severity.OK, "every projection marked as owned has a live lease")]
