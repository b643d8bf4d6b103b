"""Prometheus metrics: scraped over HTTP and from the collector while events are appended and projections stop.

Positions, lag, the head and held-back events are read from the database at
scrape time, so they are right while no runner runs; counters and histograms
come from the store and runner of this process.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
from prometheus_client import CollectorRegistry
from prometheus_client.parser import text_string_to_metric_families

from eventstore import EventStore, NewEvent, ProjectionRunner, metrics
from eventstore.errors import ConfigurationError
from projections import Ledger
from tests.process_output import lines_of, wait_for_line
from tests.runner.runner_helpers import FAST, running, wait_for

ROOT = Path(__file__).resolve().parents[2]
EVENTSTORE = Path(sys.executable).parent / "eventstore"

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def parse(text: str) -> Samples:
    """Every sample of an exposition, by (sample name, labels)."""
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def value(samples: Samples, name: str, **labels: str) -> float | None:
    return samples.get((name, frozenset(labels.items())))


def scrape_http(url: str) -> Samples:
    with urllib.request.urlopen(url, timeout=10) as response:
        assert response.status == 200
        return parse(response.read().decode())


def scrape(registry: CollectorRegistry) -> Samples:
    body, content_type = metrics.render(registry)
    assert content_type.startswith("text/plain")
    return parse(body.decode())


@pytest.fixture
def registry() -> Iterator[CollectorRegistry]:
    """A registry of this test's own, with the in-process metrics enabled into it (disabled after)."""
    registry = CollectorRegistry()
    metrics.enable(registry)
    try:
        yield registry
    finally:
        metrics.disable()


def _append(store: EventStore, count: int, event_type: str = "Tick", stream: str = "order") -> int:
    last = 0
    for n in range(count):
        last = store.append(f"{stream}-{n}", [NewEvent(event_type, {"n": n})]).global_position
    return last


def test_lag_rises_while_no_runner_runs_and_falls_when_one_catches_up_over_http(
    store: EventStore, registry: CollectorRegistry
) -> None:
    ledger = Ledger("ledger")
    metrics.watch(store, [ledger], registry)
    with metrics.serve(0, registry=registry) as server:
        assert server.url == f"http://127.0.0.1:{server.port}/metrics"
        first = _append(store, 3)
        before = scrape_http(server.url)
        assert value(before, "eventstore_head_position") == first
        assert value(before, "eventstore_projection_position", projection="ledger") == 0
        assert value(before, "eventstore_projection_lag_events", projection="ledger") == 3
        lag_seconds = value(before, "eventstore_projection_lag_seconds", projection="ledger")
        assert lag_seconds is not None and lag_seconds >= 0
        assert value(before, "eventstore_projection_state", projection="ledger", state="stopped") == 1
        assert value(before, "eventstore_projection_active", projection="ledger") is None  # never owned here
        assert value(before, "eventstore_appends_total", category="order", outcome="appended") == 3
        assert value(before, "eventstore_append_duration_seconds_count", category="order") == 3

        head = _append(store, 4)  # the projection is still stopped: its lag rises
        rising = scrape_http(server.url)
        assert value(rising, "eventstore_projection_lag_events", projection="ledger") == 7
        assert value(rising, "eventstore_head_position") == head

        runner = ProjectionRunner(store, [ledger], **FAST)
        with running(runner):
            runner.wait_until_processed(head, timeout=20)

            def counted() -> Samples | None:
                # The runner counts a batch just after its commit, which wait_until_processed may see first.
                samples = scrape_http(server.url)
                done = value(samples, "eventstore_projection_wakeup_latency_seconds_count", projection="ledger") == 7
                return samples if done and runner.active_projections() == ["ledger"] else None

            after = wait_for(counted, what="the runner's batches counted")
            assert value(after, "eventstore_projection_lag_events", projection="ledger") == 0
            assert value(after, "eventstore_projection_lag_seconds", projection="ledger") == 0
            assert value(after, "eventstore_projection_position", projection="ledger") == head
            assert value(after, "eventstore_projection_active", projection="ledger") == 1
            assert value(after, "eventstore_projection_state", projection="ledger", state="idle") == 1
            assert value(after, "eventstore_projection_events_total", projection="ledger") == 7
            batches = value(after, "eventstore_projection_batch_duration_seconds_count", projection="ledger")
            assert batches is not None and batches >= 1
            assert value(after, "eventstore_projection_wakeup_latency_seconds_count", projection="ledger") == 7
        stopped = scrape_http(server.url)
        assert value(stopped, "eventstore_projection_active", projection="ledger") == 0
        assert value(stopped, "eventstore_projection_state", projection="ledger", state="stopped") == 1


