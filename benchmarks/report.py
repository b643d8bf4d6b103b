"""Collect samples, then write the markdown table of medians (min-max) with ratios, and the raw JSON."""

from __future__ import annotations

import contextlib
import json
import os
import platform
import statistics
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

__all__ = ["Results"]


@dataclass
class _Row:
    section: str
    case: str
    contender: str
    unit: str
    samples: list[float] = field(default_factory=list)
    compare_to: tuple[str, ...] = ()
    extra: dict[str, list[float]] = field(default_factory=dict)


class Results:
    """Samples per (section, case, contender); ratios are medians divided by the baseline's median, same run."""

    def __init__(self, *, mode: str, machine: dict[str, Any]) -> None:
        self.mode = mode
        self.machine = machine
        self._rows: dict[tuple[str, str, str], _Row] = {}
        self.notes: list[str] = []
        self.tables: list[tuple[str, str]] = []
        """Derived tables (title, markdown), rendered after the sections: e.g. the append breakdown."""

    def add(
        self,
        section: str,
        case: str,
        contender: str,
        value: float,
        *,
        unit: str,
        compare_to: tuple[str, ...] = (),
        extra: dict[str, float] | None = None,
    ) -> None:
        """Record one sample; ``compare_to`` names the contenders (same section and case) to show ratios against."""
        key = (section, case, contender)
        row = self._rows.setdefault(key, _Row(section, case, contender, unit, compare_to=compare_to))
        row.samples.append(value)
        for name, number in (extra or {}).items():
            row.extra.setdefault(name, []).append(number)

    def median(self, section: str, case: str, contender: str) -> float | None:
        row = self._rows.get((section, case, contender))
        return statistics.median(row.samples) if row and row.samples else None

    def ratio(self, section: str, case: str, contender: str, baseline: str) -> float | None:
        mine, theirs = self.median(section, case, contender), self.median(section, case, baseline)
        if mine is None or not theirs:
            return None
        return mine / theirs

    def paired_ratios(self, section: str, case: str, contender: str, baseline: str) -> list[float]:
        """Round-by-round ratios (sample i over the baseline's sample i, measured next to each other in time).

        Less sensitive than the ratio of medians to load that drifts during a run.
        """
        mine, theirs = self._rows.get((section, case, contender)), self._rows.get((section, case, baseline))
        if not mine or not theirs or len(mine.samples) != len(theirs.samples):
            return []
        return [a / b for a, b in zip(mine.samples, theirs.samples, strict=True) if b]

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Results:
        """Rebuild the results of an earlier run from its JSON file (to re-render the table)."""
        results = cls(mode=data["mode"], machine=data["machine"])
        results.notes = list(data.get("notes", []))
        results.tables = [(table["title"], table["markdown"]) for table in data.get("tables", [])]
        for row in data["rows"]:
            results._rows[(row["section"], row["case"], row["contender"])] = _Row(
                row["section"],
                row["case"],
                row["contender"],
                row["unit"],
                samples=list(row["samples"]),
                compare_to=tuple(row.get("ratios", {})),
                extra={name: list(values) for name, values in row.get("extra", {}).items()},
            )
        return results

    def markdown(self) -> str:
        lines = [
            f"Mode: {self.mode}. Medians of the interleaved repetitions (min-max in brackets). Ratios are "
            "ratios of medians; 'paired' gives the range of the round-by-round ratios (each pair measured "
            "back to back).",
            "",
        ]
        sections: dict[str, list[_Row]] = {}
        for row in self._rows.values():
            sections.setdefault(row.section, []).append(row)
        for section, rows in sections.items():
            lines += [f"### {section}", "", "| case | contender | median (min-max) | ratio of medians | other |"]
            lines.append("|---|---|---|---|---|")
            for row in rows:
                ratios = []
                for baseline in row.compare_to:
                    value = self.ratio(row.section, row.case, row.contender, baseline)
                    if value is not None:
                        paired = self.paired_ratios(row.section, row.case, row.contender, baseline)
                        spread = f" (paired {min(paired):.2f}-{max(paired):.2f})" if len(paired) > 1 else ""
                        ratios.append(f"{value:.2f}x {baseline}{spread}")
                other = "; ".join(f"{name} {_number(statistics.median(values))}" for name, values in row.extra.items())
                lines.append(
                    f"| {row.case} | {row.contender} | {_number(statistics.median(row.samples))} "
                    f"({_number(min(row.samples))}-{_number(max(row.samples))}) {row.unit} "
                    f"| {'; '.join(ratios)} | {other} |"
                )
            lines.append("")
        for title, table in self.tables:
            lines += [f"### {title}", "", table, ""]
        if self.notes:
            lines += ["Notes:", ""] + [f"- {note}" for note in self.notes] + [""]
        return "\n".join(lines)

    def as_json(self) -> dict[str, Any]:
        return {
            "mode": self.mode,
            "machine": self.machine,
            "notes": self.notes,
            "tables": [{"title": title, "markdown": table} for title, table in self.tables],
            "rows": [
                {
                    "section": row.section,
                    "case": row.case,
                    "contender": row.contender,
                    "unit": row.unit,
                    "samples": row.samples,
                    "median": statistics.median(row.samples),
                    "extra": row.extra,
                    "ratios": {
                        baseline: self.ratio(row.section, row.case, row.contender, baseline)
                        for baseline in row.compare_to
                    },
                    "paired_ratios": {
                        baseline: self.paired_ratios(row.section, row.case, row.contender, baseline)
                        for baseline in row.compare_to
                    },
                }
                for row in self._rows.values()
            ],
        }

    def write(self, directory: Path, *, stamp: str) -> tuple[Path, Path]:
        """Write ``results-<stamp>.md`` and ``results-<stamp>.json`` (and ``latest.*`` copies) into ``directory``."""
        directory.mkdir(parents=True, exist_ok=True)
        markdown = self.markdown()
        data = json.dumps(self.as_json(), indent=2, sort_keys=True)
        md_path, json_path = directory / f"results-{stamp}.md", directory / f"results-{stamp}.json"
        md_path.write_text(markdown)
        json_path.write_text(data)
        (directory / "latest.md").write_text(markdown)
        (directory / "latest.json").write_text(data)
        return md_path, json_path


def _number(value: float) -> str:
    if value >= 100:
        return f"{value:,.0f}"
    if value >= 10:
        return f"{value:.1f}"
    return f"{value:.2f}"


def machine_description(settings: dict[str, str]) -> dict[str, Any]:
    """CPU, memory, OS and the PostgreSQL settings that decide the numbers."""
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    memory = ""
    with contextlib.suppress(OSError, IndexError):
        memory = Path("/proc/meminfo").read_text().splitlines()[0].split(":", 1)[1].strip()

    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "memory": memory,
        "os": platform.platform(),
        "python": platform.python_version(),
        "postgresql": settings,
    }


if __name__ == "__main__":
    import sys

    print(Results.from_json(json.loads(Path(sys.argv[1]).read_text())).markdown())
