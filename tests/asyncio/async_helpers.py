"""Helpers of the asyncio store's own tests (fixtures in conftest.py).

As in tests/contract and tests/subscriptions, pytest-asyncio is not a
dependency: the loop runs in a thread of its own and the test thread hands it
coroutines (``loop.run``) or starts tasks on it (``loop.start``). Nothing
waits a fixed time: every wait is on a condition, with a timeout.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Awaitable, Callable
from concurrent.futures import Future
from typing import Any, TypeVar

import psycopg

from eventstore import NewEvent

T = TypeVar("T")
TIMEOUT = 20.0
STORE_APPLICATION = "es-test-async-store"
"""The ``application_name`` of the store under test's own connections (to find its backends)."""


class Loop:
    """An event loop in a thread; the test thread hands it coroutines."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, name="asyncio-tests-loop", daemon=True)
        self.thread.start()

    def start(self, awaitable: Awaitable[T]) -> Future[T]:
        """Run ``awaitable`` as a task of the loop; its concurrent Future (``cancel()`` cancels the task)."""

        async def wrapped() -> T:
            return await awaitable

        return asyncio.run_coroutine_threadsafe(wrapped(), self.loop)

    def run(self, awaitable: Awaitable[T], timeout: float = TIMEOUT) -> T:
        return self.start(awaitable).result(timeout=timeout)

    def close(self) -> None:
        async def cancel_the_rest() -> None:
            tasks = [task for task in asyncio.all_tasks() if task is not asyncio.current_task()]
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

        self.run(cancel_the_rest())
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(timeout=TIMEOUT)
        self.loop.close()


def store_backends(admin: psycopg.Connection[Any]) -> list[tuple[int, str, str | None, str]]:
    """``(pid, state, wait_event_type, query)`` of the store under test's connections."""
    rows = admin.execute(
        "SELECT pid, state, wait_event_type, query FROM pg_stat_activity "
        "WHERE datname = current_database() AND application_name = %s ORDER BY pid",
        (STORE_APPLICATION,),
    ).fetchall()
    return [(int(pid), str(state), wait, str(query)) for pid, state, wait, query in rows]


def wait_for(predicate: Callable[[], bool], what: str, timeout: float = TIMEOUT) -> None:
    """Poll ``predicate`` from the test thread until it holds (a condition, never a fixed sleep)."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.01)


def waiting_on_a_lock(admin: psycopg.Connection[Any], query_start: str) -> list[int]:
    """Pids of the store's backends whose statement (starting ``query_start``) waits for a lock."""
    return [
        pid
        for pid, state, wait, query in store_backends(admin)
        if state == "active" and wait == "Lock" and query.lstrip().startswith(query_start)
    ]


def placed(total: int = 1) -> NewEvent:
    return NewEvent("OrderPlaced", {"total": total})
