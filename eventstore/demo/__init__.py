"""The demo: concurrent order writers, live projections, then a check of every read model.

:func:`run_demo` (in :mod:`~eventstore.demo.run`) does the work and
:mod:`~eventstore.demo.view` shows it. The first-party order projections it
runs are the repository's top-level ``projections/`` package; the wheel ships
them inside this package as ``eventstore.demo.projections``, so installing
eventstore never installs (or overwrites) a top-level ``projections``.
"""

from eventstore.demo.run import DemoReport, DemoSettings, first_party_projections, run_demo

__all__ = ["DemoReport", "DemoSettings", "first_party_projections", "run_demo"]
