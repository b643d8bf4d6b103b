"""Least-privilege database roles for eventstore: writer, projector, reader.

:func:`create_roles` creates three ``NOLOGIN`` group roles and grants them
what ``eventstore/sql/roles.sql`` says (the single source of the grants):

``<prefix>_writer``
    append and read: ``SELECT, INSERT`` on ``events`` and ``USAGE`` on its
    identity sequence. No ``UPDATE``, ``DELETE`` or ``TRUNCATE``, and no
    access to checkpoints.
``<prefix>_projector``
    ``SELECT`` on ``events``; read/write ``projection_checkpoints`` and
    ``projection_failures``; ``CREATE`` on the schema, so a projection's
    ``setup()`` can create read-model tables, which its user then owns.
``<prefix>_reader``
    ``SELECT`` on ``events`` only.

Give applications ``LOGIN`` users that are members of these roles
(``CREATE ROLE app LOGIN PASSWORD '...' IN ROLE eventstore_writer``).

Whatever the grants, UPDATE, DELETE and TRUNCATE on ``events`` are refused for
every role, the owner included, by the append-only triggers of the first
migration. There is no maintenance path around them yet; a DBA who really must
rewrite history has to drop the triggers explicitly, which leaves a trace in
the schema.

Role names are validated (a conservative identifier pattern) and quoted with
:class:`psycopg.sql.Identifier`; no SQL is built from unquoted input.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from importlib import resources

import psycopg
from psycopg import sql
from sqlalchemy.engine import Engine

from eventstore.database import create_engine, libpq_url, translate_driver_errors
from eventstore.errors import ConfigurationError

__all__ = ["RoleNames", "create_roles", "drop_roles", "render_roles_sql", "role_names"]

logger = logging.getLogger(__name__)

_NAME = re.compile(r"^[a-z_][a-z0-9_]{0,48}$")
_SCRIPT = "roles.sql"


@dataclass(frozen=True, slots=True)
class RoleNames:
    """The three role names derived from a prefix."""

    writer: str
    projector: str
    reader: str

    def all(self) -> tuple[str, str, str]:
        """The names in creation order."""
        return (self.writer, self.projector, self.reader)


def role_names(prefix: str = "eventstore") -> RoleNames:
    """The role names for ``prefix``: ``<prefix>_writer``, ``<prefix>_projector``, ``<prefix>_reader``.

    Raises:
        ConfigurationError: ``prefix`` is not a lower-case identifier
            (letters, digits, underscores; at most 49 characters).
    """
    if not isinstance(prefix, str) or not _NAME.match(prefix):
        raise ConfigurationError(
            f"role prefix {prefix!r} is not allowed; use lower-case letters, digits and underscores "
            "(starting with a letter or underscore, at most 49 characters), e.g. 'eventstore'"
        )
    return RoleNames(f"{prefix}_writer", f"{prefix}_projector", f"{prefix}_reader")


def _check_schema(schema: str) -> str:
    if not isinstance(schema, str) or not _NAME.match(schema):
        raise ConfigurationError(f"schema {schema!r} is not allowed; use a lower-case identifier such as 'public'")
    return schema


def _script_template() -> str:
    return resources.files("eventstore").joinpath("sql", _SCRIPT).read_text(encoding="utf-8")


def _statements(schema: str, names: RoleNames, events_sequence: str, failures_sequence: str) -> list[sql.Composed]:
    """The grant statements of ``roles.sql`` with every identifier quoted."""
    identifiers = {
        "schema": sql.Identifier(schema),
        "writer": sql.Identifier(names.writer),
        "projector": sql.Identifier(names.projector),
        "reader": sql.Identifier(names.reader),
        "events_sequence": sql.Identifier(schema, events_sequence),
        "failures_sequence": sql.Identifier(schema, failures_sequence),
    }
    statements: list[sql.Composed] = []
    lines = [line for line in _script_template().splitlines() if not line.lstrip().startswith("--")]
    for text in "\n".join(lines).split(";"):
        if text.strip():
            statements.append(sql.SQL(text.strip()).format(**identifiers))
    return statements


def _sequence_name(connection: psycopg.Connection[tuple[object, ...]], schema: str, table: str, column: str) -> str:
    row = connection.execute(
        "SELECT c.relname FROM pg_class c WHERE c.oid = pg_get_serial_sequence(%s, %s)::regclass",
        (f"{schema}.{table}", column),
    ).fetchone()
    if row is None:
        raise ConfigurationError(
            f"{schema}.{table}.{column} has no sequence; run `eventstore migrate` before creating roles"
        )
    return str(row[0])


def render_roles_sql(prefix: str = "eventstore", *, schema: str = "public") -> str:
    """The full script (CREATE ROLE + grants) as plain SQL, for a DBA to review or run with psql.

    Uses the default identity-sequence names of the 0001 migration.
    """
    names = role_names(prefix)
    _check_schema(schema)
    parts = [
        "-- eventstore roles; idempotent apart from CREATE ROLE (skip those that exist).",
        *(sql.SQL("CREATE ROLE {} NOLOGIN;").format(sql.Identifier(name)).as_string(None) for name in names.all()),
        *(
            statement.as_string(None) + ";"
            for statement in _statements(schema, names, "events_global_position_seq", "projection_failures_id_seq")
        ),
    ]
    return "\n".join(parts) + "\n"


def create_roles(url_or_engine: str | Engine, *, prefix: str = "eventstore", schema: str = "public") -> RoleNames:
    """Create (if missing) the writer, projector and reader roles and grant them their privileges.

    Idempotent: existing roles are kept and the grants re-applied, so run it
    again after a migration. Must run as a role allowed to create roles and
    to grant on the eventstore tables (their owner, or a superuser), on a
    database the schema was applied to.

    Returns:
        The role names.

    Raises:
        ConfigurationError: bad ``prefix``/``schema``, or the schema is not migrated.
        DatabaseUnavailable: PostgreSQL cannot be reached.
        PermissionDenied: the connecting role may not create roles or grant.
    """
    names = role_names(prefix)
    _check_schema(schema)
    engine = create_engine(url_or_engine)
    with translate_driver_errors(engine), psycopg.connect(libpq_url(engine), autocommit=True) as connection:
        for name in names.all():
            _create_role(connection, name)
        events_sequence = _sequence_name(connection, schema, "events", "global_position")
        failures_sequence = _sequence_name(connection, schema, "projection_failures", "id")
        with connection.transaction():
            for statement in _statements(schema, names, events_sequence, failures_sequence):
                connection.execute(statement)
    logger.info("eventstore roles ready: %s", ", ".join(names.all()))
    return names


def _create_role(connection: psycopg.Connection[tuple[object, ...]], name: str) -> None:
    exists = connection.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", (name,)).fetchone()
    if exists:
        return
    try:
        connection.execute(sql.SQL("CREATE ROLE {} NOLOGIN").format(sql.Identifier(name)))
        logger.info("created role %s", name)
    except psycopg.errors.DuplicateObject:
        # Another process created it between our check and CREATE ROLE.
        logger.debug("role %s was created concurrently", name)


def drop_roles(url_or_engine: str | Engine, *, prefix: str = "eventstore") -> None:
    """Revoke what :func:`create_roles` granted in this database and drop the roles.

    Roles are cluster-wide: if they hold privileges in other databases too,
    run ``DROP OWNED BY`` there first, or PostgreSQL refuses to drop them
    (``DependentObjectsStillExist``). Objects they own in this database are
    dropped (``DROP OWNED BY``).
    """
    names = role_names(prefix)
    engine = create_engine(url_or_engine)
    with translate_driver_errors(engine), psycopg.connect(libpq_url(engine), autocommit=True) as connection:
        for name in names.all():
            if connection.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", (name,)).fetchone():
                connection.execute(sql.SQL("DROP OWNED BY {}").format(sql.Identifier(name)))
                connection.execute(sql.SQL("DROP ROLE {}").format(sql.Identifier(name)))


def main(argv: list[str] | None = None) -> int:
    """``python -m eventstore.roles [--prefix P] [--schema S]``: print the script."""
    import argparse

    parser = argparse.ArgumentParser(description="Print the eventstore least-privilege roles SQL script.")
    parser.add_argument("--prefix", default="eventstore")
    parser.add_argument("--schema", default="public")
    arguments = parser.parse_args(argv)
    try:
        print(render_roles_sql(arguments.prefix, schema=arguments.schema), end="")
    except ConfigurationError as error:
        parser.exit(2, f"error: {error}\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
