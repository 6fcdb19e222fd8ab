"""gradscope: make exploding and vanishing gradients visible, measurable and predictable.

The Python API returns the same records the CLI prints. Heavy modules (torch) load only when
the function that needs them is first used, so ``import gradscope`` stays fast.
"""

from __future__ import annotations

import importlib
from typing import Any

from gradscope._version import __version__
from gradscope.errors import GradscopeError

# public name -> module that defines it
_API = {
    "ratios": "gradscope.ratios",
    "operator_ratios": "gradscope.ratios",
    "activation_ratios": "gradscope.ratios",
    "expression_ratios": "gradscope.ratios",
    "RatioRecord": "gradscope.ratios",
    "parse_activation": "gradscope.activations",
    "read_records": "gradscope.records",
    "simulate": "gradscope.simulate",
    "SimulationResult": "gradscope.simulate",
    "inspect_checkpoint": "gradscope.checkpoint",
    "CheckpointResult": "gradscope.checkpoint",
    "train": "gradscope.train",
    "run_model": "gradscope.model",
    "model_records": "gradscope.model",
    "plot_records": "gradscope.plot",
}

__all__ = ["GradscopeError", "__version__", *_API]


def __getattr__(name: str) -> Any:
    module = _API.get(name)
    if module is None:
        raise AttributeError(f"module 'gradscope' has no attribute {name!r}")
    return getattr(importlib.import_module(module), name)
