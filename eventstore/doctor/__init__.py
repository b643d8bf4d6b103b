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
"""

from __future__ import annotations

import enum
import re
import secrets
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import psycopg
import sqlalchemy as sa
from psycopg import sql as psql
from sqlalchemy.engine import Connection, Engine

from eventstore.admin import projection_status
from eventstore.database import describe_target, libpq_url, translate_driver_errors
from eventstore.errors import EventStoreError, first_line
from eventstore.migrations import current_revision, head_revision
from eventstore.projection import Projection
from eventstore.roles import render_roles_sql, role_names
from eventstore.runner.ownership import lock_owners
from eventstore.store import EventStore, sql
from eventstore.store.stalls import fence_blockers, held_back

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


class Severity(enum.StrEnum):
    """How bad a finding is, from ``ok`` to ``problem`` (members compare by that rank with :func:`worst`)."""

    OK = "ok"
    INFO = "info"
    WARNING = "warning"
    PROBLEM = "problem"


_RANK = {severity: rank for rank, severity in enumerate(Severity)}


@dataclass(frozen=True, slots=True)
class Finding:
    """One result of one check: ``message`` says what was found, ``advice`` what to do (empty when nothing)."""

    check: str
    severity: Severity
    message: str
    advice: str = ""
    details: dict[str, Any] = field(default_factory=dict)


def worst(findings: Iterable[Finding]) -> Severity:
    """The highest severity among ``findings`` (``ok`` for none)."""
    return max((finding.severity for finding in findings), key=_RANK.__getitem__, default=Severity.OK)


# -- what the migrations made ---------------------------------------------------

SCHEMA_REVISION = "0003_wake_up_hint_only"
"""The revision the expected objects below describe; a test keeps it equal to the head revision."""

# (name, made by revision); a trigger missing or disabled is a problem.
_TRIGGERS = (
    ("events_forbid_update_delete_v1", "0001_events"),
    ("events_forbid_truncate_v1", "0001_events"),
    ("events_notify_v3", "0003_wake_up_hint_only"),
)
# (table, index, severity when missing): the unique ones carry idempotency and
# the stream version check; the order indexes carry every read.
_INDEXES = (
    ("events", "events_pkey", Severity.PROBLEM),
    ("events", "uq_events_event_id", Severity.PROBLEM),
    ("events", "uq_events_stream_id_stream_version", Severity.PROBLEM),
    ("events", "ix_events_order", Severity.PROBLEM),
    ("events", "ix_events_category_order", Severity.WARNING),
    ("events", "ix_events_event_type_order", Severity.WARNING),
    ("projection_checkpoints", "projection_checkpoints_pkey", Severity.PROBLEM),
    ("projection_failures", "projection_failures_pkey", Severity.PROBLEM),
    ("projection_failures", "ix_projection_failures_name", Severity.WARNING),
)
_FUNCTIONS = ("eventstore_forbid_change_v1()", "eventstore_notify_v3()", "eventstore_wake_up_v1()")
_SEQUENCE = "eventstore_wake_ups_skipped_v1"

RUNNER_BASE_CONNECTIONS = 2
"""Connections a runner holds besides one per projection: its LISTEN connection and a pooled one for reads."""

_TRIGGER_STATES = {"O": "enabled", "A": "enabled (always)", "R": "enabled for replicas only", "D": "disabled"}
_TRIGGERS_SQL = "SELECT tgname, tgenabled FROM pg_trigger WHERE tgrelid = to_regclass('events') AND NOT tgisinternal"
_INDEXES_SQL = """
    SELECT t.relname AS table_name, i.relname AS index_name, x.indisvalid AS valid
    FROM pg_index x JOIN pg_class i ON i.oid = x.indexrelid JOIN pg_class t ON t.oid = x.indrelid
    WHERE x.indrelid IN (to_regclass('events'), to_regclass('projection_checkpoints'),
                         to_regclass('projection_failures'))
