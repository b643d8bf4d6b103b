"""Find the projections the ``eventstore`` command runs (``--projections MODULE``).

The module is imported with the current directory on ``sys.path`` (as
alembic and uvicorn do), so ``--projections bank.projections`` works from the
directory that holds ``bank/``. A module (or package) provides its
projections as ``ALL``, a list of projection instances; without ``ALL`` every
:class:`~eventstore.Projection` instance defined at module level, and every
concrete subclass defined there (instantiated without arguments), is taken.
"""

from __future__ import annotations

import importlib
import inspect
import os
import sys
from collections.abc import Sequence
from typing import Any

from eventstore.cli.errors import CliError
from eventstore.errors import first_line

__all__ = ["load_projections", "pick", "pick_one"]


def load_projections(module_name: str) -> list[Any]:
    """The projections of ``module_name``, in a stable order.

    Raises:
        CliError: the module fails to import (the import error, one line) or holds no projection.
    """
    here = os.getcwd()
    if here not in sys.path:
        sys.path.insert(0, here)
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as error:
        top = module_name.split(".")[0]
        if error.name != top:
            raise _import_error(module_name, error) from error
        raise CliError(
            f"cannot import projections module {module_name!r}: no module named {top!r} in the current directory "
            f"({here}) or the installed packages; run eventstore from the directory that holds {top}.py or {top}/ "
            "(or set PYTHONPATH), or fix --projections MODULE (env EVENTSTORE_PROJECTIONS)"
        ) from error
    except Exception as error:  # any failure while importing user code
        raise _import_error(module_name, error) from error
    found = getattr(module, "ALL", None)
    if found is None:
        found = _discover(module)
    projections = list(found)
    if not projections:
        raise CliError(
            f"module {module_name!r} defines no projections; give it ALL = [MyProjection(), ...] "
            "or pass --projections MODULE"
        )
    names = [projection.name for projection in projections]
    duplicates = sorted({name for name in names if names.count(name) > 1})
    if duplicates:
        raise CliError(f"module {module_name!r} defines projection name(s) twice: {', '.join(duplicates)}")
    return projections


def _import_error(module_name: str, error: Exception) -> CliError:
    return CliError(
        f"cannot import projections module {module_name!r}: {type(error).__name__}: {first_line(error)}; "
        "fix the module or pass --projections MODULE (env EVENTSTORE_PROJECTIONS)"
    )


def _discover(module: Any) -> list[Any]:
    from eventstore.projection import Projection

    found: list[Any] = []
    for value in vars(module).values():
        if isinstance(value, Projection):
            found.append(value)
        elif (
            inspect.isclass(value)
            and issubclass(value, Projection)
            and value is not Projection
            and value.__module__ == module.__name__
            and not inspect.isabstract(value)
        ):
            found.append(value())
    return found


def pick_one(projections: Sequence[Any], name: str) -> Any:
    """The projection called ``name``.

    Raises:
        CliError: no such projection (the message lists the known ones).
    """
    for projection in projections:
        if projection.name == name:
            return projection
    known = ", ".join(sorted(projection.name for projection in projections)) or "none"
    raise CliError(f"unknown projection {name!r}; known projections: {known} (see `eventstore projections list`)")


def pick(projections: Sequence[Any], names: Sequence[str]) -> list[Any]:
    """The named projections (all of them when ``names`` is empty)."""
    if not names:
        return list(projections)
    return [pick_one(projections, name) for name in names]
