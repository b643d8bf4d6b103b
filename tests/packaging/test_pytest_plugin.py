"""eventstore's pytest plugin is registered by its ``pytest11`` entry point, not by ``pytest_plugins``."""

from __future__ import annotations

import ast
import os
import subprocess
import sys
from importlib.metadata import entry_points
from pathlib import Path

import pytest

import eventstore.testing.plugin
from eventstore import EventStore

TESTS = Path(__file__).resolve().parents[1]


def test_the_pytest11_entry_point_named_eventstore_is_the_plugin() -> None:
    (entry_point,) = entry_points(group="pytest11", name="eventstore")
    assert entry_point.value == "eventstore.testing.plugin"
    assert entry_point.load() is eventstore.testing.plugin


def test_pytest_loaded_the_plugin_through_the_entry_point(pytestconfig: pytest.Config) -> None:
    # Plugins from entry points are registered under the entry point's name.
    assert pytestconfig.pluginmanager.get_plugin("eventstore") is eventstore.testing.plugin


def test_no_conftest_lists_the_plugin_in_pytest_plugins() -> None:
    # A second registration by module name would be redundant at best
    # (pytest refuses pytest_plugins outside the root conftest).
    for conftest in TESTS.rglob("conftest.py"):
        tree = ast.parse(conftest.read_text(), str(conftest))
        names = {target.id for node in ast.walk(tree) if isinstance(node, ast.Assign) for target in node.targets
                 if isinstance(target, ast.Name)}  # fmt: skip
        assert "pytest_plugins" not in names, conftest


def test_the_fixtures_load(store: EventStore, database_url: str) -> None:
    assert store.head_position() == 0
    assert database_url.startswith("postgresql")


def test_a_project_without_any_configuration_gets_the_fixtures(tmp_path: Path) -> None:
    # A directory outside this repository: no conftest, no pytest configuration.
    (tmp_path / "test_nothing.py").write_text("def test_nothing():\n    pass\n")
    env = {key: value for key, value in os.environ.items() if key != "PYTEST_DISABLE_PLUGIN_AUTOLOAD"}
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "--fixtures", "-p", "no:cacheprovider", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=tmp_path,
        env=env,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "fixtures defined from eventstore.testing.plugin" in result.stdout, result.stdout
    for fixture in ("test_server", "database_url", "engine", "store"):
        assert f"\n{fixture} " in result.stdout or f"\n{fixture} [" in result.stdout, (fixture, result.stdout)


def test_a_session_that_started_a_server_leaves_nothing_in_the_temporary_directory(tmp_path: Path) -> None:
    """The plugin's own PostgreSQL (data, lock file, directory) is gone when the session ends."""
    project, temporary = tmp_path / "project", tmp_path / "tmp"
    project.mkdir()
    temporary.mkdir()
    (project / "test_one.py").write_text("def test_one(store):\n    assert store.head_position() == 0\n")
    # The plugin's own server (no external one), its temporary directory under `temporary`.
    skipped = ("PYTEST_DISABLE_PLUGIN_AUTOLOAD", "EVENTSTORE_TEST_DSN")
    env = {key: value for key, value in os.environ.items() if key not in skipped} | {"TMPDIR": str(temporary)}
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(project)],
        capture_output=True, text=True, timeout=120, cwd=project, env=env,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr
    assert sorted(path.name for path in temporary.iterdir()) == []
