"""pytest fixtures: ``test_server`` (session), ``database_url``, ``engine`` and ``store`` (per test).

Installed with eventstore and registered through the ``pytest11`` entry point,
so a project that depends on eventstore gets these fixtures with no
``pytest_plugins`` line. The server starts only when a test asks for one.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import sqlalchemy as sa
from sqlalchemy.engine import Engine

from eventstore.store import EventStore
from eventstore.testing.server import TestServer, provision_server


def pytest_report_header() -> str:
    return "eventstore: PostgreSQL from EVENTSTORE_TEST_DSN, else testcontainers, else local binaries"


@pytest.fixture(scope="session")
def test_server() -> Iterator[TestServer]:
    """The session's PostgreSQL server, with a migrated template database."""
    server = provision_server()
    yield server
    server.close()


@pytest.fixture
def database_url(test_server: TestServer) -> Iterator[str]:
    """URL of a fresh, migrated database that only this test uses."""
    name = test_server.create_database()
    yield test_server.url(name)
    test_server.drop_database(name)


@pytest.fixture
def engine(database_url: str) -> Iterator[Engine]:
    """A SQLAlchemy engine on this test's database."""
    engine = sa.create_engine(database_url)
    yield engine
    engine.dispose()


@pytest.fixture
def store(engine: Engine) -> Iterator[EventStore]:
    """An :class:`EventStore` on this test's database (closed after the test)."""
    with EventStore(engine) as store:
        yield store
