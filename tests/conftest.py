"""Shared fixtures: eventstore's pytest plugin (registered by the ``pytest11`` entry point) gives the database ones."""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
import sqlalchemy as sa

from eventstore.testing import TestServer
from tests.runner.runner_helpers import Processes


@pytest.fixture
def outside_tmp() -> Iterator[Path]:
    """A temporary directory outside pytest's basetemp, for an embedded server's data and binaries.

    As root the embedded PostgreSQL runs as a service user that must traverse
    every parent of its data directory and binaries (eventstore.embedded opens
    them with o+x). pytest resets its basetemp root (``/tmp/pytest-of-root``)
    to mode 0700 whenever another pytest session starts, which would cut a
    running server off from its own files.
    """
    path = Path(tempfile.mkdtemp(prefix="eventstore-test-"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def blocker(test_server: TestServer) -> Iterator[psycopg.Connection[tuple[object, ...]]]:
    """A forced stall: an open transaction holding an xid, in another database of the same cluster.

    It holds back the gap rule's fence for every database of the cluster;
    commit or roll it back to end the stall. Its application_name is
    ``billing-batch``.
    """
    name = test_server.create_database(migrated=False)
    url = sa.make_url(test_server.url(name)).set(drivername="postgresql").render_as_string(hide_password=False)
    connection = psycopg.connect(url, application_name="billing-batch")
    connection.execute("SELECT pg_current_xact_id()")
    try:
        yield connection
    finally:
        connection.close()
        test_server.drop_database(name)


@pytest.fixture
def processes(database_url: str, tmp_path: Path) -> Iterator[Processes]:
    """Start runner processes with ``processes.start(options)``; any left running are killed at the end."""
    started = Processes(database_url, tmp_path)
    yield started
    started.stop_all()
