"""Check a database the way an expert would: schema, wake-ups, stalls, projections, roles, settings.

:func:`run_checks` runs every check and returns a list of :class:`Finding`
(check, severity, one-line message, what to do, JSON-ready details); nothing
is changed in the database. Severities rank ``ok < info < warning < problem``:
a *problem* breaks eventstore's guarantees or stops work (schema not at the
head revision, a missing or disabled trigger, a failed projection, a role
missing a grant, a NOTIFY queue at least half full); a *warning* delays work
or will (a pooler in transaction mode, a long transaction holding back the
fence, a stalled projection, a runner that died marked as owner, settings).

Checks read ``pg_stat_activity``, which shows other roles' sessions with
columns left empty unless the connecting role has ``pg_read_all_stats``
(https://www.postgresql.org/docs/current/monitoring-stats.html). A check that
cannot run (say, a permission is missing) becomes a warning naming the error;
the other checks still run. A database that cannot be reached gives one
``connection`` problem and nothing else.

The package holds one module per concern: :mod:`~eventstore.doctor.findings`
(what a check returns), :mod:`~eventstore.doctor.schema`,
:mod:`~eventstore.doctor.sessions` (pooler, idle transactions, fence, NOTIFY
queue), :mod:`~eventstore.doctor.projections`, :mod:`~eventstore.doctor.roles`
and :mod:`~eventstore.doctor.server`; this module runs them in order.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from eventstore.database import describe_target, translate_driver_errors
from eventstore.doctor.context import CHECK_ERRORS, Context
from eventstore.doctor.findings import Finding, Severity, worst
from eventstore.doctor.projections import check_ownership, check_projections
from eventstore.doctor.roles import check_roles
from eventstore.doctor.schema import SCHEMA_REVISION, check_schema_objects, check_schema_revision
from eventstore.doctor.server import (
    RUNNER_BASE_CONNECTIONS,
    check_idle_timeout,
    check_max_connections,
    check_server_version,
    server_settings,
)
from eventstore.doctor.sessions import (
    PoolerProbe,
    check_fence,
    check_idle_in_transaction,
    check_notify_queue,
    check_pooler,
    detect_transaction_pooler,
)
from eventstore.errors import EventStoreError, first_line
from eventstore.projection import Projection
from eventstore.roles import role_names
from eventstore.store import EventStore

__all__ = [
    "RUNNER_BASE_CONNECTIONS",
    "SCHEMA_REVISION",
    "Finding",
    "PoolerProbe",
    "Severity",
    "detect_transaction_pooler",
    "run_checks",
    "worst",
]


def run_checks(
    store: EventStore,
    projections: Sequence[Projection | str] | None = None,
    *,
    role_prefix: str = "eventstore",
    transaction_age: float = 10.0,
    stall_after: float = 300.0,
) -> list[Finding]:
    """Check the store's database; returns the findings, in check order, at least one per check.

    ``projections``: instances (whose filters count their lag exactly) or names;
    every projection with a checkpoint row is checked as well, by name (lag
    counted without filters). ``role_prefix``: the group roles of
    :func:`eventstore.roles.create_roles` to check. ``transaction_age``:
    seconds after which a transaction idle in transaction, or one holding back
    the gap rule's fence, is a warning. ``stall_after``: seconds a checkpoint
    may stay unmoved while readable events wait after it.

    Raises:
        ConfigurationError: a bad ``role_prefix``.
    """
    role_names(role_prefix)  # a bad prefix is the caller's mistake, not a finding
    context = Context(store, list(projections or ()), role_prefix, transaction_age, stall_after)
    try:
        with translate_driver_errors(context.engine), context.engine.connect() as connection:
            server = server_settings(connection)
    except EventStoreError as error:
        return [
            Finding(
                "connection",
                Severity.PROBLEM,
                first_line(error),
                "check the URL, that the server runs, and that it accepts this user",
            )
        ]
    findings = [
        Finding("connection", Severity.OK, f"connected to {describe_target(context.engine)}"),
        *check_server_version(server),
    ]
    migrated = False
    try:
        schema_findings, migrated = check_schema_revision(context)
        findings.extend(schema_findings)
    except CHECK_ERRORS as error:
        findings.append(_not_run("schema_revision", error))
    checks: list[tuple[str, Callable[[Context], list[Finding]], bool]] = [
        ("schema_objects", check_schema_objects, True),
        ("pooler", check_pooler, False),
        ("idle_in_transaction", check_idle_in_transaction, False),
        ("fence", check_fence, True),
        ("notify_queue", check_notify_queue, False),
        ("projections", check_projections, True),
        ("ownership", check_ownership, True),
        ("roles", check_roles, True),
    ]
    for name, check, needs_schema in checks:
        if needs_schema and not migrated:
            findings.append(Finding(name, Severity.INFO, "not checked: the database has no eventstore schema"))
            continue
        try:
            findings.extend(check(context))
        except CHECK_ERRORS as error:
            findings.append(_not_run(name, error))
    findings.extend(check_max_connections(context, server))
    findings.extend(check_idle_timeout(server))
    return findings


def _not_run(check: str, error: BaseException) -> Finding:
    return Finding(
        check,
        Severity.WARNING,
        f"could not run this check: {first_line(error)}",
        "rerun as the schema owner or a role with pg_read_all_stats, or fix the error",
    )
