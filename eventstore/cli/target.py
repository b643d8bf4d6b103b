"""Which database the ``eventstore`` command talks to.

With a URL (``--url`` / ``EVENTSTORE_URL``) the CLI uses that database as it
is: a missing schema is reported (run ``eventstore migrate``), never applied
behind the user's back. Without one it uses a private PostgreSQL 18 from the
``embedded`` extra, kept in a per-user data directory
(``platformdirs.user_data_dir("eventstore")``, or ``EVENTSTORE_HOME``): the
server is started if it is down and left running so that later commands share
it and the data persists, and the schema is applied automatically.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path

import platformdirs
import sqlalchemy as sa
from sqlalchemy.engine import Engine

from eventstore.database import create_engine, describe_target, mask_url, translate_driver_errors
from eventstore.embedded import LocalPostgres
from eventstore.errors import ConfigurationError
from eventstore.migrations import current_revision, head_revision, migrate

__all__ = ["EMBEDDED_DATABASE", "Target", "embedded_home", "embedded_server", "open_target"]

logger = logging.getLogger(__name__)

EMBEDDED_DATABASE = "eventstore"
"""The database the CLI creates on its embedded server."""


@dataclass(frozen=True)
class Target:
    """The database a command runs against."""

    engine: Engine
    embedded: LocalPostgres | None = None

    @property
    def description(self) -> str:
        """``host:port/database`` plus where an embedded server keeps its data; never a password."""
        if self.embedded is not None:
            server = self.embedded
            return (
                f"embedded PostgreSQL {server.version()} at {server.libpq_url(EMBEDDED_DATABASE)} "
                f"(data in {server.data_dir})"
            )
        return mask_url(self.engine)


def embedded_home(home: str | None = None) -> Path:
    """The directory holding the embedded server's data (``EVENTSTORE_HOME`` or the per-user data dir)."""
    return Path(home or os.environ.get("EVENTSTORE_HOME") or platformdirs.user_data_dir("eventstore"))


def embedded_server(home: str | None = None) -> LocalPostgres:
    """The embedded server object (not started).

    Raises:
        ConfigurationError: the ``embedded`` extra is not installed (the message names the pip command).
    """
    return LocalPostgres(embedded_home(home) / "pgdata")


def open_target(url: str | None, *, home: str | None = None, auto_migrate: bool = True) -> Target:
    """The engine for ``url``, or for the embedded server (started, database created, migrated).

    Raises:
        ConfigurationError: a malformed URL, or the embedded extra is missing.
        DatabaseUnavailable: the embedded server cannot be reached after starting.
    """
    if url:
        try:
            return Target(create_engine(url, pool_pre_ping=True))
        except ValueError:  # e.g. a non-numeric port; the message may quote the URL
            raise ConfigurationError(
                "invalid database URL: its host or port cannot be parsed; "
                "expected postgresql://USER:PASSWORD@HOST:PORT/DATABASE"
            ) from None  # the ValueError may quote the URL, password included
    server = embedded_server(home).ensure_running()
    _create_database(server)
    engine = create_engine(server.url(EMBEDDED_DATABASE), pool_pre_ping=True)
    if auto_migrate and current_revision(engine) != head_revision():
        logger.info("applying the eventstore schema to %s", describe_target(engine))
        migrate(engine)
    return Target(engine, server)


def _create_database(server: LocalPostgres) -> None:
    admin = sa.create_engine(server.url("postgres"), isolation_level="AUTOCOMMIT", poolclass=sa.NullPool)
    try:
        with translate_driver_errors(admin), admin.connect() as connection:
            exists = connection.execute(
                sa.text("SELECT 1 FROM pg_database WHERE datname = :name"), {"name": EMBEDDED_DATABASE}
            ).first()
            if exists is None:
                try:
                    connection.execute(sa.text(f'CREATE DATABASE "{EMBEDDED_DATABASE}"'))
                except sa.exc.ProgrammingError as error:
                    # Two commands starting at once: the other one created it.
                    if "already exists" not in str(error.orig):
                        raise
    finally:
        admin.dispose()
