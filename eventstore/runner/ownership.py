"""Which runner owns a projection: a lease with a fencing token in the projection's checkpoint row.

One active owner per projection, across processes and hosts, whatever sits
between it and PostgreSQL (a direct connection, PgBouncer in session or
transaction mode): ownership is a row, not session state.

- **Taking** a lease (:func:`acquire`) sets ``owner``, bumps ``lease_token``
  (the fencing token) and sets ``lease_expires_at``, only where the lease is
  free: never taken, released, or expired. Rows locked by a running batch
  are skipped, not waited for (their owner is alive: it is committing).
- **Holding** it: the owner renews it (:func:`renew`) every third of its
  time to live, and every batch renews it too: the batch's first statement
  moves the checkpoint only ``WHERE lease_token = :token`` (see
  :func:`eventstore.runner.checkpoints.advance_from`) and so takes the row
  lock, which it keeps until it commits (a batch that ran for more than a
  third of the time to live renews the lease again just before it commits). A runner that lost its lease (it
  stalled past the expiry and another took over) cannot commit: its token no
  longer matches (:class:`LeaseLost`). Nobody can take a lease over while its
  owner's batch is running, as taking it needs the same row.
- **Releasing** (:func:`release`) frees it at once; a killed owner's lease
  simply expires (``lease_ttl``, 3 s by default), and a standby takes over at
  its next try (``lock_retry_interval``, 1 s).

Time is the server's (``clock_timestamp()``), never the hosts' clocks. This is
the lease-and-fencing-token design of Axon's token claims and Emmett's
processor rows; Kleppmann's "How to do distributed locking" explains why the
token, checked where the write happens, is what makes it safe.
"""

from __future__ import annotations

import hashlib
import itertools
import os
import socket
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from eventstore.errors import ProjectionBusy

__all__ = [
    "Lease",
    "LeaseLost",
    "acquire",
    "extend",
    "lock_key",
    "lock_owners",
    "owner_id",
    "release",
    "renew",
    "take_setup_lock",
]

_ACQUIRE = sa.text(
    """
    WITH free AS (
        SELECT projection_name FROM projection_checkpoints
        WHERE projection_name = ANY(CAST(:names AS text[]))
          AND (lease_expires_at IS NULL OR lease_expires_at < clock_timestamp())
        FOR UPDATE SKIP LOCKED
    )
    UPDATE projection_checkpoints AS c
    SET owner = :owner, lease_token = c.lease_token + 1,
        lease_expires_at = clock_timestamp() + make_interval(secs => :ttl),
        state = CASE WHEN c.state = 'failed' THEN 'failed' ELSE :state END, updated_at = now()
    FROM free WHERE c.projection_name = free.projection_name
    RETURNING c.projection_name, c.lease_token
    """
)
# Rows locked by a running batch are skipped: that batch renews its lease itself.
_RENEW = sa.text(
    """
    WITH mine AS (
        SELECT c.projection_name FROM projection_checkpoints AS c
        JOIN unnest(CAST(:names AS text[]), CAST(:tokens AS bigint[])) AS m(name, token)
          ON c.projection_name = m.name AND c.lease_token = m.token
        FOR UPDATE OF c SKIP LOCKED
    )
    UPDATE projection_checkpoints AS c
    SET lease_expires_at = clock_timestamp() + make_interval(secs => :ttl)
    FROM mine WHERE c.projection_name = mine.projection_name
    """
)
_EXTEND = sa.text(
    "UPDATE projection_checkpoints SET lease_expires_at = clock_timestamp() + make_interval(secs => :ttl) "
    "WHERE projection_name = :name AND lease_token = :token"
)
_TOKENS = sa.text(
    "SELECT projection_name, lease_token FROM projection_checkpoints "
    "WHERE projection_name = ANY(CAST(:names AS text[]))"
)
_RELEASE = sa.text(
    """
    UPDATE projection_checkpoints
    SET owner = NULL, lease_expires_at = NULL, updated_at = now(),
        state = CASE WHEN state = 'failed' THEN 'failed' ELSE 'stopped' END
    WHERE projection_name = :name AND lease_token = :token
    """
)
# A lease is held while unexpired, and also while a batch of its owner runs: the batch renews
# it in its own (uncommitted) transaction, and renew() skips the row it locks, so the committed
# expiry of a batch longer than the time to live is in the past although nobody can take the
# lease. Such a row's xmax is the running batch's xid, on which that transaction holds a lock.
_OWNERS = sa.text(
    """
    SELECT c.projection_name, c.owner FROM projection_checkpoints AS c
    WHERE c.projection_name = ANY(CAST(:names AS text[])) AND c.owner IS NOT NULL
      AND (c.lease_expires_at > clock_timestamp()
           OR EXISTS (SELECT 1 FROM pg_locks AS l
                      WHERE l.locktype = 'transactionid' AND l.transactionid = c.xmax AND l.granted))
    """
)
# Serialises projections' setup() (CREATE TABLE IF NOT EXISTS races on the catalog).
# Transaction-scoped, so it works through a transaction-mode pooler too.
_SETUP_LOCK = sa.text("SELECT pg_advisory_xact_lock(:key)")


