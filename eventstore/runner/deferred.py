"""Deferred writes: a batch's per-event handler statements sent many at a time, not one round trip each.

A projection written with ``@handles`` methods issues one ``conn.execute(...)``
per event. Run one by one, every statement waits for its round trip (and
SQLAlchemy's work per call), so such a projection catches up at a few
thousand events per second. For a batch of more than one event the session
(:meth:`eventstore.runner.session.ProjectionSession._apply_in`) hands the
handlers :attr:`DeferredWrites.connection` instead of the batch's
:class:`~sqlalchemy.engine.Connection`: it looks and behaves like that
connection, but *records* the writes it can safely send later.

What is deferred
    ``execute(statement, parameters)`` with one parameter set (a mapping, or
    none) of a ``sa.text`` holding one ``INSERT``, ``UPDATE`` or ``DELETE``
    (no ``RETURNING``, no ``;``), or of a Core ``insert()`` / ``update()`` /
    ``delete()`` without ``returning()``; ``exec_driver_sql`` likewise, with
    a mapping or tuple of parameters. The call returns a stand-in for its
    result at once.

What is never deferred
    Anything else: a ``SELECT``, ``RETURNING``, DDL, ``WITH ...``, several
    parameter sets, ``execution_options``, and every statement while a
    savepoint (``begin_nested``) is open. Any other use of the connection
    (``begin_nested``, ``scalar``, ``connection``, ...) is delegated to the
    real connection.

When the recorded writes are sent (a *flush*), in the order they were made
    - before anything that is not deferred runs, so a handler's ``SELECT``
      sees its own earlier writes and those of the events before it, as it
      would without deferral (same transaction, same order);
    - when a handler touches a stand-in result (``rowcount``, ``scalar()``,
      iteration, ...): that statement then runs on its own, so its result is
      its real one;
    - at the end of the batch, before the checkpoint commits (:meth:`DeferredWrites.finish`).

    Consecutive writes of the same statement are sent as one ``executemany``;
    psycopg 3 runs it in pipeline mode: one round trip for all of them, each
    still its own statement (same triggers, same constraints, same order).
    A statement whose stand-in result the handler still holds runs on its own,
    so a result read later is always the statement's own. A handler that
    builds its ``sa.text(...)`` anew on every call makes a new object each
    time: one whose bind parameters are those ``sa.text`` makes (untyped, no
    values) is the same statement as any other of that string, so a run of
    them shares an ``executemany``, sent as the driver SQL SQLAlchemy compiles
    for that string once (an LRU of a few hundred strings); a text with typed
    or bound parameters is sent by SQLAlchemy as it is.

How errors are attributed
    A statement that fails at a flush may belong to an earlier event than the
    handler running. :attr:`DeferredWrites.failed` then says so, and the
    session reports the batch as failed *somewhere* (``HandlerFailed(index=None)``):
    it halves the batch until the failing event is alone, and a batch of one
    event always runs on the plain connection. So a handler's own
    ``try``/``except`` around its statement, the poison event found, its
    error, attempts and policy are exactly those of a run without deferral.
    Set ``defer_writes=False`` (:class:`~eventstore.runner.settings.RunnerSettings`)
    to run every statement at once, as it is issued.
"""

from __future__ import annotations

import functools
import re
import weakref
from collections import OrderedDict
from collections.abc import Iterator, Mapping
from typing import Any, cast

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Dialect
from sqlalchemy.types import NullType

__all__ = ["DeferredResult", "DeferredWrites", "deferrable_sql"]

_WORD = re.compile(r"\w+")
_RETURNING = re.compile(r"\breturning\b", re.IGNORECASE)
_WRITES = frozenset({"insert", "update", "delete"})
_CORE_WRITES = (sa.Insert, sa.Update, sa.Delete)


@functools.lru_cache(maxsize=4096)
def deferrable_sql(sql: str) -> bool:
    """True when ``sql`` is one ``INSERT``, ``UPDATE`` or ``DELETE`` without ``RETURNING``.

    Conservative: a ``;`` anywhere but at the end, or the word ``returning``
    anywhere (even inside a string), and the statement runs at once.
    """
    text = sql.lstrip()
    while text.startswith(("--", "/*")):  # comments before the first word
        end, skip = (text.find("\n"), 1) if text.startswith("--") else (text.find("*/"), 2)
        text = "" if end < 0 else text[end + skip :].lstrip()
    first = _WORD.match(text)
    if first is None or first.group().lower() not in _WRITES:
        return False
    return ";" not in sql.strip().removesuffix(";") and _RETURNING.search(sql) is None


