"""What the order projections share: apply a whole batch of order events with a few statements.

Each order projection keeps one state row per order (its status, plus what
its own tables need) and applies a batch in four steps:

1. **Parse** every event, in order, with the projection's :meth:`~OrderProjection.place`
   for ``OrderPlaced`` (transitions only need their ``order_id``). A malformed
   event raises here; the runner then halves the batch until it finds that
   event and applies the projection's ``on_error`` policy to it alone.
2. **Load** the state rows of the orders the batch mentions (one ``SELECT``,
   the projection's ``load`` statement).
3. **Replay** the events on those rows in Python with the rules of
   :mod:`projections.orders`: an order's first ``OrderPlaced`` wins, a
   transition only applies from the statuses it allows.
4. **Write** the outcome (the projection's :meth:`~OrderProjection.write`):
   the new orders, the orders whose status moved, and per-key sums for
   aggregate tables, one set-based statement each (``unnest`` of one array per
   column, see :func:`columns`). Sums are added up per key first, because an
   ``INSERT ... ON CONFLICT DO UPDATE`` may not touch the same row twice.

The result is the same as applying the events one at a time (what a batch of
one does, e.g. ``admin.replay_stream``): ``tests/runner/test_demo_projections_batch.py``
checks it.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import date
from typing import Any, ClassVar

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from eventstore import Projection, RecordedEvent

from .orders import CATEGORY, ORDER_PLACED, TRANSITIONS

__all__ = ["Order", "OrderBatch", "OrderProjection", "add_to", "bigint", "columns"]

_BIGINT_MIN, _BIGINT_MAX = -(2**63), 2**63 - 1


@dataclass(slots=True)
class Order:
    """One order as a projection's state row holds it.

    ``status`` is always there; the other fields are filled in only where the
    projection stores and loads them (the defaults stand for "not loaded").
    """

    status: str = "placed"
    stream_id: str = ""
    customer_id: str = ""
    total: int = 0
    day: date | None = None
    last_position: int = 0
    """Position of the last event that changed the order (``order_summaries`` only)."""


@dataclass
class OrderBatch:
    """What one batch did to the orders of a projection."""

    known: dict[str, Order]
    """State rows loaded at the start of the batch, by order id."""
    placed: dict[str, Order]
    """Orders placed in this batch (not in ``known``), in their state at the end of it."""
    moved: dict[str, Order]
    """Orders of ``known`` whose status changed, in their state at the end of the batch."""

    def changes(self) -> Iterator[tuple[Order | None, Order]]:
        """(state before the batch, or None for a new order; state after it) of every changed order."""
        for order in self.placed.values():
            yield None, order
        for order_id, order in self.moved.items():
            yield self.known[order_id], order


class OrderProjection(Projection):
    """Base of the order projections: :meth:`apply_batch` folds a batch as described in the module docstring.

    A subclass sets ``name``, ``create``, ``tables`` and ``load`` (a ``SELECT order_id, status, ...``
    of its state rows ``WHERE order_id = ANY(:ids)``, other columns named
    like :class:`Order` fields) and implements :meth:`place` and :meth:`write`.
    """

    categories = (CATEGORY,)
    load: ClassVar[sa.TextClause]
    create: ClassVar[tuple[str, ...]]
    """``CREATE TABLE IF NOT EXISTS`` statements of the projection's tables, run by :meth:`setup`."""
    tables: ClassVar[tuple[str, ...]]
    """The projection's tables, emptied by :meth:`reset`."""

    def setup(self, conn: Connection) -> None:
        """Create the projection's tables (see :attr:`create`)."""
        for statement in self.create:
            conn.execute(sa.text(statement))

    def reset(self, conn: Connection) -> None:
        """Empty the projection's tables (see :attr:`tables`)."""
        for table in self.tables:
            conn.execute(sa.delete(sa.table(table)))

    def place(self, event: RecordedEvent) -> tuple[str, Order] | None:
        """Parse an ``OrderPlaced`` event: (order id, the new order), or None when this read model ignores it.

        Raises on malformed data (a poison event).
        """
        raise NotImplementedError

    def write(self, batch: OrderBatch, conn: Connection) -> None:
        """Store the outcome of a batch."""
        raise NotImplementedError

    def apply_batch(self, events: list[RecordedEvent], conn: Connection) -> None:
        """Parse, load, replay and write the batch (see the module docstring)."""
        # 1. Parse: (order id, the new order of a placement or None for a transition, the event).
        steps: list[tuple[str, Order | None, RecordedEvent]] = []
        for event in events:
            if event.type == ORDER_PLACED:
                placed = self.place(event)
                if placed is not None:
                    steps.append((placed[0], placed[1], event))
            elif event.type in TRANSITIONS:
                steps.append((str(event.data["order_id"]), None, event))
        if not steps:
            return
        # 2. Load the state rows of the orders the batch mentions.
        ids = sorted({order_id for order_id, _, _ in steps})
        known = {
            row.order_id: Order(**{key: value for key, value in row._mapping.items() if key != "order_id"})
            for row in conn.execute(self.load, {"ids": ids})
        }
        # 3. Replay the events on them, in order.
        batch = OrderBatch(known, placed={}, moved={})
        for order_id, new_order, event in steps:
            current = batch.placed.get(order_id) or batch.moved.get(order_id) or known.get(order_id)
            if new_order is not None:
                if current is None:  # the first OrderPlaced of an order wins
                    batch.placed[order_id] = new_order
                continue
            allowed, to = TRANSITIONS[event.type]
            if current is None or current.status not in allowed:
                continue  # an unknown order, or a transition its status does not allow
            if order_id in known and order_id not in batch.moved:
                current = batch.moved[order_id] = dataclasses.replace(current)  # keep known[order_id] as it was
            current.status = to
            current.last_position = event.global_position
        # 4. Write the outcome.
        self.write(batch, conn)

    def apply(self, event: RecordedEvent, conn: Connection) -> bool:
        """Apply one event as a batch of one (``admin.replay_stream`` applies events this way)."""
        self.apply_batch([event], conn)
        return event.type == ORDER_PLACED or event.type in TRANSITIONS


def bigint(value: Any) -> int:
    """``int(value)``, refused (``ValueError``) outside PostgreSQL's ``bigint`` range.

    The per-event handlers sent every ``OrderPlaced`` total to the database,
    which refused such a value even for an order already placed; checking it
    here keeps that event a poison event when the batch never sends it.
    """
    number = int(value)
    if not _BIGINT_MIN <= number <= _BIGINT_MAX:
        raise ValueError(f"total {number} is out of range for bigint")
    return number


def columns(names: Sequence[str], rows: Sequence[Sequence[Any]]) -> dict[str, list[Any]]:
    """Turn rows into one list per column, the parameters of ``... FROM unnest(CAST(:name AS type[]), ...)``."""
    return {name: [row[index] for row in rows] for index, name in enumerate(names)}


def add_to(sums: dict[Any, list[int]], key: Any, values: Sequence[int], sign: int) -> None:
    """Add ``sign * values`` to the running sums of ``key`` (one upsert row per key later)."""
    row = sums.setdefault(key, [0] * len(values))
    for index, value in enumerate(values):
        row[index] += sign * value