def test_poison_events_are_counted_and_the_failed_projection_shows(
    store: EventStore, registry: CollectorRegistry
) -> None:
    _append(store, 2)
    _append(store, 1, event_type="Bad", stream="order-bad")
    _append(store, 2, stream="order-late")
    stopping = Ledger("stopping", poison_types={"Bad"})
    skipping = Ledger("skipping", poison_types={"Bad"}, on_error="skip")
    metrics.watch(store, [stopping, skipping], registry)
    ProjectionRunner(store, [stopping, skipping], **FAST).run_until_caught_up(timeout=30)

    samples = scrape(registry)
    assert value(samples, "eventstore_projection_failures_total", projection="stopping", outcome="failed") == 1
    assert value(samples, "eventstore_projection_failures_total", projection="skipping", outcome="skipped") == 1
    assert value(samples, "eventstore_projection_failed", projection="stopping") == 1
    assert value(samples, "eventstore_projection_failed", projection="skipping") == 0
    assert value(samples, "eventstore_projection_state", projection="stopping", state="failed") == 1
    assert value(samples, "eventstore_projection_lag_events", projection="stopping") == 3  # the poison one and after
    assert value(samples, "eventstore_projection_lag_events", projection="skipping") == 0
    assert value(samples, "eventstore_projection_events_total", projection="stopping") == 2
    assert value(samples, "eventstore_projection_events_total", projection="skipping") == 4


def test_held_back_events_during_a_forced_stall(
    store: EventStore, registry: CollectorRegistry, blocker: psycopg.Connection[tuple[object, ...]]
) -> None:
    ledger = Ledger("stalled")
    metrics.watch(store, [ledger], registry)
    position = store.append("order-1", [NewEvent("OrderPlaced", {"total": 1})]).global_position

    stalled = scrape(registry)
    assert value(stalled, "eventstore_events_held_back") == 1
    assert value(stalled, "eventstore_head_position") == 0  # readers cannot see it yet
    assert value(stalled, "eventstore_projection_held_back_events", projection="stalled") == 1
    assert value(stalled, "eventstore_projection_lag_events", projection="stalled") == 1
    usage = value(stalled, "eventstore_notify_queue_usage_ratio")
    assert usage is not None and 0 <= usage < 0.5
    assert value(stalled, "eventstore_wake_ups_skipped_total") == 0
    assert value(stalled, "eventstore_database_up") == 1

    blocker.commit()
    cleared = scrape(registry)
    assert value(cleared, "eventstore_events_held_back") == 0
    assert value(cleared, "eventstore_head_position") == position
    assert value(cleared, "eventstore_projection_held_back_events", projection="stalled") == 0


