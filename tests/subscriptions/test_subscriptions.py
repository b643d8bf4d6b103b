"""AsyncEventStore.subscribe against a real PostgreSQL, each fault forced for real.

The asyncio store runs on an event loop in a thread of its own (as in
tests/contract: pytest-asyncio is not a dependency); appends and held-open
transactions come from the test's thread through the sync ``store``. Nothing
sleeps to wait: every wait is on a condition, with a timeout.
"""

from __future__ import annotations

import asyncio
import io
import threading
import time
from collections.abc import Awaitable, Callable, Iterator
from concurrent.futures import Future
from typing import Any, TypeVar

import pytest
import sqlalchemy as sa
from sqlalchemy.engine import Engine

from eventstore import AsyncEventStore, EventStore, InvalidEvent, NewEvent, RecordedEvent, UnknownPosition
from eventstore.store.subscription import Subscription
from eventstore.store.subscriptions import SubscriptionHub, SubscriptionSettings
from eventstore.testing.server import TestServer

T = TypeVar("T")
TIMEOUT = 20.0
CLOSE_TIMEOUT = 15.0
"""Teardown's bound for each step (psycopg gives a cancelled statement up to 10 s to end)."""
# Only wake-ups deliver: a test that needs the timer says so.
NO_POLL = SubscriptionSettings(poll_interval=60.0, application_name="es-test-subscriptions")


