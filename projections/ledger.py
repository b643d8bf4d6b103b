"""A ledger projection: one row per consumed event, to prove exactly-once delivery.

``projection_ledger`` has ``PRIMARY KEY (projection_name, global_position)``:
a repeated delivery cannot be stored twice (it would fail the batch and show
up as a poison-event failure), and a skipped one is a missing row. Each row
records which process applied it (``applied_by``, ``host:pid``) and in which
order (``applied_order``), so tests can check failover and global order.

It overrides :meth:`~eventstore.Projection.apply`, not ``apply_batch``: the
runner then applies its events one at a time, which is the path the
poison-event and failover tests exercise with it.
"""

from __future__ import annotations

import os
import socket
import time
from collections.abc import Collection

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from eventstore import Projection, RecordedEvent

__all__ = ["Ledger", "ledger_positions"]

_CREATE = sa.text(
    """
    CREATE TABLE IF NOT EXISTS projection_ledger (
        projection_name text        NOT NULL,
        global_position bigint      NOT NULL,
        stream_id       text        NOT NULL,
        event_type      text        NOT NULL,
        applied_by      text        NOT NULL,
        applied_order   bigint      GENERATED ALWAYS AS IDENTITY,
        applied_at      timestamptz NOT NULL DEFAULT clock_timestamp(),
        PRIMARY KEY (projection_name, global_position)
    )
    """
)
_INSERT = sa.text(
    "INSERT INTO projection_ledger (projection_name, global_position, stream_id, event_type, applied_by) "
    "VALUES (:name, :position, :stream_id, :event_type, :applied_by)"
)
_POSITIONS = sa.text(
    "SELECT global_position FROM projection_ledger WHERE projection_name = :name ORDER BY applied_order"
)


class Ledger(Projection):
    """Records every event it consumes (within ``categories``/``event_types``).

    ``poison_types``: event types whose handling raises ``ValueError`` (for
    poison-event tests). ``delay``: seconds to sleep per event (to make a
    catch-up take long enough to interrupt).
    """

    def __init__(
        self,
        name: str = "ledger",
        *,
        categories: tuple[str, ...] = (),
        event_types: tuple[str, ...] = (),
        on_error: str = "stop",
        poison_types: Collection[str] = (),
        delay: float = 0.0,
    ) -> None:
        self.name = name
        self.categories = tuple(categories)
        self.event_types = tuple(event_types)
        self.on_error = on_error
        self.poison_types = frozenset(poison_types)
        self.delay = delay

    def setup(self, conn: Connection) -> None:
        """Create ``projection_ledger`` (shared by every ledger, keyed by projection name)."""
        conn.execute(_CREATE)

    def reset(self, conn: Connection) -> None:
        """Delete this ledger's rows."""
        conn.execute(sa.text("DELETE FROM projection_ledger WHERE projection_name = :name"), {"name": self.name})

    def forget_stream(self, stream_id: str, conn: Connection) -> None:
        """Delete this ledger's rows of ``stream_id``."""
        conn.execute(
            sa.text("DELETE FROM projection_ledger WHERE projection_name = :name AND stream_id = :stream_id"),
            {"name": self.name, "stream_id": stream_id},
        )

    def apply(self, event: RecordedEvent, conn: Connection) -> bool:
        """Insert the event's row (every event is handled)."""
        if event.type in self.poison_types:
            raise ValueError(f"ledger {self.name!r}: poison event {event.type} at position {event.global_position}")
        if self.delay:
            time.sleep(self.delay)
        conn.execute(
            _INSERT,
            {
                "name": self.name,
                "position": event.global_position,
                "stream_id": event.stream_id,
                "event_type": event.type,
                "applied_by": f"{socket.gethostname()}:{os.getpid()}",  # the runner's owner id
            },
        )
        return True


def ledger_positions(conn: Connection, name: str) -> list[int]:
    """The positions a ledger consumed, in the order it applied them."""
    return [int(row.global_position) for row in conn.execute(_POSITIONS, {"name": name})]
