"""The `eventsourcing` library (PyPI) as a baseline: its PostgreSQL persistence, aggregates and projection runner.

Everything here follows the library's documented usage: an ``Application``
configured with ``PERSISTENCE_MODULE=eventsourcing.postgres`` saves
aggregates; a ``ProjectionRunner`` feeds a ``Projection`` whose view (a
``PostgresTrackingRecorder``) updates its read model and its tracking record in
one transaction, the library's exactly-once pattern.
"""

from __future__ import annotations

from typing import Any
from uuid import UUID

from eventsourcing.application import Application
from eventsourcing.domain import Aggregate, event
from eventsourcing.persistence import Tracking
from eventsourcing.postgres import PostgresTrackingRecorder
from eventsourcing.projection import Projection
from psycopg import sql

__all__ = ["BenchApplication", "BenchOrder", "CountingProjection", "CountingView", "environment", "save_order"]


def environment(host: str, port: int, database: str) -> dict[str, str]:
    """The library's configuration for one database of the benchmark server (trust auth)."""
    return {
        "PERSISTENCE_MODULE": "eventsourcing.postgres",
        "POSTGRES_DBNAME": database,
        "POSTGRES_HOST": host,
        "POSTGRES_PORT": str(port),
        "POSTGRES_USER": "postgres",
        "POSTGRES_PASSWORD": "",
    }


class BenchOrder(Aggregate):
    """An aggregate whose events carry the same payload as the other contenders' events."""

    def __init__(self, amount: int, customer: str, note: str) -> None:
        self.amount = amount
        self.customer = customer
        self.note = note

    @event("Changed")
    def change(self, amount: int, customer: str, note: str) -> None:
        self.amount = amount
        self.customer = customer
        self.note = note


class BenchApplication(Application[UUID]):
    """The write side: saves BenchOrder aggregates."""

    name = "BenchApp"


def save_order(application: BenchApplication, events: int, payload: dict[str, Any]) -> None:
    """Save one new aggregate holding ``events`` events (its creation plus ``events - 1`` changes)."""
    order = BenchOrder(payload["amount"], payload["customer"], payload["note"])
    for _ in range(events - 1):
        order.change(payload["amount"], payload["customer"], payload["note"])
    application.save(order)


class CountingView(PostgresTrackingRecorder):
    """A one-row counter updated in the same transaction as the tracking record."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.sql_create_statements.append(
            sql.SQL("CREATE TABLE IF NOT EXISTS {}.bench_es_counter (id int PRIMARY KEY, n bigint NOT NULL)").format(
                sql.Identifier(self.datastore.schema)
            )
        )

    def increment(self, tracking: Tracking) -> None:
        with self.datastore.transaction(commit=True) as cursor:
            cursor.execute(
                sql.SQL(
                    "INSERT INTO {}.bench_es_counter VALUES (1, 1) "
                    "ON CONFLICT (id) DO UPDATE SET n = bench_es_counter.n + 1"
                ).format(sql.Identifier(self.datastore.schema)),
                prepare=True,
            )
            self._insert_tracking(cursor, tracking)

    def count(self) -> int:
        with self.datastore.transaction(commit=False) as cursor:
            cursor.execute(
                sql.SQL("SELECT coalesce(max(n), 0) AS n FROM {}.bench_es_counter").format(
                    sql.Identifier(self.datastore.schema)
                )
            )
            row = cursor.fetchone()
        return int(row["n"]) if row else 0


class CountingProjection(Projection[CountingView]):
    """Counts every event of the application (no topic filter)."""

    name = "benchcount"

    def process_event(self, domain_event: Any, tracking: Tracking) -> None:
        self.view.increment(tracking)
