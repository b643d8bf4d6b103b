"""Server-side prepared statements only where they work: a direct connection, decided at the first one.

psycopg prepares a statement on the server once it has run ``prepare_threshold``
(5) times on one connection, and from then on sends only its name
(https://www.psycopg.org/psycopg3/docs/advanced/prepare.html). A prepared
statement is session state. A pooler in transaction mode (PgBouncer before
1.21, or later ones without ``max_prepared_statements``) hands each
transaction whichever server session is free, so the name is missing there
(``InvalidSqlStatementName``), or already taken by another client's statement
(``DuplicatePreparedStatement``), or, worst, names another client's statement
whose parameters happen to fit, which then runs in its place
(https://www.pgbouncer.org/features.html). That is why the choice is made
before the first statement, never after the first error.

Turning preparation off costs every statement a parse and a plan (about 0.6 ms
per append on a direct connection, see the README), so a store keeps it where
it provably works. ``prepared_statements=None`` (the default) decides at the
first connection with one query, :data:`ROUTE_SQL`: a direct connection is one
where the server sees this process's own socket (the same client address and
port, the same server address and port; for a unix socket, the server's own
socket file). Anything else (a pooler or a proxy of any mode, NAT) turns
preparation off for the store, with one INFO log line saying how to turn it
back on (``prepared_statements=True``) for a pooler that keeps sessions.
"""

from __future__ import annotations

import ipaddress
import logging
import os
import socket
import threading
import weakref
from dataclasses import dataclass
from typing import Any

from psycopg import pq
from sqlalchemy import event
from sqlalchemy.engine import Engine

from eventstore.database import describe_target
from eventstore.errors import ConfigurationError

__all__ = [
    "ROUTE_SQL",
    "PreparedStatements",
    "Route",
    "guard_engine",
    "prepared_statements_for",
    "route_of",
    "share_choice",
]

logger = logging.getLogger(__name__)

ROUTE_SQL = (
    "SELECT host(inet_client_addr()), inet_client_port(), host(inet_server_addr()), inet_server_port(), "
    "current_setting('port'), (SELECT setting FROM pg_settings WHERE name = 'unix_socket_directories')"
)
"""What the server sees of this connection (https://www.postgresql.org/docs/current/functions-info.html):
NULL addresses for a unix socket. ``unix_socket_directories`` is read from ``pg_settings``, which
hides it (NULL) from a role without ``pg_read_all_settings`` instead of failing as
``current_setting`` does."""


@dataclass(frozen=True, slots=True)
class Route:
    """Whether a connection reaches PostgreSQL directly, and the evidence in words."""

    direct: bool
    evidence: str


def route_of(row: tuple[Any, ...], fd: int) -> Route:
    """Compare :data:`ROUTE_SQL`'s ``row`` with the two ends of the client socket ``fd``."""
    client_host, client_port, server_host, server_port, port, directories = row
    with socket.socket(fileno=os.dup(fd)) as sock:  # a duplicate: closing it leaves the connection open
        family, local, peer = sock.family, sock.getsockname(), sock.getpeername()
    if family == socket.AF_UNIX:
        path = os.path.join(os.path.realpath(os.path.dirname(peer)), os.path.basename(peer)) if peer else ""
        if directories is None:  # hidden from this role: the socket file's port must be the server's
            own = os.path.basename(path) == f".s.PGSQL.{port}"
        else:
            own = path in {
                os.path.join(os.path.realpath(directory.strip()), f".s.PGSQL.{port}")
                for directory in str(directories).split(",")
                if directory.strip() and not directory.strip().startswith("@")
            }
        if client_host is None and own:
            return Route(True, f"unix socket {peer} is the server's own")
        seen = "a unix socket" if client_host is None else f"client {client_host}:{client_port}"
        return Route(False, f"this process uses unix socket {peer or '?'}; the server sees {seen} on port {port}")
    if client_host is None:
        return Route(False, f"this process uses TCP ({_address(local)}); the server sees a unix-socket client")
    if _same(local, client_host, client_port) and _same(peer, server_host, server_port):
        return Route(True, f"the server sees this process's own address {_address(local)}")
    return Route(
        False,
        f"this process is {_address(local)} connected to {_address(peer)}; the server sees client "
        f"{client_host}:{client_port} on {server_host}:{server_port}",
    )


def _same(end: Any, host: str | None, port: int | None) -> bool:
    if host is None or port is None:
        return False
    return _ip(end[0]) == _ip(host) and int(end[1]) == int(port)