"""
_FUNCTIONS_SQL = "SELECT name FROM unnest(CAST(%(names)s AS text[])) AS name WHERE to_regprocedure(name) IS NULL"
_SEQUENCE_SQL = "SELECT to_regclass(%(name)s) IS NOT NULL"
_IDLE_SQL = """
    SELECT pid, datname, application_name, state, backend_xid IS NOT NULL AS holds_xid,
           CAST(extract(epoch FROM now() - xact_start) AS float8) AS transaction_seconds
    FROM pg_stat_activity
    WHERE state IN ('idle in transaction', 'idle in transaction (aborted)') AND pid <> pg_backend_pid()
      AND xact_start <= now() - make_interval(secs => %(seconds)s)
    ORDER BY xact_start
"""
_PREPARED_SQL = (
    "SELECT gid, database, owner, CAST(extract(epoch FROM now() - prepared) AS float8) AS seconds "
    "FROM pg_prepared_xacts ORDER BY prepared"
)
_CHECKPOINTS_SQL = """
    SELECT projection_name, state, owner, global_position, failed_position, last_error, updated_at,
           CAST(extract(epoch FROM now() - updated_at) AS float8) AS unchanged_seconds
    FROM projection_checkpoints ORDER BY projection_name
"""
_SERVER_SQL = """
    SELECT current_setting('server_version_num')::int AS version_num, current_setting('server_version') AS version,
           current_setting('max_notify_queue_pages', true) AS notify_pages,
           current_setting('max_connections')::int AS max_connections,
           current_setting('superuser_reserved_connections')::int
             + coalesce(current_setting('reserved_connections', true)::int, 0) AS reserved,
           (SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'client backend') AS in_use,
           current_setting('idle_in_transaction_session_timeout') AS idle_timeout,
           current_database() AS database