def test_every_name_follows_the_conventions(store: EventStore, registry: CollectorRegistry) -> None:
    metrics.watch(store, [Ledger("named")], registry)
    _append(store, 2)
    ProjectionRunner(store, [Ledger("named")], **FAST).run_until_caught_up(timeout=30)
    body, _ = metrics.render(registry)
    families = {family.name: family for family in text_string_to_metric_families(body.decode())}
    required = {
        "eventstore_projection_position": "gauge",
        "eventstore_projection_lag_events": "gauge",
        "eventstore_projection_lag_seconds": "gauge",
        "eventstore_projection_events": "counter",
        "eventstore_projection_batch_duration_seconds": "histogram",
        "eventstore_projection_wakeup_latency_seconds": "histogram",
        "eventstore_projection_failures": "counter",
        "eventstore_projection_active": "gauge",
        "eventstore_head_position": "gauge",
        "eventstore_events_held_back": "gauge",
        "eventstore_notify_queue_usage_ratio": "gauge",
        "eventstore_appends": "counter",
        "eventstore_append_duration_seconds": "histogram",
    }
    assert {name: families[name].type for name in required if name in families} == required
    for name, family in families.items():
        assert name.startswith("eventstore_"), name
        assert family.documentation, name
        for sample in family.samples:
            if family.type == "counter":
                assert sample.name in (f"{name}_total", f"{name}_created"), sample.name
            else:
                assert not sample.name.endswith("_total"), sample.name
        if family.type == "histogram":
            assert name.endswith("_seconds"), name
        assert "_milliseconds" not in name and "_ms" not in name, name


def test_an_unreachable_database_is_a_successful_scrape_saying_so(registry: CollectorRegistry) -> None:
    with EventStore("postgresql://nobody@127.0.0.1:1/none") as unreachable:
        metrics.watch(unreachable, ["ledger"], registry)
        samples = scrape(registry)
    assert value(samples, "eventstore_database_up") == 0
    assert value(samples, "eventstore_head_position") is None


def test_without_prometheus_client_a_configuration_error_names_the_extra(
    store: EventStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "prometheus_client", None)  # import prometheus_client now raises ImportError
    with pytest.raises(ConfigurationError, match=r"pip install 'eventstore\[metrics\]'"):
        metrics.enable()
    with pytest.raises(ConfigurationError, match=r"pip install 'eventstore\[metrics\]'"):
        metrics.watch(store, ["ledger"])


def test_the_package_imports_neither_prometheus_client_nor_opentelemetry_until_asked() -> None:
    code = (
        "import sys, eventstore, eventstore.admin, eventstore.runner, eventstore.cli, eventstore.metrics, "
        "eventstore.tracing; print(sorted(m for m in ('prometheus_client', 'opentelemetry') if m in sys.modules))"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True)
    assert result.stdout.strip() == "[]"


@pytest.mark.skipif(not EVENTSTORE.exists(), reason="the console script is not installed in this environment")
def test_projections_run_serves_metrics_on_the_metrics_port(store: EventStore, database_url: str) -> None:
    for n in range(3):
        data = {"order_id": str(n), "customer_id": "ada", "total": 4200, "placed_at": "2026-11-25T12:00:00+00:00"}
        head = store.append(f"order-{n}", [NewEvent("OrderPlaced", data)]).global_position
    env = {**os.environ, "EVENTSTORE_URL": database_url, "EVENTSTORE_METRICS_PORT": "0"}
    command = [str(EVENTSTORE), "--projections", "projections", "projections", "run", "order_summaries"]
    with subprocess.Popen(command, stderr=subprocess.PIPE, text=True, env=env, cwd=ROOT) as runner:
        try:
            assert runner.stderr is not None
            line = wait_for_line(lines_of(runner.stderr), "serving metrics on ", timeout=30)[-1]
            url = line.split("serving metrics on ", 1)[1].strip()
            assert url.startswith("http://127.0.0.1:") and url.endswith("/metrics")
            samples = wait_for(
                lambda: (
                    (s := scrape_http(url))
                    and value(s, "eventstore_projection_position", projection="order_summaries") == head
                    and value(s, "eventstore_projection_active", projection="order_summaries") == 1
                    # counted just after the commit the position comes from
                    and value(s, "eventstore_projection_events_total", projection="order_summaries") == 3
                    and s
                ),
                timeout=30,
                what="the runner's metrics showing it caught up",
            )
            assert value(samples, "eventstore_projection_lag_events", projection="order_summaries") == 0
            assert value(samples, "eventstore_head_position") == head
            assert any(name == "process_cpu_seconds_total" for name, _ in samples)  # the default registry
            runner.send_signal(signal.SIGTERM)
            assert runner.wait(timeout=20) == 0
        finally:
            if runner.poll() is None:
                runner.kill()
            runner.wait()
