"""gradscope: make exploding and vanishing gradients visible, measurable and predictable.

The Python API returns the same records the CLI prints. Nothing here imports torch: the
engine modules import it inside the functions that need it, so ``import gradscope`` and the
``ratios``/``plot`` commands start fast.

Three engine modules share their name with their main function (``ratios``, ``simulate``,
``train``). They are imported here and the package attribute is bound to the *function*, so
``gradscope.simulate(...)`` works however the modules were imported before; import their
other names with ``from gradscope.simulate import ...``.
"""

from __future__ import annotations

import importlib
from typing import Any

from gradscope import ratios as _ratios_module
from gradscope import simulate as _simulate_module
from gradscope import train as _train_module
from gradscope._version import __version__
from gradscope.errors import GradscopeError

ratios = _ratios_module.ratios
simulate = _simulate_module.simulate
train = _train_module.train

# Other public names, loaded on first use: name -> module that defines it.
_LAZY = {
    "operator_ratios": "gradscope.ratios",
    "activation_ratios": "gradscope.ratios",
    "expression_ratios": "gradscope.ratios",
    "RatioRecord": "gradscope.ratios",
    "parse_activation": "gradscope.activations",
    "read_records": "gradscope.records",
    "SimulationResult": "gradscope.simulate",
    "inspect_checkpoint": "gradscope.checkpoint",
    "CheckpointResult": "gradscope.checkpoint",
    "TrainResult": "gradscope.train",
    "run_model": "gradscope.model",
    "model_records": "gradscope.model",
    "plot_records": "gradscope.plot",
}

__all__ = ["GradscopeError", "__version__", "ratios", "simulate", "train", *_LAZY]


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'gradscope' has no attribute {name!r}")
    return getattr(importlib.import_module(module), name)