"""
_ROLES_SQL = "SELECT rolname FROM pg_roles WHERE rolname = ANY(%(names)s)"
_EVENTS_SCHEMA_SQL = (
    "SELECT n.nspname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace WHERE c.oid = to_regclass('events')"
)
_PRIVILEGE_SQL = {
    "TABLE": "SELECT has_table_privilege(%(role)s, %(object)s, %(privilege)s)",
    "SEQUENCE": "SELECT has_sequence_privilege(%(role)s, %(object)s, %(privilege)s)",
    "SCHEMA": "SELECT has_schema_privilege(%(role)s, %(object)s, %(privilege)s)",
}
_GRANT = re.compile(
    r"GRANT (?P<privileges>[A-Z, ]+) ON (?P<kind>TABLE|SEQUENCE|SCHEMA) (?P<object>\S+) TO (?P<roles>[^;]+);"
)


def _scalar(connection: Connection, statement: str, parameters: dict[str, Any] | None = None) -> Any:
    return connection.exec_driver_sql(statement, parameters or {}).scalar_one()


# -- the pooler probe -----------------------------------------------------------


@dataclass(frozen=True, slots=True)
class PoolerProbe:
    """What :func:`detect_transaction_pooler` saw: ``detected`` and the evidence, in words and numbers."""

    detected: bool
    evidence: str
    backend_pids: tuple[int, int, int]
    """The first client's backend before and after, and the second client's backend in between."""
    setting_kept: bool


def detect_transaction_pooler(engine: Engine) -> PoolerProbe:
    """Whether a pooler in transaction (or statement) mode sits between this client and the server.

    The technique: a pooler in transaction mode gives a client a server session
    for one transaction only, so session state does not follow the client
    (https://www.pgbouncer.org/features.html). Over two client connections in
    autocommit mode (one statement = one transaction): client 1 notes its
    backend pid and sets a session-level setting; client 2 notes its backend
    pid; client 1 reads its pid and the setting again. Directly connected (or
    through a session-mode pooler) client 1 keeps its pid and its setting,
    and the two clients never share a backend. Through a transaction-mode
    pooler the setting is lost or the pid changes, or client 2 is handed client
    1's idle server session (PgBouncer reuses the most recently used one by
    default). ``SHOW pool_mode`` would say it outright, but only on PgBouncer's
    admin console, which an application URL does not reach. A heuristic: a
    pooler with one idle server and round-robin off can still look direct.

    Opens two short connections (no server-side prepared statements, which such
    a pooler breaks). Raises :class:`~eventstore.errors.DatabaseUnavailable` and
    friends when the server cannot be reached.
    """
    token = secrets.token_hex(8)
    url = libpq_url(engine)
    with (
        translate_driver_errors(engine),
        psycopg.connect(url, autocommit=True, prepare_threshold=None) as first,
        psycopg.connect(url, autocommit=True, prepare_threshold=None) as second,
    ):
        row = first.execute(
            "SELECT pg_backend_pid(), set_config('eventstore.doctor_probe', %s, false)", (token,)
        ).fetchone()
        other = second.execute("SELECT pg_backend_pid()").fetchone()
        after = first.execute("SELECT pg_backend_pid(), current_setting('eventstore.doctor_probe', true)").fetchone()
    assert row is not None and other is not None and after is not None
    pids = (int(row[0]), int(after[0]), int(other[0]))
    kept = after[1] == token
    reasons = []
    if pids[0] != pids[1]:
        reasons.append(f"one client connection ran on backend {pids[0]}, then on backend {pids[1]}")
    if not kept:
        reasons.append("a session-level SET did not survive to the next transaction")
    if pids[2] in (pids[0], pids[1]):
        reasons.append(f"two client connections shared backend {pids[2]}")
    if reasons:
        return PoolerProbe(True, "; ".join(reasons), pids, kept)
    return PoolerProbe(False, "session state survives between transactions on one connection", pids, kept)


# -- the checks -----------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Context:
    store: EventStore
    projections: Sequence[Projection | str]
    role_prefix: str
    transaction_age: float
    stall_after: float

    @property
    def engine(self) -> Engine:
        return self.store.engine


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
    context = _Context(store, list(projections or ()), role_prefix, transaction_age, stall_after)
    try:
        with translate_driver_errors(context.engine), context.engine.connect() as connection:
            server = connection.exec_driver_sql(_SERVER_SQL).one()
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
        *_server_version(server),
    ]
    migrated = False
    try:
        schema_findings, migrated = _schema_revision(context)
        findings.extend(schema_findings)
    except _CHECK_ERRORS as error:
        findings.append(_not_run("schema_revision", error))
    checks: list[tuple[str, Callable[[_Context], list[Finding]], bool]] = [
        ("schema_objects", _schema_objects, True),
        ("pooler", _pooler, False),
        ("idle_in_transaction", _idle_in_transaction, False),
        ("fence", _fence, True),
        ("notify_queue", _notify_queue, False),
        ("projections", _projections, True),
        ("ownership", _ownership, True),
        ("roles", _roles, True),
    ]
    for name, check, needs_schema in checks:
        if needs_schema and not migrated:
            findings.append(Finding(name, Severity.INFO, "not checked: the database has no eventstore schema"))
            continue
        try:
            findings.extend(check(context))
        except _CHECK_ERRORS as error:
            findings.append(_not_run(name, error))
    findings.extend(_max_connections(context, server))
    findings.extend(_idle_timeout(server))
    return findings


# A check that fails (a permission, an object missing on an old revision) is
# reported as a finding, so the other checks still run.
_CHECK_ERRORS = (EventStoreError, sa.exc.SQLAlchemyError, psycopg.Error)


def _not_run(check: str, error: BaseException) -> Finding:
    return Finding(
        check,
        Severity.WARNING,
        f"could not run this check: {first_line(error)}",
        "rerun as the schema owner or a role with pg_read_all_stats, or fix the error",
    )


def _server_version(server: Any) -> list[Finding]:
    details = {"server_version": server.version, "server_version_num": server.version_num}
    major = server.version_num // 10000
    if major < 15:
        return [
            Finding(
                "server_version",
                Severity.PROBLEM,
                f"PostgreSQL {server.version}: eventstore needs 15 or newer",
                "upgrade the server to PostgreSQL 15 or newer (17+ lets you size the NOTIFY queue)",
                details,
            )
        ]
    if server.notify_pages is None:
        return [
            Finding(
                "server_version",
                Severity.INFO,
                f"PostgreSQL {server.version}: supported; its NOTIFY queue has a fixed size "
                "(max_notify_queue_pages arrived in 17)",
                "nothing to do; on 17+ max_notify_queue_pages sizes the queue",
                details,
            )
        ]
    details["max_notify_queue_pages"] = int(server.notify_pages)
    return [
        Finding(
            "server_version",
            Severity.OK,
            f"PostgreSQL {server.version} (max_notify_queue_pages {server.notify_pages})",
            details=details,
        )
    ]


def _schema_revision(context: _Context) -> tuple[list[Finding], bool]:
    """The schema finding, and whether eventstore's tables exist at all."""
    current = current_revision(context.engine)
    head = head_revision()
    details = {"current_revision": current, "head_revision": head}
    if current == head:
        return [Finding("schema_revision", Severity.OK, f"schema at the head revision {head}", details=details)], True
    if current is None:
        message = f"the database has no eventstore schema (this eventstore needs revision {head})"
    else:
        message = f"the schema is at revision {current}, this eventstore needs {head}"
    advice = "run `eventstore migrate` (or eventstore.migrate(url)); `eventstore migrate --sql` shows the SQL first"
    return [Finding("schema_revision", Severity.PROBLEM, message, advice, details)], current is not None