class Loop:
    """An event loop in a thread; the test thread hands it coroutines."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, name="subscriptions-loop", daemon=True)
        self.thread.start()

    def start(self, awaitable: Awaitable[T]) -> Future[T]:
        async def wrapped() -> T:
            return await awaitable

        return asyncio.run_coroutine_threadsafe(wrapped(), self.loop)

    def run(self, awaitable: Awaitable[T], timeout: float = TIMEOUT) -> T:
        return self.start(awaitable).result(timeout=timeout)

    def wait_until(self, predicate: Callable[[], bool], timeout: float = TIMEOUT, what: str = "condition") -> None:
        """Wait on the loop until ``predicate()`` holds (checked between the loop's other work)."""

        async def until() -> None:
            async with asyncio.timeout(timeout):
                while not predicate():
                    await asyncio.sleep(0.005)

        try:
            self.run(until(), timeout=timeout + 5)
        except TimeoutError:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}") from None

    def close(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(timeout=TIMEOUT)
        self.loop.close()


class Consumer:
    """A task that reads one subscription into :attr:`received`, pausing after ``pause_after`` events."""

    def __init__(self, loop: Loop, store: AsyncEventStore, *, pause_after: int | None = None, **options: Any) -> None:
        self.loop = loop
        self.store = store
        self.options = options
        self.received: list[RecordedEvent] = []
        self.feed: Subscription | None = None
        self.pause_after = pause_after
        self.resume = asyncio.Event()
        self.task: asyncio.Task[None] | None = None
        self.failure: BaseException | None = None

    async def _consume(self) -> None:
        try:
            async with self.store.subscribe(**self.options) as feed:
                self.feed = feed
                async for event in feed:
                    self.received.append(event)
                    if self.pause_after is not None and len(self.received) >= self.pause_after:
                        await self.resume.wait()
        except asyncio.CancelledError:
            raise
        except BaseException as error:
            self.failure = error
            raise

    def start(self) -> Consumer:
        async def create() -> None:
            self.task = asyncio.create_task(self._consume())

        self.loop.run(create())
        return self

    @property
    def live(self) -> bool:
        return self.feed is not None and self.feed.live

    def positions(self) -> list[int]:
        return [event.global_position for event in self.received]

    def wait_for(self, count: int, timeout: float = TIMEOUT) -> None:
        self.loop.wait_until(
            lambda: len(self.received) >= count or self.failure is not None, timeout, f"{count} events"
        )
        assert self.failure is None, self.failure

    def wait_live(self) -> None:
        self.loop.wait_until(lambda: self.live or self.failure is not None, what="the subscription to be live")
        assert self.failure is None, self.failure


@pytest.fixture
def loop() -> Iterator[Loop]:
    running = Loop()
    yield running
    running.close()


@pytest.fixture
def make_store(loop: Loop, database_url: str) -> Iterator[Callable[..., AsyncEventStore]]:
    """AsyncEventStores on this test's database; their subscriptions are cancelled and the stores closed after."""
    made: list[AsyncEventStore] = []

    def make(**options: Any) -> AsyncEventStore:
        options.setdefault("subscription_settings", NO_POLL)
        made.append(AsyncEventStore(database_url, **options))
        return made[-1]

    yield make

    async def close_all() -> None:
        # The test's own tasks are cancelled; the hubs' tasks are left to close(), as a user's close stops them.
        hub_tasks = {
            task for async_store in made if async_store._subscriptions for task in async_store._subscriptions._tasks
        }
        own = {task for task in asyncio.all_tasks() if task is not asyncio.current_task() and task not in hub_tasks}
        for task in own:
            task.cancel()
        hung = [await within(CLOSE_TIMEOUT, asyncio.wait(own) if own else asyncio.sleep(0), "the test's tasks to end")]
        for async_store in made:  # each one, whatever hung before
            hung.append(await within(CLOSE_TIMEOUT, async_store.close(), f"{async_store!r}.close()"))
        if any(hung):
            raise AssertionError("teardown hung:\n" + "\n".join(report for report in hung if report))

    loop.run(close_all(), timeout=2 * CLOSE_TIMEOUT + 5)


async def within(seconds: float, awaitable: Awaitable[Any], what: str) -> str:
    """Await ``awaitable`` for at most ``seconds``: "" if it ended, else every task still running and where it waits.

    A bare timeout would only say that teardown was slow; the stacks say which task hung on what.
    """
    waiting = asyncio.ensure_future(awaitable)
    done, _ = await asyncio.wait({waiting}, timeout=seconds)
    if waiting in done:
        waiting.result()
        return ""
    stuck = [task for task in asyncio.all_tasks() if task is not asyncio.current_task() and not task.done()]
    tasks = "\n".join(describe_task(task) for task in stuck)  # before the cancel below moves them on
    waiting.cancel()
    return f"still waiting for {what} after {seconds} s; tasks running:\n{tasks}"


def describe_task(task: asyncio.Task[Any]) -> str:
    stack = io.StringIO()
    task.print_stack(file=stack)
    return f"{task.get_name()} (cancelling: {task.cancelling()}):\n{stack.getvalue()}"


def hub_of(async_store: AsyncEventStore) -> SubscriptionHub:
    hub = async_store._subscriptions
    assert hub is not None
    return hub


def happened(label: str, event_type: str = "Happened") -> NewEvent:
    return NewEvent(event_type, {"label": label})


def all_positions(store: EventStore, after: int = 0) -> list[int]:
    return [event.global_position for event in store.read_all(after=after or None)]


def assert_exactly_once_in_order(consumer: Consumer, store: EventStore, after: int = 0) -> None:
    positions = consumer.positions()
    assert len(positions) == len(set(positions)), "an event was delivered twice"
    assert positions == all_positions(store, after)


# -- the gap rule ---------------------------------------------------------------------


def test_out_of_order_commit_is_delivered_in_the_global_order(
    loop: Loop, make_store: Callable[..., AsyncEventStore], store: EventStore
) -> None:
    store.append("a-1", [happened("before")])
    consumer = Consumer(loop, make_store(), after="head").start()
    consumer.wait_live()
    hub = hub_of(consumer.store)
    with store.engine.connect() as held:
        transaction = held.begin()
        store.append("a-2", [happened("early")], connection=held)  # lower position, still open
        reads = hub.wake_ups
        store.append("a-3", [happened("late")])  # higher position, committed first, wakes the hub
        loop.wait_until(lambda: hub.wake_ups > reads, what="the hub to read after the late commit")
        assert consumer.received == []  # held back by the fence, not skipped past
        transaction.commit()
    consumer.wait_for(2)
    assert [event.data["label"] for event in consumer.received] == ["early", "late"]
    assert_exactly_once_in_order(consumer, store, after=1)


def test_end_of_an_unrelated_transaction_is_found_by_the_held_back_timer(
    loop: Loop, make_store: Callable[..., AsyncEventStore], store: EventStore, engine: Engine
) -> None:
    consumer = Consumer(loop, make_store(), after=0).start()
    consumer.wait_live()
    with engine.connect() as held:
        transaction = held.begin()
        held.execute(sa.text("SELECT pg_current_xact_id()"))  # holds back the fence; its end notifies nobody
        store.append("a-1", [happened("waits")])
        hub = hub_of(consumer.store)
        reads = hub.wake_ups
        loop.wait_until(lambda: hub.wake_ups > reads, what="the hub to read after the append")
        assert consumer.received == []
        transaction.commit()
    consumer.wait_for(1, timeout=5)  # poll_interval is 60 s: only the held-back timer can deliver it
    assert_exactly_once_in_order(consumer, store)


def test_rolled_back_append_is_never_delivered_and_blocks_nothing(
    loop: Loop, make_store: Callable[..., AsyncEventStore], store: EventStore
) -> None:
    consumer = Consumer(loop, make_store(), after=0).start()
    consumer.wait_live()
    with store.engine.connect() as held:
        transaction = held.begin()
        doomed = store.append("a-1", [happened("doomed")], connection=held)
        store.append("a-2", [happened("kept")])
        transaction.rollback()
    store.append("a-3", [happened("after")])
    consumer.wait_for(2)
    assert [event.data["label"] for event in consumer.received] == ["kept", "after"]
    assert doomed.global_position not in consumer.positions()
    assert_exactly_once_in_order(consumer, store)


# -- faults ---------------------------------------------------------------------------


def listener_backends(engine: Engine, application_name: str) -> list[int]:
    with engine.connect() as connection:
        rows = connection.execute(
            sa.text("SELECT pid FROM pg_stat_activity WHERE application_name = :name AND datname = current_database()"),
            {"name": application_name},
        )
        return [row[0] for row in rows]


def test_killed_listen_backend_is_invisible_but_for_delay(
    loop: Loop, make_store: Callable[..., AsyncEventStore], store: EventStore, engine: Engine
) -> None:
    store.append("a-1", [happened("0")])
    consumer = Consumer(loop, make_store(), after=0).start()
    consumer.wait_for(1)
    consumer.wait_live()
    hub = hub_of(consumer.store)
    # Live comes before LISTEN does (the listener's first read covers the gap): wait for the backend to kill.
    loop.wait_until(hub.listening.is_set, what="the hub to listen")
    [pid] = listener_backends(engine, NO_POLL.application_name)
    with engine.connect() as connection:
        assert connection.execute(sa.text("SELECT pg_terminate_backend(:pid)"), {"pid": pid}).scalar_one()
    # Appended while the listener is away: their wake-ups are lost; the re-read after the reconnect finds them.
    for number in range(1, 6):
        store.append(f"a-{number}", [happened(str(number))])
    loop.wait_until(lambda: hub.connections >= 2, what="the listener to reconnect")
    consumer.wait_for(6)
    store.append("a-6", [happened("6")])  # and the new LISTEN delivers wake-ups
    consumer.wait_for(7)
    assert_exactly_once_in_order(consumer, store)
    assert listener_backends(engine, NO_POLL.application_name) != [pid]


def test_server_restart_is_invisible_but_for_delay(
    loop: Loop, make_store: Callable[..., AsyncEventStore], store: EventStore, test_server: TestServer
) -> None:
    if not test_server.can_restart:
        pytest.skip(f"cannot restart a {test_server.kind} server")
    store.append("a-1", [happened("0")])
    consumer = Consumer(loop, make_store(), after=0).start()
    consumer.wait_live()
    consumer.wait_for(1)
    hub = hub_of(consumer.store)
    loop.wait_until(hub.listening.is_set, what="the hub to listen")  # else the restart may come before the first
    test_server.restart()
    for number in range(1, 4):
        store.append(f"a-{number}", [happened(str(number))])
    loop.wait_until(lambda: hub.connections >= 2, what="the listener to reconnect")
    consumer.wait_for(4)
    store.append("a-4", [happened("4")])
    consumer.wait_for(5)
    assert_exactly_once_in_order(consumer, store)


# -- scale and back-pressure ------------------------------------------------------------


def test_a_thousand_subscriptions_share_one_listen_and_a_bounded_read(
    loop: Loop, make_store: Callable[..., AsyncEventStore], store: EventStore, engine: Engine
) -> None:
    store.append("a-1", [happened("history")])
    async_store = make_store()
    consumers = [Consumer(loop, async_store, after="head") for _ in range(1_000)]

    async def start_all() -> None:
        for consumer in consumers:
            consumer.task = asyncio.create_task(consumer._consume())

    loop.run(start_all())
    loop.wait_until(lambda: all(consumer.live for consumer in consumers), what="1,000 live subscriptions")
    assert len(listener_backends(engine, NO_POLL.application_name)) == 1
    hub = hub_of(async_store)
    assert len(hub.live) == 1_000
    loop.wait_until(lambda: not hub.reading)
    queries, wake_ups = hub.queries, hub.wake_ups
    result = store.append("a-2", [happened("live")])
    loop.wait_until(lambda: all(len(consumer.received) == 1 for consumer in consumers), what="1,000 deliveries")
    loop.wait_until(lambda: not hub.reading)
    assert hub.wake_ups - wake_ups <= 2
    # One read (a short batch) and one fence check per wake-up, whatever the number of subscribers.
    assert hub.queries - queries <= 2 * (hub.wake_ups - wake_ups)
    assert {consumer.positions()[0] for consumer in consumers} == {result.global_position}


def test_slow_subscriber_never_delays_a_fast_one_and_then_gets_everything_once(
    loop: Loop, make_store: Callable[..., AsyncEventStore], store: EventStore
) -> None:
    async_store = make_store(read_batch_size=7)
    fast = Consumer(loop, async_store, after=0).start()
    slow = Consumer(loop, async_store, after=0, max_buffered=5, pause_after=1).start()
    store.append("a-0", [happened("0")])
    fast.wait_for(1)
    slow.wait_for(1)  # now it stops reading
    fast.wait_live()
    slow.wait_live()
    for number in range(1, 41):
        store.append(f"a-{number % 3}", [happened(str(number))])
    fast.wait_for(41)
    assert_exactly_once_in_order(fast, store)
    assert len(slow.received) == 1
    assert not slow.live  # its buffer overflowed: detached from the shared read
    loop.run(_set(slow.resume))
    slow.wait_for(41)
    slow.wait_live()  # caught up on its own, then joined again
    store.append("a-9", [happened("41")])
    fast.wait_for(42)
    slow.wait_for(42)
    assert_exactly_once_in_order(slow, store)
    assert_exactly_once_in_order(fast, store)


async def _set(event: asyncio.Event) -> None:
    event.set()


def test_cancelling_an_idle_subscriber_ends_it_within_a_second(
    loop: Loop, make_store: Callable[..., AsyncEventStore]
) -> None:
    consumer = Consumer(loop, make_store(), after="head").start()
    consumer.wait_live()
    hub = hub_of(consumer.store)
    assert consumer.task is not None
    task = consumer.task

    async def cancel() -> float:
        started = time.monotonic()
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        return time.monotonic() - started

    assert loop.run(cancel()) < 1.0
    assert task.cancelled()
    assert hub.subscriptions == set()
    assert hub.live == set()


def test_closing_the_store_just_as_the_hub_is_woken_ends_its_tasks(
    loop: Loop, make_store: Callable[..., AsyncEventStore]
) -> None:
    """close() ends the hub's reader whenever it lands: Python 3.11's ``asyncio.wait_for`` returned the result of
    an event set just before the cancel and dropped the cancel, and the reader then waited out its poll (60 s here:
    the once-seen teardown hang on CI)."""
    async_store = make_store()
    for turns in range(6):  # close() lands at each step of the reader's wake-up in turn
        consumer = Consumer(loop, async_store, after="head").start()
        consumer.wait_live()
        hub = hub_of(async_store)
        loop.wait_until(hub.listening.is_set, what="the hub to listen")
        assert consumer.task is not None
        consumer.task.cancel()  # the hub stays open with no subscriber, its reader idle
        reader = next(task for task in hub._tasks if task.get_name().endswith("reader"))

        hung = loop.run(close_as_woken(async_store, hub, turns))
        assert not hung, hung
        assert reader.done(), describe_task(reader)


async def close_as_woken(async_store: AsyncEventStore, hub: SubscriptionHub, turns: int) -> str:
    """Wake the hub's reader, let the loop run ``turns`` times, close the store: what hung ("" if nothing)."""
    hub._wake.set()  # what the listener does on a notification (whose timing a test cannot choose)
    for _ in range(turns):
        await asyncio.sleep(0)
    return await within(5.0, async_store.close(), f"close() {turns} loop turns after a wake-up")


# -- resume and filters -------------------------------------------------------------------


def test_resume_from_an_old_position_gives_history_then_live_with_no_gap_or_duplicate(
    loop: Loop, make_store: Callable[..., AsyncEventStore], store: EventStore
) -> None:
    positions = [store.append(f"a-{number % 4}", [happened(str(number))]).global_position for number in range(30)]
    async_store = make_store(read_batch_size=4)
    live = Consumer(loop, async_store, after="head").start()
    live.wait_live()  # the shared cursor moves while the resumer catches up
    resumer = Consumer(loop, async_store, after=positions[9]).start()
    writer = threading.Thread(target=lambda: [store.append("b-1", [happened(f"w{n}")]) for n in range(30)])
    writer.start()
    writer.join(timeout=TIMEOUT)
    live.wait_for(30)
    resumer.wait_for(50)
    resumer.wait_live()
    assert_exactly_once_in_order(resumer, store, after=positions[9])
    assert_exactly_once_in_order(live, store, after=positions[-1])


@pytest.mark.parametrize(
    "selection",
    [
        {"categories": ["order"]},
        {"event_types": ["Shipped"]},
        {"stream_ids": ["order-1", "invoice-2"]},
        {"categories": ["order"], "event_types": ["Placed"], "stream_ids": ["order-2"]},
    ],
    ids=["category", "type", "stream-id", "all-three"],
)
def test_filters_select_exactly_in_history_and_live(
    loop: Loop, make_store: Callable[..., AsyncEventStore], store: EventStore, selection: dict[str, Any]
) -> None:
    def write(round_label: str) -> None:
        for stream_id in ("order-1", "order-2", "invoice-2", "customer-1"):
            for event_type in ("Placed", "Shipped"):
                store.append(stream_id, [happened(f"{round_label} {stream_id} {event_type}", event_type)])

    def selected(event: RecordedEvent) -> bool:
        return (
            event.category in selection.get("categories", [event.category])
            and event.type in selection.get("event_types", [event.type])
            and event.stream_id in selection.get("stream_ids", [event.stream_id])
        )

    write("history")
    consumer = Consumer(loop, make_store(read_batch_size=3), after=0, **selection).start()
    expected = [event.global_position for event in store.read_all() if selected(event)]
    consumer.wait_for(len(expected))
    consumer.wait_live()
    write("live")  # now the shared read filters in Python
    expected = [event.global_position for event in store.read_all() if selected(event)]
    consumer.wait_for(len(expected))
    # A last event the filter selects: had anything unselected been delivered, it would come before this one.
    marker_stream = selection.get("stream_ids", ["order-2"])[-1]
    store.append(marker_stream, [happened("marker", selection.get("event_types", ["Placed"])[0])])
    consumer.wait_for(len(expected) + 1)
    assert consumer.positions()[:-1] == expected


def test_bad_arguments_raise_at_once_and_an_unknown_position_on_entering(
    loop: Loop, make_store: Callable[..., AsyncEventStore]
) -> None:
    async_store = make_store()
    with pytest.raises(InvalidEvent, match="after"):
        async_store.subscribe(after=-1)
    with pytest.raises(InvalidEvent, match="stream_ids"):
        async_store.subscribe(stream_ids=[""])

    async def enter() -> None:
        async with async_store.subscribe(after=999):
            pass

    with pytest.raises(UnknownPosition):
        loop.run(enter())


# -- taking several events at once -------------------------------------------------------------


def test_next_batch_gives_what_anext_gives_several_at_a_time_and_interrupt_returns_empty(
    loop: Loop, make_store: Callable[..., AsyncEventStore], store: EventStore
) -> None:
    positions = [store.append(f"a-{number % 3}", [happened(str(number))]).global_position for number in range(10)]
    async_store = make_store(read_batch_size=4)

    async def take() -> tuple[list[list[int]], list[int], list[int]]:
        async with async_store.subscribe(after=0) as feed:
            batches: list[list[int]] = []
            while sum(len(batch) for batch in batches) < 10:  # history, read 4 at a time
                batches.append([event.global_position for event in await feed.next_batch(3)])
            assert feed.position == positions[-1]
            assert await _within(feed.next_batch(3), 0.05) is None  # nothing more: it waits
            feed.interrupt()
            interrupted = await feed.next_batch(3)
            await asyncio.to_thread(lambda: [store.append("b-1", [happened(f"live {n}")]) for n in range(3)])
            live: list[int] = []
            while len(live) < 3:
                live += [event.global_position for event in await feed.next_batch(10)]
            return batches, [event.global_position for event in interrupted], live

    batches, interrupted, live = loop.run(take())
    assert [position for batch in batches for position in batch] == positions
    assert all(1 <= len(batch) <= 3 for batch in batches)
    assert interrupted == []
    assert live == all_positions(store, after=positions[-1])


async def _within(awaitable: Awaitable[T], seconds: float) -> T | None:
    """``awaitable``'s result, or None when it has none within ``seconds`` (it is then cancelled)."""
    try:
        return await asyncio.wait_for(awaitable, seconds)
    except TimeoutError:
        return None


def test_subscriptions_with_the_same_filter_test_each_event_once(
    loop: Loop, make_store: Callable[..., AsyncEventStore], store: EventStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    async_store = make_store()
    filtered = [Consumer(loop, async_store, after="head", categories=["order"]).start() for _ in range(20)]
    others = [Consumer(loop, async_store, after="head", event_types=["Placed"]).start() for _ in range(5)]
    everything = Consumer(loop, async_store, after="head").start()
    for consumer in [*filtered, *others, everything]:
        consumer.wait_live()
    tests: list[int] = []
    selects = Subscription._selects

    def counted(subscription: Subscription, event: RecordedEvent) -> bool:
        tests.append(event.global_position)
        return selects(subscription, event)

    monkeypatch.setattr(Subscription, "_selects", counted)
    store.append("order-1", [happened("placed", "Placed")])
    store.append("invoice-1", [happened("sent", "Sent")])
    everything.wait_for(2)
    for consumer in filtered:
        consumer.wait_for(1)
    for consumer in others:
        consumer.wait_for(1)
    assert len(tests) == 2 * 2  # two distinct filters, two events; the unfiltered subscription tests nothing
    assert [len(consumer.received) for consumer in filtered + others] == [1] * 25
