"""One contract, two surfaces: every test here runs against EventStore and AsyncEventStore.

The ``surface`` fixture gives the same sync-callable methods for both: the
async store runs on an event loop in a thread of its own (pytest-asyncio is
not a dependency), so the tests read the same whichever store is under test.
"""

from __future__ import annotations

import asyncio
import functools
import threading
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

import psycopg
import pytest
import sqlalchemy as sa
from sqlalchemy.engine import Engine

from eventstore import (
    ANY,
    NO_STREAM,
    STREAM_EXISTS,
    Aggregate,
    AppendResult,
    AsyncEventStore,
    AsyncRepository,
    DatabaseUnavailable,
    DuplicateEventId,
    EventStore,
    InvalidEvent,
    NewEvent,
    ProjectionTimeout,
    RecordedEvent,
    Repository,
    SchemaNotReady,
    StreamNotFound,
    UnknownPosition,
    WrongExpectedVersion,
    applies,
)
from eventstore.database import libpq_url
from eventstore.runner import checkpoints
from eventstore.runner.waiting import wait_until_processed
from eventstore.store import NOTIFY_CHANNEL
from eventstore.testing.server import TestServer

T = TypeVar("T")
CALL_TIMEOUT = 30.0


class SyncSurface:
    """EventStore as it is."""

    kind = "sync"

    def __init__(self, url: str, **limits: Any) -> None:
        self.store = EventStore(url, **limits)

    def call(self, method: str, *args: Any, **kwargs: Any) -> Any:
        return getattr(self.store, method)(*args, **kwargs)

    def append(self, stream_id: Any, events: Any, **kwargs: Any) -> AppendResult:
        return self.store.append(stream_id, events, **kwargs)

    def read_all(self, **kwargs: Any) -> list[RecordedEvent]:
        return list(self.store.read_all(**kwargs))

    def wait_until_processed(self, name: str, position: int, *, timeout: float) -> None:
        wait_until_processed(self.store, [name], position, timeout=timeout)

    def concurrently(self, calls: list[Callable[[], T]]) -> list[T]:
        """Run ``calls`` at once (threads released together by a barrier)."""
        barrier = threading.Barrier(len(calls))

        def run(call: Callable[[], T]) -> T:
            barrier.wait(timeout=CALL_TIMEOUT)
            return call()

        with ThreadPoolExecutor(len(calls)) as pool:
            return [future.result(timeout=CALL_TIMEOUT) for future in [pool.submit(run, call) for call in calls]]

    def repository(self, aggregate_class: type[Aggregate]) -> Any:
        return Repository(self.store, aggregate_class)

    def close(self) -> None:
        self.store.close()


class AsyncSurface:
    """AsyncEventStore, its coroutines run on one event loop in a thread of its own."""

    kind = "async"

    def __init__(self, url: str, **limits: Any) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, name="contract-loop", daemon=True)
        self.thread.start()
        self.store = AsyncEventStore(url, **limits)

    def run(self, awaitable: Awaitable[T]) -> T:
        async def wrapped() -> T:
            return await awaitable

        return asyncio.run_coroutine_threadsafe(wrapped(), self.loop).result(timeout=CALL_TIMEOUT)

    def call(self, method: str, *args: Any, **kwargs: Any) -> Any:
        return self.run(getattr(self.store, method)(*args, **kwargs))

    def append(self, stream_id: Any, events: Any, **kwargs: Any) -> AppendResult:
        return self.run(self.store.append(stream_id, events, **kwargs))

    def read_all(self, **kwargs: Any) -> list[RecordedEvent]:
        return self.run(_collect(self.store.read_all(**kwargs)))

    def wait_until_processed(self, name: str, position: int, *, timeout: float) -> None:
        self.run(self.store.wait_until_processed(name, position, timeout=timeout))

    def repository(self, aggregate_class: type[Aggregate]) -> Any:
        return _SyncRepository(self, AsyncRepository(self.store, aggregate_class))

    def close(self) -> None:
        if self.loop.is_closed():
            return
        try:
            self.run(self.store.close())
        finally:
            self.loop.call_soon_threadsafe(self.loop.stop)
            self.thread.join(timeout=CALL_TIMEOUT)
            self.loop.close()


