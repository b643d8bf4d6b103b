"""The installed ``eventstore`` console script, run as a real process."""

from __future__ import annotations

import os
import queue
import subprocess
import sys
import threading
from pathlib import Path
from typing import IO

import pytest

EVENTSTORE = Path(sys.executable).parent / "eventstore"


def run(*args: str, env: dict[str, str] | None = None, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(EVENTSTORE), *args], capture_output=True, text=True, timeout=timeout, env={**os.environ, **(env or {})}
    )


def _lines(stream: IO[str]) -> queue.Queue[str]:
    """A queue fed with the lines of ``stream`` by a reader thread (so waits can time out)."""
    lines: queue.Queue[str] = queue.Queue()

    def pump() -> None:
        for line in stream:
            lines.put(line)

    threading.Thread(target=pump, daemon=True).start()
    return lines


def _wait_for_line(lines: queue.Queue[str], needle: str, *, timeout: float = 20) -> str:
    seen: list[str] = []
    while True:
        try:
            line = lines.get(timeout=timeout)
        except queue.Empty:
            raise AssertionError(f"no line containing {needle!r} within {timeout}s; saw {seen}") from None
        seen.append(line)
        if needle in line:
            return line


@pytest.mark.skipif(not EVENTSTORE.exists(), reason="the console script is not installed in this environment")
def test_migrate_append_read_and_a_background_tail(database_url: str) -> None:
    env = {"EVENTSTORE_URL": database_url}
    migrated = run("migrate", env=env)
    assert migrated.returncode == 0, migrated.stderr
    assert "schema is at revision" in migrated.stdout

    with subprocess.Popen(
        [str(EVENTSTORE), "tail", "--count", "1"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, **env},
    ) as tail:
        try:
            assert tail.stderr is not None and tail.stdout is not None
            _wait_for_line(_lines(tail.stderr), "tailing after position 0")
            appended = run("append", "order-7", "OrderPlaced", "--data", '{"amount": 12.5}', env=env)
            assert appended.returncode == 0, appended.stderr
            assert appended.stdout.strip() == "appended OrderPlaced to order-7@1 at position 1"
            line = _wait_for_line(_lines(tail.stdout), "order-7@1")
            assert 'OrderPlaced  {"amount":12.5}' in line
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
