"""Whether LISTEN delivers on a connection: the probe, written once for the sync and the asyncio live feeds.

Why: through a transaction-mode pooler (PgBouncer's ``pool_mode =
transaction``) a LISTEN succeeds, but on whichever server session ran it,
which then goes back to the pool: notifications reach that session, never
this client (https://www.pgbouncer.org/features.html). Nothing fails; the
feed just never wakes up.

How: the listening connection also LISTENs on a private channel
(:func:`new_probe_channel`), and a second, short-lived connection sends
``pg_notify(channel, token)`` (:data:`PROBE_SQL`). From another session,
because a session's own notification comes back with the reply to its
``NOTIFY`` even through a pooler, which would prove nothing. It is sent
without waiting for the reply: a pooler may queue it for a free server
session for minutes (``query_wait_timeout``), and the wait is bounded by the
probe's ``timeout`` alone. The verdict of :func:`probe`:

- ``True``: the token arrived within ``timeout``; LISTEN works.
- ``False``: it did not; LISTEN cannot work through this URL. The feed logs
  :func:`warn_listen_does_not_deliver` once and polls instead.
- ``None``, no verdict: the cluster's NOTIFY queue is at least
  :data:`PROBE_QUEUE_LIMIT` full (the wake-up function skips wake-ups from
  there on, ``alembic/versions/0003_wake_up_hint_only.py``, and a nearly full
  queue may refuse the probe itself), the second connection is refused, its
  ``pg_notify`` fails, or the feed is stopping. The feed keeps listening and
  may probe again later.

:func:`probe` is the logic without I/O, psycopg's own pattern (as
:mod:`eventstore.store.protocol`): a generator that yields the steps it needs
and receives their results. :func:`run_probe` (sync) and
:func:`run_probe_async` (asyncio) perform the steps; they are the only code
written twice. Users: the runner's :class:`~eventstore.runner.listener.Listener`,
``AsyncEventStore.subscribe``'s :class:`~eventstore.store.subscriptions.SubscriptionHub`
and :func:`~eventstore.store.follow.follow` (``eventstore tail``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import select
import time
import uuid
from collections.abc import Callable, Generator, Mapping
from typing import Any, NamedTuple

import psycopg
from psycopg import pq, sql
from psycopg.conninfo import conninfo_to_dict

from eventstore.database import CLIENT_KEEPALIVES
from eventstore.errors import first_line
from eventstore.store.sql import NOTIFY_QUEUE_USAGE

__all__ = [
    "PROBE_QUEUE_LIMIT",
    "PROBE_SQL",
    "Notifications",
    "OpenSender",
    "QueueUsage",
    "WAIT_SLICE",
    "WaitWritable",
    "describe_conninfo",
    "listen_statement",
    "new_probe_channel",
    "probe",
    "run_probe",
    "run_probe_async",
    "warn_listen_does_not_deliver",
]

PROBE_QUEUE_LIMIT = 0.5
"""The NOTIFY queue usage from which a probe proves nothing: the wake-up function skips wake-ups from
there on (migration 0003), and a nearly full queue may refuse the probe itself."""

PROBE_SQL = b"SELECT pg_notify($1, $2)"
"""What the second connection sends: the probe channel and the token as parameters."""

WAIT_SLICE = 0.25
"""How long one wait for notifications lasts (a probe's, the runner listener's): bounds how late a stop is seen."""


class QueueUsage(NamedTuple):
    """Run :data:`~eventstore.store.sql.NOTIFY_QUEUE_USAGE` on the listening connection; send back its row."""


class OpenSender(NamedTuple):
    """Open the second connection (:func:`sender_options`); send back its ``pgconn``, or throw ``psycopg.Error``."""


class WaitWritable(NamedTuple):
    """Wait until the socket ``fd`` takes more bytes, at most ``timeout`` seconds; send back None."""

    fd: int
    timeout: float


class Notifications(NamedTuple):
    """Wait up to ``timeout`` s for a notification on the listening connection.

    Send back the ``(channel, payload)`` pairs that came (maybe none), or None
    when the feed is stopping.
    """

    timeout: float


Step = QueueUsage | OpenSender | WaitWritable | Notifications


def new_probe_channel() -> str:
    """A channel of one listener's own, for its probes (unique per listener)."""
    return f"eventstore_probe_{uuid.uuid4().hex}"