class _SyncRepository:
    def __init__(self, surface: AsyncSurface, repository: AsyncRepository[Any]) -> None:
        self.surface = surface
        self.repository = repository

    def get(self, aggregate_id: str) -> Any:
        return self.surface.run(self.repository.get(aggregate_id))

    def save(self, aggregate: Aggregate) -> AppendResult | None:
        return self.surface.run(self.repository.save(aggregate))


async def _collect(events: AsyncIterator[RecordedEvent]) -> list[RecordedEvent]:
    return [event async for event in events]


Surface = SyncSurface | AsyncSurface


def concurrent_appends(surface: Surface, stream_id: str, batches: list[list[NewEvent]]) -> list[AppendResult]:
    """Append every batch to ``stream_id`` with ANY, all at once: threads (sync) or tasks on one loop (async)."""
    if isinstance(surface, SyncSurface):
        return surface.concurrently([functools.partial(surface.store.append, stream_id, batch) for batch in batches])

    async def all_at_once() -> list[AppendResult]:
        return list(await asyncio.gather(*(surface.store.append(stream_id, batch) for batch in batches)))

    return surface.run(all_at_once())


@pytest.fixture(params=["sync", "async"])
def make_surface(request: pytest.FixtureRequest) -> Iterator[Callable[..., Surface]]:
    """Build the surface under test for a URL (closed after the test)."""
    made: list[Surface] = []

    def make(url: str, **limits: Any) -> Surface:
        surface = SyncSurface(url, **limits) if request.param == "sync" else AsyncSurface(url, **limits)
        made.append(surface)
        return surface

    yield make
    for surface in made:
        surface.close()


@pytest.fixture
def surface(make_surface: Callable[..., Surface], database_url: str) -> Surface:
    """The store under test on this test's database; small read batches, so every read_all spans batches."""
    return make_surface(database_url, read_batch_size=2)


def placed(total: int = 10, **kwargs: Any) -> NewEvent:
    return NewEvent("OrderPlaced", {"total": total}, **kwargs)


def event_count(engine: Engine) -> int:
    with engine.connect() as connection:
        return int(connection.execute(sa.text("SELECT count(*) FROM events")).scalar_one())


# -- append and read ----------------------------------------------------------------


def test_append_then_read_the_stream_back(surface: Surface) -> None:
    first = placed(metadata={"user": "ada"})
    result = surface.append("order-1", [first, NewEvent("OrderPaid", {"amount": 10})], expected_version=NO_STREAM)
    assert (result.stream_id, result.stream_version, result.already_stored) == ("order-1", 2, False)

    events = surface.call("read_stream", "order-1")
    assert [(event.stream_version, event.type) for event in events] == [(1, "OrderPlaced"), (2, "OrderPaid")]
    assert events[0].event_id == first.event_id
    assert (events[0].data, events[0].metadata) == ({"total": 10}, {"user": "ada"})
    assert events[1].global_position == result.global_position > events[0].global_position
    assert [event.stream_version for event in surface.call("read_stream", "order-1", backwards=True, limit=1)] == [2]
    assert [event.stream_version for event in surface.call("read_stream", "order-1", from_version=2)] == [2]
    assert surface.call("read_stream", "order-2") == []
    assert surface.call("stream_version", "order-1") == 2
    assert surface.call("stream_version", "order-2") == 0


EXPECTATIONS_THAT_HOLD = [(0, ANY), (2, ANY), (0, NO_STREAM), (0, 0), (2, STREAM_EXISTS), (2, 2)]
EXPECTATIONS_THAT_FAIL = [(1, NO_STREAM), (1, 0), (0, STREAM_EXISTS), (0, 1), (2, 1), (2, 3)]


def test_expected_version_that_holds_appends(surface: Surface) -> None:
    for case, (existing, expected_version) in enumerate(EXPECTATIONS_THAT_HOLD):
        stream_id = f"order-{case}"  # one stream per case: one database for all
        if existing:
            surface.append(stream_id, [placed() for _ in range(existing)])
        result = surface.append(stream_id, [placed()], expected_version=expected_version)
        assert result.stream_version == existing + 1, (existing, expected_version)


