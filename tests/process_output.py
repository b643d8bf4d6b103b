"""Reading a child process's output line by line in tests, with waits that time out."""

from __future__ import annotations

import queue
import threading
from typing import IO

__all__ = ["drain", "lines_of", "wait_for_line"]


def lines_of(stream: IO[str]) -> queue.Queue[str]:
    """A queue fed with the lines of ``stream`` by a reader thread (so waits can time out)."""
    lines: queue.Queue[str] = queue.Queue()

    def pump() -> None:
        for line in stream:
            lines.put(line)

    threading.Thread(target=pump, daemon=True).start()
    return lines


def wait_for_line(lines: queue.Queue[str], needle: str, *, timeout: float = 20) -> list[str]:
    """The lines up to and including the first one containing ``needle`` (AssertionError after ``timeout``)."""
    seen: list[str] = []
    while True:
        try:
            line = lines.get(timeout=timeout)
        except queue.Empty:
            raise AssertionError(f"no line containing {needle!r} within {timeout} s; saw {seen}") from None
        seen.append(line)
        if needle in line:
            return seen


def drain(lines: queue.Queue[str]) -> list[str]:
    """The lines that still arrive, until none has for a second."""
    drained: list[str] = []
    while True:
        try:
            drained.append(lines.get(timeout=1.0))
        except queue.Empty:
            return drained
