"""Every record type gradscope writes, and the role of each column (no torch, no numpy).

A record type is a frozen dataclass; its field order is the CSV header, the JSON keys and the
table columns. Each field declares its role once, where it is defined:

- ``configuration``: what was run (arch, depth, activation, ...). The configuration columns
  whose values vary between rows tell a plot's series apart and key a sweep.
- ``measurement``: a value measured or computed for the row (gradient norms, fitted rates, σ).
- ``descriptor``: names or describes the row within its configuration (layer, module name,
  flags, the basis of a prediction).

Record types that share a configuration share it by inheritance (:class:`NetConfig` for the
synthetic nets, :class:`TrainConfigColumns` for training, :class:`ModelConfig` for the user's
model), so a configuration column is written once. :func:`non_configuration_columns` is what
output and plot read instead of keeping their own lists of columns.
"""

from __future__ import annotations

import dataclasses
import functools
from dataclasses import dataclass, field
from enum import Enum
from typing import Any, ClassVar

from gradscope.options import RecordKind


class Role(str, Enum):
    configuration = "configuration"
    measurement = "measurement"
    descriptor = "descriptor"


def configuration(**kwargs: Any) -> Any:
    """A configuration column (see the module docstring)."""
    return field(metadata={"role": Role.configuration}, **kwargs)


def measurement(**kwargs: Any) -> Any:
    """A measured or computed column."""
    return field(metadata={"role": Role.measurement}, **kwargs)


def descriptor(**kwargs: Any) -> Any:
    """A column that names or describes the row within its configuration."""
    return field(metadata={"role": Role.descriptor}, **kwargs)


# --------------------------------------------------------------------------------------------
# simulate: synthetic nets


@dataclass(frozen=True)
class NetConfig:
    """The configuration columns every synthetic-net record of ``simulate`` starts with."""

    arch: str = configuration()
    residual_scale: str = configuration()
    norm_position: str = configuration()
    activation: str = configuration()
    norm: str = configuration()
    init: str = configuration()
    gain: float = configuration()
    depth: int = configuration()
    width: int = configuration()
    image_size: int | None = configuration()
    pool_every: int | None = configuration()
    batch: int = configuration()
    repeats: int = configuration()


@dataclass(frozen=True)
class SimulateRecord(NetConfig):
    """One layer of one configuration."""

    kind: ClassVar[RecordKind] = RecordKind.layers

    layer: int = descriptor()
    channels: int = descriptor()
    spatial: int = descriptor()
    grad_norm_mean: float = measurement()
    grad_norm_std: float | None = measurement()
    grad_norm_sem: float | None = measurement()
    grad_norm_ci_low: float | None = measurement()
    grad_norm_ci_high: float | None = measurement()
    forward_var: float = measurement()
    backward_var: float = measurement()
    pool_input_var: float | None = measurement()
    pool_input_backward_var: float | None = measurement()
    predicted_grad_norm: float | None = measurement()
    predicted_backward_var: float | None = measurement()
    prediction_in_ci: bool | None = descriptor()
    # True when the run was interrupted (Ctrl-C) before every repeat finished: ``repeats``
    # then counts the completed ones.
    partial: bool = descriptor(default=False)


@dataclass(frozen=True)
class SimulateSummary(NetConfig):
    """One configuration: fitted growth rate per layer (last layer → first) against theory."""

    kind: ClassVar[RecordKind] = RecordKind.sweep

    fitted_rate: float | None = measurement()
    fitted_rate_ci_low: float | None = measurement()
    fitted_rate_ci_high: float | None = measurement()
    predicted_rate: float | None = measurement()
    rate_deviation: float | None = descriptor()
    prediction_in_ci: bool | None = descriptor()
    r_squared: float | None = measurement()
    amplification: float | None = measurement()
    rate_first_half: float | None = measurement()
    rate_last_half: float | None = measurement()
    overflow_layer: int | None = measurement()
    overflow_repeats: int = descriptor()
    # Conv nets with pools: mean over the pools of the measured forward ratio
    # Var[pool output]/Var[pool input] and backward ratio Var[∂ at input]/Var[∂ at output],
    # beside theory's (max of 4 iid Gaussians through the activation).
    pool_forward_ratio: float | None = measurement()
    pool_backward_ratio: float | None = measurement()
    predicted_pool_forward_ratio: float | None = measurement()
    predicted_pool_backward_ratio: float | None = measurement()
    partial: bool = descriptor()
    prediction_basis: str = descriptor()


