"""Live subscriptions for :class:`~eventstore.store.AsyncEventStore`: one LISTEN, shared reads, bounded fan-out.

The hub (:class:`SubscriptionHub`, one per store, started by the first
``subscribe``) owns:

- **one LISTEN connection** (a dedicated autocommit psycopg
  ``AsyncConnection``, ``application_name`` ``eventstore-subscriptions``, on
  the store's URL or ``SubscriptionSettings.listen_url``): a notification is
  only a wake-up, the events table is the truth. It reconnects with backoff
  when the connection is lost and then re-reads, because PostgreSQL keeps no
  notification for a session that was not listening
  (https://www.postgresql.org/docs/current/sql-listen.html). After each
  LISTEN it proves that notifications arrive, with the runner listener's
  probe (:mod:`eventstore.store.listen_probe`): a notification sent from
  another session must come back within ``probe_timeout`` seconds. Through a
  transaction-mode pooler (PgBouncer ``pool_mode = transaction``) it does
  not, as LISTEN needs a session of its own: the hub then logs one WARNING
  (from this module's logger, naming the URL and the fix, a direct or
  session-mode ``listen_url``), closes the LISTEN connection and relies on
  the fallback poll (``poll_interval``) for good. A probe that cannot be
  judged (the NOTIFY queue half full, the probe connection refused) keeps
  the LISTEN and is tried again at the next liveness check;
- **the shared cursor**: on each wake-up (a notification, a reconnect, a short
  timer while the gap rule's fence holds events back, whose end sends no
  notification, and a fallback poll) the hub reads the new events once, after
  the shared cursor, in batches, fenced by the gap rule
  (:func:`eventstore.store.protocol.read_after`), and hands each event to every
  *live* subscriber whose filter selects it. A wake-up costs
  ``ceil((new events + 1) / read_batch_size)`` reads and one fence check,
  whatever the number of subscribers.

A :class:`~eventstore.store.subscription.Subscription` that is behind reads its own history, filtered in SQL,
at most ``max_catch_up_readers`` of them at a time (so 1,000 subscriptions open
a handful of connections, not 1,000), until its cursor reaches the shared one;
then it joins the live fan-out. Every comparison is on
``(transaction_order, global_position)`` cursors (the global order), so the
hand-off has neither gap nor duplicate: an event reaches a subscriber only if
it comes after the subscriber's cursor, and a subscriber joins only once its
cursor is at or past the shared one. Why that is enough: once an event is
readable, every event before it in the global order is readable too and stays
so (the gap rule, :mod:`eventstore.store`), so a catch-up read that ends short
after the hub read up to the shared cursor has seen everything up to it.

Each subscriber has a bounded buffer (``max_buffered``). When the hub would
overflow it, the subscriber is detached from the live fan-out and, once it has
consumed its buffer, catches up from the database on its own: a slow consumer
never blocks the others and never loses an event.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

import psycopg

from eventstore.database import CLIENT_KEEPALIVES, is_connection_error, libpq_url, url_of
from eventstore.errors import first_line
from eventstore.store import protocol
from eventstore.store.listen_probe import (
    listen_statement,
    new_probe_channel,
    probe,
    run_probe_async,
    warn_listen_does_not_deliver,
)
from eventstore.store.sql import NOTIFY_CHANNEL
from eventstore.types import RecordedEvent

if TYPE_CHECKING:
    from eventstore.store.subscription import Subscription

__all__ = ["Cursor", "FilterKey", "SubscriptionHub", "SubscriptionSettings"]

logger = logging.getLogger(__name__)

Mode = Literal["connecting", "listening", "polling"]

_FIX = (
    "give the subscriptions a direct or session-mode URL for listening: AsyncEventStore(url, "
    "subscription_settings=SubscriptionSettings(listen_url=...)), or a store on such a URL"
)

Cursor = tuple[int, int]
"""``(transaction_order, global_position)``: a place in the global order."""

FilterKey = tuple[frozenset[str], frozenset[str], frozenset[str]]
"""A subscription's filter (categories, event types, stream ids; empty: any)."""


