"""Prometheus metrics: what the runner and the stores do in this process, and the database's view at scrape time.

Needs ``prometheus-client`` (``pip install 'eventstore[metrics]'``); it is
imported only here, and only when a function of this module is called.

Two sources, on purpose:

- **Scrape time** (:class:`StatusCollector`): positions, lag, the head,
  held-back events and the NOTIFY queue's usage are read from the database on
  every scrape, with :func:`eventstore.admin.projection_status` and the
  store's own queries, so they are true even when the projection's runner is
  dead (a dead runner's lag keeps rising; a counter it kept would freeze).
- **In process** (:class:`Metrics`, installed by :func:`enable` as the
  process-wide :mod:`eventstore.instruments`): appends, batches, wake-up
  latency, poison events and the projections this process owns, counted as
  the store and the runner work.

Names follow Prometheus' conventions: prefix ``eventstore_``, base units
(``_seconds``, ``_ratio``), ``_total`` only on counters.

Typical use, which ``eventstore projections run --metrics-port 9187`` does::

    metrics.enable()                        # count appends and batches in this process
    metrics.watch(store, projections)       # and read positions and lag at scrape time
    server = metrics.serve(9187)            # http://127.0.0.1:9187/metrics
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING, Any

from eventstore import admin, instruments
from eventstore.errors import ConfigurationError
from eventstore.projection import Projection
from eventstore.store import EventStore, sql
from eventstore.store.stalls import held_back
from eventstore.types import AppendResult, RecordedEvent, category_of

if TYPE_CHECKING:
    from wsgiref.simple_server import WSGIServer

    from prometheus_client.core import Metric
    from prometheus_client.registry import CollectorRegistry

__all__ = [
    "PROJECTION_STATES",
    "Metrics",
    "MetricsServer",
    "StatusCollector",
    "disable",
    "enable",
    "render",
    "serve",
    "unwatch",
    "watch",
]

logger = logging.getLogger(__name__)

PROJECTION_STATES = ("running", "idle", "held back", "failed", "stopped", "rebuilding")
"""The values of ``eventstore_projection_state``'s ``state`` label (see :class:`eventstore.admin.ProjectionStatus`)."""

_APPEND_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
_BATCH_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
_LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0, 900.0)


def _prometheus() -> Any:
    """The prometheus_client module; ConfigurationError naming the extra when it is not installed."""
    try:
        import prometheus_client
    except ImportError as error:
        raise ConfigurationError(
            "metrics need prometheus-client, which is not installed; run: pip install 'eventstore[metrics]'"
        ) from error
    return prometheus_client


class Metrics(instruments.Instruments):
    """The in-process counters and histograms, registered in ``registry``; the store and runner update them.

    Install it with :func:`enable` (which makes it :func:`eventstore.instruments.current`).
    """

    def __init__(self, registry: CollectorRegistry) -> None:
        prometheus = _prometheus()
        counter, histogram, gauge = prometheus.Counter, prometheus.Histogram, prometheus.Gauge
        self.registry = registry
        self.appends = counter(
            "eventstore_appends_total",
            "append() calls, by stream category and outcome (appended, already_stored, or the error's class).",
            ["category", "outcome"],
            registry=registry,
        )
        self.appended_events = counter(
            "eventstore_appended_events_total",
            "Events written by append() (retried requests found already stored not included).",
            ["category"],
            registry=registry,
        )
        self.append_duration = histogram(
            "eventstore_append_duration_seconds",
            "Duration of append() calls, validation to commit, failed ones included.",
            ["category"],
            buckets=_APPEND_BUCKETS,
            registry=registry,
        )
        self.events = counter(
            "eventstore_projection_events_total",
            "Events applied by this process's runners (committed with their checkpoint).",
            ["projection"],
            registry=registry,
        )
        self.batches = counter(
            "eventstore_projection_batches_total",
            "Batches committed by this process's runners.",
            ["projection"],
            registry=registry,
        )
        self.batch_duration = histogram(
            "eventstore_projection_batch_duration_seconds",
            "Duration of a projection batch: its handlers and the commit of its checkpoint.",
            ["projection"],
            buckets=_BATCH_BUCKETS,
            registry=registry,
        )
        self.wakeup_latency = histogram(
            "eventstore_projection_wakeup_latency_seconds",
            "Per event: from its append (recorded_at: the appending transaction's start, database clock) to the "
            "commit of the batch that applied it (this host's clock).",
            ["projection"],
            buckets=_LATENCY_BUCKETS,
            registry=registry,
        )
        self.failures = counter(
            "eventstore_projection_failures_total",
            "Poison events: events a handler kept failing on, by the policy applied (failed = stopped, or skipped).",
            ["projection", "outcome"],
            registry=registry,
        )
        self.active = gauge(
            "eventstore_projection_active",
            "1 while a runner of this process holds the projection's lock and applies it, else 0.",
            ["projection"],
            registry=registry,
        )
        self._lock = threading.Lock()

    def append_finished(
        self,
        stream_id: str,
        events: int,
        seconds: float,
        *,
        result: AppendResult | None,
        error: BaseException | None,
    ) -> None:
        """Count the append and observe its duration."""
        category = category_of(stream_id)
        if result is not None:
            outcome = "already_stored" if result.already_stored else "appended"
        else:
            outcome = type(error).__name__ if error is not None else "unknown"
        self.appends.labels(category, outcome).inc()
        if outcome == "appended":
            self.appended_events.labels(category).inc(events)
        self.append_duration.labels(category).observe(seconds)

    def batch_committed(self, projection_name: str, events: Sequence[RecordedEvent], seconds: float) -> None:
        """Count the batch's events; observe its duration and each event's wake-up latency."""
        self.events.labels(projection_name).inc(len(events))
        self.batches.labels(projection_name).inc()
        self.batch_duration.labels(projection_name).observe(seconds)
        latency = self.wakeup_latency.labels(projection_name)
        now = time.time()
        for event in events:
            # The database's clock against ours: a skew could make it negative.
            latency.observe(max(0.0, now - event.recorded_at.timestamp()))

    def poison_event(self, projection_name: str, event: RecordedEvent, outcome: str) -> None:
        """Count the poison event by outcome."""
        self.failures.labels(projection_name, outcome).inc()

    def projection_active(self, projection_name: str, active: bool) -> None:
        """Set ``eventstore_projection_active``."""
        self.active.labels(projection_name).set(1 if active else 0)