def test_expected_version_that_fails_names_the_actual_version_and_writes_nothing(surface: Surface) -> None:
    for case, (existing, expected_version) in enumerate(EXPECTATIONS_THAT_FAIL):
        stream_id = f"order-{case}"
        if existing:
            surface.append(stream_id, [placed() for _ in range(existing)])
        with pytest.raises(WrongExpectedVersion) as raised:
            surface.append(stream_id, [placed()], expected_version=expected_version)
        assert (raised.value.stream_id, raised.value.actual) == (stream_id, existing)
        assert surface.call("stream_version", stream_id) == existing


def test_retried_append_returns_the_original_result_marked_already_stored(surface: Surface, engine: Engine) -> None:
    events = [placed(1), placed(2)]
    original = surface.append("order-1", events, expected_version=NO_STREAM)
    surface.append("order-1", [placed(3)])

    retried = surface.append("order-1", events, expected_version=NO_STREAM)
    assert retried == AppendResult("order-1", 2, original.global_position, already_stored=True)
    assert event_count(engine) == 3


def test_reused_event_id_with_other_content_raises_duplicate_event_id(surface: Surface, engine: Engine) -> None:
    event_id = uuid.uuid4()
    surface.append("order-1", [placed(1, event_id=event_id)])
    with pytest.raises(DuplicateEventId, match=f"event_id {event_id} is already stored with different data"):
        surface.append("order-1", [placed(2, event_id=event_id)])
    with pytest.raises(DuplicateEventId, match="in stream 'order-1', not 'order-2'"):
        surface.append("order-2", [placed(1, event_id=event_id)])
    with pytest.raises(DuplicateEventId, match="holds only some already-stored events"):
        surface.append("order-1", [placed(1, event_id=event_id), placed(5)])
    assert event_count(engine) == 1


BAD_APPENDS: list[tuple[Any, Any, dict[str, Any], str]] = [
    ("", [placed()], {}, "stream_id: must not be empty"),
    ("x" * 256, [placed()], {}, "stream_id: is 256 characters long; the limit is 255"),
    ("order-1 ", [placed()], {}, "stream_id: 'order-1 ' has leading or trailing whitespace"),
    ("order-1", [], {}, "events: at least one event is required"),
    ("order-1", [NewEvent("", {})], {}, "events[0].type: must not be empty"),
    ("order-1", [NewEvent("T", {"a": float("nan")})], {}, "events[0].data.a: nan is not valid JSON"),
    ("order-1", [NewEvent("T", {"a": "\x00"})], {}, "events[0].data.a: contains a NUL"),
    ("order-1", [placed(), placed(), placed()], {}, "events: 3 events in one append; the limit is max_append"),
    ("order-1", [placed()], {"expected_version": -1}, "expected_version: must be between 0"),
    ("order-1", [placed()], {"expected_version": "1"}, "expected_version: must be ANY"),
]


def test_bad_append_names_the_field_and_writes_nothing(
    make_surface: Callable[..., Surface], database_url: str, engine: Engine
) -> None:
    surface = make_surface(database_url, max_append_events=2)
    for stream_id, events, kwargs, message in BAD_APPENDS:
        with pytest.raises(InvalidEvent) as raised:
            surface.append(stream_id, events, **kwargs)
        assert message in str(raised.value)
    assert event_count(engine) == 0


BAD_READS: list[tuple[str, dict[str, Any], str]] = [
    ("read_all", {"after": -1}, "after: must be between 0"),
    ("read_all", {"limit": "10"}, "limit: must be an integer, got str"),
    ("read_all", {"categories": [""]}, "categories[0]: must not be empty"),
    ("read_stream", {"stream_id": "order-1", "from_version": 0}, "from_version: must be between 1"),
    ("stream_version", {"stream_id": 7}, "stream_id: must be a string, got int"),
]


def test_bad_read_argument_is_named(surface: Surface) -> None:
    for method, kwargs, message in BAD_READS:
        with pytest.raises(InvalidEvent) as raised:
            if method == "read_all":
                surface.read_all(**kwargs)
            else:
                surface.call(method, **kwargs)
        assert message in str(raised.value)