def _plain_text(statement: sa.TextClause) -> bool:
    """True when the text's bind parameters are those ``sa.text`` makes (untyped, no values), and no options.

    Two such texts with the same SQL are the same statement, so they may share an ``executemany``.
    Called once per handler call with a new ``sa.text``: a text's bind parameters are its
    ``_bindparams`` (what its ``get_children()`` walks to, only slower); anything else takes the
    general walk.
    """
    if statement.get_execution_options():
        return False
    binds = getattr(statement, "_bindparams", None) if type(statement) is sa.TextClause else None
    children = binds.values() if isinstance(binds, dict) else statement.get_children()
    for child in children:
        if type(child) is not sa.BindParameter:
            return False
        if (
            type(child.type) is not NullType
            or child.value is not None
            or child.callable
            or child.expanding
            or child.literal_execute
            or child.isoutparam
        ):
            return False
    return True


_COMPILED_TEXTS = 256
"""How many texts' driver SQL :func:`_driver_sql` keeps (least recently used first out): handlers' texts are few."""

_compiled: OrderedDict[tuple[str, type[Dialect], str], tuple[str, tuple[str, ...]] | None] = OrderedDict()


def _driver_sql(text: str, dialect: Dialect) -> tuple[str, tuple[str, ...]] | None:
    """A plain text's SQL as ``dialect`` sends it and its bind parameter names; None: send it through SQLAlchemy.

    The same for every plain ``sa.text`` of that string (see :func:`_plain_text`), so compiled once per string
    (and dialect), not per call. Only for named paramstyles (psycopg's ``%(name)s``), where the driver takes
    the parameters as a mapping, and only when SQLAlchemy would hand the driver the names as written.
    Bounded (an LRU of :data:`_COMPILED_TEXTS` texts), since the strings are the handlers'.
    """
    key = (text, type(dialect), dialect.paramstyle)
    try:
        entry = _compiled[key]
    except KeyError:
        pass
    else:
        _compiled.move_to_end(key)
        return entry
    entry = None
    if not dialect.positional:
        compiled = sa.text(text).compile(dialect=dialect)
        names = tuple(dict.fromkeys(compiled.bind_names.values()))
        if (
            not compiled.escaped_bind_names
            and not compiled.literal_execute_params
            and not compiled.post_compile_params
            and all(bind.key == name for bind, name in compiled.bind_names.items())
        ):
            entry = (compiled.string, names)
    _compiled[key] = entry
    if len(_compiled) > _COMPILED_TEXTS:
        _compiled.popitem(last=False)
    return entry


class DeferredResult:
    """The stand-in result of a deferred statement: touching it runs the statement and gives its real result.

    Any attribute (``rowcount``, ``scalar()``, ``all()``, ...), iteration or
    ``with`` flushes the batch's recorded writes first, this statement on its
    own (see :class:`DeferredWrites`), then behaves as that statement's
    :class:`~sqlalchemy.engine.CursorResult`.
    """

    __slots__ = ("__weakref__", "_result", "_writes")

    def __init__(self, writes: DeferredWrites) -> None:
        self._writes = writes
        self._result: sa.CursorResult[Any] | None = None

    def _real(self) -> sa.CursorResult[Any]:
        if self._result is None:
            self._writes.flush()
        if self._result is None:  # the flush failed before this statement ran
            raise RuntimeError("this deferred statement never ran: an earlier one in the batch failed")
        return self._result

    def __getattr__(self, name: str) -> Any:
        return getattr(self._real(), name)

    def __iter__(self) -> Iterator[Any]:
        return iter(self._real())

    def __enter__(self) -> sa.CursorResult[Any]:
        return self._real().__enter__()

    def __exit__(self, *exc_info: object) -> None:
        self._real().__exit__(*exc_info)


# One recorded write: (group key, statement, parameters, driver SQL?, weak reference to its stand-in result).
_Write = tuple[object, Any, Any, bool, "weakref.ref[DeferredResult]"]