class StatusCollector:
    """A prometheus_client collector that reads positions, lag, the head and stalls from the database per scrape.

    ``projections``: instances (their filters count in the lag) or names.
    When the database cannot be reached the scrape still succeeds, with
    ``eventstore_database_up 0`` and none of the other series (a logged
    WARNING says why).
    """

    def __init__(self, store: EventStore, projections: Sequence[Projection | str]) -> None:
        _prometheus()
        self.store = store
        self.projections = list(projections)

    def describe(self) -> Iterable[Metric]:
        """The families, without querying the database (what a registry asks at registration)."""
        return list(self._families().values())

    def collect(self) -> Iterable[Metric]:
        """Query the database and yield every family with its samples."""
        families = self._families()
        up = families["eventstore_database_up"]
        try:
            statuses = admin.projection_status(self.store, self.projections)
            head = statuses[0].head if statuses else self.store.head_position()
            waiting = held_back(self.store.engine)
            with self.store.engine.connect() as connection:
                queue_usage = float(connection.exec_driver_sql(sql.NOTIFY_QUEUE_USAGE).scalar_one())
                skipped = int(connection.exec_driver_sql(sql.WAKE_UPS_SKIPPED).scalar_one())
        except Exception as error:
            logger.warning("metrics: cannot read the store's status: %s", error, extra={"error": str(error)})
            up.add_metric([], 0)
            yield up
            return
        up.add_metric([], 1)
        families["eventstore_head_position"].add_metric([], head)
        families["eventstore_events_held_back"].add_metric([], waiting)
        families["eventstore_notify_queue_usage_ratio"].add_metric([], queue_usage)
        families["eventstore_wake_ups_skipped"].add_metric([], skipped)
        for status in statuses:
            labels = [status.name]
            families["eventstore_projection_position"].add_metric(labels, status.position)
            families["eventstore_projection_lag_events"].add_metric(labels, status.lag_events)
            families["eventstore_projection_lag_seconds"].add_metric(labels, status.lag_seconds)
            families["eventstore_projection_held_back_events"].add_metric(labels, status.held_back)
            families["eventstore_projection_failed"].add_metric(labels, 1 if status.state == "failed" else 0)
            for state in PROJECTION_STATES:
                families["eventstore_projection_state"].add_metric([status.name, state], int(status.state == state))
        yield from families.values()

    def _families(self) -> dict[str, Any]:
        from prometheus_client.core import CounterMetricFamily as counter
        from prometheus_client.core import GaugeMetricFamily as gauge

        families = [
            gauge("eventstore_database_up", "1 when this scrape could read the store's status from the database."),
            gauge("eventstore_head_position", "Global position of the last event readers can see now."),
            gauge(
                "eventstore_events_held_back",
                "Committed events waiting behind a still-running transaction (the gap rule's fence).",
            ),
            gauge(
                "eventstore_notify_queue_usage_ratio",
                "Share of the cluster's NOTIFY queue in use (pg_notification_queue_usage); wake-ups stop at 0.5.",
            ),
            counter(
                "eventstore_wake_ups_skipped",
                "Wake-ups skipped because the NOTIFY queue was half full (since the schema was created).",
            ),
            gauge(
                "eventstore_projection_position",
                "Global position of the projection's checkpoint.",
                labels=["projection"],
            ),
            gauge(
                "eventstore_projection_lag_events",
                "Events within the projection's filters after its checkpoint, held-back ones included.",
                labels=["projection"],
            ),
            gauge(
                "eventstore_projection_lag_seconds",
                "Age of the oldest event the projection has not applied yet (0 when caught up).",
                labels=["projection"],
            ),
            gauge(
                "eventstore_projection_held_back_events",
                "Of the projection's lag, the events held back by a running transaction.",
                labels=["projection"],
            ),
            gauge(
                "eventstore_projection_failed",
                "1 while the projection is stopped on a poison event (until retried or skipped).",
                labels=["projection"],
            ),
            gauge(
                "eventstore_projection_state",
                "1 for the projection's current state (running, idle, held back, failed, stopped, rebuilding).",
                labels=["projection", "state"],
            ),
        ]
        return {family.name: family for family in families}


