"""Which runner owns a projection: a session advisory lock per projection, and who holds it.

One active runner per projection, across processes and hosts: a session-level
advisory lock (``pg_try_advisory_lock``, key derived from the projection name)
held on the connection every batch of that projection commits on (see
:mod:`eventstore.runner.session`). When a runner process dies, the server ends
its backend, which releases the lock (session locks are released when the
session ends, https://www.postgresql.org/docs/current/explicit-locking.html#ADVISORY-LOCKS);
TCP keepalives on both ends cover a host that vanishes without closing.
"""

from __future__ import annotations

import hashlib
import os
import socket
from collections.abc import Sequence

import sqlalchemy as sa
from sqlalchemy.engine import Connection

__all__ = ["lock_key", "lock_owners", "owner_id", "release", "take_setup_lock", "try_take"]

_TRY_LOCK = sa.text("SELECT pg_try_advisory_lock(:key)")
_UNLOCK = sa.text("SELECT pg_advisory_unlock(:key)")
# Serialises projections' setup() (CREATE TABLE IF NOT EXISTS races on the catalog).
_SETUP_LOCK = sa.text("SELECT pg_advisory_xact_lock(:key)")
# A bigint advisory key shows in pg_locks as classid (high 32 bits), objid (low 32 bits), objsubid 1.
_LOCK_HOLDERS = sa.text(
    """
    SELECT l.classid::bigint AS classid, l.objid::bigint AS objid, a.pid, a.application_name
    FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid
    WHERE l.locktype = 'advisory' AND l.granted AND l.objsubid = 1
      AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database())
    """
)


def lock_key(projection_name: str) -> int:
    """The advisory lock key (signed 64-bit) of a projection: stable across processes and hosts."""
    digest = hashlib.sha256(f"eventstore.projection:{projection_name}".encode()).digest()
    return int.from_bytes(digest[:8], "big", signed=True)


_SETUP_KEY = lock_key("\x00setup")


def owner_id() -> str:
    """``host:pid`` of this process, as shown in status reports."""
    return f"{socket.gethostname()}:{os.getpid()}"


def lock_owners(conn: Connection, names: Sequence[str]) -> dict[str, int]:
    """Which projections' locks are held now, and by which backend pid."""
    wanted = {_split_key(lock_key(name)): name for name in names}
    held: dict[str, int] = {}
    for row in conn.execute(_LOCK_HOLDERS):
        name = wanted.get((int(row.classid), int(row.objid)))
        if name is not None:
            held[name] = int(row.pid)
    return held


def _split_key(key: int) -> tuple[int, int]:
    unsigned = key & 0xFFFFFFFFFFFFFFFF
    return unsigned >> 32, unsigned & 0xFFFFFFFF


def try_take(conn: Connection, projection_name: str) -> bool:
    """Take the projection's session lock on ``conn`` if nobody holds it; True when taken."""
    return bool(conn.execute(_TRY_LOCK, {"key": lock_key(projection_name)}).scalar_one())


def release(conn: Connection, projection_name: str) -> None:
    """Release the projection's session lock held on ``conn``."""
    conn.execute(_UNLOCK, {"key": lock_key(projection_name)})


def take_setup_lock(conn: Connection) -> None:
    """Wait for the transaction-scoped lock that serialises projections' ``setup()``."""
    conn.execute(_SETUP_LOCK, {"key": _SETUP_KEY})