def _schema_objects(context: _Context) -> list[Finding]:
    findings = []
    with context.engine.connect() as connection:
        triggers = {row.tgname: row.tgenabled for row in connection.exec_driver_sql(_TRIGGERS_SQL)}
        indexes = {(row.table_name, row.index_name): row.valid for row in connection.exec_driver_sql(_INDEXES_SQL)}
        missing_functions = connection.exec_driver_sql(_FUNCTIONS_SQL, {"names": list(_FUNCTIONS)}).scalars().all()
        has_sequence = _scalar(connection, _SEQUENCE_SQL, {"name": _SEQUENCE})
    restore = "recreate it as revision {} does (see `eventstore migrate --sql`), or restore the schema"
    for name, revision in _TRIGGERS:
        state = triggers.get(name)
        if state is None:
            findings.append(
                Finding(
                    "schema_objects",
                    Severity.PROBLEM,
                    f"trigger {name} on events is missing",
                    restore.format(revision),
                    {"trigger": name},
                )
            )
        elif state in ("D", "R"):
            findings.append(
                Finding(
                    "schema_objects",
                    Severity.PROBLEM,
                    f"trigger {name} on events is {_TRIGGER_STATES[state]}",
                    f"ALTER TABLE events ENABLE TRIGGER {name}",
                    {"trigger": name, "tgenabled": state},
                )
            )
    for name in sorted(set(triggers) - {name for name, _ in _TRIGGERS}):
        stale = name.startswith("events_notify_")
        findings.append(
            Finding(
                "schema_objects",
                Severity.WARNING if stale else Severity.INFO,
                f"trigger {name} on events is not one eventstore made"
                + (" (an old wake-up trigger: wake-ups are sent twice)" if stale else ""),
                f"DROP TRIGGER {name} ON events" if stale else "nothing to do if you made it on purpose",
                {"trigger": name},
            )
        )
    for table, name, severity in _INDEXES:
        valid = indexes.get((table, name))
        if valid is None or not valid:
            state = "missing" if valid is None else "invalid (a failed CREATE INDEX CONCURRENTLY?)"
            findings.append(
                Finding(
                    "schema_objects",
                    severity,
                    f"index {name} on {table} is {state}",
                    f"REINDEX INDEX {name}" if valid is not None else restore.format("0001_events"),
                    {"index": name, "table": table},
                )
            )
    for name in missing_functions:
        findings.append(
            Finding(
                "schema_objects",
                Severity.PROBLEM,
                f"function {name} is missing",
                restore.format(SCHEMA_REVISION),
                {"function": name},
            )
        )
    if not has_sequence:
        findings.append(
            Finding(
                "schema_objects",
                Severity.PROBLEM,
                f"sequence {_SEQUENCE} is missing",
                restore.format("0003_wake_up_hint_only"),
                {"sequence": _SEQUENCE},
            )
        )
    if not findings:
        findings.append(
            Finding(
                "schema_objects",
                Severity.OK,
                f"{len(_TRIGGERS)} triggers, {len(_INDEXES)} indexes and the wake-up function "
                "as the migrations made them",
            )
        )
    return findings


