"""Checks of the server itself: its version, ``max_connections`` against what a runner needs, idle timeout."""

from __future__ import annotations

from typing import Any

from psycopg import sql as psql
from sqlalchemy.engine import Connection

from eventstore.doctor.context import CHECK_ERRORS, Context, scalar
from eventstore.doctor.findings import Finding, Severity
from eventstore.runner.settings import RunnerSettings

__all__ = [
    "RUNNER_BASE_CONNECTIONS",
    "check_idle_timeout",
    "check_max_connections",
    "server_settings",
    "check_server_version",
]

RUNNER_BASE_CONNECTIONS = 2
"""Connections a runner holds besides its workers': its LISTEN connection and its lease keeper's (a standby holds
only these)."""

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


def server_settings(connection: Connection) -> Any:
    """The one row the server checks read: version, NOTIFY queue size, connection counts, idle timeout, database."""
    return connection.exec_driver_sql(_SERVER_SQL).one()


def check_server_version(server: Any) -> list[Finding]:
    """A problem before PostgreSQL 15; info before 17 (the NOTIFY queue has a fixed size there)."""
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


def check_max_connections(context: Context, server: Any) -> list[Finding]:
    """A warning when fewer connections are free than a runner for the projections needs."""
    count = len({p if isinstance(p, str) else p.name for p in context.projections})
    if not count:
        try:
            with context.engine.connect() as connection:
                count = int(scalar(connection, "SELECT count(*) FROM projection_checkpoints"))
        except CHECK_ERRORS:
            count = 0
    budget = RunnerSettings().connections
    needed = RUNNER_BASE_CONNECTIONS + min(budget - RUNNER_BASE_CONNECTIONS, count)
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
        f"reserved); a runner for {count} projection(s) holds at most {needed} (its connection budget, "
        f"`--connections`, is {budget}; each standby runner holds {RUNNER_BASE_CONNECTIONS})"
    )
    if free < needed:
        return [
            Finding(
                "max_connections",
                Severity.WARNING,
                message,
                "raise max_connections (restart needed), close idle connections, or give runners a smaller "
                "`--connections` budget",
                details,
            )
        ]
    return [Finding("max_connections", Severity.OK, message, details=details)]


def check_idle_timeout(server: Any) -> list[Finding]:
    """A warning when ``idle_in_transaction_session_timeout`` is off."""
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
