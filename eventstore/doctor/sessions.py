"""Checks of sessions and transactions that hold work up.

A pooler in transaction mode (session state lost), sessions idle in a
transaction, transactions (and prepared ones) holding back the gap rule's
fence, and listeners that stopped reading the cluster's NOTIFY queue.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass
from typing import Any

import psycopg
from sqlalchemy.engine import Engine

from eventstore.database import libpq_url, translate_driver_errors
from eventstore.doctor.context import Context, scalar
from eventstore.doctor.findings import Finding, Severity
from eventstore.doctor.schema import wake_ups_sequence_exists
from eventstore.store import sql
from eventstore.store.stalls import fence_blockers, format_duration, held_back

__all__ = [
    "PoolerProbe",
    "detect_transaction_pooler",
    "check_fence",
    "check_idle_in_transaction",
    "check_notify_queue",
    "check_pooler",
]

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


def check_pooler(context: Context) -> list[Finding]:
    """A warning when :func:`detect_transaction_pooler` sees a pooler in transaction mode."""
    probe = detect_transaction_pooler(context.engine)
    details = {"backend_pids": list(probe.backend_pids), "setting_kept": probe.setting_kept}
    if not probe.detected:
        return [Finding("pooler", Severity.OK, f"no transaction-mode pooler seen: {probe.evidence}", details=details)]
    return [
        Finding(
            "pooler",
            Severity.WARNING,
            f"a connection pooler in transaction mode seems to sit in between: {probe.evidence}",
            "runners work through it (their leases are rows), but their wake-ups need a session: give them a "
            "direct or session-mode URL for LISTEN (`--listen-url`, `EVENTSTORE_LISTEN_URL`), or they poll; "
            "`eventstore tail` needs such a URL as --url; eventstore turns psycopg's automatic prepared "
            "statements off through it (PgBouncer before 1.21 cannot keep them)",
            details,
        )
    ]


def check_idle_in_transaction(context: Context) -> list[Finding]:
    """A warning per session idle in a transaction for ``transaction_age`` seconds or more."""
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
                f"{row.state or 'idle in transaction'} for {format_duration(row.transaction_seconds)}{holds}",
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


def check_fence(context: Context) -> list[Finding]:
    """A warning per prepared transaction, and one when an old or invisible transaction holds back events."""
    findings = []
    with context.engine.connect() as connection:
        prepared = connection.exec_driver_sql(_PREPARED_SQL).all()
    for row in prepared:
        findings.append(
            Finding(
                "fence",
                Severity.WARNING,
                f"prepared transaction {row.gid!r} (database `{row.database}`, owner `{row.owner}`) is open for "
                f"{format_duration(row.seconds)}: it holds back events in every database until it is finished",
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


def check_notify_queue(context: Context) -> list[Finding]:
    """A problem when the NOTIFY queue is half full (wake-ups stop), a warning from a quarter; skipped wake-ups."""
    with context.engine.connect() as connection:
        usage = float(scalar(connection, sql.NOTIFY_QUEUE_USAGE))
        skipped = int(scalar(connection, sql.WAKE_UPS_SKIPPED)) if wake_ups_sequence_exists(connection) else 0
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
