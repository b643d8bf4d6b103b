"""``AsyncEventStore.subscribe`` through a real PgBouncer (Debian's 1.18): it proves LISTEN delivers, or polls.

Through transaction pooling a LISTEN "succeeds" and nothing ever arrives
(``test_listener_through_pgbouncer.py`` shows the fault). The hub probes
after each LISTEN with the runner listener's probe
(:mod:`eventstore.store.listen_probe`); when the probe does not arrive it
warns once and relies on its ``poll_interval``. Each test runs its own event
loop (``asyncio.run``) and bounds every wait with a timeout.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Any

import pytest

from eventstore import AsyncEventStore, EventStore, NewEvent, RecordedEvent
from eventstore.store.subscription import Subscription
from eventstore.store.subscriptions import SubscriptionHub, SubscriptionSettings

LOGGER = "eventstore.store.subscriptions"
TIMEOUT = 20.0
APPENDS = 12  # each of 1 or 2 events, on order-* and customer-* streams


def warnings_from(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [record for record in caplog.records if record.name == LOGGER and record.levelno >= logging.WARNING]


def hub_of(async_store: AsyncEventStore) -> SubscriptionHub:
    hub = async_store._subscriptions
    assert hub is not None
    return hub


async def take(feed: Subscription, count: int) -> list[RecordedEvent]:
    received: list[RecordedEvent] = []
    async for event in feed:
        received.append(event)
        if len(received) == count:
            break
    return received


async def append_some(async_store: AsyncEventStore, first: int, last: int) -> None:
    for number in range(first, last):
        stream_id = f"order-{number % 3}" if number % 2 else f"customer-{number % 3}"
        events = [NewEvent("Happened", {"number": number, "part": part}) for part in range(1 + number % 2)]
        await async_store.append(stream_id, events)


def run_two_subscriptions(url: str, settings: SubscriptionSettings, store: EventStore) -> tuple[Any, ...]:
    """Subscribe twice from the head (all events; ``order`` only), append, and collect what each received.

    Half of the appends come while the hub is still probing, half once its
    wake-ups are in place. Returns both lists, what the table holds after the
    head (in the global order), and the hub's mode and counters.
    """
    head = store.head_position()

    async def main() -> tuple[Any, ...]:
        async with (
            AsyncEventStore(url, subscription_settings=settings) as async_store,
            async_store.subscribe(after="head") as everything,
            async_store.subscribe(after="head", categories=["order"]) as orders,
        ):
            hub = hub_of(async_store)
            expected = list(range(APPENDS))
            total = sum(1 + number % 2 for number in expected)
            order_total = sum(1 + number % 2 for number in expected if number % 2)
            readers = [asyncio.create_task(take(everything, total)), asyncio.create_task(take(orders, order_total))]
            async with asyncio.timeout(TIMEOUT):
                await append_some(async_store, 0, APPENDS // 2)
                await hub.ready.wait()
                await append_some(async_store, APPENDS // 2, APPENDS)
                received = await asyncio.gather(*readers)
            return (*received, hub.mode, hub.listening.is_set(), hub.connections, hub.wake_ups)

    all_received, order_received, mode, listening, connections, wake_ups = asyncio.run(main())
    in_table = list(store.read_all(after=head or None))
    return all_received, order_received, in_table, mode, listening, connections, wake_ups


def positions(events: list[RecordedEvent]) -> list[int]:
    return [event.global_position for event in events]


def test_through_transaction_mode_every_event_arrives_once_in_order_and_it_warns_once(
    pgbouncer: Callable[..., Any], store: EventStore, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger=LOGGER)
    bouncer = pgbouncer("transaction", pool_size=4)
    settings = SubscriptionSettings(poll_interval=0.1, probe_timeout=0.5, application_name="es-test-subscriptions")
    everything, orders, in_table, mode, listening, connections, wake_ups = run_two_subscriptions(
        bouncer.url, settings, store
    )
    assert positions(everything) == positions(in_table)  # every event, once, in the global order
    assert positions(orders) == [event.global_position for event in in_table if event.category == "order"]
    assert (mode, listening, connections) == ("polling", False, 1)  # gave up LISTEN once, for good
    assert wake_ups >= 2  # the poll read them
    [warning] = warnings_from(caplog)  # one hub, two subscriptions: one warning
    message = warning.getMessage()
    assert message.startswith("subscriptions: LISTEN through ")
    for words in (
        f"127.0.0.1:{bouncer.port}/",
        "within 0.5 s",
        "pool_mode = transaction",
        "polling every 0.1 s",
        "SubscriptionSettings(listen_url=",
    ):
        assert words in message
    assert warning.__dict__["mode"] == "polling"


@pytest.mark.parametrize("route", ["direct", "session", "listen_url"])
def test_where_listen_delivers_it_listens_without_a_warning(
    route: str,
    pgbouncer: Callable[..., Any],
    database_url: str,
    store: EventStore,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Direct, through session pooling, or a transaction-pooled store with a direct ``listen_url``: wake-ups only."""
    caplog.set_level(logging.DEBUG, logger=LOGGER)
    # No poll in reach: only notifications can deliver within the test's timeout.
    settings = SubscriptionSettings(poll_interval=60.0, probe_timeout=5.0, application_name="es-test-subscriptions")
    if route == "direct":
        url = database_url
    elif route == "session":
        url = pgbouncer("session", pool_size=10).url
    else:
        url = pgbouncer("transaction", pool_size=4).url
        settings = SubscriptionSettings(
            poll_interval=60.0, probe_timeout=5.0, application_name="es-test-subscriptions", listen_url=database_url
        )
    everything, orders, in_table, mode, listening, connections, _ = run_two_subscriptions(url, settings, store)
    assert positions(everything) == positions(in_table)
    assert positions(orders) == [event.global_position for event in in_table if event.category == "order"]
    assert (mode, listening, connections) == ("listening", True, 1)
    assert warnings_from(caplog) == []
    assert any(record.getMessage() == "subscriptions: probe arrived; LISTEN works" for record in caplog.records)


def test_the_listen_url_is_not_in_the_settings_repr() -> None:
    settings = SubscriptionSettings(listen_url="postgresql://app:secret@db:5432/shop")
    assert "secret" not in repr(settings)
