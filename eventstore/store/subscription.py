"""One subscriber of the hub (:mod:`eventstore.store.subscriptions`): its cursor, bounded buffer and catch-up.

A subscription needs no task of its own: it catches up (reads its history,
filtered in SQL) inside the consumer's own ``__anext__``, and while live it
waits on its buffer, which the hub's shared read fills. So cancelling the
consuming task is all it takes to end it, idle or not.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import Iterable
from typing import Literal

from eventstore.database import is_connection_error
from eventstore.errors import first_line
from eventstore.store import protocol
from eventstore.store.subscriptions import Cursor, SubscriptionHub
from eventstore.store.validation import MAX_EVENT_TYPE_LENGTH, MAX_INT64, MAX_STREAM_ID_LENGTH, check_count, check_names
from eventstore.types import RecordedEvent

__all__ = ["Subscription"]

logger = logging.getLogger(__name__)


class Subscription:
    """``async with store.subscribe(...) as feed: async for event in feed:``: history after a place, then live.

    Created by :meth:`AsyncEventStore.subscribe`, which documents the
    guarantees. The iteration never ends by itself; it ends when the consuming
    task is cancelled or leaves the ``async with`` (the subscription is then
    unregistered and its buffer dropped), or with ``StopAsyncIteration`` once
    the store is closed. :attr:`live` says whether it is in the hub's live
    fan-out; :attr:`position` is the ``global_position`` of the last event it
    delivered (0: none yet), a place to resume from with ``after=``.
    """

    def __init__(
        self,
        hub: SubscriptionHub,
        *,
        after: int | Literal["head"] | None,
        categories: Iterable[str] | None,
        event_types: Iterable[str] | None,
        stream_ids: Iterable[str] | None,
        max_buffered: int,
    ) -> None:
        if after != "head":
            after = check_count("after", after, minimum=0, maximum=MAX_INT64)
        self._after = after
        self._categories = check_names("categories", categories, MAX_STREAM_ID_LENGTH)
        self._event_types = check_names("event_types", event_types, MAX_EVENT_TYPE_LENGTH)
        self._stream_ids = check_names("stream_ids", stream_ids, MAX_STREAM_ID_LENGTH)
        self.max_buffered = check_count("max_buffered", max_buffered, minimum=1, maximum=MAX_INT64) or 1
        self._hub = hub
        self.cursor: Cursor = (0, 0)
        """Everything up to here is delivered or buffered (the global order)."""
        self.position = 0
        self._settled = True
        self._buffer: deque[RecordedEvent] = deque()
        self._from_catch_up = 0  # buffered events read by the subscription itself (outside the live bound)
        self._ready = asyncio.Event()
        self._failure: BaseException | None = None
        self._entered = False

    @property
    def live(self) -> bool:
        """True while the subscription receives the hub's shared reads (False while it catches up)."""
        return self in self._hub.live

    async def __aenter__(self) -> Subscription:
        hub = self._hub
        await hub.start()
        if self._after == "head":
            async with hub.catch_up_slots:
                self.cursor = await hub.head_cursor()
        elif self._after:
            async with hub.catch_up_slots:
                self.cursor = await protocol.drive_async(protocol.order_of(self._after), hub.execute)
            self._settled = False  # a stored event, maybe still held back by the fence
        hub.subscriptions.add(self)
        self._entered = True
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        self._hub.leave(self)
        self._buffer.clear()
        self._entered = False

    def __aiter__(self) -> Subscription:
        return self

    async def __anext__(self) -> RecordedEvent:
        if not self._entered:
            raise RuntimeError("use the subscription inside `async with store.subscribe(...) as feed:`")
        while True:
            if self._buffer:
                event = self._buffer.popleft()
                self._from_catch_up = max(0, self._from_catch_up - 1)
                self.position = event.global_position
                return event
            if self._failure is not None:
                raise self._failure
            if self._hub.closed:
                raise StopAsyncIteration
            if self.live:
                self._ready.clear()
                await self._ready.wait()
            else:
                await self._catch_up()

    # -- called by the hub ------------------------------------------------------

    def offer(self, event: RecordedEvent, cursor: Cursor) -> bool:
        """Buffer ``event`` if it is new to this subscription and selected; False: the buffer is full."""
        if cursor <= self.cursor:
            return True  # read by the subscription itself before it joined
        if self._selects(event):
            if len(self._buffer) - self._from_catch_up >= self.max_buffered:
                return False
            self._buffer.append(event)
            self._ready.set()
        self.cursor = cursor
        return True

    def fail(self, error: BaseException) -> None:
        self._failure = error
        self._ready.set()

    def wake(self) -> None:
        self._ready.set()

    # -- on its own -------------------------------------------------------------

    def _selects(self, event: RecordedEvent) -> bool:
        """The SQL filter (:func:`eventstore.store.sql.filter_clause`), in Python, for the shared read."""
        return (
            (not self._event_types or event.type in self._event_types)
            and (not self._categories or event.category in self._categories)
            and (not self._stream_ids or event.stream_id in self._stream_ids)
        )

    async def _catch_up(self) -> None:
        """Read one batch of history (filtered in SQL); after a short one, join the live fan-out."""
        hub = self._hub
        delay = hub.settings.reconnect_initial_delay
        while True:
            try:
                async with hub.catch_up_slots:
                    shared = hub.cursor
                    steps = protocol.read_after(
                        self.cursor,
                        limit=hub.batch_size,
                        event_types=self._event_types,
                        categories=self._categories,
                        stream_ids=self._stream_ids,
                        batch_size=hub.batch_size,
                    )
                    events = [event async for event in protocol.stream_async(steps, hub.execute)]
                break
            except Exception as error:
                if not is_connection_error(error):
                    raise
                logger.warning("subscription: catch-up read failed (%s); retrying in %.1f s",
                               first_line(error), delay, extra={"retry_in": delay})  # fmt: skip
                await asyncio.sleep(delay)
                delay = min(delay * 2, hub.settings.reconnect_max_delay)
        self._buffer.extend(events)
        self._from_catch_up += len(events)
        if events:
            self.cursor = (events[-1].transaction_order, events[-1].global_position)
            self._settled = True
        if len(events) < hub.batch_size:
            # Short: every selected event up to the fence of this read is buffered, and
            # the shared cursor read before it was readable then: nothing before it is missing.
            if shared is not None and shared > self.cursor:
                self.cursor = shared
                self._settled = True
            hub.try_join(self, self._settled)
