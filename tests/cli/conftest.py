"""Fixtures for the CLI tests: run ``eventstore`` in-process (CliRunner) against the test database."""

from __future__ import annotations

from collections.abc import Callable

import pytest
from typer.testing import CliRunner, Result

from eventstore.cli import app

Invoke = Callable[..., Result]


@pytest.fixture
def cli(database_url: str) -> Invoke:
    """``cli("append", "order-1", ...)`` runs the command with ``--url`` set to this test's database."""
    runner = CliRunner()

    def invoke(*args: str, input: str | None = None, env: dict[str, str] | None = None) -> Result:
        return runner.invoke(app, ["--url", database_url, *args], input=input, env=env)

    return invoke


@pytest.fixture
def bare_cli() -> Invoke:
    """Run the command with exactly the given arguments (no ``--url``)."""
    runner = CliRunner()

    def invoke(*args: str, input: str | None = None, env: dict[str, str] | None = None) -> Result:
        return runner.invoke(app, list(args), input=input, env=env)

    return invoke