# --------------------------------------------------------------------------------------------
# simulate --train-steps


@dataclass(frozen=True)
class TrainConfigColumns:
    """The configuration columns every training record starts with."""

    arch: str = configuration()
    residual_scale: str = configuration()
    activation: str = configuration()
    norm: str = configuration()
    init: str = configuration()
    gain: float = configuration()
    depth: int = configuration()
    width: int = configuration()
    batch: int = configuration()
    repeats: int = configuration()
    task: str = configuration()
    optimizer: str = configuration()
    lr: float = configuration()
    weight_decay: float = configuration()
    clip_grad_norm: float | None = configuration()


@dataclass(frozen=True)
class TrainRecord(TrainConfigColumns):
    """One layer of one configuration at one recorded step (means over repeats)."""

    kind: ClassVar[RecordKind] = RecordKind.layers

    step: int = configuration()
    layer: int = descriptor()
    grad_norm_mean: float = measurement()
    grad_norm_std: float | None = measurement()
    grad_norm_sem: float | None = measurement()
    grad_norm_ci_low: float | None = measurement()
    grad_norm_ci_high: float | None = measurement()
    weight_norm: float = measurement()
    sigma: float | None = measurement()
    update_size: float = measurement()
    trust_ratio: float | None = measurement()
    loss: float = measurement()


@dataclass(frozen=True)
class TrainSummary(TrainConfigColumns):
    """One configuration at one recorded step: the fitted gradient growth rate per layer
    (last layer → first, as ``simulate``) and the loss."""

    kind: ClassVar[RecordKind] = RecordKind.sweep

    step: int = configuration()
    loss: float = measurement()
    loss_sem: float | None = measurement()
    accuracy: float | None = measurement()
    fitted_rate: float | None = measurement()
    fitted_rate_ci_low: float | None = measurement()
    fitted_rate_ci_high: float | None = measurement()
    predicted_rate: float | None = measurement()
    r_squared: float | None = measurement()
    amplification: float | None = measurement()
    sigma_rate: float | None = measurement()
    sigma_r_squared: float | None = measurement()
    weight_norm_rate: float | None = measurement()
    overflow_repeats: int = descriptor()


@dataclass(frozen=True)
class WeightGrowthRecord(TrainConfigColumns):
    """One layer of one configuration: measured against predicted growth of ‖W‖² over training.

    ``predicted_growth`` is set only where the identity holds exactly (plain SGD, weight
    followed by a norm layer); ``relative_error`` = measured / predicted − 1 of the means,
    ``max_relative_error`` the largest |measured / predicted − 1| over repeats.
    """

    kind: ClassVar[RecordKind | None] = None  # no figure of its own: plotted by --x/--y

    steps: int = configuration()
    layer: int = descriptor()
    weight_norm_start: float = measurement()
    weight_norm_end: float = measurement()
    measured_growth: float = measurement()
    predicted_growth: float | None = measurement()
    relative_error: float | None = measurement()
    max_relative_error: float | None = measurement()
    prediction_basis: str = descriptor()


# --------------------------------------------------------------------------------------------
# simulate --model


@dataclass(frozen=True)
class ModelConfig:
    """The configuration columns every record of ``simulate --model`` starts with."""

    model: str = configuration()
    batch: int = configuration()
    repeats: int = configuration()