def _pooler(context: _Context) -> list[Finding]:
    probe = detect_transaction_pooler(context.engine)
    details = {"backend_pids": list(probe.backend_pids), "setting_kept": probe.setting_kept}
    if not probe.detected:
        return [Finding("pooler", Severity.OK, f"no transaction-mode pooler seen: {probe.evidence}", details=details)]
    return [
        Finding(
            "pooler",
            Severity.WARNING,
            f"a connection pooler in transaction mode seems to sit in between: {probe.evidence}",
            "give runners (and `eventstore tail`) a direct or session-mode URL: their LISTEN and advisory "
            "locks need a session of their own; on PgBouncer before 1.21 (no max_prepared_statements) psycopg's "
            "automatic prepared statements can also fail across transactions",
            details,
        )
    ]


def _idle_in_transaction(context: _Context) -> list[Finding]:
    with context.engine.connect() as connection:
        rows = connection.exec_driver_sql(_IDLE_SQL, {"seconds": context.transaction_age}).all()
    if not rows:
        return [
            Finding(
                "idle_in_transaction",
                Severity.OK,
                f"no session idle in a transaction for {context.transaction_age:g} s or more",
            )
        ]
    findings = []
    for row in rows:
        holds = "; it holds a transaction id, so it holds back events in every database" if row.holds_xid else ""
        findings.append(
            Finding(
                "idle_in_transaction",
                Severity.WARNING,
                f"pid {row.pid} (app `{row.application_name or '-'}`, database `{row.datname or '?'}`) is "
                f"{row.state or 'idle in transaction'} for {_duration(row.transaction_seconds)}{holds}",
                f"end it in its application (commit or roll back), or SELECT pg_terminate_backend({row.pid}); "
                "idle_in_transaction_session_timeout ends such sessions by itself",
                {
                    "pid": row.pid,
                    "database": row.datname,
                    "application_name": row.application_name,
                    "state": row.state,
                    "transaction_seconds": row.transaction_seconds,
                    "holds_xid": row.holds_xid,
                },
            )
        )
    return findings


def _fence(context: _Context) -> list[Finding]:
    findings = []
    with context.engine.connect() as connection:
        prepared = connection.exec_driver_sql(_PREPARED_SQL).all()
    for row in prepared:
        findings.append(
            Finding(
                "fence",
                Severity.WARNING,
                f"prepared transaction {row.gid!r} (database `{row.database}`, owner `{row.owner}`) is open for "
                f"{_duration(row.seconds)}: it holds back events in every database until it is finished",
                f"finish it: COMMIT PREPARED '{row.gid}' or ROLLBACK PREPARED '{row.gid}' (in its database)",
                {"gid": row.gid, "database": row.database, "owner": row.owner, "seconds": row.seconds},
            )
        )
    waiting = held_back(context.engine)
    if not waiting:
        return findings or [Finding("fence", Severity.OK, "no events held back")]
    blockers = fence_blockers(context.engine)
    old = [
        b for b in blockers if b.transaction_seconds is not None and b.transaction_seconds >= context.transaction_age
    ]
    details: dict[str, Any] = {"held_back": waiting, "blocked_by": [_blocker(b) for b in blockers]}
    if old:
        oldest = old[0]
        findings.append(
            Finding(
                "fence",
                Severity.WARNING,
                f"{waiting} event(s) held back by {oldest.describe()}: readers and projections wait until it ends",
                f"end that transaction (commit or roll back in its application, or "
                f"SELECT pg_terminate_backend({oldest.pid})); keep write transactions short",
                details,
            )
        )
    elif not blockers and not prepared:
        findings.append(
            Finding(
                "fence",
                Severity.WARNING,
                f"{waiting} event(s) held back, but the blocking transaction is not visible to this role",
                "rerun as a role with pg_read_all_stats to see it",
                details,
            )
        )
    elif not findings:
        findings.append(
            Finding(
                "fence",
                Severity.OK,
                f"{waiting} event(s) held back for now by transactions younger than {context.transaction_age:g} s "
                "(normal while appends run)",
                details=details,
            )
        )
    return findings