def enable(registry: CollectorRegistry | None = None) -> Metrics:
    """Count appends and batches in this process into ``registry`` (prometheus_client's default one if None).

    Installs the returned :class:`Metrics` as :func:`eventstore.instruments.current`;
    calling it again with the same registry returns the same object.

    Raises:
        ConfigurationError: prometheus-client is not installed (names the extra).
    """
    prometheus = _prometheus()
    target = registry if registry is not None else prometheus.REGISTRY
    with _enabled_lock:
        metrics = _enabled.get(id(target))
        if metrics is None or metrics.registry is not target:
            metrics = _enabled[id(target)] = Metrics(target)
        instruments.set_current(metrics)
    return metrics


def disable() -> None:
    """Stop counting in this process (the store and runner go back to the do-nothing instruments)."""
    instruments.set_current(None)


_enabled: dict[int, Metrics] = {}
_enabled_lock = threading.Lock()


def watch(
    store: EventStore, projections: Sequence[Projection | str], registry: CollectorRegistry | None = None
) -> StatusCollector:
    """Register a :class:`StatusCollector` for ``projections`` in ``registry`` (default: prometheus_client's).

    Stop with :func:`unwatch`.
    """
    collector = StatusCollector(store, projections)
    (registry if registry is not None else _prometheus().REGISTRY).register(collector)
    return collector


def unwatch(collector: StatusCollector, registry: CollectorRegistry | None = None) -> None:
    """Unregister a collector :func:`watch` registered in ``registry``."""
    (registry if registry is not None else _prometheus().REGISTRY).unregister(collector)


def render(registry: CollectorRegistry | None = None) -> tuple[bytes, str]:
    """The ``/metrics`` response for ``registry``: the text exposition and its Content-Type.

    For web apps (``eventstore serve``) that serve metrics on a route of their own.
    """
    prometheus = _prometheus()
    return prometheus.generate_latest(registry if registry is not None else prometheus.REGISTRY), str(
        prometheus.CONTENT_TYPE_LATEST
    )


class MetricsServer:
    """prometheus_client's HTTP server for ``/metrics``, in a daemon thread; :meth:`close` stops it."""

    def __init__(self, server: WSGIServer, thread: threading.Thread, host: str) -> None:
        self._server = server
        self._thread = thread
        self.host = host
        self.port: int = server.server_port
        """The port it listens on (the one chosen by the system when 0 was asked)."""

    @property
    def url(self) -> str:
        """``http://HOST:PORT/metrics``."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}/metrics"

    def close(self) -> None:
        """Stop serving and close the socket."""
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(5)

    def __enter__(self) -> MetricsServer:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


def serve(port: int, *, host: str = "127.0.0.1", registry: CollectorRegistry | None = None) -> MetricsServer:
    """Serve ``registry`` at ``http://host:port/metrics`` (loopback by default; port 0: any free port).

    Raises:
        ConfigurationError: prometheus-client is not installed, or the address cannot be bound (names it).
    """
    prometheus = _prometheus()
    try:
        server, thread = prometheus.start_http_server(
            port, addr=host, registry=registry if registry is not None else prometheus.REGISTRY
        )
    except OSError as error:
        raise ConfigurationError(
            f"cannot serve metrics on {host}:{port}: {error.strerror or error}; pick another --metrics-port"
        ) from error
    return MetricsServer(server, thread, host)