def test_read_all_in_global_order_with_filters_after_and_limit(surface: Surface) -> None:
    surface.append("order-1", [placed(1), NewEvent("OrderPaid", {"amount": 1})])
    surface.append("invoice-1", [NewEvent("InvoiceSent", {"n": 1})])
    surface.append("order-2", [placed(2)])
    surface.append("order-1", [NewEvent("OrderShipped", {})])

    everything = surface.read_all()
    assert [(event.stream_id, event.stream_version) for event in everything] == [
        ("order-1", 1),
        ("order-1", 2),
        ("invoice-1", 1),
        ("order-2", 1),
        ("order-1", 3),
    ]
    positions = [event.global_position for event in everything]
    assert surface.read_all(after=positions[1]) == everything[2:]
    assert surface.read_all(after=positions[0], limit=3) == everything[1:4]
    assert surface.read_all(limit=0) == []
    assert [event.type for event in surface.read_all(categories=["order"], event_types=["OrderPlaced"])] == [
        "OrderPlaced",
        "OrderPlaced",
    ]
    assert [event.stream_id for event in surface.read_all(categories="invoice")] == ["invoice-1"]
    assert surface.read_all(after=positions[-1]) == []


def test_read_all_after_an_unknown_position_raises(surface: Surface) -> None:
    result = surface.append("order-1", [placed()])
    with pytest.raises(UnknownPosition, match=f"after={result.global_position + 1000}"):
        surface.read_all(after=result.global_position + 1000)
    with pytest.raises(UnknownPosition):
        surface.call("order_of", result.global_position + 1000)
    assert surface.call("order_of", result.global_position)[1] == result.global_position


def test_head_position_is_the_last_readable_event(surface: Surface) -> None:
    assert surface.call("head_position") == 0
    surface.append("order-1", [placed()])
    last = surface.append("order-2", [placed(), placed()])
    assert surface.call("head_position") == last.global_position
    assert surface.read_all(after=surface.call("head_position")) == []
    assert surface.call("held_back") is False


def test_concurrent_any_appends_to_one_stream_all_land_with_consecutive_versions(surface: Surface) -> None:
    writers, rounds = 8, 3
    results: list[AppendResult] = []
    for round_number in range(rounds):
        batches = [[placed(round_number * 100 + writer), placed()] for writer in range(writers)]
        results += concurrent_appends(surface, "order-1", batches)

    stored = surface.call("read_stream", "order-1")
    assert [event.stream_version for event in stored] == list(range(1, writers * rounds * 2 + 1))
    assert sorted(result.stream_version for result in results) == list(range(2, writers * rounds * 2 + 1, 2))
    # Each append's two events are adjacent: appends are atomic.
    for first, second in zip(stored[::2], stored[1::2], strict=True):
        assert (first.type, second.data) == ("OrderPlaced", {"total": 10})
        assert first.global_position < second.global_position


def test_gap_rule_an_open_append_holds_back_later_events_until_it_commits(surface: Surface, engine: Engine) -> None:
    before = surface.append("order-1", [placed(1)])
    with EventStore(engine) as helper, engine.connect() as open_connection:
        transaction = open_connection.begin()
        early = helper.append("order-2", [placed(2)], connection=open_connection)  # lower position, still open
        late = surface.append("order-3", [placed(3)])  # higher position, committed first
        assert late.global_position > early.global_position

        assert surface.read_all(after=before.global_position) == []  # held back, not skipped past
        assert surface.call("held_back") is True
        assert surface.call("head_position") == before.global_position

        transaction.commit()
    read = surface.read_all(after=before.global_position)
    assert [event.stream_id for event in read] == ["order-2", "order-3"]
    assert surface.call("held_back") is False


def test_each_append_wakes_listeners_after_its_commit(surface: Surface, engine: Engine) -> None:
    with psycopg.connect(libpq_url(engine), autocommit=True) as listener:
        listener.execute(f"LISTEN {NOTIFY_CHANNEL}")
        surface.append("order-1", [placed()])
        woken = list(listener.notifies(timeout=10, stop_after=1))
    assert [notify.channel for notify in woken] == [NOTIFY_CHANNEL]


