"""Measurement 6: commit-to-client latency over server-sent events, with 1 and with 1,000 clients connected.

Processes (2 cores, so the OS schedules them; none is pinned):

- the **server**: uvicorn serving ``eventstore.web.create_app(
  AsyncEventStore(url))`` on 127.0.0.1, in a process of its own, with what
  ``eventstore serve`` would use here (:func:`server_parts`: httptools if it
  is installed, else h11; uvloop if installed, else asyncio's loop); the
  report's notes say which;
- the **probe clients** (1, or 10 with 1,000 connected), in a process of
  their own, so that the time they are stamped is not held up by the other
  990 clients' reading;
- the **load clients** (990 with 1,000 connected), in another process; every
  one of them reads and stamps every message too (the "all clients" figures,
  which include that process's own queueing);
- the parent, which appends one event with :class:`eventstore.EventStore`.

Clients are raw sockets (an HTTP/1.1 ``GET /api/events``, then one ``epoll``
loop of non-blocking ``recv`` calls per process), much lighter than an HTTP
client library or asyncio streams at 1,000 connections: a browser's parsing
runs on the browser's machine, not on the server's cores. The probes connect
after the 990 load clients, so they are the last subscriptions of the
server's store: if the server serves subscribers in the order they joined,
the probes see the slowest delivery.

The clock starts just before the append and stops when a client's process
reads the message's ``id:`` line (both clocks are the machine's wall clock).
Per ping, the first client's read time is the wake-up, the server's read and
one write; the last client's adds the fan-out to every client, which is how
the figure splits between the server's fixed work and its per-client work.
Each ping waits until every connected client has its message, then pauses
5-15 ms, so each ping finds the server idle. The baseline is
:mod:`benchmarks.latency`'s raw LISTEN/NOTIFY round trip (insert and
``pg_notify`` in one transaction; a listening process stamps the arrival), in a
database of its own, measured right next to the SSE pings of each case with
the same clients connected (idle, since nothing is appended to their
database), rounds rotating which goes first. Server and client CPU per ping
come from ``/proc/<pid>/stat``.

The **floor** (:func:`_floor_main`) is what any server costs here, whatever
its code: a process that LISTENs with psycopg and, on each notification,
``send``-s one ready-made message of the same size to each of its client
sockets in a plain loop (no HTTP framework, no event loop, no read of the
event, no filter). Every client process holds a connection per client to each
contender, so every contender's pings reach the same number of clients, read
by the same loops: what the SSE row has beyond the floor is the server's own
work; what the floor has beyond the raw round trip is the kernel's (one
``send`` per client, each waking a reader) on these cores. The same floor in
**two processes**, each listening and writing to half of the clients, shows
what splitting the fan-out over the cores can win here; and **two SSE server
processes** (each its own ``AsyncEventStore``, as two uvicorn workers of one
app would run, half of the clients each) what it wins for eventstore's server.
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import queue
import random
import statistics
import time
import uuid
from pathlib import Path
from typing import Any

from benchmarks.latency import _Pinger
from benchmarks.plan import Plan
from benchmarks.report import Results
from benchmarks.server import BenchServer
from eventstore.web import loop as event_loop

__all__ = ["measure_sse"]

logger = logging.getLogger(__name__)

SECTION = "Commit-to-client latency over SSE (append call -> SSE client reads the message, ms)"
SSE = "SSE GET /api/events"
SSE_PAIR = "SSE, 2 server processes"
FLOOR = "floor: bare socket fan-out"
FLOOR_PAIR = "floor, 2 processes"
RAW = "raw LISTEN/NOTIFY"
_SERVERS = {SSE: ("bench_sse", 1), SSE_PAIR: ("bench_sse_pair", 2)}
"""Each SSE contender's database and server processes (which share its clients between them)."""
_FLOORS = {FLOOR: ("bench_sse_floor", 1), FLOOR_PAIR: ("bench_sse_floor_pair", 2)}
"""Each floor's notification channel and processes."""
_PAIR_POSITIONS = 500_000_000
"""Where the two-process server's database numbers its events: apart from the other's (the clients count by id)."""
_FLOOR_KEYS = 1_000_000_000
"""The floor's pings carry ids from here on, apart from the SSE events' positions (the clients count by id)."""
_FLOOR_DATA = "x" * 200
"""About the size of a ping's SSE ``data:`` line (its event as JSON)."""
_PROBES = 10
_CONNECTING_AT_ONCE = 50
_TIMEOUT = 60.0
_PAUSE = 0.01


