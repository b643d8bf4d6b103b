"""The event store: append to streams and read them back, gap-safe.

Parts: :mod:`~eventstore.store.event_store` (the :class:`EventStore` class),
:mod:`~eventstore.store.async_event_store` (:class:`AsyncEventStore`, for
asyncio, on :mod:`~eventstore.store.async_connections`),
:mod:`~eventstore.store.protocol` (every operation of both, written once
without I/O), :mod:`~eventstore.store.progress` (``wait_until_processed``'s
decision),
:mod:`~eventstore.store.sql` (every statement on ``events``),
:mod:`~eventstore.store.validation` (input checks),
:mod:`~eventstore.store.appender` (append connections and wake-ups),
:mod:`~eventstore.store.subscriptions` and :mod:`~eventstore.store.subscription`
(``AsyncEventStore.subscribe``: one LISTEN and one shared read per wake-up for
every live subscription) and :mod:`~eventstore.store.follow` (a blocking live feed).

The gap rule
============

``global_position`` comes from a sequence, and sequence values become visible
in *commit* order, not in number order: while transaction A (position 7) is
still open, transaction B (position 8) may commit. A reader that moved past 8
would never see 7. eventstore therefore does not deliver events in position
order. Each event carries an order key, ``transaction_order`` (an ``xid8``),
and the global order is ``(transaction_order, global_position)``:

1. **Key.** An append stores ``greatest(pg_current_xact_id(), key of the
   stream's previous event)``. Usually that is simply the appending
   transaction's id. Raising it to the previous event's key keeps every stream
   in version order even when the appending transaction obtained its id
   before the stream's previous append committed.
2. **Fence.** A reader returns only events whose key is below
   ``pg_snapshot_xmin(pg_current_snapshot())``, the oldest transaction still
   running, evaluated in the same statement (same snapshot) as the scan.
   Every transaction with an id below that fence has ended, and a running or
   future transaction's events get a key >= its own id >= the fence. So
   nothing can ever appear *before* an event already returned: a reader that
   remembers the last ``(transaction_order, global_position)`` it consumed
   never skips and never repeats an event.

Consequences, all tested in ``tests/concurrency``:

- A rolled-back append leaves a hole in the positions; it never blocks reads.
- Any transaction that holds a transaction id (any write, in any database of
  the cluster) holds back the events committed after it began, until it ends.
  Readers *stall* behind it; they never skip. Keep write transactions short.
  Such a transaction sends no wake-up when it ends, so workers re-check on a
  short timer while events are held back (see :meth:`EventStore.held_back`).
- A reader must not hold a transaction id itself while it waits for the fence
  to move (it would wait for itself): read in a transaction that has not
  written yet, as :meth:`EventStore.read_all` does.

The ``after=`` argument of :meth:`EventStore.read_all` takes a plain
``global_position``; the store maps it to its order key.
"""

from eventstore.store.async_event_store import AsyncEventStore
from eventstore.store.event_store import EventStore
from eventstore.store.sql import NOTIFY_CHANNEL
from eventstore.store.subscriptions import SubscriptionSettings
from eventstore.store.validation import MAX_EVENT_TYPE_LENGTH, MAX_JSON_DEPTH, MAX_STREAM_ID_LENGTH

__all__ = [
    "MAX_EVENT_TYPE_LENGTH",
    "MAX_JSON_DEPTH",
    "MAX_STREAM_ID_LENGTH",
    "NOTIFY_CHANNEL",
    "AsyncEventStore",
    "EventStore",
    "SubscriptionSettings",
]
