"""Shared fixtures: eventstore's pytest plugin (registered by the ``pytest11`` entry point) gives the database ones."""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest


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
