"""``eventstore serve --workers N``: N server processes on one port, each with its own store and LISTEN connection."""

from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import httpx
import sqlalchemy as sa

from eventstore import EventStore, NewEvent
from tests.web.test_api import free_port
from tests.web.test_sse_fan_out import RawClient

LISTENING = sa.text(  # each process's subscription hub: its LISTEN connection
    "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
    "AND application_name = 'eventstore-subscriptions'"
)


class Served:
    """The ``eventstore serve`` process; its stderr read in a thread (the server processes' pids noted)."""

    def __init__(self, database_url: str, *arguments: str) -> None:
        self.port = free_port()
        environment = {key: value for key, value in os.environ.items() if not key.startswith("EVENTSTORE_")}
        environment |= {"EVENTSTORE_URL": database_url, "EVENTSTORE_PORT": str(self.port)}
        self.process = subprocess.Popen(
            [str(Path(sys.executable).with_name("eventstore")), "serve", *arguments],
            stderr=subprocess.PIPE, text=True, env=environment,
            start_new_session=True,  # its own process group: stop() ends the server processes with it
        )  # fmt: skip
        self.lines: list[str] = []
        self.workers: list[int] = []
        self.ready = threading.Event()
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()

    def _read(self) -> None:
        assert self.process.stderr is not None
        for line in self.process.stderr:
            self.lines.append(line)
            if found := re.search(r"Started server process \[(\d+)\]", line):
                self.workers.append(int(found[1]))
            if "Application startup complete." in line and len(self.workers) == 2:
                self.ready.set()
        self.ready.set()  # ended

    def stop(self) -> None:
        """Kill what is left: the parent and its server processes (which a killed parent would leave running)."""
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, signal.SIGKILL)
        self.process.wait()
        self.reader.join(10)  # at the end of stderr
        if self.process.stderr is not None:
            self.process.stderr.close()


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def test_serve_with_two_workers_streams_every_event_from_both_processes_until_ctrl_c(
    database_url: str, store: EventStore, engine: sa.Engine
) -> None:
    served = Served(database_url, "--workers", "2")
    clients: list[RawClient] = []
    try:
        assert served.ready.wait(60) and served.process.poll() is None, "".join(served.lines)
        assert "2 server processes" in "".join(served.lines)
        assert len(set(served.workers)) == 2 and served.process.pid not in served.workers
        base = f"http://127.0.0.1:{served.port}"
        assert httpx.post(f"{base}/api/streams/order-1", json={"type": "A"}, timeout=10).status_code == 201
        # The kernel hands each connection to whichever process accepts it first: open streams until both
        # processes serve some (each then holds its own LISTEN connection).
        web: Any = SimpleNamespace(base_url=base)
        deadline = time.monotonic() + 30
        listening = 0
        while listening < 2:
            assert time.monotonic() < deadline and len(clients) < 200, f"{listening} LISTEN connection(s)"
            clients.append(RawClient(web))
            time.sleep(0.05)
            with engine.connect() as connection:
                listening = int(connection.execute(LISTENING).scalar_one())
        stream = "order-2"
        store.append(stream, [NewEvent("OrderPlaced", {"n": number}) for number in range(3)])
        positions = [event.global_position for event in store.read_stream(stream)]
        for client in clients:
            assert client.ids(3) == positions  # from after the head at connection: every event once, in order
        served.process.send_signal(signal.SIGINT)
        assert served.process.wait(timeout=20) == 0, "".join(served.lines[-20:])
        assert not any(alive(pid) for pid in served.workers)
    finally:
        for client in clients:
            client.close()
        served.stop()
