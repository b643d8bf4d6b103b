""".ci/floors.txt pins exactly the dependency floors pyproject.toml declares for runtime code.

The floors leg of ``.ci/run`` installs eventstore with those pins and runs part
of the suite, so a floor is a version the code is tested with only while the
two files agree. Runtime code means: ``[project] dependencies``, every extra
but ``test`` and ``bench`` (an extra a user installs to run eventstore), and
the requirements of ``test`` that the shipped pytest plugin imports.
"""

from __future__ import annotations

import tomllib
from collections import defaultdict
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

ROOT = Path(__file__).resolve().parents[2]
FLOORS = ROOT / ".ci" / "floors.txt"

DEVELOPMENT_EXTRAS = {"test", "bench"}
"""Extras for working on eventstore, not for running it."""
IMPORTED_BY_THE_PLUGIN = {"pytest", "testcontainers"}
"""Requirements of the test extra that eventstore.testing imports (it ships in the wheel)."""


def declared_floors() -> dict[str, set[Version]]:
    """Package name -> the ``>=`` versions pyproject.toml declares for it (runtime requirements only)."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    requirements = [Requirement(text) for text in project["dependencies"]]
    for extra, texts in project["optional-dependencies"].items():
        for requirement in map(Requirement, texts):
            if extra not in DEVELOPMENT_EXTRAS or canonicalize_name(requirement.name) in IMPORTED_BY_THE_PLUGIN:
                requirements.append(requirement)
    floors: dict[str, set[Version]] = defaultdict(set)
    for requirement in requirements:
        lower = [Version(spec.version) for spec in requirement.specifier if spec.operator == ">="]
        assert len(lower) == 1, f"{requirement}: give it exactly one floor (>=), tested in .ci/floors.txt"
        name = canonicalize_name(requirement.name)
        floors[name].add(lower[0])
        if name == "psycopg" and "binary" in requirement.extras:
            # psycopg's binary extra requires psycopg-binary of the same version.
            floors["psycopg-binary"].add(lower[0])
    return floors


def pinned_floors() -> dict[str, Version]:
    pins: dict[str, Version] = {}
    for line in FLOORS.read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        name, separator, version = line.partition("==")
        assert separator, f".ci/floors.txt: {line!r} is not NAME==VERSION"
        pins[canonicalize_name(name.strip())] = Version(version.strip())
    return pins


def test_each_package_has_one_floor_everywhere_it_is_declared() -> None:
    for name, versions in declared_floors().items():
        assert len(versions) == 1, f"{name} has different floors in pyproject.toml: {sorted(map(str, versions))}"


def test_floors_txt_pins_exactly_the_declared_floors() -> None:
    declared = {name: max(versions) for name, versions in declared_floors().items()}
    pinned = pinned_floors()
    missing = {name: str(version) for name, version in declared.items() if name not in pinned}
    assert not missing, f"add to .ci/floors.txt (and run the floors leg of .ci/run): {missing}"
    stale = sorted(set(pinned) - set(declared))
    assert not stale, f"remove from .ci/floors.txt, pyproject.toml no longer declares them: {stale}"
    different = {name: (str(declared[name]), str(pinned[name])) for name in declared if declared[name] != pinned[name]}
    assert not different, f"pyproject.toml and .ci/floors.txt disagree (declared, pinned): {different}"


def test_the_ci_installs_the_floors() -> None:
    ci = (ROOT / ".ci" / "run").read_text()
    assert "-c .ci/floors.txt" in ci