def listen_statement(channel: str) -> sql.Composed:
    """``LISTEN "channel"``, the channel quoted as an identifier."""
    return sql.SQL("LISTEN {}").format(sql.Identifier(channel))


def sender_options(application_name: str) -> dict[str, Any]:
    """psycopg ``connect`` keywords of the second connection: autocommit, never prepared, keepalives."""
    return {
        "autocommit": True,
        "application_name": f"{application_name}-probe",
        "prepare_threshold": None,
        **CLIENT_KEEPALIVES,
    }


def probe(
    channel: str,
    *,
    timeout: float,
    logger: logging.Logger,
    who: str,
    queue_limit: float = PROBE_QUEUE_LIMIT,
    extra: Mapping[str, Any] | None = None,
) -> Generator[Step, Any, bool | None]:
    """Whether a notification on ``channel`` sent from another session arrives within ``timeout`` s.

    True, False, or None (no verdict; see the module docstring). ``logger``
    and ``who`` (e.g. ``"listener"``) are the feed's: the DEBUG lines that
    explain a verdict come from it. A ``psycopg.Error`` thrown in at any step
    but :class:`OpenSender` propagates: the listening connection failed.
    """
    fields = dict(extra or {})
    row = yield QueueUsage()
    usage = float(row[0]) if row is not None and row[0] is not None else 0.0
    if usage >= queue_limit:
        logger.debug("%s: NOTIFY queue %.0f%% full; not probing whether notifications arrive", who, usage * 100,
                     extra={**fields, "notify_queue_usage": usage})  # fmt: skip
        return None
    token = uuid.uuid4().hex
    try:
        sender: pq.abc.PGconn = yield OpenSender()
    except psycopg.Error as error:
        logger.debug("%s: cannot open the probe connection (%s); no verdict on LISTEN", who, first_line(error),
                     extra=fields)  # fmt: skip
        return None
    deadline = time.monotonic() + timeout
    failure = yield from _send(sender, [channel.encode(), token.encode()], deadline)
    while failure is None:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            return False
        notifications = yield Notifications(min(remaining, WAIT_SLICE))
        if notifications is None:
            return None  # stopping
        if (channel, token) in notifications:
            logger.debug("%s: probe arrived; LISTEN works", who, extra=fields)
            return True
        failure = _reply_error(sender)
    logger.debug("%s: the probe notification failed (%s); no verdict on LISTEN", who, failure, extra=fields)
    return None


def _send(pgconn: pq.abc.PGconn, parameters: list[bytes | None], deadline: float) -> Generator[Step, Any, str | None]:
    """Send :data:`PROBE_SQL` without waiting for its reply; an error message if it cannot be sent by ``deadline``."""
    try:
        pgconn.send_query_params(PROBE_SQL, parameters)
        while pgconn.flush():  # psycopg's connections are non-blocking: 1 means more to send
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return "timed out sending it"
            yield WaitWritable(pgconn.socket, remaining)
    except psycopg.Error as error:
        return first_line(error)
    return None


def _reply_error(pgconn: pq.abc.PGconn) -> str | None:
    """The error of the reply to the probe, if it has come; never waits."""
    try:
        pgconn.consume_input()
        while not pgconn.is_busy():
            result = pgconn.get_result()
            if result is None:
                return None
            if result.status == pq.ExecStatus.FATAL_ERROR:
                return result.error_message.decode(errors="replace").strip() or "unknown error"
    except psycopg.Error as error:
        return first_line(error)
    return None


# -- the two drivers: the only code written twice -------------------------------------------------