def server_parts() -> tuple[str, str]:
    """uvicorn's ``(http, loop)`` choice in this environment, as its ``"auto"`` makes it (and ``eventstore serve``)."""
    import importlib.util

    http = "httptools" if importlib.util.find_spec("httptools") is not None else "h11"
    loop = "uvloop" if event_loop.uvloop_installed() else "asyncio"
    return http, loop


def _server_main(url: str, ports: Any) -> None:
    """Child process: uvicorn serving the web app on a loopback port it reports (then runs until terminated)."""
    import socket

    import uvicorn

    from eventstore import AsyncEventStore
    from eventstore.web import create_app

    listening = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listening.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listening.bind(("127.0.0.1", 0))
    listening.listen(2048)
    ports.put(listening.getsockname()[1])

    async def serve() -> None:
        async with AsyncEventStore(url) as store:
            http, _ = server_parts()
            config = uvicorn.Config(
                create_app(store), http=http, log_level="warning", access_log=False, lifespan="off", backlog=2048
            )
            await uvicorn.Server(config).serve(sockets=[listening])

    event_loop.run(serve())  # what `eventstore serve` runs on here


def _floor_main(libpq_url: str, channel: str, ports: Any, stop: Any) -> None:
    """Child process: the floor (see the module): on each notification, one ``send`` of one message per client."""
    import socket
    import threading

    import psycopg

    listening = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listening.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listening.bind(("127.0.0.1", 0))
    listening.listen(2048)
    clients: list[socket.socket] = []

    def accept() -> None:
        while True:
            client, _ = listening.accept()
            client.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)  # as uvicorn sets it
            request = b""
            while b"\r\n\r\n" not in request:
                request += client.recv(4096)
            client.sendall(b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\n")
            clients.append(client)

    threading.Thread(target=accept, daemon=True).start()
    with psycopg.connect(libpq_url, autocommit=True) as connection:
        connection.execute("LISTEN " + channel)
        ports.put(listening.getsockname()[1])
        while not stop.is_set():
            for notify in connection.notifies(timeout=0.5):
                message = f"id: {notify.payload}\r\nevent: Ping\r\ndata: {_FLOOR_DATA}\r\n\r\n".encode()
                chunk = b"%x\r\n%s\r\n" % (len(message), message)
                for client in list(clients):
                    try:
                        client.send(chunk)  # a few hundred bytes into an empty socket buffer: never blocks here
                    except OSError:  # a client of an earlier case, gone
                        clients.remove(client)
                        client.close()


def _clients_main(servers: tuple[tuple[int, ...], ...], count: int, tag: str, replies: Any, stop: Any) -> None:
    """Child process: ``count`` SSE clients of each server; reports (tag, id, [read times]) once ``count`` read an id.

    A server is a tuple of ports (the processes of one server, as the
    two-process floor): its ``count`` clients are spread over them in turn.

    Plain non-blocking sockets and one ``epoll``, no asyncio streams: a
    readable socket costs one ``recv`` and a split into lines, so that 990
    clients in one process use little of the CPU the server needs (the
    asyncio ``StreamReader`` clients of the first runs used about 70 ms of CPU
    per event for 990 clients, on the same 2 cores as the server). A read is
    stamped when ``recv`` returns the message's ``id:`` line.
    """
    import select
    import socket

    sockets: dict[int, socket.socket] = {}
    partial: dict[int, bytes] = {}
    for ports, first in ((ports, first) for ports in servers for first in range(0, count, _CONNECTING_AT_ONCE)):
        batch = [
            socket.create_connection(("127.0.0.1", ports[number % len(ports)]))
            for number in range(first, min(first + _CONNECTING_AT_ONCE, count))
        ]
        for connection in batch:
            host = f"127.0.0.1:{connection.getpeername()[1]}"
            connection.sendall(
                f"GET /api/events HTTP/1.1\r\nHost: {host}\r\nAccept: text/event-stream\r\n\r\n".encode()
            )
        for connection in batch:  # the headers come once the server has entered the subscription
            received = b""
            while b"\r\n\r\n" not in received:
                chunk = connection.recv(4096)
                if not chunk:
                    raise RuntimeError("the server closed an SSE connection before its headers")
                received += chunk
            head, _, rest = received.partition(b"\r\n\r\n")
            if b" 200 " not in head.split(b"\r\n", 1)[0]:
                raise RuntimeError(f"GET /api/events answered {head[:200]!r}")
            connection.setblocking(False)
            sockets[connection.fileno()] = connection
            partial[connection.fileno()] = rest
    poller = select.epoll()
    for fileno in sockets:
        poller.register(fileno, select.EPOLLIN)
    arrivals: dict[int, list[float]] = {}
    replies.put((tag, 0, []))  # connected
    while not stop.is_set():
        for fileno, _ in poller.poll(0.1):
            data = sockets[fileno].recv(65536)
            at = time.time()
            if not data:
                poller.unregister(fileno)
                continue
            # Chunked transfer encoding adds "<size>" lines, which never start with "id: ".
            *lines, partial[fileno] = (partial[fileno] + data).split(b"\r\n")
            for line in lines:
                if line.startswith(b"id: "):
                    position = int(line[4:])
                    times = arrivals.setdefault(position, [])
                    times.append(at)
                    if len(times) == count:
                        replies.put((tag, position, arrivals.pop(position)))
    for connection in sockets.values():
        connection.close()


def _cpu_seconds(pid: int) -> float:
    """utime + stime of process ``pid`` (Linux ``/proc/<pid>/stat``), 0.0 where that is not readable."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


class _Clients:
    """One client process and its stop flag."""

    def __init__(self, context: Any, servers: tuple[tuple[int, ...], ...], count: int, tag: str, replies: Any) -> None:
        self.tag = tag
        self.count = count
        self.stop = context.Event()
        self.process = context.Process(
            target=_clients_main, args=(servers, count, tag, replies, self.stop), daemon=True
        )
        self.process.start()

    def close(self) -> None:
        self.stop.set()
        self.process.join(timeout=15)
        if self.process.is_alive():
            self.process.terminate()


class _SsePinger:
    """Parent side: the SSE server and the floor, their clients, and what sends the pings (a store, a raw connection).

    ``floor_database`` is a migrated database whose ``events`` triggers are
    disabled (the raw round trip's): the floor's pings are inserted there.
    """

    def __init__(self, server: BenchServer, *, floor_database: str) -> None:
        import psycopg

        from eventstore import EventStore

        self.context = multiprocessing.get_context("spawn")
        ports: Any = self.context.Queue()
        self.replies: Any = self.context.Queue()
        self.floor_stop = self.context.Event()
        self.stores: dict[str, EventStore] = {}
        self.processes: dict[str, list[Any]] = {}
        """Each contender's server processes (SSE servers and floors)."""
        self.ports: dict[str, tuple[int, ...]] = {}
        for contender, (database, count) in _SERVERS.items():
            server.create_database(database)
            if contender == SSE_PAIR:
                server.execute(database, f"ALTER TABLE events ALTER COLUMN global_position RESTART {_PAIR_POSITIONS}")
            url = server.url(database)
            self.stores[contender] = EventStore(url)
            self._start_servers(contender, _server_main, (url, ports), count, ports)
        for contender, (channel, count) in _FLOORS.items():
            arguments = (server.libpq_url(floor_database), channel, ports, self.floor_stop)
            self._start_servers(contender, _floor_main, arguments, count, ports)
        self.floor_connection = psycopg.connect(server.libpq_url(floor_database))
        self.clients: list[_Clients] = []
        self.pending: dict[tuple[str, int], list[float]] = {}
        self.sequence = 0

    def _start_servers(self, contender: str, target: Any, arguments: tuple[Any, ...], count: int, ports: Any) -> None:
        processes = [self.context.Process(target=target, args=arguments, daemon=True) for _ in range(count)]
        for process in processes:
            process.start()
        self.processes[contender] = processes
        self.ports[contender] = tuple(int(ports.get(timeout=_TIMEOUT)) for _ in range(count))

    def connect(self, count: int) -> None:
        """Replace the connected clients by ``count`` (the load first, then the probes)."""
        self.disconnect()
        probes = min(count, _PROBES) if count > 1 else 1
        if count > probes:
            self._start(count - probes, "load")
        self._start(probes, "probe")

    def _start(self, count: int, tag: str) -> None:
        clients = _Clients(self.context, tuple(self.ports.values()), count, tag, self.replies)
        self.clients.append(clients)
        self._expect(tag, 0)

    def disconnect(self) -> None:
        for clients in self.clients:
            clients.close()
        self.clients = []

    def cpu_seconds(self, contender: str = SSE) -> tuple[float, float]:
        """CPU seconds used so far by ``contender``'s server processes and by all client processes."""
        serving = self.processes[contender]
        return sum(_cpu_seconds(process.pid) for process in serving if process.pid is not None), sum(
            _cpu_seconds(clients.process.pid) for clients in self.clients if clients.process.pid is not None
        )

    def ping(self, contender: str = SSE) -> tuple[list[float], list[float]]:
        """One append (or, for a floor, the raw insert and notify); (the probes', every client's latencies) in ms."""
        from eventstore import NewEvent

        self.sequence += 1
        stream_id = f"sse-{uuid.uuid4().hex[:12]}"
        sent = time.time()
        if contender in _FLOORS:
            position = _FLOOR_KEYS + self.sequence
            self.floor_connection.execute(
                "INSERT INTO events (transaction_order, event_id, stream_id, stream_version, event_type, data) "
                "VALUES (pg_current_xact_id(), %s, %s, 1, 'Ping', %s::jsonb)",
                (uuid.uuid4(), stream_id, f'{{"n": {self.sequence}}}'),
            )
            self.floor_connection.execute("SELECT pg_notify(%s, %s)", (_FLOORS[contender][0], str(position)))
            self.floor_connection.commit()
        else:
            store = self.stores[contender]
            position = store.append(stream_id, [NewEvent("Ping", {"n": self.sequence})]).global_position
        probes: list[float] = []
        everyone: list[float] = []
        for clients in self.clients:
            times = [(at - sent) * 1000.0 for at in self._expect(clients.tag, position)]
            everyone += times
            if clients.tag == "probe":
                probes = times
        return probes, everyone

    def _expect(self, tag: str, position: int) -> list[float]:
        """The read times ``tag``'s clients report for ``position`` (0: connected); others are kept for later."""
        if (tag, position) in self.pending:
            return self.pending.pop((tag, position))
        deadline = time.monotonic() + _TIMEOUT
        while True:
            try:
                got_tag, got_position, times = self.replies.get(timeout=max(0.01, deadline - time.monotonic()))
            except queue.Empty:
                raise TimeoutError(f"SSE {tag} clients: position {position} not read within {_TIMEOUT} s") from None
            if (got_tag, got_position) == (tag, position):
                return list(times)
            self.pending[(got_tag, got_position)] = list(times)

    def close(self) -> None:
        self.disconnect()
        self.floor_stop.set()
        for contender in _SERVERS:
            for process in self.processes[contender]:
                process.terminate()
        for process in (process for processes in self.processes.values() for process in processes):
            process.join(timeout=15)
            if process.is_alive():
                process.kill()
        self.floor_connection.close()
        for store in self.stores.values():
            store.engine.dispose()


def _percentile(ordered: list[float], fraction: float) -> float:
    return ordered[min(len(ordered) - 1, round(fraction * (len(ordered) - 1)))]


def measure_sse(server: BenchServer, results: Results, plan: Plan) -> None:
    """p50/p99 per case (1 and 1,000 clients connected), each next to the raw round trip, rounds alternating."""
    try:
        import uvicorn  # noqa: F401 - the web extra
    except ImportError:
        results.notes.append("SSE latency skipped: the web extra (uvicorn, starlette) is not installed")
        return
    http, loop = server_parts()
    results.notes.append(f"SSE server: uvicorn with {http} and the {loop} event loop")
    server.create_database("bench_sse_raw")
    server.execute("bench_sse_raw", "ALTER TABLE events DISABLE TRIGGER events_notify_v3")
    server.execute("bench_sse_raw", "ALTER TABLE events DISABLE TRIGGER events_forbid_update_delete_v1")
    raw = _Pinger(RAW, server, raw_database="bench_sse_raw")
    sse = _SsePinger(server, floor_database="bench_sse_raw")
    contenders = (SSE, SSE_PAIR, FLOOR, FLOOR_PAIR, RAW)
    try:
        for clients in plan.sse_client_counts:
            began = time.monotonic()
            sse.connect(clients)
            logger.info("sse: %d clients connected in %.1f s", clients, time.monotonic() - began)
            case = f"{clients:,} client{'s' if clients > 1 else ''} connected, p99"
            for warming_up in (*_SERVERS, *_FLOORS):  # the servers' subscription hubs and LISTEN connections are up
                sse.ping(warming_up)
            for round_number in range(plan.sse_repeats):
                shift = round_number % len(contenders)
                for contender in contenders[shift:] + contenders[:shift]:
                    if contender == RAW:
                        samples = []
                        for _ in range(plan.sse_pings):
                            samples.append(raw.ping())
                            time.sleep(_PAUSE * (0.5 + random.random()))
                        _record(results, case, RAW, samples, {})
                        continue
                    probes: list[float] = []
                    everyone: list[float] = []
                    firsts: list[float] = []  # per ping, the first client's read: wake-up + read + one write
                    lasts: list[float] = []  # per ping, the last client's: that + the fan-out to all of them
                    server_cpu, clients_cpu = sse.cpu_seconds(contender)
                    for _ in range(plan.sse_pings):
                        mine, all_of_them = sse.ping(contender)
                        probes += mine
                        everyone += all_of_them
                        firsts.append(min(all_of_them))
                        lasts.append(max(all_of_them))
                        time.sleep(_PAUSE * (0.5 + random.random()))
                    server_after, clients_after = sse.cpu_seconds(contender)
                    ordered = sorted(everyone)
                    extra = {
                        "all clients p50": statistics.median(ordered),
                        "all clients p99": _percentile(ordered, 0.99),
                        "first client p50": statistics.median(firsts),
                        "last client p50": statistics.median(lasts),
                        "server CPU ms/ping": (server_after - server_cpu) * 1000.0 / plan.sse_pings,
                        "clients CPU ms/ping": (clients_after - clients_cpu) * 1000.0 / plan.sse_pings,
                    }
                    _record(results, case, contender, probes, extra)
        if max(plan.sse_client_counts) < 1000:
            results.notes.append(
                "SSE latency with 1,000 clients skipped in --quick (connecting them takes 5-18 s and each ping "
                "fans out for about 0.1 s on 2 busy cores); the full run measures it"
            )
    finally:
        sse.close()
        raw.close()


def _record(results: Results, case: str, contender: str, samples: list[float], extra: dict[str, float]) -> None:
    ordered = sorted(samples)
    p99 = _percentile(ordered, 0.99)
    extra = {"p50": statistics.median(ordered), "max": ordered[-1], "samples": float(len(ordered)), **extra}
    logger.info("sse latency %s %s: p50 %.2f p99 %.2f ms %s", case, contender, extra["p50"], p99, extra)
    compare_to = {
        SSE: (RAW, FLOOR),
        SSE_PAIR: (RAW, SSE, FLOOR_PAIR),
        FLOOR: (RAW,),
        FLOOR_PAIR: (RAW, FLOOR),
    }.get(contender, ())
    results.add(SECTION, case, contender, p99, unit="ms", compare_to=compare_to, extra=extra)