@dataclass(frozen=True)
class SubscriptionSettings:
    """How the hub of an :class:`~eventstore.store.AsyncEventStore` listens, polls and reconnects.

    - ``poll_interval``: the fallback re-read when no wake-up came (a wake-up
      can be lost: skipped while the NOTIFY queue is half full, or sent while
      the listener was reconnecting), and the only one when LISTEN proved not
      to deliver (a transaction-mode pooler).
    - ``held_back_interval``: the re-read while the fence holds events back
      (the end of the blocking transaction sends no wake-up).
    - ``liveness_interval``: an idle LISTEN connection runs ``SELECT 1`` this often.
    - ``reconnect_initial_delay`` / ``reconnect_max_delay``: the exponential backoff.
    - ``max_catch_up_readers``: catch-up reads running at once (each on a connection).
    - ``application_name``: the LISTEN connection's name in ``pg_stat_activity``.
    - ``probe_timeout``: how long the probe after each LISTEN waits for its
      notification before declaring that LISTEN does not deliver.
    - ``listen_url``: a URL (libpq or SQLAlchemy form) for the LISTEN
      connection and its probe, when the store's own goes through a
      transaction-mode pooler: a direct or session-mode one of the same
      database. None: the store's URL. Hidden from ``repr`` (it may hold a
      password).
    """

    poll_interval: float = 1.0
    held_back_interval: float = 0.2
    liveness_interval: float = 5.0
    reconnect_initial_delay: float = 0.1
    reconnect_max_delay: float = 5.0
    max_catch_up_readers: int = 4
    application_name: str = "eventstore-subscriptions"
    probe_timeout: float = 2.0
    listen_url: str | None = field(default=None, repr=False)


Execute = Callable[[Any], Awaitable[Any]]