def _blocker(blocker: Any) -> dict[str, Any]:
    return {
        "pid": blocker.pid,
        "database": blocker.database,
        "application_name": blocker.application_name,
        "state": blocker.state,
        "transaction_seconds": blocker.transaction_seconds,
    }


def _notify_queue(context: _Context) -> list[Finding]:
    with context.engine.connect() as connection:
        usage = float(_scalar(connection, sql.NOTIFY_QUEUE_USAGE))
        skipped = (
            int(_scalar(connection, sql.WAKE_UPS_SKIPPED))
            if _scalar(connection, _SEQUENCE_SQL, {"name": _SEQUENCE})
            else 0
        )
    details = {"notify_queue_usage": usage, "wake_ups_skipped": skipped}
    advice = (
        "find the session that LISTENs but stopped reading (a suspended `eventstore tail`, a listener stuck in a "
        "transaction: see idle_in_transaction) and end it"
    )
    findings = []
    if usage >= 0.5:
        findings.append(
            Finding(
                "notify_queue",
                Severity.PROBLEM,
                f"the cluster's NOTIFY queue is {usage:.0%} full: wake-ups are being skipped, runners only poll",
                advice,
                details,
            )
        )
    elif usage >= 0.25:
        findings.append(
            Finding(
                "notify_queue",
                Severity.WARNING,
                f"the cluster's NOTIFY queue is {usage:.0%} full (wake-ups stop at 50%)",
                advice,
                details,
            )
        )
    else:
        findings.append(Finding("notify_queue", Severity.OK, f"the NOTIFY queue is {usage:.0%} full", details=details))
    if skipped:
        findings.append(
            Finding(
                "notify_queue",
                Severity.INFO,
                f"{skipped} wake-up(s) were skipped since the schema was created (the queue was half full then; "
                "runners found those events on their poll timer)",
                "nothing to do unless the number grows; then see the queue's usage",
                details,
            )
        )
    return findings


def _checkpoint_rows(context: _Context) -> tuple[list[Any], dict[str, int]]:
    with context.engine.connect() as connection:
        rows = list(connection.exec_driver_sql(_CHECKPOINTS_SQL).all())
        locks = lock_owners(connection, [row.projection_name for row in rows])
    return rows, locks