@dataclass(frozen=True, slots=True)
class Lease:
    """A held lease: the projection, its holder, and the fencing token every write of the holder checks."""

    name: str
    owner: str
    token: int


class LeaseLost(ProjectionBusy):
    """This owner's lease of a projection was taken over (it expired while the owner stalled); nothing was committed."""

    def __init__(self, name: str) -> None:
        super().__init__(name, None)
        self.args = (
            f"projection {name!r}: this runner's lease expired and another owner took it over; "
            "nothing of the current batch was committed",
        )


def lock_key(projection_name: str) -> int:
    """A stable signed 64-bit advisory lock key for a name (used for the setup lock)."""
    digest = hashlib.sha256(f"eventstore.projection:{projection_name}".encode()).digest()
    return int.from_bytes(digest[:8], "big", signed=True)


_SETUP_KEY = lock_key("\x00setup")
_instances = itertools.count(1)


def owner_id() -> str:
    """``host:pid`` of this process (``host:pid/N`` for the Nth owner made in it), as shown in status reports."""
    number = next(_instances)
    base = f"{socket.gethostname()}:{os.getpid()}"
    return base if number == 1 else f"{base}/{number}"


def acquire(conn: Connection, names: Sequence[str], owner: str, *, ttl: float, state: str = "running") -> list[Lease]:
    """Take the free leases among ``names`` (their checkpoint rows must exist); the ones taken.

    Sets each taken projection's state to ``state`` (a failed one stays failed).
    """
    rows = conn.execute(_ACQUIRE, {"names": list(names), "owner": owner, "ttl": ttl, "state": state})
    return [Lease(row.projection_name, owner, int(row.lease_token)) for row in rows]


def renew(conn: Connection, leases: Sequence[Lease], *, ttl: float) -> list[Lease]:
    """Extend ``leases``; the ones lost (their token changed: another owner took over)."""
    if not leases:
        return []
    names = [lease.name for lease in leases]
    conn.execute(_RENEW, {"names": names, "tokens": [lease.token for lease in leases], "ttl": ttl})
    tokens = {row.projection_name: int(row.lease_token) for row in conn.execute(_TOKENS, {"names": names})}
    return [lease for lease in leases if tokens.get(lease.name) != lease.token]


def extend(conn: Connection, lease: Lease, *, ttl: float) -> None:
    """Renew ``lease`` from now, in the caller's transaction (a long batch, just before it commits)."""
    conn.execute(_EXTEND, {"name": lease.name, "token": lease.token, "ttl": ttl})


def release(conn: Connection, lease: Lease) -> bool:
    """Free ``lease`` now (state ``stopped`` unless failed); False when it was no longer held."""
    return conn.execute(_RELEASE, {"name": lease.name, "token": lease.token}).rowcount == 1


def lock_owners(conn: Connection, names: Sequence[str]) -> Mapping[str, str]:
    """The owner of each projection among ``names`` whose lease is held now (unexpired, or in a running batch)."""
    return {row.projection_name: row.owner for row in conn.execute(_OWNERS, {"names": list(names)})}


def take_setup_lock(conn: Connection) -> None:
    """Wait for the transaction-scoped lock that serialises projections' ``setup()``."""
    conn.execute(_SETUP_LOCK, {"key": _SETUP_KEY})
