"""Operate projections: status, failures, retry, skip, reset, rebuild, replay one stream.

The functions the CLI calls. Writers here take the same locks as runners (see
:mod:`eventstore.runner.checkpoints` and :mod:`eventstore.runner.ownership`): ``reset`` and
``rebuild`` take the projection's lease and raise
:class:`~eventstore.errors.ProjectionBusy` while a runner holds it;
``retry``, ``skip`` and ``replay_stream`` lock the checkpoint row, so they
are safe while a runner is live, and wake the runners when they commit.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime

from eventstore.database import translate_driver_errors
from eventstore.errors import ProjectionError, ProjectionNotFound
from eventstore.projection import Projection
from eventstore.runner import checkpoints, waiting
from eventstore.runner.checkpoints import Checkpoint, ProjectionFailure
from eventstore.runner.connections import session_engine
from eventstore.runner.ownership import lock_owners
from eventstore.runner.session import ProjectionSession
from eventstore.runner.settings import RunnerSettings
from eventstore.store import EventStore, sql
from eventstore.store.stalls import Blocker, fence_blockers

__all__ = [
    "Blocker",
    "ProjectionFailure",
    "ProjectionStatus",
    "list_failures",
    "projection_status",
    "rebuild",
    "replay_stream",
    "reset",
    "retry",
    "skip",
    "wait_until_processed",
]


def _lag_query(categories: Sequence[str], event_types: Sequence[str]) -> str:
    """Events after a checkpoint within the filters; how many of them the gap rule's fence still holds back."""
    return (
        "SELECT count(*) AS lag_events, "  # noqa: S608 - constant fragments only
        f"count(*) FILTER (WHERE transaction_order >= {sql.FENCE}) AS held_back, "
        "coalesce(extract(epoch FROM now() - min(recorded_at)), 0)::float8 AS lag_seconds FROM events "
        "WHERE (transaction_order, global_position) > (CAST(%(order)s AS xid8), %(position)s)"
        f"{sql.filter_clause(categories, event_types)}"
    )


@dataclass(frozen=True, slots=True)
class ProjectionStatus:
    """One projection's progress. ``state``: running, idle, held back, failed, stopped or rebuilding.

    ``running``/``idle``: a runner holds the lock (``owner`` is its ``host:pid``)
    and has events to process / is caught up; ``held back``: a runner holds it
    but every event it has left waits behind a running transaction (the gap
    rule's fence; ``blocked_by`` names it); ``stopped``: no runner holds it.
    ``lag_events`` counts the held-back events too (``held_back`` of them).
    """

    name: str
    position: int
    head: int
    lag_events: int
    lag_seconds: float
    state: str
    owner: str | None
    last_error: str | None
    failed_position: int | None
    held_back: int = 0
    blocked_by: tuple[Blocker, ...] = ()
    notify_queue_usage: float = 0.0
    """``pg_notification_queue_usage()``: the share of the cluster's NOTIFY queue in use (wake-ups stop at 0.5)."""
    unowned_since: datetime | None = None
    """When no owner holds it: since when (its last lease expired, or was released); None while one does."""


def projection_status(store: EventStore, projections: Sequence[Projection | str]) -> list[ProjectionStatus]:
    """The status of each projection (by instance, which also gives its filters, or by name)."""
    items = [(p, (), ()) if isinstance(p, str) else (p.name, p.categories, p.event_types) for p in projections]
    names = [name for name, _, _ in items]
    head = store.head_position()
    statuses = []
    with translate_driver_errors(store.engine), store.engine.connect() as connection:
        stored = checkpoints.load_all(connection, names)
        held = lock_owners(connection, names)
        queue_usage = float(connection.exec_driver_sql(sql.NOTIFY_QUEUE_USAGE).scalar_one())
        lags = []
        for name, categories, event_types in items:
            current = stored.get(name)
            order, position = current.cursor if current else (0, 0)
            lag = connection.exec_driver_sql(
                _lag_query(categories, event_types),
                {"order": str(order), "position": position, **sql.filter_parameters(categories, event_types)},
            ).one()
            lags.append((name, current, position, lag))
    blockers = tuple(fence_blockers(store.engine)) if any(lag.held_back for *_, lag in lags) else ()
    for name, current, position, lag in lags:
        statuses.append(
            ProjectionStatus(
                name=name,
                position=position,
                head=head,
                lag_events=int(lag.lag_events),
                lag_seconds=float(lag.lag_seconds),
                state=_state(current, name in held, int(lag.lag_events), int(lag.held_back)),
                owner=held.get(name),
                last_error=current.last_error if current else None,
                failed_position=current.failed_position if current else None,
                held_back=int(lag.held_back),
                blocked_by=blockers if lag.held_back else (),
                notify_queue_usage=queue_usage,
                unowned_since=None if name in held else _unowned_since(current),
            )
        )
    return statuses


