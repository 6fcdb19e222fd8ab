"""The torch engine: synthetic nets (MLP and conv), training, and the user's own model.

Every run has one shape, ``run(request, *, seed, progress, stop) -> Result``: ``request`` is a
validated :mod:`gradscope.specs` request, ``progress(done, total)`` reports finished work and
``stop`` (a :class:`threading.Event`) asks the run to end early with what has finished,
marked ``partial``. The modules import torch at their top, so this package is reached lazily:
from the CLI inside its commands, and from ``gradscope.run``/``gradscope.simulate``/... on use.

Layout: ``layers`` (norm, pool and activation forward/backward pairs), ``draws`` (per-repeat
random numbers), ``mlp`` and ``conv`` (one repeat's forward and backward), ``runner``
(workers, memory, devices), ``distributed`` (torchrun's ranks), ``simulate``, ``train`` and
``user_model`` (the three runs).
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import TYPE_CHECKING

from gradscope.schema import Result
from gradscope.specs import ModelRequest, SimulateRequest, TrainRequest

if TYPE_CHECKING:
    from gradscope.engine.distributed import Cluster


def run(
    request: SimulateRequest | TrainRequest | ModelRequest,
    *,
    seed: int = 0,
    progress: Callable[[int, int], None] | None = None,
    stop: threading.Event | None = None,
    cluster: Cluster | None = None,
) -> Result:
    """Run any engine request (see the module docstring); with a ``cluster`` (torchrun's
    ranks, from :func:`gradscope.engine.distributed.start`), across all its ranks."""
    if isinstance(request, SimulateRequest):
        from gradscope.engine.simulate import run as simulate_run

        return simulate_run(request, seed=seed, progress=progress, stop=stop, cluster=cluster)
    if isinstance(request, TrainRequest):
        from gradscope.engine.train import run as train_run

        return train_run(request, seed=seed, progress=progress, stop=stop, cluster=cluster)
    if isinstance(request, ModelRequest):
        from gradscope.engine.user_model import run as model_run

        return model_run(request, seed=seed, progress=progress, stop=stop, cluster=cluster)
    raise TypeError(f"not an engine request: {type(request).__name__}")