class SubscriptionHub:
    """The one LISTEN connection, the shared cursor and the live fan-out of one store.

    ``execute`` runs a :mod:`~eventstore.store.protocol` step on one of the
    store's connections. :attr:`queries` counts the statements the hub and its
    subscriptions ran (tests use it to bound the cost of a wake-up).

    State, for callers and tests: :attr:`mode` is ``"connecting"``,
    ``"listening"`` or ``"polling"`` (LISTEN proved not to deliver: only the
    ``poll_interval`` timer wakes the hub, for good); :attr:`listening` is set
    while a LISTEN is in place whose probe arrived (or could not be judged);
    :attr:`ready` while wake-ups are in place either way.

    Raises:
        ConfigurationError: ``settings.listen_url`` is not a valid URL.
    """

    def __init__(self, url: Any, execute: Execute, *, batch_size: int, settings: SubscriptionSettings) -> None:
        self.settings = settings
        self.batch_size = batch_size
        self.queries = 0
        self.wake_ups = 0
        """How many times the hub read after a wake-up (notification, reconnect or timer)."""
        self.connections = 0
        """How many times the LISTEN connection was established (1 + reconnects)."""
        self.backend_pid: int | None = None
        self.listening = asyncio.Event()
        self.ready = asyncio.Event()
        self.mode: Mode = "connecting"
        self.probe_channel = new_probe_channel()
        """This hub's own channel for proving that notifications arrive."""
        self._warned = False
        self.subscriptions: set[Subscription] = set()
        self.live: set[Subscription] = set()
        self.cursor: Cursor | None = None
        self.reading = False
        self._conninfo = libpq_url(url_of(settings.listen_url) if settings.listen_url is not None else url)
        self._execute_step = execute
        self.catch_up_slots = asyncio.Semaphore(settings.max_catch_up_readers)
        """Held by a subscription's own reads: bounds the connections 1,000 subscriptions open."""
        self._start_lock = asyncio.Lock()
        self._wake = asyncio.Event()
        self._held_back = False
        self._tasks: list[asyncio.Task[None]] = []
        self.closed = False

    # -- lifecycle ------------------------------------------------------------

    async def start(self) -> None:
        """Place the shared cursor at the head and start the listener and the reader (once)."""
        async with self._start_lock:
            if self._tasks:
                return
            if self.cursor is None:
                async with self.catch_up_slots:
                    self.cursor = await self.head_cursor()
            self._tasks = [
                asyncio.create_task(self._listen_forever(), name="eventstore-subscriptions-listener"),
                asyncio.create_task(self._read_forever(), name="eventstore-subscriptions-reader"),
            ]

    async def close(self) -> None:
        """Stop the tasks and the LISTEN connection; every open subscription ends its iteration."""
        self.closed = True
        tasks, self._tasks = self._tasks, []
        for task in tasks:
            task.cancel()
        # gather, not `suppress(CancelledError): await task`, which would also swallow a cancel of close()'s caller.
        outcomes = await asyncio.gather(*tasks, return_exceptions=True)
        for subscription in list(self.subscriptions):
            subscription.wake()
        for outcome in outcomes:  # a task's own failure (a bug) is not hidden by the close
            if isinstance(outcome, Exception):
                raise outcome

    # -- what subscriptions call ------------------------------------------------

    async def execute(self, step: Any) -> Any:
        """Run one protocol step on the store's connections, counted in :attr:`queries`."""
        self.queries += 1
        return await self._execute_step(step)

    async def head_cursor(self) -> Cursor:
        """The cursor of the last readable event ((0, 0) if none)."""
        head = await protocol.drive_async(protocol.head_position(), self.execute)
        if not head:
            return (0, 0)
        return await protocol.drive_async(protocol.order_of(head), self.execute)

    def try_join(self, subscription: Subscription, settled: bool) -> bool:
        """Make ``subscription`` live if it has everything up to the shared cursor; False: read more first.

        ``settled``: the subscription's cursor is a readable place (an event it
        read, or the shared cursor), so nothing can appear before it any more.
        With no live subscriber and no read in flight, the shared cursor moves
        up to such a place: the next read starts there instead of re-reading
        events nobody needs.
        """
        assert self.cursor is not None  # set by start()
        if not self.live and not self.reading and settled and subscription.cursor > self.cursor:
            self.cursor = subscription.cursor
        if subscription.cursor < self.cursor:
            return False
        self.live.add(subscription)
        return True

    def leave(self, subscription: Subscription) -> None:
        self.live.discard(subscription)
        self.subscriptions.discard(subscription)

    # -- the shared read --------------------------------------------------------

    async def _read_forever(self) -> None:
        delay = self.settings.reconnect_initial_delay
        while True:
            timeout = self.settings.held_back_interval if self._held_back else self.settings.poll_interval
            # asyncio.timeout, not wait_for: on Python 3.11 wait_for swallows a cancel that comes just as the
            # event is set (https://github.com/python/cpython/issues/86296), and close() would wait forever.
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(timeout):
                    await self._wake.wait()
            self._wake.clear()
            if not self.live:
                continue
            try:
                # The fence check comes first: checked after the read, a blocking transaction that ended
                # in between would leave events unread (its end sends no wake-up) until the fallback poll.
                self._held_back = await protocol.drive_async(protocol.held_back(), self.execute)
                await self._read_new_events()
            except Exception as error:
                if not is_connection_error(error):
                    logger.exception("subscriptions: reading new events failed; live subscriptions end with it")
                    for subscription in list(self.live):
                        subscription.fail(error)
                    self.live.clear()
                    continue
                logger.warning("subscriptions: reading new events failed (%s); retrying in %.1f s",
                               first_line(error), delay, extra={"retry_in": delay})  # fmt: skip
                await asyncio.sleep(delay)
                delay = min(delay * 2, self.settings.reconnect_max_delay)
                self._wake.set()
            else:
                delay = self.settings.reconnect_initial_delay

    async def _read_new_events(self) -> None:
        """Read after the shared cursor until a short batch, handing each event to the live subscribers."""
        self.wake_ups += 1
        self.reading = True
        try:
            assert self.cursor is not None
            steps = protocol.read_after(
                self.cursor, limit=None, event_types=None, categories=None, batch_size=self.batch_size
            )
            async for event in protocol.stream_async(steps, self.execute):
                self._fan_out(event)
        finally:
            self.reading = False

    def _fan_out(self, event: RecordedEvent) -> None:
        # No await in here: subscribers join or leave only between two events.
        cursor = (event.transaction_order, event.global_position)
        verdicts: dict[FilterKey, bool] = {}
        for subscription in list(self.live):
            if not subscription.offer(event, cursor, verdicts):
                self.live.discard(subscription)  # overflowed: it catches up on its own
        self.cursor = cursor

    # -- the listener -----------------------------------------------------------

    async def _listen_forever(self) -> None:
        delay = self.settings.reconnect_initial_delay
        while True:
            try:
                connection = await psycopg.AsyncConnection.connect(
                    self._conninfo,
                    autocommit=True,
                    application_name=self.settings.application_name,
                    prepare_threshold=None,  # SELECT 1 runs forever: never prepared, whatever is in between
                    **CLIENT_KEEPALIVES,
                )
            except (psycopg.Error, OSError) as error:
                logger.warning("subscriptions: cannot connect to LISTEN (%s); retrying in %.1f s",
                               first_line(error), delay, extra={"retry_in": delay})  # fmt: skip
            else:
                works = True
                try:
                    async with connection:
                        works = await self._listen(connection)
                except (psycopg.Error, OSError) as error:
                    logger.warning("subscriptions: LISTEN connection lost (%s); reconnecting",
                                   first_line(error), extra={"backend_pid": self.backend_pid})  # fmt: skip
                    if self.listening.is_set():
                        delay = self.settings.reconnect_initial_delay
                finally:
                    self.listening.clear()
                    self.ready.clear()
                    self.mode = "connecting"
                    self.backend_pid = None
                if not works:
                    # The reader's poll_interval timer is the wake-up from now on; read once now for what
                    # was committed while the probe waited.
                    self.mode = "polling"
                    self.ready.set()
                    self._wake.set()
                    return
            await asyncio.sleep(delay)
            delay = min(delay * 2, self.settings.reconnect_max_delay)

    async def _listen(self, connection: psycopg.AsyncConnection[Any]) -> bool:
        """LISTEN, prove it, then set wake-ups until cancelled; False when LISTEN proved not to deliver."""
        await connection.execute(listen_statement(NOTIFY_CHANNEL))
        await connection.execute(listen_statement(self.probe_channel))
        self.backend_pid = connection.info.backend_pid
        self.connections += 1
        proven = await self._probe(connection)
        if proven is False:
            await self._give_up_listening(connection)
            return False
        self.mode = "listening"
        self.listening.set()
        self.ready.set()
        logger.info("subscriptions: listening on %s", NOTIFY_CHANNEL,
                    extra={"backend_pid": self.backend_pid, "connections": self.connections})  # fmt: skip
        # Wake-ups sent while nobody listened are lost; the table is not: re-read.
        self._wake.set()
        while True:
            received = False
            async for notification in connection.notifies(timeout=self.settings.liveness_interval, stop_after=1):
                received = received or notification.channel == NOTIFY_CHANNEL  # a late probe is no wake-up
            if received:
                self._wake.set()
            elif proven is None:  # a probe that could not be judged before: judge it now
                proven = await self._probe(connection)
                if proven is False:
                    self.listening.clear()
                    await self._give_up_listening(connection)
                    return False
            else:
                await connection.execute("SELECT 1")  # idle: is the session (and its LISTEN) still there?

    async def _probe(self, connection: psycopg.AsyncConnection[Any]) -> bool | None:
        """Whether a notification sent from another session reaches this one: True, False, or None (no verdict)."""
        steps = probe(self.probe_channel, timeout=self.settings.probe_timeout, logger=logger, who="subscriptions",
                      extra={"channel": NOTIFY_CHANNEL})  # fmt: skip
        return await run_probe_async(connection, self._conninfo, steps, application_name=self.settings.application_name)

    async def _give_up_listening(self, connection: psycopg.AsyncConnection[Any]) -> None:
        """Warn (once per hub) and drop the LISTENs the server session that ran them may still hold."""
        if not self._warned:
            self._warned = True
            warn_listen_does_not_deliver(
                logger,
                who="subscriptions",
                conninfo=self._conninfo,
                probe_timeout=self.settings.probe_timeout,
                poll_interval=self.settings.poll_interval,
                fix=_FIX,
                extra={"channel": NOTIFY_CHANNEL},
            )
        try:  # Best effort: the server session that ran the LISTEN should not keep receiving wake-ups.
            await connection.execute("UNLISTEN *")
        except psycopg.Error as error:
            logger.debug("subscriptions: UNLISTEN failed (%s)", first_line(error))