class DeferredWrites:
    """The deferred writes of one batch transaction on ``connection`` (see the module docstring).

    Give handlers :attr:`connection`; call :meth:`finish` before the commit.
    Not thread-safe, like the connection it wraps.
    """

    def __init__(self, connection: Connection) -> None:
        self.real = connection
        """The batch's connection: deferred writes are sent on it."""
        self.connection = cast(Connection, _DeferringConnection(self))
        """What the handlers get in place of :attr:`real`."""
        self.failed: BaseException | None = None
        """The error of the first flush that failed (its statement may be an earlier event's)."""
        self._pending: list[_Write] = []
        self._last_text: sa.TextClause | None = None
        self._last_text_key: object = None

    def execute(self, statement: Any, parameters: Any = None, *, execution_options: Any = None) -> Any:
        """``Connection.execute``: recorded if deferrable (a :class:`DeferredResult`), else flush and run it."""
        key = self._key(statement, parameters) if execution_options is None else None
        if key is None:
            self.flush()
            return self.real.execute(statement, parameters, execution_options=execution_options)
        return self._record(key, statement, {} if parameters is None else parameters, driver=False)

    def exec_driver_sql(self, statement: str, parameters: Any = None, execution_options: Any = None) -> Any:
        """``Connection.exec_driver_sql``: recorded if deferrable, else flush and run it."""
        deferrable = (
            execution_options is None
            and isinstance(parameters, Mapping | tuple)
            and not self.real.in_nested_transaction()
            and deferrable_sql(statement)
        )
        if not deferrable:
            self.flush()
            return self.real.exec_driver_sql(statement, parameters, execution_options)
        return self._record(("driver", statement), statement, parameters, driver=True)

    def _key(self, statement: Any, parameters: Any) -> object | None:
        """What a write must share with its neighbours to go in their ``executemany``; None: not deferrable."""
        if parameters is not None and type(parameters) is not dict and not isinstance(parameters, Mapping):
            return None  # several parameter sets: already one executemany
        if isinstance(statement, sa.TextClause):
            if not deferrable_sql(statement.text) or self.real.in_nested_transaction():
                return None
            if statement is not self._last_text:  # a handler's module-level text: checked once
                self._last_text = statement
                self._last_text_key = ("text", statement.text) if _plain_text(statement) else ("object", id(statement))
            return self._last_text_key
        if isinstance(statement, _CORE_WRITES):
            if len(statement.exported_columns) or self.real.in_nested_transaction():
                return None  # RETURNING
            return ("object", id(statement))
        return None

    def _record(self, key: object, statement: Any, parameters: Any, *, driver: bool) -> DeferredResult:
        result = DeferredResult(self)
        self._pending.append((key, statement, parameters, driver, weakref.ref(result)))
        return result

    def flush(self) -> None:
        """Send every recorded write, in order; raises the first error (and keeps it in :attr:`failed`)."""
        pending, self._pending = self._pending, []
        start = 0
        try:
            while start < len(pending):
                key, statement, parameters, driver, result_ref = pending[start]
                result = result_ref()
                if result is not None:  # the handler still holds its result: run it alone, keep the result
                    result._result = self._send(statement, parameters, driver)
                    start += 1
                    continue
                end = start + 1
                while end < len(pending) and pending[end][0] == key and pending[end][4]() is None:
                    end += 1
                if end - start == 1:
                    self._send(statement, parameters, driver)
                else:
                    self._send_many(key, statement, [write[2] for write in pending[start:end]], driver)
                start = end
        except BaseException as error:
            if self.failed is None:
                self.failed = error
            raise

    def _send_many(self, key: object, statement: Any, parameters: list[Any], driver: bool) -> None:
        """One ``executemany``; a plain text's as driver SQL compiled once per string (no compile per flush,
        no SQLAlchemy parameter processing per write: a plain text's untyped parameters have none)."""
        if not driver and type(key) is tuple and key[0] == "text":
            prepared = _driver_sql(statement.text, self.real.dialect)
            if prepared is not None:
                sql, names = prepared
                try:
                    rows = [{name: write[name] for name in names} for write in parameters]
                except KeyError:  # a value missing: SQLAlchemy's execute says which, as without deferral
                    pass
                else:
                    self.real.exec_driver_sql(sql, rows)
                    return
        self._send(statement, parameters, driver)

    def _send(self, statement: Any, parameters: Any, driver: bool) -> sa.CursorResult[Any]:
        if driver:
            return self.real.exec_driver_sql(statement, parameters)
        return self.real.execute(statement, parameters)

    def finish(self) -> None:
        """Flush what is left; raise the error of an earlier failed flush even if a handler caught it."""
        if self.failed is None:
            self.flush()
        if self.failed is not None:
            raise self.failed


class _DeferringConnection:
    """The connection handlers see during a deferred batch (typed as a ``Connection`` for them)."""

    __slots__ = ("_writes",)

    def __init__(self, writes: DeferredWrites) -> None:
        self._writes = writes

    def execute(self, statement: Any, parameters: Any = None, *, execution_options: Any = None) -> Any:
        return self._writes.execute(statement, parameters, execution_options=execution_options)

    def exec_driver_sql(self, statement: str, parameters: Any = None, execution_options: Any = None) -> Any:
        return self._writes.exec_driver_sql(statement, parameters, execution_options)

    def __getattr__(self, name: str) -> Any:
        # Anything else may read or change the transaction (begin_nested, scalar, the DBAPI connection):
        # the recorded writes go first.
        self._writes.flush()
        return getattr(self._writes.real, name)

    def __repr__(self) -> str:
        return f"<deferring {self._writes.real!r}>"
