"""The projection runner: keeps read models up to date from the store.

Parts, from the top: :mod:`~eventstore.runner.runner` (the
:class:`ProjectionRunner`: listener, workers, signals, shutdown),
:mod:`~eventstore.runner.worker` (one thread per projection),
:mod:`~eventstore.runner.session` (one projection's lock and its batches),
:mod:`~eventstore.runner.poison` (the poison-event policy),
:mod:`~eventstore.runner.ownership` (who runs a projection: the locks),
:mod:`~eventstore.runner.checkpoints` (checkpoints and failures),
:mod:`~eventstore.runner.waiting` (``wait_until_processed``),
:mod:`~eventstore.runner.listener` (LISTEN for wake-ups),
:mod:`~eventstore.runner.connections` and :mod:`~eventstore.runner.settings`.
"""

from eventstore.runner.runner import ProjectionRunner
from eventstore.runner.settings import RunnerOptions, RunnerSettings

__all__ = ["ProjectionRunner", "RunnerOptions", "RunnerSettings"]
