"""psycopg pipeline mode under SQLAlchemy, for per-event handlers: send writes without waiting for each answer.

A projection written with one ``conn.execute`` per event spends most of its
time waiting for each statement's round trip. In `pipeline mode
<https://www.psycopg.org/psycopg3/docs/advanced/pipeline.html>`_ psycopg
sends a statement and returns at once; the server's answers are read later.
SQLAlchemy, though, looks at a statement's result the moment it is executed
(``cursor.description`` to decide whether it returns rows, ``cursor.rowcount``
for statements that do not), so pipeline mode under plain SQLAlchemy turns a
``SELECT`` into "this result object does not return rows" and every
``rowcount`` into -1.

:func:`pipelined` makes it safe with a cursor class, :class:`PipelineCursor`:

- Only ``INSERT``, ``UPDATE`` and ``DELETE`` statements without ``RETURNING``
  are left in flight: PostgreSQL never returns rows for them, so "no rows" is
  the right answer before the server's arrives.
- Every other statement (``SELECT``, ``WITH``, anything with ``RETURNING``,
  DDL, ``executemany``) syncs the pipeline right after it is sent, so
  SQLAlchemy sees its real result, and a read sees the transaction's earlier
  writes (they were sent before it, on the same connection).
- ``rowcount`` of a write still in flight is read on demand: SQLAlchemy's own
  look while it builds the result is answered "unknown" (``None``, which it
  keeps as "ask the cursor later"), and ``result.rowcount`` in a handler then
  syncs and returns the real count. Any other caller syncs too, so a change in
  SQLAlchemy can only cost speed, never give a wrong count.
- Errors are still raised, but later than the statement that caused them (at
  the next sync or when the pipeline ends): the session re-runs a failed
  pipelined batch without the pipeline to attribute them
  (:mod:`eventstore.runner.session`).

What cannot run in a pipeline (``COPY``, server-side cursors) raises
``psycopg.NotSupportedError``; the session then applies the batch without it.
"""

from __future__ import annotations

import re
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any, cast

import psycopg
from psycopg import pq
from sqlalchemy.engine import Connection

__all__ = ["PipelineCursor", "in_flight_safe", "pipelined", "supported"]

# Leading whitespace, then the command word. A leading comment, WITH, MERGE,
# CALL... are not matched and so are synced: the cautious answer.
_WRITE_COMMAND = re.compile(r"\s*(?:INSERT|UPDATE|DELETE)\b", re.IGNORECASE)
_RETURNING = re.compile(r"RETURNING", re.IGNORECASE)

# The SQLAlchemy functions that read cursor.rowcount while they build a result
# (sqlalchemy/engine/default.py); they keep None as "not known yet".
_RESULT_SETUP = frozenset({"_setup_result_proxy", "_setup_dml_or_text_result"})

_pipelines: dict[int, psycopg.Pipeline] = {}
_pipelines_lock = threading.Lock()


def in_flight_safe(query: object) -> bool:
    """True when ``query`` can never return rows: an INSERT, UPDATE or DELETE without RETURNING.

    The word RETURNING anywhere (even in a string or a comment) counts, so the
    check errs on the side of waiting.
    """
    return isinstance(query, str) and bool(_WRITE_COMMAND.match(query)) and not _RETURNING.search(query)


class PipelineCursor(psycopg.Cursor[Any]):
    """A psycopg cursor that, in pipeline mode, waits only for results SQLAlchemy needs at once.

    Outside pipeline mode it behaves exactly like :class:`psycopg.Cursor`.
    """

    _in_flight = False

    def execute(self, query: Any, params: Any = None, **options: Any) -> PipelineCursor:
        super().execute(query, params, **options)
        if self._connection_pipelined():
            self._in_flight = in_flight_safe(query)
            if not self._in_flight:
                self._settle()
        return self

    def executemany(self, query: Any, params_seq: Any, **options: Any) -> None:
        super().executemany(query, params_seq, **options)
        if self._connection_pipelined():
            self._settle()

    @property
    def rowcount(self) -> int:
        if self._in_flight and self.pgresult is None:
            caller = sys._getframe(1)
            if caller.f_code.co_name in _RESULT_SETUP and caller.f_globals.get("__name__", "").startswith(
                "sqlalchemy."
            ):
                # "Not known yet": SQLAlchemy keeps None and asks this cursor again on result.rowcount.
                return cast(int, None)
            self._settle()
        return super().rowcount

    def _connection_pipelined(self) -> bool:
        return self.connection.pgconn.pipeline_status != pq.PipelineStatus.OFF

    def _settle(self) -> None:
        """Sync the pipeline: every statement sent so far is answered (or its error raised)."""
        self._in_flight = False
        with _pipelines_lock:
            pipeline = _pipelines.get(id(self.connection))
        if pipeline is not None:
            pipeline.sync()


def supported(connection: Connection) -> bool:
    """True when ``connection`` runs on psycopg 3 with a libpq that has pipeline mode (14 or later)."""
    return isinstance(connection.connection.driver_connection, psycopg.Connection) and psycopg.Pipeline.is_supported()


@contextmanager
def pipelined(connection: Connection) -> Iterator[None]:
    """Run the block with ``connection``'s psycopg connection in pipeline mode, results checked.

    Statements the block executes through ``connection`` (SQLAlchemy) go out
    without waiting, as described in this module. On exit every answer has
    arrived: an error of any statement is raised here at the latest (a
    ``psycopg.Error``, not wrapped by SQLAlchemy). Requires a psycopg (3)
    connection; raises ``TypeError`` otherwise.
    """
    driver = connection.connection.driver_connection
    if not isinstance(driver, psycopg.Connection):
        raise TypeError(f"pipeline mode needs a psycopg connection, not {type(driver).__name__}")
    previous = driver.cursor_factory
    driver.cursor_factory = PipelineCursor
    try:
        with driver.pipeline() as pipeline:
            with _pipelines_lock:
                _pipelines[id(driver)] = pipeline
            try:
                yield
            finally:
                with _pipelines_lock:
                    _pipelines.pop(id(driver), None)
    finally:
        driver.cursor_factory = previous
