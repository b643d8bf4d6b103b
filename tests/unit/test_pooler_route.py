"""route_of: a connection is direct only when the server sees this process's own socket."""

from __future__ import annotations

import socket
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from eventstore.store.poolers import route_of


@contextmanager
def tcp_pair() -> Iterator[tuple[socket.socket, socket.socket]]:
    with socket.create_server(("127.0.0.1", 0)) as server:
        client = socket.create_connection(server.getsockname())
        accepted, _ = server.accept()
        with client, accepted:
            yield client, accepted


def test_tcp_direct_when_both_ends_match() -> None:
    with tcp_pair() as (client, _):
        (host, port), (server_host, server_port) = client.getsockname(), client.getpeername()
        row = (host, port, server_host, server_port, str(server_port), "")
        assert route_of(row, client.fileno()).direct


def test_tcp_through_a_pooler_is_not_direct() -> None:
    with tcp_pair() as (client, _):
        (host, port), (server_host, _) = client.getsockname(), client.getpeername()
        route = route_of((host, port + 1, server_host, 5432, "5432", ""), client.fileno())
        assert not route.direct
        assert f"{host}:{port + 1}" in route.evidence


def test_unix_socket_direct_only_on_the_servers_own_socket_file() -> None:
    with tempfile.TemporaryDirectory() as directory:
        path = Path(directory) / ".s.PGSQL.5432"
        with socket.socket(socket.AF_UNIX) as server:
            server.bind(str(path))
            server.listen()
            with socket.socket(socket.AF_UNIX) as client:
                client.connect(str(path))
                row = (None, None, None, None, "5432", f"{directory}, /elsewhere")
                assert route_of(row, client.fileno()).direct
                assert not route_of((None, None, None, None, "6432", directory), client.fileno()).direct
                assert not route_of(("127.0.0.1", 40000, "127.0.0.1", 5432, "5432", directory), client.fileno()).direct


def test_unix_socket_when_the_role_may_not_see_the_socket_directories() -> None:
    """pg_settings hides unix_socket_directories from a role without pg_read_all_settings: the port decides."""
    with tempfile.TemporaryDirectory() as directory:
        path = Path(directory) / ".s.PGSQL.5432"
        with socket.socket(socket.AF_UNIX) as server:
            server.bind(str(path))
            server.listen()
            with socket.socket(socket.AF_UNIX) as client:
                client.connect(str(path))
                assert route_of((None, None, None, None, "5432", None), client.fileno()).direct
                assert not route_of((None, None, None, None, "6432", None), client.fileno()).direct