def _ip(text: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
    address = ipaddress.ip_address(text.split("%", 1)[0])
    mapped = getattr(address, "ipv4_mapped", None)  # ::ffff:127.0.0.1 is 127.0.0.1
    return mapped or address


def _address(end: Any) -> str:
    return f"{end[0]}:{end[1]}"


# The automatic choice of each engine, shared by every store on it (a store made
# per request asks once per engine, not once per store).
_BY_ENGINE: weakref.WeakKeyDictionary[Engine, PreparedStatements] = weakref.WeakKeyDictionary()
_BY_ENGINE_LOCK = threading.Lock()


def prepared_statements_for(engine: Engine, setting: bool | None) -> PreparedStatements:
    """The choice of a sync store on ``engine``: its own when explicit, the engine's shared one when automatic."""
    if setting is not None:
        return PreparedStatements(setting, describe_target(engine))
    with _BY_ENGINE_LOCK:
        choice = _BY_ENGINE.get(engine)
        if choice is None:
            choice = _BY_ENGINE[engine] = PreparedStatements(None, describe_target(engine))
        return choice


def guard_engine(engine: Engine, choice: PreparedStatements) -> None:
    """Make ``engine``'s own connections follow ``choice``: no automatic prepared statements where it says no.

    For engines eventstore makes (a store's from a URL, the runner's):
    statements run on them through SQLAlchemy, e.g. ``append(connection=...)``
    on ``store.engine`` or a runner's batches, would otherwise be prepared by
    psycopg after ``prepare_threshold`` (5) runs. The first connection of
    either decides, if nothing did yet.
    """

    @event.listens_for(engine, "connect")
    def _no_prepared_statements_behind_a_pooler(driver: Any, record: Any) -> None:
        # ``driver`` is the new psycopg Connection, before anything ran on it.
        if not choice.decided:
            choice.decide_sync(driver)
            if driver.info.transaction_status != pq.TransactionStatus.IDLE:
                driver.rollback()  # the deciding query began a transaction: hand the connection out clean
        if choice.prepare is False:
            driver.prepare_threshold = None


def share_choice(engine: Engine, choice: PreparedStatements) -> None:
    """Make ``choice`` the automatic one of ``engine`` too (an engine made for the same server, e.g. the runner's)."""
    with _BY_ENGINE_LOCK:
        _BY_ENGINE[engine] = choice


class PreparedStatements:
    """A store's choice of psycopg's ``prepare=`` argument: ``None`` (prepare after the threshold) or ``False``.

    ``setting`` is the store's ``prepared_statements``: True or False decide;
    None decides at the first connection (:func:`route_of`) and keeps the
    answer for every later statement. Thread-safe; the asyncio store asks
    from one event loop (two tasks racing to decide decide the same).
    """

    def __init__(self, setting: bool | None, where: str) -> None:
        if setting is not None and not isinstance(setting, bool):
            raise ConfigurationError(f"prepared_statements must be True, False or None, got {setting!r}")
        self.setting = setting
        self.where = where
        self._decided: bool | None = setting
        self._lock = threading.Lock()

    @property
    def decided(self) -> bool:
        """True once the store knows (explicitly, or from its first connection)."""
        return self._decided is not None

    @property
    def prepare(self) -> bool | None:
        """psycopg's ``prepare=`` for a statement: None lets psycopg prepare, False never does.

        Only meaningful once :attr:`decided`; until then False (the safe side).
        """
        return None if self._decided else False

    def decide_sync(self, connection: Any) -> bool | None:
        """Decide on ``connection`` (a psycopg ``Connection``, nothing run on it yet) if not yet; ``prepare=``."""
        if self._decided is None:
            with self._lock:
                if self._decided is None:
                    row = connection.execute(ROUTE_SQL, prepare=False).fetchone()
                    self._record(route_of(row, connection.pgconn.socket))
        return self.prepare

    async def decide_async(self, connection: Any) -> bool | None:
        """:meth:`decide_sync` for a psycopg ``AsyncConnection``."""
        if self._decided is None:
            cursor = await connection.execute(ROUTE_SQL, prepare=False)
            self._record(route_of(await cursor.fetchone(), connection.pgconn.socket))
        return self.prepare

    def _record(self, route: Route) -> None:
        if route.direct:
            logger.debug("direct connection to %s (%s): prepared statements on", self.where, route.evidence)
        else:
            logger.info(
                "connections to %s go through a pooler or proxy (%s): server-side prepared statements are off, "
                "as a transaction-mode pooler cannot keep them; pass prepared_statements=True if it keeps sessions",
                self.where,
                route.evidence,
                extra={"target": self.where, "route_evidence": route.evidence},
            )
        self._decided = route.direct