def run_probe(
    connection: psycopg.Connection[Any],
    conninfo: str,
    steps: Generator[Step, Any, bool | None],
    *,
    application_name: str,
    stopping: Callable[[], bool] = lambda: False,
) -> bool | None:
    """Run :func:`probe`'s ``steps`` on the listening ``connection`` (sync); the sender connects to ``conninfo``.

    Raises the ``psycopg.Error`` of the listening connection, if it fails.
    """
    sender: psycopg.Connection[Any] | None = None
    try:
        step = next(steps)
        while True:
            try:
                if isinstance(step, QueueUsage):
                    reply: Any = connection.execute(NOTIFY_QUEUE_USAGE).fetchone()
                elif isinstance(step, OpenSender):
                    sender = psycopg.connect(conninfo, **sender_options(application_name))
                    reply = sender.pgconn
                elif isinstance(step, WaitWritable):
                    select.select([], [step.fd], [], step.timeout)
                    reply = None
                elif stopping():
                    reply = None
                else:
                    received = connection.notifies(timeout=step.timeout, stop_after=1)
                    reply = [(notification.channel, notification.payload) for notification in received]
            except psycopg.Error as error:
                step = steps.throw(error)
            else:
                step = steps.send(reply)
    except StopIteration as done:
        verdict: bool | None = done.value
        return verdict
    finally:
        if sender is not None:
            sender.close()


async def run_probe_async(
    connection: psycopg.AsyncConnection[Any],
    conninfo: str,
    steps: Generator[Step, Any, bool | None],
    *,
    application_name: str,
) -> bool | None:
    """:func:`run_probe` on an ``AsyncConnection``; cancel the task to stop it."""
    sender: psycopg.AsyncConnection[Any] | None = None
    try:
        step = next(steps)
        while True:
            try:
                if isinstance(step, QueueUsage):
                    cursor = await connection.execute(NOTIFY_QUEUE_USAGE)
                    reply: Any = await cursor.fetchone()
                elif isinstance(step, OpenSender):
                    sender = await psycopg.AsyncConnection.connect(conninfo, **sender_options(application_name))
                    reply = sender.pgconn
                elif isinstance(step, WaitWritable):
                    await _writable(step.fd, step.timeout)
                    reply = None
                else:
                    received = connection.notifies(timeout=step.timeout, stop_after=1)
                    reply = [(notification.channel, notification.payload) async for notification in received]
            except psycopg.Error as error:
                step = steps.throw(error)
            else:
                step = steps.send(reply)
    except StopIteration as done:
        verdict: bool | None = done.value
        return verdict
    finally:
        if sender is not None:
            await sender.close()


async def _writable(fd: int, timeout: float) -> None:
    loop = asyncio.get_running_loop()
    ready: asyncio.Future[None] = loop.create_future()

    def writable() -> None:
        if not ready.done():
            ready.set_result(None)

    loop.add_writer(fd, writable)
    try:
        # asyncio.timeout, not wait_for: on Python 3.11 wait_for swallows a cancel that comes as the future is set.
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(timeout):
                await ready
    finally:
        loop.remove_writer(fd)


# -- the verdict, in words ---------------------------------------------------------------------------


def warn_listen_does_not_deliver(
    logger: logging.Logger,
    *,
    who: str,
    conninfo: str,
    probe_timeout: float,
    poll_interval: float,
    fix: str,
    extra: Mapping[str, Any] | None = None,
) -> None:
    """Log the WARNING of a ``False`` verdict: what happened, that the feed polls, and ``fix``.

    ``fix`` completes "For prompt wake-ups, ..." in the words of the feed's
    user (e.g. "give the runner a direct or session-mode URL for listening:
    listen_url= ..."). The caller logs it once per feed.
    """
    target = describe_conninfo(conninfo)
    logger.warning(
        "%s: LISTEN through %s does not deliver notifications: a probe sent from another session did not "
        "arrive within %g s, as happens behind a pooler in transaction mode (PgBouncer pool_mode = "
        "transaction), which gives each transaction any server session, while LISTEN needs one of its own. "
        "Falling back to polling every %g s. For prompt wake-ups, %s",
        who,
        target,
        probe_timeout,
        poll_interval,
        fix,
        extra={**(extra or {}), "target": target, "mode": "polling"},
        stacklevel=2,  # the record names the feed's code, not this helper
    )


def describe_conninfo(conninfo: str) -> str:
    """``host:port/dbname`` of a libpq connection string or URL, never the password."""
    try:
        parts = conninfo_to_dict(conninfo)
    except psycopg.Error:
        return "the listen URL"
    return f"{parts.get('host') or 'localhost'}:{parts.get('port') or 5432}/{parts.get('dbname') or ''}"
