"""What every check receives (:class:`Context`), the errors that turn a check into a finding, and a query helper."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import psycopg
import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

from eventstore.errors import EventStoreError
from eventstore.projection import Projection
from eventstore.store import EventStore

__all__ = ["CHECK_ERRORS", "Context", "scalar"]

# A check that fails (a permission, an object missing on an old revision) is
# reported as a finding, so the other checks still run.
CHECK_ERRORS = (EventStoreError, sa.exc.SQLAlchemyError, psycopg.Error)
"""The errors :func:`eventstore.doctor.run_checks` reports as a check that could not run."""


@dataclass(frozen=True, slots=True)
class Context:
    """The arguments of :func:`eventstore.doctor.run_checks`, as every check sees them."""

    store: EventStore
    projections: Sequence[Projection | str]
    role_prefix: str
    transaction_age: float
    stall_after: float

    @property
    def engine(self) -> Engine:
        """The store's engine; each check opens its own short connection from it."""
        return self.store.engine


def scalar(connection: Connection, statement: str, parameters: dict[str, Any] | None = None) -> Any:
    """The one value of a one-row, one-column query; raises if there is not exactly one row."""
    return connection.exec_driver_sql(statement, parameters or {}).scalar_one()