@dataclass(frozen=True)
class ModelLayerRecord(ModelConfig):
    """One weight-carrying module of the user's model."""

    kind: ClassVar[RecordKind] = RecordKind.layers

    layer: int = descriptor()
    module: str = descriptor()
    module_type: str = descriptor()
    param_count: int = descriptor()
    path: str = descriptor()
    block: str = descriptor()
    grad_norm_mean: float = measurement()
    grad_norm_std: float = measurement()
    grad_norm_sem: float = measurement()
    grad_norm_ci_low: float = measurement()
    grad_norm_ci_high: float = measurement()
    forward_var: float = measurement()
    backward_var: float = measurement()


@dataclass(frozen=True)
class ModelSummaryRecord(ModelConfig):
    """Growth of the gradient norm over the layers of one path, in execution order."""

    kind: ClassVar[RecordKind] = RecordKind.sweep

    path: str = configuration()
    layers: int = configuration()
    fitted_rate: float = measurement()
    fitted_rate_ci_low: float = measurement()
    fitted_rate_ci_high: float = measurement()
    r_squared: float = measurement()
    amplification: float = measurement()
    rate_first_half: float = measurement()
    rate_last_half: float = measurement()
    overflow_layer: int | None = measurement()
    partial: bool = descriptor()


# --------------------------------------------------------------------------------------------
# inspect-checkpoint


@dataclass(frozen=True)
class CheckpointRecord:
    """One BatchNorm layer of one checkpoint, in module order.

    ``sigma`` = √mean(running_var), the paper's Appendix A; ``sigma_with_eps`` =
    √mean(running_var + eps), the scale BatchNorm divides by (they differ where running
    variances come near eps). Where the layer sits: ``after_downsample`` (a downsample lies
    between the previous layer and this one), ``segment`` (between downsamples, from 1),
    ``stage``, ``block`` and ``position`` (``bn1``/``bn2``/``bn3``/``shortcut`` in a residual
    block, ...) where the layout is known. ``in_fit``: the layer takes part in the fits (the
    input layer does not by default); ``sigma_fit``: σ on the headline fit's line.
    """

    kind: ClassVar[RecordKind] = RecordKind.checkpoint

    checkpoint: str = configuration()
    index: int = descriptor()
    name: str = descriptor()
    num_features: int = descriptor()
    sigma: float = measurement()
    sigma_with_eps: float = measurement()
    running_var_min: float = measurement()
    running_var_max: float = measurement()
    running_mean_mean: float | None = measurement()
    gamma_mean: float | None = measurement()
    beta_mean: float | None = measurement()
    eps: float = measurement()
    effective_gain: float = measurement()
    num_batches_tracked: int | None = measurement()
    weight_name: str | None = descriptor()
    weight_shape: tuple[int, ...] | None = descriptor()
    weight_fro: float | None = measurement()
    forward_ratio: float | None = measurement()
    backward_ratio: float | None = measurement()
    after_downsample: bool = descriptor()
    segment: int = descriptor()
    stage: str | None = descriptor()
    block: int | None = descriptor()
    # A configuration column: a residual net's figure draws one series per position.
    position: str | None = configuration()
    in_fit: bool = descriptor()
    sigma_fit: float | None = measurement()
    flags: str = descriptor()


# The verdicts of inspect-checkpoint's fits, a fixed vocabulary (docs/checkpoints.md).
VERDICTS = ("grows-toward-input", "shrinks-toward-input", "flat", "untrained", "too-few-layers")