def _projections(context: _Context) -> list[Finding]:
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
                f"the runner holding it (backend pid {locks[status.name]}) made no progress"
                if status.name in locks
                else "no runner holds it"
            )
            unknown = "" if filters_known else " (counted without its filters; pass --projections to apply them)"
            findings.append(
                Finding(
                    "projections",
                    Severity.WARNING,
                    f"projection {status.name!r} is stalled: {readable} readable event(s) after position "
                    f"{status.position}{unknown} and its checkpoint unchanged for {_duration(row.unchanged_seconds)}; "
                    f"{holder}",
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


def _ownership(context: _Context) -> list[Finding]:
    rows, locks = _checkpoint_rows(context)
    findings = []
    for row in rows:
        if row.state in ("running", "idle", "rebuilding") and row.owner and row.projection_name not in locks:
            findings.append(
                Finding(
                    "ownership",
                    Severity.WARNING,
                    f"projection {row.projection_name!r} is marked {row.state} by {row.owner} since "
                    f"{_duration(row.unchanged_seconds)} ago, but no session holds its lock: that runner died "
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
    return findings or [Finding("ownership", Severity.OK, "every projection marked as owned has a live lock holder")]


def _roles(context: _Context) -> list[Finding]:
    names = role_names(context.role_prefix)
    with context.engine.connect() as connection:
        existing = set(connection.exec_driver_sql(_ROLES_SQL, {"names": list(names.all())}).scalars())
        if not existing:
            return [
                Finding(
                    "roles",
                    Severity.INFO,
                    f"the roles {', '.join(names.all())} do not exist",
                    "to give applications least privilege: eventstore.roles.create_roles(url, "
                    f"prefix={context.role_prefix!r}) (see README, Security)",
                )
            ]
        missing_roles = [name for name in names.all() if name not in existing]
        schema = _scalar(connection, _EVENTS_SCHEMA_SQL)
        missing = []
        for match in _GRANT.finditer(render_roles_sql(context.role_prefix, schema=schema)):
            kind = match["kind"]
            target = match["object"].replace('"', "") if kind == "SCHEMA" else match["object"]
            for role in (part.strip().strip('"') for part in match["roles"].split(",")):
                if role not in existing:
                    continue
                for privilege in (part.strip() for part in match["privileges"].split(",")):
                    parameters = {"role": role, "object": target, "privilege": privilege}
                    if not _scalar(connection, _PRIVILEGE_SQL[kind], parameters):
                        missing.append(f"{privilege} on {kind.lower()} {target.replace(chr(34), '')} to {role}")
    findings = []
    fix = f"re-run eventstore.roles.create_roles(url, prefix={context.role_prefix!r}) (it is idempotent)"
    if missing_roles:
        findings.append(
            Finding(
                "roles",
                Severity.WARNING,
                f"some eventstore roles are missing: {', '.join(missing_roles)}",
                fix,
                {"missing_roles": missing_roles},
            )
        )
    if missing:
        findings.append(
            Finding(
                "roles",
                Severity.PROBLEM,
                f"roles lack grants that roles.sql gives: {'; '.join(missing)}",
                fix,
                {"missing_grants": missing},
            )
        )
    return findings or [Finding("roles", Severity.OK, f"{', '.join(names.all())} hold every grant of roles.sql")]


def _max_connections(context: _Context, server: Any) -> list[Finding]:
    count = len({p if isinstance(p, str) else p.name for p in context.projections})
    if not count:
        try:
            with context.engine.connect() as connection:
                count = int(_scalar(connection, "SELECT count(*) FROM projection_checkpoints"))
        except _CHECK_ERRORS:
            count = 0
    needed = RUNNER_BASE_CONNECTIONS + count
    free = server.max_connections - server.reserved - server.in_use
    details = {
        "max_connections": server.max_connections,
        "reserved": server.reserved,
        "in_use": server.in_use,
        "free": free,
        "runner_needs": needed,
        "projections": count,
    }
    message = (
        f"max_connections {server.max_connections}: {free} free now ({server.in_use} in use, {server.reserved} "
        f"reserved); a runner for {count} projection(s) needs about {needed} ({RUNNER_BASE_CONNECTIONS} + one per "
        "projection; each standby runner as many)"
    )
    if free < needed:
        return [
            Finding(
                "max_connections",
                Severity.WARNING,
                message,
                "raise max_connections (restart needed) or close idle connections; a pooler in session mode "
                "does not lower what runners need",
                details,
            )
        ]
    return [Finding("max_connections", Severity.OK, message, details=details)]


def _idle_timeout(server: Any) -> list[Finding]:
    if server.idle_timeout not in ("0", "0ms", ""):
        return [
            Finding(
                "idle_timeout",
                Severity.OK,
                f"idle_in_transaction_session_timeout is {server.idle_timeout}",
                details={"idle_in_transaction_session_timeout": server.idle_timeout},
            )
        ]
    database = psql.Identifier(server.database).as_string(None)
    return [
        Finding(
            "idle_timeout",
            Severity.WARNING,
            "idle_in_transaction_session_timeout is 0 (off): a forgotten open transaction holds back every "
            "projection of the cluster until someone ends it",
            f"ALTER DATABASE {database} SET idle_in_transaction_session_timeout = '5min' (or ALTER ROLE for the "
            "applications' roles); eventstore's runners never sit idle in a transaction",
            {"idle_in_transaction_session_timeout": server.idle_timeout},
        )
    ]


def _duration(seconds: float | None) -> str:
    if seconds is None:
        return "an unknown time"
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 7200:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"