def test_no_wake_up_with_notify_off(make_surface: Callable[..., Surface], database_url: str, engine: Engine) -> None:
    surface = make_surface(database_url, notify=False)
    with psycopg.connect(libpq_url(engine), autocommit=True) as listener:
        listener.execute(f"LISTEN {NOTIFY_CHANNEL}")
        surface.append("order-1", [placed()])
        # The append has returned, so a wake-up would already be queued for us.
        assert list(listener.notifies(timeout=0.3)) == []


# -- wait_until_processed -----------------------------------------------------------


def test_wait_until_processed_returns_once_the_checkpoint_is_there(surface: Surface, engine: Engine) -> None:
    result = surface.append("order-1", [placed()])
    surface.wait_until_processed("order_summaries", 0, timeout=0.1)  # nothing to wait for
    with engine.begin() as connection:
        checkpoints.ensure(connection, "order_summaries")
        checkpoints.move_to(connection, "order_summaries", surface.call("order_of", result.global_position))
    surface.wait_until_processed("order_summaries", result.global_position, timeout=5)


def test_wait_until_processed_times_out_naming_the_lagging_projection(surface: Surface, engine: Engine) -> None:
    result = surface.append("order-1", [placed()])
    with pytest.raises(ProjectionTimeout, match=r"projection 'order_summaries' \(no checkpoint yet\)"):
        surface.wait_until_processed("order_summaries", result.global_position, timeout=0.1)

    with engine.begin() as connection:
        checkpoints.ensure(connection, "order_summaries")
    with pytest.raises(ProjectionTimeout) as raised:
        surface.wait_until_processed("order_summaries", result.global_position, timeout=0.1)
    assert str(raised.value) == (
        f"projection 'order_summaries' (at position 0, state idle): "
        f"did not process position {result.global_position} within 0.1 s"
    )
    with pytest.raises(UnknownPosition):
        surface.wait_until_processed("order_summaries", result.global_position + 1000, timeout=0.1)


# -- errors from the database ---------------------------------------------------------


def test_unreachable_server_raises_database_unavailable(make_surface: Callable[..., Surface]) -> None:
    surface = make_surface("postgresql://eventstore:secret@127.0.0.1:1/nowhere")
    with pytest.raises(DatabaseUnavailable, match=r"cannot reach PostgreSQL at 127\.0\.0\.1:1/nowhere") as raised:
        surface.append("order-1", [placed()])
    assert "secret" not in str(raised.value)
    with pytest.raises(DatabaseUnavailable):
        surface.read_all()


def test_unmigrated_database_raises_schema_not_ready(
    make_surface: Callable[..., Surface], test_server: TestServer
) -> None:
    name = test_server.create_database(migrated=False)
    try:
        surface = make_surface(test_server.url(name))
        with pytest.raises(SchemaNotReady, match="run `eventstore migrate`"):
            surface.append("order-1", [placed()])
        with pytest.raises(SchemaNotReady):
            surface.call("head_position")
        surface.close()
    finally:
        test_server.drop_database(name)


# -- aggregates ---------------------------------------------------------------------


class Order(Aggregate):
    category = "order"

    def __init__(self, aggregate_id: str) -> None:
        super().__init__(aggregate_id)
        self.total = 0
        self.paid = False

    def place(self, total: int) -> None:
        self.record("OrderPlaced", {"total": total})

    def pay(self) -> None:
        self.record("OrderPaid", {"amount": self.total})

    @applies("OrderPlaced")
    def _placed(self, data: dict[str, Any]) -> None:
        self.total = data["total"]

    @applies("OrderPaid")
    def _paid(self, data: dict[str, Any]) -> None:
        self.paid = True


def test_repository_round_trips_an_aggregate_with_optimistic_concurrency(surface: Surface) -> None:
    orders = surface.repository(Order)
    with pytest.raises(StreamNotFound):
        orders.get("42")
    order = Order("42")
    order.place(30)
    assert orders.save(order).stream_version == 1
    assert orders.save(order) is None  # nothing pending

    loaded = orders.get("42")
    assert (loaded.total, loaded.paid, loaded.version) == (30, False, 1)
    stale = orders.get("42")
    loaded.pay()
    orders.save(loaded)
    assert orders.get("42").paid

    stale.pay()
    with pytest.raises(WrongExpectedVersion):
        orders.save(stale)
