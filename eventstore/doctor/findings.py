"""What a check returns: a :class:`Finding` of some :class:`Severity`, and :func:`worst` to rank them."""

from __future__ import annotations

import enum
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

__all__ = ["Finding", "Severity", "worst"]


class Severity(enum.StrEnum):
    """How bad a finding is, from ``ok`` to ``problem`` (members compare by that rank with :func:`worst`)."""

    OK = "ok"
    INFO = "info"
    WARNING = "warning"
    PROBLEM = "problem"


_RANK = {severity: rank for rank, severity in enumerate(Severity)}


@dataclass(frozen=True, slots=True)
class Finding:
    """One result of one check: ``message`` says what was found, ``advice`` what to do (empty when nothing)."""

    check: str
    severity: Severity
    message: str
    advice: str = ""
    details: dict[str, Any] = field(default_factory=dict)


def worst(findings: Iterable[Finding]) -> Severity:
    """The highest severity among ``findings`` (``ok`` for none)."""
    return max((finding.severity for finding in findings), key=_RANK.__getitem__, default=Severity.OK)