@dataclass(frozen=True)
class CheckpointSummaryRecord:
    """A growth fit of sigma from deep to shallow layers, or a σ ratio between two layers.

    Fits (``scope`` ``within segments``, ``per position``, ``all layers``, ``segment k``,
    ``position p``): log σ against −index (−block for per-position series) by least squares,
    with one intercept per segment (or stage) where the scope pools several; ``rate_per_layer``
    = exp(slope), its 95% t-interval (``ci_method``) and R² (within segments when pooled).
    ``verdict`` comes from the interval (:data:`VERDICTS`). The first record of a checkpoint is
    the headline fit. Ratios (``scope`` ``downsample``, ``jump``): ``sigma_ratio`` =
    σ(to_index) / σ(from_index).
    """

    kind: ClassVar[RecordKind | None] = None  # no figure of its own: plotted by --x/--y

    checkpoint: str = configuration()
    scope: str = configuration()
    verdict: str | None = descriptor()
    from_index: int = descriptor()
    to_index: int = descriptor()
    n_layers: int = descriptor()
    segments: int | None = descriptor()
    rate_per_layer: float | None = measurement()
    rate_ci_low: float | None = measurement()
    rate_ci_high: float | None = measurement()
    ci_method: str | None = descriptor()
    growth_per_layer: float | None = measurement()
    r_squared: float | None = measurement()
    sigma_ratio: float | None = measurement()
    note: str = descriptor(default="")


@dataclass(frozen=True)
class WeightRecord:
    """One weight tensor (2-d or more) of one checkpoint, with its norms and ratios."""

    kind: ClassVar[RecordKind | None] = None  # no figure of its own: plotted by --x/--y

    checkpoint: str = configuration()
    index: int = descriptor()
    name: str = descriptor()
    shape: tuple[int, ...] = descriptor()
    numel: int = descriptor()
    fro: float = measurement()
    rms: float = measurement()
    forward_ratio: float = measurement()
    backward_ratio: float = measurement()


# --------------------------------------------------------------------------------------------
# ratios


@dataclass(frozen=True)
class RatioRecord:
    """One row of ``gradscope ratios``: an operator at one input std."""

    kind: ClassVar[RecordKind] = RecordKind.ratios

    activation: str = configuration()
    input_std: float = configuration()
    mean_out: float | None = measurement()
    second_moment_out: float | None = measurement()
    forward_ratio: float = measurement()
    backward_ratio: float = measurement()
    ratio: float = measurement()
    rate_per_layer: float = measurement()
    amplification: float = measurement()
    depth_to_10x: int | None = measurement()
    depth_to_1000x: int | None = measurement()
    forward_gain: float | None = measurement()
    method: str = descriptor()
    abs_error: float = measurement()


# --------------------------------------------------------------------------------------------
# What every engine run returns


@dataclass
class Result:
    """The one shape every engine run returns: per-layer ``records``, one ``summary`` record
    per configuration (or path, or step), ``notes`` for the user (the CLI prints them on
    stderr), and ``partial`` when a stop request ended the run before every repeat finished."""

    records: list[Any]
    summary: list[Any]
    notes: list[str] = field(default_factory=list)
    partial: bool = False


# --------------------------------------------------------------------------------------------
# Roles, as output and plot read them

RECORD_TYPES: tuple[type, ...] = (
    SimulateRecord,
    SimulateSummary,
    TrainRecord,
    TrainSummary,
    WeightGrowthRecord,
    ModelLayerRecord,
    ModelSummaryRecord,
    CheckpointRecord,
    CheckpointSummaryRecord,
    WeightRecord,
    RatioRecord,
)


def columns(record_type: type) -> tuple[str, ...]:
    """The column names of a record type, in order (the CSV header)."""
    return tuple(f.name for f in dataclasses.fields(record_type))


def roles(record_type: type) -> dict[str, Role]:
    """Each column of a record type and its role."""
    return {f.name: f.metadata["role"] for f in dataclasses.fields(record_type)}


@functools.cache
def non_configuration_columns(kind: RecordKind) -> frozenset[str]:
    """The measurement and descriptor columns of every record type of ``kind``; every other
    column of such a table is configuration."""
    return frozenset(
        name
        for record_type in RECORD_TYPES
        if record_type.kind is kind  # type: ignore[attr-defined]
        for name, role in roles(record_type).items()
        if role is not Role.configuration
    )
