"""The roles check: eventstore's least-privilege group roles exist and hold every grant of ``roles.sql``.

Each ``GRANT`` that :func:`eventstore.roles.render_roles_sql` renders is asked of
the server with ``has_table_privilege`` and friends
(https://www.postgresql.org/docs/current/functions-info.html#FUNCTIONS-INFO-ACCESS),
so the check and the roles can never disagree about what a role should hold.
"""

from __future__ import annotations

import re

from eventstore.doctor.context import Context, scalar
from eventstore.doctor.findings import Finding, Severity
from eventstore.roles import render_roles_sql, role_names

__all__ = ["check_roles"]

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


def check_roles(context: Context) -> list[Finding]:
    """Info when no role exists, a warning for some missing, a problem per grant an existing role lacks."""
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
        schema = scalar(connection, _EVENTS_SCHEMA_SQL)
        missing = []
        for match in _GRANT.finditer(render_roles_sql(context.role_prefix, schema=schema)):
            kind = match["kind"]
            target = match["object"].replace('"', "") if kind == "SCHEMA" else match["object"]
            for role in (part.strip().strip('"') for part in match["roles"].split(",")):
                if role not in existing:
                    continue
                for privilege in (part.strip() for part in match["privileges"].split(",")):
                    parameters = {"role": role, "object": target, "privilege": privilege}
                    if not scalar(connection, _PRIVILEGE_SQL[kind], parameters):
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
