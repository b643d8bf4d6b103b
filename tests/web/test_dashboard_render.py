"""The dashboard's words and numbers without a browser: ETA, "picked up after", events/s, the log's filters.

The snapshots are real (:func:`take_snapshot` on this test's database, with a
real runner or a real rebuild); only the sampler's clock is ours, so the
rates, and with them the ETA, are exact.
"""

from __future__ import annotations

import itertools
import threading
from datetime import UTC, datetime, timedelta

import pytest
from starlette.datastructures import QueryParams

from eventstore import EventStore, NewEvent, ProjectionRunner, admin
from eventstore.web.dashboard import (
    History,
    LogFilter,
    PickUp,
    eta,
    log_filter,
    rate_text,
    render_log,
    render_projections,
    render_store,
    seconds_text,
    take_snapshot,
)
from eventstore.web.errors import RequestError
from projections import Ledger
from tests.runner.runner_helpers import append_many, running


def test_eta_divides_what_is_left_by_the_net_speed() -> None:
    assert eta(400_000, 1_000_000, (4_100.0, 0.0)) == "about 2 min left at 4,100 events/s"  # 146 s
    # The head moves too: 600,000 left at 5,000 - 1,000 a second.
    assert eta(400_000, 1_000_000, (5_000.0, 1_000.0)) == "about 2 min left at 5,000 events/s"  # 150 s
    assert eta(90, 100, (2.5, 0.0)) == "about 4 s left at 2.5 events/s"
    assert eta(99, 100, (50.0, 0.0)) == "under a second left at 50 events/s"
    assert eta(10, 100, None) == "— (measuring its rate)"
    assert eta(10, 100, (0.0, 0.0)) == "— (no progress in the last 15 s)"
    assert eta(10, 100, (100.0, 150.0)) == "— at 100 events/s: events arrive as fast (150 events/s)"


def test_durations_and_rates_read_naturally() -> None:
    assert seconds_text(0.0123) == "12 ms"
    assert seconds_text(3.44) == "3.4 s"
    assert seconds_text(1020) == "17 min"
    assert rate_text(2.25) == "2.2 events/s"
    assert rate_text(4100.4) == "4,100 events/s"
    moment = datetime(2026, 12, 2, 14, 5, 11, tzinfo=UTC)
    assert PickUp(7, moment, moment - timedelta(milliseconds=12)).seconds == pytest.approx(0.012)
    assert PickUp(0, moment, None).seconds is None


def test_events_per_second_in_five_second_steps_labelled_in_utc(store: EventStore) -> None:
    history = History()
    store.append("order-1", [NewEvent("OrderPlaced", {})])
    history.add(take_snapshot(store, []), now=100.0)
    append_many(store, "invoice", 50)
    last = take_snapshot(store, [])
    history.add(last, now=110.0)

    assert history.rate_buckets() == [0.0, 10.0]  # 50 events seen between 105 s and 110 s
    assert history.rate() == pytest.approx(5.0)
    html = render_store(last, history)
    end = last.taken_at
    assert f"events/s every 5 s, {end - timedelta(seconds=10):%H:%M:%S} to {end:%H:%M:%S} UTC, peak 10 events/s" in html
    assert '<b id="rate">5.0</b>' in html


def test_a_page_without_samples_says_the_plot_is_being_measured(store: EventStore) -> None:
    html = render_store(take_snapshot(store, []), History())
    assert "events/s every 5 s: measuring (from when the first page opened)" in html


def test_samples_stay_about_a_second_apart_and_five_minutes_long(store: EventStore) -> None:
    history = History()
    snapshot = take_snapshot(store, [])
    for tick in range(400 * 5):  # five samples a second for 400 s
        history.add(snapshot, now=tick / 5)
    times = [t for t, _ in history.heads]
    assert times[-1] == 399.8  # the newest always
    assert 300 <= times[-1] - times[0] <= 306
    assert all(t2 - t1 >= 0.79 for t1, t2 in itertools.pairwise(times[:-1]))  # the newest floats


def test_picked_up_after_is_read_from_the_database_after_a_runner_moves_the_checkpoint(store: EventStore) -> None:
    live = Ledger("live")
    store.append("order-1", [NewEvent("OrderPlaced", {})])
    history = History()
    runner = ProjectionRunner(store, [live], poll_interval=5)
    with running(runner):
        admin.wait_until_processed(store, "live", 1)
        history.add(take_snapshot(store, [live]), now=1.0)
        assert "live" not in history.pickups  # the checkpoint was not seen moving

        position = store.append("order-2", [NewEvent("OrderPaid", {})]).global_position
        admin.wait_until_processed(store, "live", position)
        snapshot = take_snapshot(store, [live])
        history.add(snapshot, now=2.0)
        with store.engine.connect() as connection:  # before the runner stops: releasing sets updated_at too
            expected = connection.exec_driver_sql(
                "SELECT extract(epoch FROM c.updated_at - e.recorded_at)::float8, c.updated_at "
                "FROM projection_checkpoints c JOIN events e ON e.global_position = c.global_position "
                "WHERE c.projection_name = 'live'"
            ).one()
    [(moment, seconds)] = history.pickups["live"]
    assert seconds == pytest.approx(expected[0], abs=1e-6)
    assert moment == expected[1]
    assert 0 <= seconds < 5  # a wake-up, not the 5 s poll

    html = render_projections(snapshot, history, "")
    assert f"<b>{seconds_text(seconds)}</b>" in html
    assert f"batch at {moment.astimezone(UTC):%H:%M:%S} UTC" in html
    assert "picked up after" in html


