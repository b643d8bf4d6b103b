"""Scripts using the store and the runner leave no connection unclosed (``python -X dev``).

psycopg warns (``ResourceWarning``) when a connection that is not in *its*
pool is garbage-collected while open; a ``ResourceWarning`` raised in
``__del__`` only prints "Exception ignored in ..." and the script still exits
0, so these tests look at stderr. Each script runs in a fresh interpreter
because the warnings that matter fire at interpreter exit.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

_PROJECTION = """
import gc
import sys
import threading

import psycopg
import sqlalchemy as sa

from eventstore import EventStore, NewEvent, Projection, ProjectionRunner, handles


class Counter(Projection):
    name = "counter"

    @handles("Happened")
    def on_happened(self, event, connection):
        connection.execute(sa.text("SELECT 1"))


def open_connections():
    gc.collect()
    return [c for c in gc.get_objects() if isinstance(c, psycopg.Connection) and not c.closed]


url = sys.argv[1]
"""


def run_script(tmp_path: Path, body: str, database_url: str) -> subprocess.CompletedProcess[str]:
    script = tmp_path / "script.py"
    script.write_text(textwrap.dedent(_PROJECTION) + textwrap.dedent(body))
    return subprocess.run(
        [sys.executable, "-X", "dev", "-W", "error::ResourceWarning", str(script), database_url],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=tmp_path,
    )


def assert_clean(result: subprocess.CompletedProcess[str]) -> None:
    assert result.returncode == 0, result.stderr
    assert "ResourceWarning" not in result.stderr, result.stderr
    assert "Warning" not in result.stderr, result.stderr
    assert result.stdout.strip().endswith("ok"), result.stdout


def test_a_script_that_never_closes_the_store_leaves_no_connection_open(tmp_path: Path, database_url: str) -> None:
    # The report: a store made from a URL, a catch-up, and the script ends.
    # The store's engine (its pool) and its append connections are released
    # at exit without a close() call.
    result = run_script(
        tmp_path,
        """
        store = EventStore(url)
        store.append("thing-1", [NewEvent("Happened", {"n": 1})])
        assert ProjectionRunner(store, [Counter()]).run_until_caught_up() == 1
        assert list(store.read_all())
        print("ok")
        """,
        database_url,
    )
    assert_clean(result)


def test_closing_the_store_and_the_runner_releases_every_connection(tmp_path: Path, database_url: str) -> None:
    # With close() (context managers) nothing is left open even before exit:
    # the runner's listener and session connections, the store's pool and its
    # append connections.
    result = run_script(
        tmp_path,
        """
        with EventStore(url) as store, ProjectionRunner(store, [Counter()], poll_interval=0.2) as runner:
            thread = threading.Thread(target=runner.run)
            thread.start()
            appended = store.append("thing-1", [NewEvent("Happened", {"n": 1})])
            runner.wait_until_processed(appended.global_position, timeout=30)
            assert runner.run_until_caught_up(timeout=30) == 0  # run() is active: it only waits
        thread.join(timeout=30)
        assert not thread.is_alive()
        left = open_connections()
        assert not left, f"still open after close(): {left}"

        # The same for a catch-up without run(), and a store read after a close (it reopens).
        store = EventStore(url)
        with store, ProjectionRunner(store, [Counter()]) as runner:
            store.append("thing-1", [NewEvent("Happened", {"n": 2})])
            assert runner.run_until_caught_up(timeout=30) == 1
        assert len(list(store.read_all())) == 2
        store.close()
        left = open_connections()
        assert not left, f"still open after close(): {left}"
        print("ok")
        """,
        database_url,
    )
    assert_clean(result)


def test_a_store_on_your_engine_closes_its_append_connections(tmp_path: Path, database_url: str) -> None:
    # An engine passed in stays the caller's: close() leaves its pool alone,
    # the caller disposes it, and then nothing is open.
    result = run_script(
        tmp_path,
        """
        engine = sa.create_engine(url)
        with EventStore(engine) as store:
            store.append("thing-1", [NewEvent("Happened", {"n": 1})])
            ProjectionRunner(store, [Counter()]).run_until_caught_up(timeout=30)
        with engine.connect() as connection:  # still usable: the store did not dispose it
            connection.execute(sa.text("SELECT 1"))
        engine.dispose()
        left = open_connections()
        assert not left, f"still open after close() and dispose(): {left}"
        print("ok")
        """,
        database_url,
    )
    assert_clean(result)
