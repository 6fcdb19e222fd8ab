"""gradscope: make exploding and vanishing gradients visible, measurable and predictable.

The Python API returns the same records the CLI prints. Every public name is loaded on first
use, so ``import gradscope`` imports neither torch nor matplotlib: ``gradscope.ratios`` and
``gradscope.read_records`` start fast, and torch loads only when an engine function is called.
"""

from __future__ import annotations

import importlib
from typing import Any

from gradscope._version import __version__
from gradscope.errors import GradscopeError

# Public names, loaded on first use: name -> module that defines it.
_LAZY = {
    "ratios": "gradscope.theory.ratios",
    "operator_ratios": "gradscope.theory.ratios",
    "activation_ratios": "gradscope.theory.ratios",
    "expression_ratios": "gradscope.theory.ratios",
    "RatioRecord": "gradscope.schema",
    "parse_activation": "gradscope.activations",
    "read_records": "gradscope.records",
    "read_meta": "gradscope.provenance",
    "run": "gradscope.engine",
    "SimulateRequest": "gradscope.specs",
    "TrainRequest": "gradscope.specs",
    "ModelRequest": "gradscope.specs",
    "Result": "gradscope.schema",
    "simulate": "gradscope.api",
    "build_specs": "gradscope.specs",
    "SimulationResult": "gradscope.engine.simulate",
    "train": "gradscope.api",
    "TrainResult": "gradscope.engine.train",
    "ModelSpec": "gradscope.specs",
    "run_model": "gradscope.engine.user_model",
    "model_records": "gradscope.engine.user_model",
    "inspect_checkpoint": "gradscope.checkpoint.inspect",
    "CheckpointResult": "gradscope.checkpoint.inspect",
    "plot_records": "gradscope.plot.figure",
    "plot_training": "gradscope.plot.training",
}

__all__ = ["GradscopeError", "__version__", *_LAZY]


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'gradscope' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value  # later look-ups skip this function
    return value


def __dir__() -> list[str]:
    return sorted(__all__)