def _unowned_since(current: Checkpoint | None) -> datetime | None:
    if current is None:
        return None
    if current.owner is not None and current.lease_expires_at is not None:
        return current.lease_expires_at  # its owner died: the lease ran out
    return current.updated_at  # released (the row is not written again until someone owns it)


def _state(current: Checkpoint | None, locked: bool, lag: int, held_back: int) -> str:
    if current is not None and current.state == "failed":
        return "failed"
    if not locked:
        return "stopped"
    if current is not None and current.state == "rebuilding":
        return "rebuilding"
    if lag and lag == held_back:
        return "held back"
    return "running" if lag else "idle"


def list_failures(store: EventStore, name: str | None = None, *, open_only: bool = False) -> list[ProjectionFailure]:
    """Recorded poison events (failed, skipped or retried), oldest first; ``open_only``: only those still failed."""
    with translate_driver_errors(store.engine), store.engine.connect() as connection:
        return checkpoints.list_failures(connection, name, status="failed" if open_only else None)


def retry(store: EventStore, name: str) -> int:
    """Clear a failed projection so its runner tries the poison event again; returns its position.

    Raises :class:`ProjectionNotFound`, or :class:`ProjectionError` when the projection is not failed.
    """
    return _resolve(store, name, "retried")


def skip(store: EventStore, name: str) -> int:
    """Move a failed projection past its poison event (recorded as skipped); returns its position.

    Raises :class:`ProjectionNotFound`, or :class:`ProjectionError` when the projection is not failed.
    """
    return _resolve(store, name, "skipped")


def _resolve(store: EventStore, name: str, outcome: str) -> int:
    """Resolve a failed projection's open failure as ``retried`` or ``skipped`` (moving past it), and wake runners."""
    with translate_driver_errors(store.engine), store.engine.begin() as connection:
        current = checkpoints.lock(connection, name)
        if current is None:
            raise ProjectionNotFound(name)
        if not current.failed or current.failed_position is None:
            raise ProjectionError(
                f"projection {name!r} is not failed (state {current.state!r}); nothing to retry or skip"
            )
        position = current.failed_position
        if outcome == "skipped":
            checkpoints.advance(connection, name, store.order_of(position))
        checkpoints.resolve_failure(connection, name, position, outcome)
        checkpoints.clear_failure(connection, name, state="running" if current.owner else "idle")
        checkpoints.wake_runners(connection)
    return position


def reset(store: EventStore, projection: Projection) -> None:
    """Clear the read model (``projection.reset``) and move the checkpoint to the start.

    Raises :class:`ProjectionBusy` while a runner holds the projection.
    """
    with _admin_store(store) as own:
        session = _acquire(own, projection, threading.Event(), state="stopped")
        try:
            with session.transaction() as connection:
                projection.reset(connection)
                checkpoints.move_to(connection, projection.name, (0, 0))
                checkpoints.clear_failure(connection, projection.name, state="stopped")
                checkpoints.resolve_open_failures(connection, projection.name, "retried")
        finally:
            session.release()


