"""How much work each measurement does; ``--quick`` shrinks it to a smoke run."""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["FULL", "QUICK", "Plan"]


@dataclass(frozen=True)
class Plan:
    """How much work each measurement does; ``--quick`` shrinks it to a smoke run."""

    mode: str
    repeats: int
    append_seconds: float
    writer_counts: tuple[int, ...] = (1, 4, 8)
    batch_sizes: tuple[int, ...] = (1, 10)
    latency_events: int = 2000
    catchup_events: int = 1_000_000
    eventsourcing_catchup_events: int = 100_000
    rebuild_events: int = 1_000_000
    rebuild_repeats: int = 1


FULL = Plan(mode="full", repeats=3, append_seconds=3.0)
QUICK = Plan(
    mode="quick",
    repeats=2,
    append_seconds=0.3,
    latency_events=200,
    catchup_events=20_000,
    eventsourcing_catchup_events=3_000,
    rebuild_events=20_000,
    rebuild_repeats=1,
)
