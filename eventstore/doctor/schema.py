"""Checks of what the migrations made: the schema's revision, and its triggers, indexes, functions and sequence."""

from __future__ import annotations

from sqlalchemy.engine import Connection

from eventstore.doctor.context import Context, scalar
from eventstore.doctor.findings import Finding, Severity
from eventstore.migrations import current_revision, head_revision

__all__ = [
    "SCHEMA_REVISION",
    "WAKE_UPS_SEQUENCE",
    "check_schema_objects",
    "check_schema_revision",
    "wake_ups_sequence_exists",
]

SCHEMA_REVISION = "0004_projection_leases"
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

WAKE_UPS_SEQUENCE = "eventstore_wake_ups_skipped_v1"
"""The sequence the wake-up function counts skipped wake-ups in (made by revision 0003)."""

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


def wake_ups_sequence_exists(connection: Connection) -> bool:
    """Whether :data:`WAKE_UPS_SEQUENCE` exists (``to_regclass`` gives NULL, not an error, for a missing one)."""
    return bool(scalar(connection, _SEQUENCE_SQL, {"name": WAKE_UPS_SEQUENCE}))


def check_schema_revision(context: Context) -> tuple[list[Finding], bool]:
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


def check_schema_objects(context: Context) -> list[Finding]:
    """A problem per missing or disabled trigger, missing or invalid index, missing function or sequence."""
    findings = []
    with context.engine.connect() as connection:
        triggers = {row.tgname: row.tgenabled for row in connection.exec_driver_sql(_TRIGGERS_SQL)}
        indexes = {(row.table_name, row.index_name): row.valid for row in connection.exec_driver_sql(_INDEXES_SQL)}
        missing_functions = connection.exec_driver_sql(_FUNCTIONS_SQL, {"names": list(_FUNCTIONS)}).scalars().all()
        has_sequence = wake_ups_sequence_exists(connection)
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
                f"sequence {WAKE_UPS_SEQUENCE} is missing",
                restore.format("0003_wake_up_hint_only"),
                {"sequence": WAKE_UPS_SEQUENCE},
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
