"""What the plots and rates remember between snapshots: :class:`History`, in memory and bounded.

The head's events/s in steps, each projection's lag and rate through the log
(the ETA's numbers, :meth:`History.progress_rates`) and its "picked up after"
times, from the time the app's first page opens.
"""

from __future__ import annotations

import bisect
import itertools
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime

from eventstore import admin

from .snapshot import PickUp, Snapshot

__all__ = [
    "HISTORY_SAMPLES",
    "HISTORY_SECONDS",
    "PICKUP_SAMPLES",
    "PROGRESS_WINDOW_SECONDS",
    "RATE_BUCKET_SECONDS",
    "SAMPLE_SPACING",
    "History",
    "Sample",
]

HISTORY_SECONDS = 300.0
"""How far back the plots of the head and of each projection's lag go (five minutes)."""
SAMPLE_SPACING = 1.0
"""Kept samples are about this far apart (the sampler runs up to five times a second under appends)."""
HISTORY_SAMPLES = int(HISTORY_SECONDS / SAMPLE_SPACING * 1.5)
"""A bound on each series, whatever the spacing."""
RATE_BUCKET_SECONDS = 5.0
"""The events/s plot's step."""
PROGRESS_WINDOW_SECONDS = 15.0
"""A catching-up projection's rate (and so its ETA) is over this many seconds of its samples."""
PICKUP_SAMPLES = 60
"""Pick-up times kept per projection (one per checkpoint move the sampler saw)."""

Sample = tuple[float, int]
"""(monotonic time, value)."""


def _push(samples: deque[Sample], now: float, value: int) -> None:
    """Add a sample; samples stay about :data:`SAMPLE_SPACING` apart (the newest replaces the last until then)."""
    if len(samples) >= 2 and now - samples[-2][0] < SAMPLE_SPACING:
        samples[-1] = (now, value)
    else:
        samples.append((now, value))
    while samples[0][0] < now - HISTORY_SECONDS - RATE_BUCKET_SECONDS:
        samples.popleft()


def _at(samples: Sequence[Sample], times: Sequence[float], moment: float) -> int:
    """The value of the last sample at or before ``moment`` (the first one before them all)."""
    return samples[max(bisect.bisect_right(times, moment) - 1, 0)][1]


@dataclass
class History:
    """What the plots and rates need, in memory and bounded, from the snapshots the sampler took.

    Per series, samples about a second apart over :data:`HISTORY_SECONDS` (at most
    :data:`HISTORY_SAMPLES`): the head, and each projection's lag and position; and
    each projection's last :data:`PICKUP_SAMPLES` pick-up times (:class:`PickUp`).
    It starts empty when the app's first page opens.
    """

    heads: deque[Sample] = field(default_factory=lambda: deque(maxlen=HISTORY_SAMPLES))
    lags: dict[str, deque[Sample]] = field(default_factory=dict)
    positions: dict[str, deque[Sample]] = field(default_factory=dict)
    pickups: dict[str, deque[tuple[datetime, float]]] = field(default_factory=dict)
    """Per projection, (batch started at, seconds) for each checkpoint move seen, oldest first."""
    wall_offset: float = 0.0
    """Wall clock minus monotonic clock at the last sample: labels the plots' times."""
    _seen: dict[str, int] = field(default_factory=dict)
    _states: dict[str, str] = field(default_factory=dict)

    def add(self, snapshot: Snapshot, now: float) -> None:
        """Add a snapshot taken at monotonic time ``now``."""
        self.wall_offset = snapshot.taken_at.timestamp() - now
        _push(self.heads, now, snapshot.head)
        for status in snapshot.statuses:
            _push(self.lags.setdefault(status.name, deque(maxlen=HISTORY_SAMPLES)), now, status.lag_events)
            positions = self.positions.setdefault(status.name, deque(maxlen=HISTORY_SAMPLES))
            before, self._states[status.name] = self._states.get(status.name), status.state
            if positions and (status.position < positions[-1][1] or status.state != before):
                # Moved back (a rebuild or a reset), or began a rebuild or a catch-up: its rate starts now.
                positions.clear()
            _push(positions, now, status.position)
            self._note_pickup(status, snapshot.pickups.get(status.name))

    def _note_pickup(self, status: admin.ProjectionStatus, pickup: PickUp | None) -> None:
        # Trust updated_at only when the checkpoint moved since the last snapshot under a held lease
        # (a lease taken or released, or a failure, sets it too) and not in a rebuild (old events: no wake-up).
        if pickup is None:
            return
        before, self._seen[status.name] = self._seen.get(status.name), pickup.position
        if before is None or pickup.position <= before or pickup.seconds is None:
            return
        if status.owner is None or status.state in ("failed", "stopped", "rebuilding"):
            return
        samples = self.pickups.setdefault(status.name, deque(maxlen=PICKUP_SAMPLES))
        samples.append((pickup.batch_started_at, pickup.seconds))

    def wall(self, moment: float) -> datetime:
        """The UTC time of monotonic time ``moment``."""
        return datetime.fromtimestamp(moment + self.wall_offset, UTC)

    def rate_buckets(self, bucket: float = RATE_BUCKET_SECONDS) -> list[float]:
        """Events per second in whole ``bucket``-second steps ending at the last sample, oldest first.

        From the head's advance (an append rolled back leaves a gap in the
        positions, counted too); empty until the samples span one bucket.
        """
        if len(self.heads) < 2:
            return []
        samples = list(self.heads)
        times = [t for t, _ in samples]
        end = times[-1]
        count = int((end - max(times[0], end - HISTORY_SECONDS)) // bucket)
        edges = [end - (count - i) * bucket for i in range(count + 1)]
        values = [_at(samples, times, edge) for edge in edges]
        return [max(0, v2 - v1) / bucket for v1, v2 in itertools.pairwise(values)]

    def rate(self, seconds: float = 60.0) -> float:
        """The head's events per second over the last ``seconds`` (0 with fewer than two samples)."""
        return _rate_over(self.heads, seconds) or 0.0

    def progress_rates(self, name: str, seconds: float = PROGRESS_WINDOW_SECONDS) -> tuple[float, float] | None:
        """(positions per second of ``name``'s checkpoint, the head's events per second), over the same window.

        The window is the last ``seconds`` of its samples since its checkpoint last moved back or
        its state last changed (a rebuild or a catch-up began); None while that spans less than a second.
        """
        positions = list(self.positions.get(name, ()))
        span = _window(positions, seconds)
        if span is None:
            return None
        (start, first), (end, last) = span
        heads = list(self.heads)
        times = [t for t, _ in heads]
        head_advance = _at(heads, times, end) - _at(heads, times, start)
        return max(0, last - first) / (end - start), max(0, head_advance) / (end - start)


def _window(samples: Sequence[Sample], seconds: float) -> tuple[Sample, Sample] | None:
    """The first sample within ``seconds`` of the last, and the last; None unless they are a second apart."""
    if len(samples) < 2:
        return None
    end = samples[-1]
    start = next(sample for sample in samples if sample[0] >= end[0] - seconds)
    return (start, end) if end[0] - start[0] >= 1.0 else None


def _rate_over(samples: Sequence[Sample], seconds: float) -> float | None:
    """Advance per second over the last ``seconds`` of ``samples`` (see :func:`_window`)."""
    span = _window(samples, seconds)
    if span is None:
        return None
    (start, first), (end, last) = span
    return max(0, last - first) / (end - start)
