"""Plot choices the CLI needs at start-up, without importing matplotlib."""

from __future__ import annotations

from enum import Enum


class PlotWarning(UserWarning):
    """Something in the records was left out of the figure (non-positive values on a log axis)."""


class RecordKind(str, Enum):
    """What a table of records holds, recognised from its columns."""

    layers = "layers"  # simulate, one row per layer and configuration
    sweep = "sweep"  # simulate summary, one fitted rate per configuration
    checkpoint = "checkpoint"  # inspect-checkpoint, one row per BatchNorm layer
    ratios = "ratios"  # ratios, one row per activation and input std
    columns = "columns"  # anything else, plotted by --x and --y
