"""Helpers for the runner tests: fast settings, a runner in a background thread or process, bulk appends."""

from __future__ import annotations

import contextlib
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from eventstore import EventStore, NewEvent, ProjectionRunner

FAST: dict[str, Any] = {
    "poll_interval": 2.0,
    "held_back_interval": 0.05,
    "lock_retry_interval": 0.1,
    "retry_attempts": 2,
    "retry_delay": 0.01,
    "retry_max_delay": 0.02,
    "reconnect_initial_delay": 0.05,
    "reconnect_max_delay": 0.5,
    "liveness_interval": 1.0,
}
"""Runner settings that keep the tests quick (poll_interval stays long: wake-ups must do the work)."""


@contextlib.contextmanager
def running(runner: ProjectionRunner) -> Iterator[ProjectionRunner]:
    """Run ``runner.run()`` in a thread for the duration of the block; stop and join it after."""
    errors: list[BaseException] = []

    def target() -> None:
        try:
            runner.run()
        except BaseException as error:  # reported to the test below
            errors.append(error)

    thread = threading.Thread(target=target, name="test-runner", daemon=True)
    thread.start()
    try:
        yield runner
    finally:
        runner.stop()
        thread.join(15)
    assert not thread.is_alive(), "runner did not stop within 15 s"
    assert not errors, errors


def append_many(store: EventStore, stream_prefix: str, count: int, *, per_stream: int = 10) -> int:
    """Append ``count`` events over streams of ``per_stream`` events; returns the last position."""
    last = 0
    for start in range(0, count, per_stream):
        size = min(per_stream, count - start)
        events = [NewEvent("Tick", {"n": start + i}) for i in range(size)]
        last = store.append(f"{stream_prefix}-{start // per_stream}", events).global_position
    return last


def wait_for(condition: Callable[[], Any], *, timeout: float = 10.0, what: str = "condition") -> Any:
    """Poll ``condition`` until it returns something truthy (returned); AssertionError after ``timeout``."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() >= deadline:
            raise AssertionError(f"{what} not reached within {timeout} s")
        time.sleep(0.02)


class Processes:
    """Runner processes (``runner_process.py``) started by a test; their stderr goes to log files in ``log_dir``."""

    script = Path(__file__).with_name("runner_process.py")

    def __init__(self, url: str, log_dir: Path) -> None:
        self.url = url
        self.log_dir = log_dir
        self.started: list[subprocess.Popen[bytes]] = []

    def start(self, *options: str, url: str | None = None) -> subprocess.Popen[bytes]:
        """Start a runner process on ``url`` (default: the test database) with ``runner_process.py`` options."""
        with (self.log_dir / f"runner-{len(self.started)}.log").open("wb") as log:
            process = subprocess.Popen([sys.executable, str(self.script), url or self.url, *options], stderr=log)
        self.started.append(process)
        return process

    def logs(self) -> str:
        return "".join(f"--- {log.name}\n{log.read_text()}" for log in sorted(self.log_dir.glob("runner-*.log")))

    def stop_all(self) -> None:
        """Kill the processes still running and print their logs (shown by pytest when the test failed)."""
        for process in self.started:
            if process.poll() is None:
                process.kill()
            process.wait(10)
        print(self.logs())
