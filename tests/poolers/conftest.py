"""A real PgBouncer (Debian's ``/usr/sbin/pgbouncer``) in front of the test database, started per test.

``pgbouncer(pool_mode)`` writes an ini in a directory outside pytest's
basetemp (``outside_tmp``: pytest makes its basetemp 0700, which the
unprivileged user PgBouncer runs as could not enter), starts it on 127.0.0.1
and a free port as a non-root user (it refuses to run as root), waits until
it answers, and stops it by pid at the end of the test. Tests skip with the
reason when PgBouncer is not installed (``apt-get install -y pgbouncer``).
"""

from __future__ import annotations

import os
import pwd
import shutil
import socket
import subprocess
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import psycopg
import pytest
import sqlalchemy as sa

from eventstore.embedded import SERVICE_USER

START_TIMEOUT_SECONDS = 15


def pgbouncer_binary() -> str | None:
    return shutil.which("pgbouncer") or next(
        (path for path in ("/usr/sbin/pgbouncer", "/usr/bin/pgbouncer") if os.access(path, os.X_OK)), None
    )


@dataclass
class PgBouncer:
    """A running PgBouncer: ``url`` reaches the test database through it."""

    process: subprocess.Popen[bytes]
    pool_mode: str
    port: int
    url: str
    log: Path
    ini: Path

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=10)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _unprivileged_user() -> str | None:
    """The user to run PgBouncer as: None when we are not root; else the embedded server's user, or nobody."""
    if os.geteuid() != 0:
        return None
    for name in (SERVICE_USER, "nobody"):
        try:
            pwd.getpwnam(name)
        except KeyError:
            continue
        return name
    pytest.skip("running as root and neither the eventstore nor the nobody user exists for PgBouncer")


def start_pgbouncer(directory: Path, server_url: str, pool_mode: str, *, pool_size: int) -> PgBouncer:
    binary = pgbouncer_binary()
    if binary is None:
        pytest.skip("pgbouncer is not installed (apt-get install -y pgbouncer)")
    target = sa.make_url(server_url)
    port = _free_port()
    server = f"host={target.host or '127.0.0.1'} port={target.port or 5432} dbname={target.database}"
    if target.username:
        server += f" user={target.username}"
    if target.password:
        server += f" password={target.password}"
    directory.chmod(0o755)  # the unprivileged user reads the ini from here
    users = directory / "users.txt"  # trust still needs each user listed (any password)
    users.write_text(f'"{target.username or "postgres"}" ""\n')
    users.chmod(0o644)
    ini = directory / f"pgbouncer-{pool_mode}.ini"
    ini.write_text(
        "[databases]\n"
        f"{target.database} = {server}\n"
        "[pgbouncer]\n"
        "listen_addr = 127.0.0.1\n"
        f"listen_port = {port}\n"
        "unix_socket_dir =\n"
        "auth_type = trust\n"
        f"auth_file = {users}\n"
        f"pool_mode = {pool_mode}\n"
        f"default_pool_size = {pool_size}\n"
        "max_client_conn = 200\n"
        "server_reset_query =\n"
        "logfile =\n"
        "pidfile =\n"
    )
    ini.chmod(0o644)
    log = directory / f"pgbouncer-{pool_mode}.log"
    with log.open("wb") as output:  # opened here: the child inherits it, whoever it runs as
        process = subprocess.Popen(
            [binary, str(ini)], stdout=output, stderr=subprocess.STDOUT, user=_unprivileged_user(), cwd=directory
        )
    url = target.set(host="127.0.0.1", port=port).render_as_string(hide_password=False)
    bouncer = PgBouncer(process, pool_mode, port, url, log, ini)
    libpq = sa.make_url(url).set(drivername="postgresql").render_as_string(hide_password=False)
    deadline = time.monotonic() + START_TIMEOUT_SECONDS
    while True:
        if process.poll() is not None:
            raise RuntimeError(f"pgbouncer exited with {process.returncode}:\n{log.read_text()}")
        try:
            with psycopg.connect(libpq, connect_timeout=2, prepare_threshold=None) as connection:
                connection.execute("SELECT 1")
            return bouncer
        except psycopg.OperationalError as error:
            if "refused" not in str(error) or time.monotonic() > deadline:
                bouncer.stop()
                raise RuntimeError(
                    f"pgbouncer did not answer in {START_TIMEOUT_SECONDS} s:\n{log.read_text()}"
                ) from error
            time.sleep(0.05)  # not yet listening: poll the condition again


@pytest.fixture
def pgbouncer(database_url: str, outside_tmp: Path) -> Iterator[Callable[..., PgBouncer]]:
    """``pgbouncer("transaction")`` or ``pgbouncer("session", pool_size=...)``: a PgBouncer for this test's database."""
    started: list[PgBouncer] = []

    def start(pool_mode: str, *, pool_size: int = 2) -> PgBouncer:
        bouncer = start_pgbouncer(outside_tmp, database_url, pool_mode, pool_size=pool_size)
        started.append(bouncer)
        return bouncer

    yield start
    for bouncer in started:
        bouncer.stop()
