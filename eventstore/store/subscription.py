"""One subscriber of the hub (:mod:`eventstore.store.subscriptions`): its cursor, bounded buffer and catch-up.

A subscription needs no task of its own: it catches up (reads its history,
filtered in SQL) inside the consumer's own ``__anext__`` (or
:meth:`Subscription.next_batch`), and while live it waits on its buffer, which
the hub's shared read fills. So cancelling the consuming task is all it takes
to end it, idle or not.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import Callable, Iterable
from typing import Literal

from eventstore.database import is_connection_error
from eventstore.errors import first_line
from eventstore.store import protocol
from eventstore.store.subscriptions import Cursor, FilterKey, SubscriptionHub
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
        # The filter, precomputed for the shared read's test of each event (sets: one hash look-up a kind).
        self._selects_all = not (self._categories or self._event_types or self._stream_ids)
        self._category_set = frozenset(self._categories or ())
        self._event_type_set = frozenset(self._event_types or ())
        self._stream_id_set = frozenset(self._stream_ids or ())
        self.filter_key = (self._category_set, self._event_type_set, self._stream_id_set)
        """Equal for subscriptions with the same filter: the shared read tests an event once per distinct filter."""
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
        self._interrupted = False
        self._on_ready: Callable[[], None] | None = None

    @property
    def live(self) -> bool:
        """True while the subscription receives the hub's shared reads (False while it catches up)."""
        return self in self._hub.live

    @property
    def streaming(self) -> bool:
        """True while live, not failed and the store open: every next event comes through the buffer (:meth:`take`)."""
        return self._failure is None and not self._hub.closed and self in self._hub.live

    @property
    def buffered(self) -> int:
        """Events buffered now (what :meth:`take` would return, up to its limit)."""
        return len(self._buffer)

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
        while True:
            events = await self.next_batch(1)
            if events:
                return events[0]

    async def next_batch(self, limit: int, *, until_live: bool = False) -> list[RecordedEvent]:
        """The next events, up to ``limit`` of them: what is buffered now, waiting (or catching up) for at least one.

        The same events, in the same order, as ``limit`` calls of ``__anext__``:
        a consumer that writes events out (the SSE stream) takes all that are
        ready at once, one write for several. It returns an empty list only
        after :meth:`interrupt` (a consumer's own timer: a heartbeat is due),
        or, with ``until_live``, as soon as the subscription is live with
        nothing buffered (:attr:`streaming`: a consumer that then takes events
        through :meth:`set_ready_callback` instead of waiting here).

        Raises:
            StopAsyncIteration: the store was closed.
            RuntimeError: used outside ``async with``.
        """
        if not self._entered:
            raise RuntimeError("use the subscription inside `async with store.subscribe(...) as feed:`")
        while True:
            events = self.take(limit)
            if events:
                return events
            if self._failure is not None:
                raise self._failure
            if self._hub.closed:
                raise StopAsyncIteration
            if self._interrupted:
                self._interrupted = False
                return []
            if self.live:
                if until_live:
                    return []
                self._ready.clear()
                await self._ready.wait()
            else:
                await self._catch_up()

    def take(self, limit: int) -> list[RecordedEvent]:
        """The buffered events, up to ``limit`` of them, without waiting (an empty list if none).

        What :meth:`next_batch` returns when something is buffered; with
        :meth:`set_ready_callback`, how a consumer that never waits takes its events.
        """
        buffer = self._buffer
        if not buffer:
            return []
        if len(buffer) <= limit:
            events = list(buffer)
            buffer.clear()
        else:
            events = [buffer.popleft() for _ in range(limit)]
        self._from_catch_up = max(0, self._from_catch_up - len(events))
        self.position = events[-1].global_position
        return events

    def set_ready_callback(self, callback: Callable[[], None] | None) -> None:
        """While set, ``callback()`` is called instead of waking a waiting :meth:`next_batch`.

        It is called, synchronously in the hub's task (or the caller of
        :meth:`AsyncEventStore.close`), when an event is buffered, when the
        subscription fails, and when the store closes: a consumer that writes
        events out without a task waiting per subscription (the SSE fan-out)
        takes them with :meth:`take`, and goes back to :meth:`next_batch`
        (unset first) once :attr:`streaming` is False (the buffer overflowed
        and it must catch up, it failed, or the store closed). The callback
        must not raise and must not take long: the hub calls it for every
        subscriber of every event.
        """
        self._on_ready = callback

    def interrupt(self) -> None:
        """Make the pending (or next) :meth:`next_batch` return, with an empty list if nothing is buffered."""
        self._interrupted = True
        self._ready.set()

    def _signal(self) -> None:
        on_ready = self._on_ready
        if on_ready is None:
            self._ready.set()
        else:
            on_ready()

    # -- called by the hub ------------------------------------------------------

    def offer(self, event: RecordedEvent, cursor: Cursor, verdicts: dict[FilterKey, bool]) -> bool:
        """Buffer ``event`` if it is new to this subscription and selected; False: the buffer is full.

        ``verdicts``: whether ``event`` passes each filter tested so far (the
        hub passes one dict per event, so 1,000 subscriptions with the same
        filter test it once).
        """
        if cursor <= self.cursor:
            return True  # read by the subscription itself before it joined
        selected = self._selects_all
        if not selected:
            verdict = verdicts.get(self.filter_key)
            if verdict is None:
                verdict = verdicts[self.filter_key] = self._selects(event)
            selected = verdict
        if selected:
            if len(self._buffer) - self._from_catch_up >= self.max_buffered:
                return False
            self._buffer.append(event)
            self._signal()
        self.cursor = cursor
        return True

    def fail(self, error: BaseException) -> None:
        self._failure = error
        self._signal()

    def wake(self) -> None:
        self._signal()

    # -- on its own -------------------------------------------------------------

    def _selects(self, event: RecordedEvent) -> bool:
        """The SQL filter (:func:`eventstore.store.sql.filter_clause`), in Python, for the shared read."""
        return (
            (not self._event_type_set or event.type in self._event_type_set)
            and (not self._category_set or event.category in self._category_set)
            and (not self._stream_id_set or event.stream_id in self._stream_id_set)
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
