"""The installed ``eventstore`` console script, run as a real process."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from tests.process_output import lines_of, wait_for_line

EVENTSTORE = Path(sys.executable).parent / "eventstore"


def run(*args: str, env: dict[str, str] | None = None, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(EVENTSTORE), *args], capture_output=True, text=True, timeout=timeout, env={**os.environ, **(env or {})}
    )


@pytest.mark.skipif(not EVENTSTORE.exists(), reason="the console script is not installed in this environment")
def test_migrate_append_read_and_a_background_tail(database_url: str) -> None:
    env = {"EVENTSTORE_URL": database_url}
    migrated = run("migrate", env=env)
    assert migrated.returncode == 0, migrated.stderr
    assert "schema is at revision" in migrated.stdout

    with subprocess.Popen(
        [str(EVENTSTORE), "tail"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, **env},
    ) as tail:
        try:
            assert tail.stderr is not None and tail.stdout is not None
            wait_for_line(lines_of(tail.stderr), "tailing after position 0")
            appended = run("append", "order-7", "OrderPlaced", "--data", '{"amount": 12.5}', env=env)
            assert appended.returncode == 0, appended.stderr
            assert appended.stdout.strip() == "appended OrderPlaced to order-7@1 at position 1"
            line = wait_for_line(lines_of(tail.stdout), "order-7@1")[-1]
            assert 'OrderPlaced  {"amount":12.5}' in line
            tail.send_signal(signal.SIGINT)  # Ctrl-C is how a tail ends: exit 0
            assert tail.wait(timeout=20) == 0
        finally:
            if tail.poll() is None:
                tail.kill()
            tail.wait()

    read = run("read", "order-7", "--json", env=env)
    assert read.returncode == 0, read.stderr
    assert '"type": "OrderPlaced"' in read.stdout

    missing = run("read", "order-8", env=env)
    assert missing.returncode == 1
    assert missing.stderr.strip() == (
        "Error: stream 'order-8' has no events; list streams with `eventstore log` (check the spelling)"
    )


@pytest.mark.skipif(not EVENTSTORE.exists(), reason="the console script is not installed in this environment")
def test_usage_error_exits_2() -> None:
    result = run("append", "only-a-stream")
    assert result.returncode == 2
    assert "Missing argument 'TYPE'" in result.stderr


@pytest.mark.skipif(not EVENTSTORE.exists(), reason="the console script is not installed in this environment")
def test_demo_quick_on_the_embedded_default(outside_tmp: Path) -> None:
    """The quick start: no --url, so a private PostgreSQL 18 is created, migrated and left running."""
    env = {k: v for k, v in os.environ.items() if k != "EVENTSTORE_URL"}
    env["EVENTSTORE_HOME"] = str(outside_tmp / "home")
    try:
        demo = subprocess.run(
            [str(EVENTSTORE), "demo", "--quick"], capture_output=True, text=True, timeout=100, env=env
        )
        assert demo.returncode == 0, demo.stdout + demo.stderr
        assert "using embedded PostgreSQL 18 at postgresql://postgres@127.0.0.1:" in demo.stderr
        assert str(outside_tmp / "home" / "pgdata") in demo.stderr
        assert "OK: every read model agrees with the events" in demo.stdout
        assert "PROBLEM" not in demo.stdout

        status = subprocess.run([str(EVENTSTORE), "server", "status"], capture_output=True, text=True, env=env)
        assert status.stdout.startswith("running: PostgreSQL 18")

        # Same data directory, same server: the demo's events are still there.
        logged = subprocess.run(
            [str(EVENTSTORE), "log", "--limit", "2", "--json"], capture_output=True, text=True, timeout=60, env=env
        )
        assert logged.returncode == 0, logged.stderr
        first = json.loads(logged.stdout)[0]
        assert first["type"] == "OrderPlaced" and first["stream_version"] == 1
    finally:
        stopped = subprocess.run([str(EVENTSTORE), "server", "stop"], capture_output=True, text=True, env=env)
    assert stopped.returncode == 0, stopped.stderr
    assert "stopped the embedded PostgreSQL" in stopped.stdout


@pytest.mark.skipif(not EVENTSTORE.exists(), reason="the console script is not installed in this environment")
def test_ctrl_c_during_rebuild_leaves_it_resumable(database_url: str) -> None:
    import sqlalchemy as sa

    from eventstore import EventStore, NewEvent

    store = EventStore(database_url)
    for number in range(8):
        store.append(f"order-{number}", [NewEvent("OrderPlaced", {}) for _ in range(1000)])
    env = {
        **os.environ,
        "EVENTSTORE_URL": database_url,
        "EVENTSTORE_PROJECTIONS": "cli_sample_projections",
        "PYTHONPATH": str(Path(__file__).parent),
    }
    with subprocess.Popen(
        [str(EVENTSTORE), "projections", "rebuild", "cli_stream_counts"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    ) as rebuild:
        assert rebuild.stderr is not None
        lines = lines_of(rebuild.stderr)
        wait_for_line(lines, "rebuilding cli_stream_counts: 0/8000 events")
        rebuild.send_signal(signal.SIGINT)
        assert rebuild.wait(timeout=30) == 130
        line = wait_for_line(lines, "interrupted at position")[-1]
        assert "continue with `eventstore projections rebuild cli_stream_counts --from-position" in line
    resumed = subprocess.run(
        [str(EVENTSTORE), "projections", "run", "--until-caught-up"], capture_output=True, text=True, env=env
    )
    assert resumed.returncode == 0, resumed.stderr
    with store.engine.connect() as connection:
        counts = connection.execute(sa.text("SELECT count(*), sum(events) FROM cli_stream_counts")).one()
    store.engine.dispose()
    assert tuple(counts) == (8, 8000)