def rebuild(
    store: EventStore,
    projection: Projection,
    from_position: int | None = None,
    progress: Callable[[int, int], None] | None = None,
    stop_event: threading.Event | None = None,
    *,
    batch_size: int = 500,
) -> int:
    """Rebuild a read model from the events; returns the number of events consumed.

    Without ``from_position``: ``projection.reset()`` and replay everything.
    With it: keep the read model and re-apply the events after that position
    (the projection must tolerate seeing them again). ``progress(done,
    total)`` is called after each batch; setting ``stop_event`` ends the
    rebuild after the current batch, with its checkpoint committed (a runner
    or a later rebuild continues from there).

    Raises :class:`ProjectionBusy` while a runner holds the projection,
    :class:`~eventstore.errors.UnknownPosition` for a ``from_position`` that
    is not a stored event.
    """
    stop = stop_event or threading.Event()
    start = store.order_of(from_position) if from_position else (0, 0)
    with _admin_store(store) as own:
        session = _acquire(own, projection, stop, state="rebuilding", batch_size=batch_size)
        try:
            with session.transaction() as connection:
                if from_position is None:
                    projection.reset(connection)
                checkpoints.move_to(connection, projection.name, start)
                checkpoints.clear_failure(connection, projection.name, state="rebuilding")
                checkpoints.resolve_open_failures(connection, projection.name, "retried")
            total = projection_status(store, [projection])[0].lag_events
            done = 0

            def report(consumed: int) -> None:
                nonlocal done
                done += consumed
                if progress is not None:
                    progress(done, max(total, done))

            if progress is not None:
                progress(0, total)
            result = session.catch_up(progress=report)
            return result.processed
        finally:
            session.release()


@contextlib.contextmanager
def _admin_store(store: EventStore) -> Iterator[EventStore]:
    """A store on a small pool of its own, for one-off work under a projection's lease."""
    engine = session_engine(store.engine, application_name="eventstore-admin", pool_size=2)
    own = EventStore(engine, read_batch_size=store.read_batch_size)
    try:
        yield own
    finally:
        own.close()
        engine.dispose()


def _acquire(
    store: EventStore, projection: Projection, stop: threading.Event, *, state: str, batch_size: int = 500
) -> ProjectionSession:
    projection.check()
    settings = RunnerSettings(batch_size=batch_size)
    with translate_driver_errors(store.engine):
        return ProjectionSession.acquire_or_busy(
            store.engine, store, projection, settings=settings, stop=stop, state=state
        )


def replay_stream(store: EventStore, projection: Projection, stream_id: str) -> int:
    """Rebuild what the read model holds about one stream; returns the events re-applied.

    Calls ``projection.forget_stream(stream_id)``, then re-applies the
    stream's events the projection has already consumed (up to its
    checkpoint, within its filters), in one transaction that holds the
    checkpoint row, so it is safe while a runner is live. Events after the
    checkpoint are left to the runner (0 when it has not reached the stream
    yet). Raises :class:`ProjectionError` if the projection does not implement
    ``forget_stream``, :class:`ProjectionNotFound` if it has no checkpoint;
    a handler's exception propagates (nothing is changed).
    """
    events = store.read_stream(stream_id)
    with translate_driver_errors(store.engine), store.engine.begin() as connection:
        current = checkpoints.lock(connection, projection.name)
        if current is None:
            raise ProjectionNotFound(projection.name)
        try:
            projection.forget_stream(stream_id, connection)
        except NotImplementedError as error:
            raise ProjectionError(str(error)) from error
        applied = 0
        for event in events:
            if checkpoints.cursor_of(event) > current.cursor:
                break
            if projection.selects(event):
                projection.apply(event, connection)
                applied += 1
    return applied


def wait_until_processed(store: EventStore, projection_name: str, position: int, timeout: float = 10.0) -> None:
    """Return once ``projection_name`` has consumed ``position`` (see :mod:`eventstore.runner.waiting`).

    Raises :class:`~eventstore.errors.ProjectionTimeout` (a :class:`TimeoutError`) naming where it is.
    """
    waiting.wait_until_processed(store, [projection_name], position, timeout=timeout)