def test_a_released_lease_is_no_pick_up(store: EventStore) -> None:
    """run_until_caught_up moves the checkpoint, then releases the lease (which sets updated_at too): not a sample."""
    ledger = Ledger("batch")
    history = History()
    store.append("order-1", [NewEvent("OrderPlaced", {})])
    ProjectionRunner(store, [ledger]).run_until_caught_up()
    history.add(take_snapshot(store, [ledger]), now=1.0)
    store.append("order-2", [NewEvent("OrderPaid", {})])
    ProjectionRunner(store, [ledger]).run_until_caught_up()
    snapshot = take_snapshot(store, [ledger])
    history.add(snapshot, now=2.0)

    assert snapshot.pickups["batch"].position == 2
    assert "batch" not in history.pickups
    assert '<td class="pickup muted"' in render_projections(snapshot, history, "")


def test_a_rebuild_shows_its_progress_rate_and_eta(store: EventStore) -> None:
    """Snapshots taken after each batch of a real rebuild, one second apart on the sampler's clock."""
    slow = Ledger("slow")
    append_many(store, "order", 100)
    history = History()
    history.add(take_snapshot(store, [slow]), now=-10.0)  # stopped at 0 before: not part of the rebuild's rate
    stop = threading.Event()
    seen: list[str] = []

    def after_batch(done: int, total: int) -> None:
        snapshot = take_snapshot(store, [slow])
        history.add(snapshot, now=float(done // 10))
        seen.append(render_projections(snapshot, history, ""))
        if done >= 40:
            stop.set()

    admin.rebuild(store, slow, progress=after_batch, stop_event=stop, batch_size=10)

    assert "rebuilding" in seen[0]
    assert "0 of 100 (0%), — (measuring its rate)" in seen[0]
    # 40 of 100 after four batches, 10 events a second, nothing appended meanwhile: 60 left, 6 s.
    assert '<progress max="1" value="0.4000"></progress> 40 of 100 (40%), about 6 s left at 10 events/s' in seen[-1]
    assert '<td class="pickup muted"' in seen[-1]  # a rebuild applies old events: no wake-up to show
    assert "lag of slow over the last 14 s, peak 100 events" in seen[-1]


def test_the_log_filters_by_category_type_and_stream(store: EventStore) -> None:
    store.append("order-1", [NewEvent("OrderPlaced", {}), NewEvent("OrderPaid", {})])
    store.append("invoice-1", [NewEvent("InvoiceSent", {})])
    invoices = LogFilter(categories=("invoice",))
    paid_or_sent = LogFilter(event_types=("OrderPaid", "InvoiceSent"))
    one_stream = LogFilter(stream_ids=("order-1",))
    snapshot = take_snapshot(store, [], log_filters=[invoices, paid_or_sent, one_stream, LogFilter()])

    assert [event.position for event in snapshot.recent] == [3, 2, 1]  # unfiltered, newest first
    assert [event.stream_id for event in snapshot.logs[invoices]] == ["invoice-1"]
    assert [event.event_type for event in snapshot.logs[paid_or_sent]] == ["InvoiceSent", "OrderPaid"]
    assert [event.position for event in snapshot.logs[one_stream]] == [2, 1]
    assert LogFilter() not in snapshot.logs
    assert "invoice-1" in render_log(snapshot, invoices)
    assert "order-1" not in render_log(snapshot, invoices)
    assert "no events within these filters yet" in render_log(snapshot, LogFilter(stream_ids=("nope",)))


def test_log_filters_come_from_the_query_as_the_api_names_them() -> None:
    query = QueryParams("category=order,%20invoice&category=order&type=&stream=order-1")
    assert log_filter(query) == LogFilter(("order", "invoice"), (), ("order-1",))
    assert log_filter(query).query() == "category=order&category=invoice&stream=order-1"
    assert not log_filter(QueryParams("category=&type=+"))
    with pytest.raises(RequestError, match=r"query parameter type=.*at most 255 characters") as error:
        log_filter(QueryParams("type=" + "x" * 256))
    assert error.value.status == 422
    with pytest.raises(RequestError, match="query parameter stream: at most 20 values, got 21"):
        log_filter(QueryParams("stream=" + ",".join(f"s-{n}" for n in range(21))))
