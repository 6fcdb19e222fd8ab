"""BatchNorm layers of a checkpoint's tensor table and their statistics.

The paper's Appendix A: σ = sqrt(mean of ``running_var``) per BatchNorm layer, against the layer
index, grows from deep to shallow layers and drops right after each downsample. This module
finds the BatchNorm layers of a :class:`~gradscope.checkpoint.table.TensorTable` (a
``running_var`` buffer and its siblings), the weight feeding each one, and where each sits
(:mod:`~gradscope.checkpoint.structure`); :mod:`~gradscope.checkpoint.verdict` fits them. Only
the tensors a row needs are read.
"""

from __future__ import annotations

import bisect
import math
import re
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from gradscope.checkpoint.structure import Structure, recognise, sequential_index
from gradscope.checkpoint.table import TensorEntry, TensorTable, entry_norm
from gradscope.schema import CheckpointRecord, WeightRecord

DEFAULT_EPS = 1e-5
NORM_WITHOUT_STATS = re.compile(r"(layer_?norm|group_?norm|(^|[._])(ln|gn|norm)\w*$)", re.I)


@dataclass
class _BatchNorm:
    name: str
    position: int
    keys: dict[str, str]  # suffix (running_var, weight, ...) -> full key


def _split(name: str) -> tuple[str, str]:
    return (name.rsplit(".", 1)[0], name.rsplit(".", 1)[1]) if "." in name else ("", name)


def find_batchnorms(table: TensorTable) -> list[_BatchNorm]:
    """BatchNorm layers (a ``running_var`` buffer with a sibling ``running_mean``, or a
    module-graph BatchNorm), in module order."""
    names = list(table.entries)
    position = {n: i for i, n in enumerate(names)}
    layers: dict[str, _BatchNorm] = {}
    for name in names:
        prefix, leaf = _split(name)
        if leaf == "running_var":
            layers[prefix] = _BatchNorm(prefix, 0, {})
    for name in names:
        prefix, leaf = _split(name)
        if prefix in layers:
            layers[prefix].keys[leaf] = name
    for layer in layers.values():
        layer.position = min(position[k] for k in layer.keys.values())
    return sorted(layers.values(), key=lambda b: b.position)


class _Weights:
    """Weights of two or more dimensions that do not belong to a BatchNorm, by output size
    and position: the last one before a BatchNorm is found by bisection, not by a scan."""

    def __init__(self, table: TensorTable, bn_names: set[str]) -> None:
        self.table, self.bn_names = table, bn_names
        self.by_channels: dict[int, list[int]] = {}
        self.names = list(table.entries)
        for i, name in enumerate(self.names):
            if name.endswith("weight") and self.ok(name):
                self.by_channels.setdefault(self.table.entries[name].shape[0], []).append(i)

    def ok(self, name: str, channels: int | None = None) -> bool:
        entry = self.table.entries.get(name)
        return (
            entry is not None
            and len(entry.shape) >= 2
            and (channels is None or entry.shape[0] == channels)
            and _split(name)[0] not in self.bn_names
        )

    def last_before(self, position: int, channels: int) -> str | None:
        places = self.by_channels.get(channels, [])
        k = bisect.bisect_left(places, position)
        return self.names[places[k - 1]] if k else None


def _feeding_weight(weights: _Weights, bn: _BatchNorm, channels: int) -> str | None:
    """The weight of the layer feeding this BatchNorm (output size == num_features)."""
    parent, leaf = _split(bn.name)
    join = (lambda s: f"{parent}.{s}") if parent else (lambda s: s)
    index = sequential_index(leaf)
    if index is not None:
        for j in range(index - 1, max(-1, index - 4), -1):
            if weights.ok(join(f"{j}.weight"), channels):
                return join(f"{j}.weight")
    guesses = []
    for a, b in (
        ("bn", "conv"),
        ("BN", "conv"),
        ("batchnorm", "conv"),
        ("norm", "conv"),
        ("bn", "fc"),
        ("bn", "linear"),
        ("norm", "proj"),
    ):
        if a in leaf:
            guesses.append(leaf.replace(a, b))
    stripped = re.sub(r"[._-]?(bn|BN|batchnorm|BatchNorm|norm|Norm)$", "", leaf)
    if stripped and stripped != leaf:
        guesses.append(stripped)
    for guess in guesses:
        if weights.ok(join(f"{guess}.weight"), channels):
            return join(f"{guess}.weight")
    return weights.last_before(bn.position, channels)


def _values(table: TensorTable, key: str) -> np.ndarray:
    """A tensor's distinct values (float64, flat): its mean, extremes and flags are the
    tensor's, and a stride-0 ``expand`` stays one value (see ``TensorEntry.values``)."""
    return table.entries[key].values()[0]


def _mean_or_none(values: np.ndarray | None) -> float | None:
    return None if values is None else float(np.mean(values))


def _variance_flags(var: np.ndarray, eps: float) -> str:
    """What is suspicious about a layer's running variances: ``nan,inf,negative,zero,tiny``."""
    flags = []
    if np.isnan(var).any():
        flags.append("nan")
    if np.isinf(var).any():
        flags.append("inf")
    if (var < 0).any():
        flags.append("negative")
    if (var == 0).any():
        flags.append("zero")
    if ((var > 0) & (var < eps)).any():
        flags.append("tiny")
    return ",".join(flags)


def _at_init(var: np.ndarray, mean: np.ndarray | None) -> bool:
    """Running statistics still at BatchNorm's initial values (variance 1, mean 0)."""
    if not var.size or not np.all(var == 1.0):
        return False
    return mean is None or not np.any(mean)


def _count(table: TensorTable, key: str | None) -> int | None:
    if key is None:
        return None
    value = _values(table, key)
    one = math.prod(table.entries[key].shape) == 1
    return int(value[0]) if one and math.isfinite(value[0]) else None


def batchnorm_records(
    table: TensorTable,
    *,
    eps: float | None = None,
    downsample_after: Sequence[int] | None = None,
) -> list[CheckpointRecord]:
    """One record per BatchNorm layer of ``table``, in module order (see :func:`read_layers`)."""
    return read_layers(table, eps=eps, downsample_after=downsample_after)[0]


def read_layers(
    table: TensorTable,
    *,
    eps: float | None = None,
    downsample_after: Sequence[int] | None = None,
) -> tuple[list[CheckpointRecord], Structure]:
    """One record per BatchNorm layer of ``table``, in module order, and their structure.

    Args:
        eps: BatchNorm's eps where the checkpoint does not store it (a state dict never
            does); :data:`DEFAULT_EPS` when None.
        downsample_after: 1-based indices of the layers a downsample follows, overriding what
            the checkpoint shows (see :func:`~gradscope.checkpoint.structure.recognise`).

    The input layer(s) get ``in_fit=False``; ``sigma_fit`` is left empty (the fits fill it).
    """
    bns = find_batchnorms(table)
    weights = _Weights(table, {b.name for b in bns})
    variances = [_values(table, b.keys["running_var"]) for b in bns]
    features = [math.prod(table.entries[b.keys["running_var"]].shape) for b in bns]
    where = recognise(table, [b.name for b in bns], features, downsample_after)
    segments = where.segments
    records = []
    for i, (bn, var) in enumerate(zip(bns, variances, strict=True)):
        layer_eps = table.eps.get(bn.name, DEFAULT_EPS if eps is None else eps)
        gamma = _values(table, bn.keys["weight"]) if "weight" in bn.keys else None
        same = gamma is not None and _shape(table, bn, "weight") == _shape(table, bn, "running_var")
        sigma, sigma_eps, gain = _sigmas(var, gamma if same else None, layer_eps)
        weight_name = _feeding_weight(weights, bn, features[i])
        shape = fro = fwd = bwd = None
        if weight_name is not None:
            shape = tuple(table.entries[weight_name].shape)
            fro, fwd, bwd = _norm_and_ratios(table.entries[weight_name])
        flags = _variance_flags(var, layer_eps)
        mean = _values(table, bn.keys["running_mean"]) if "running_mean" in bn.keys else None
        if _at_init(var, mean):
            flags = ",".join(f for f in (flags, "init") if f)
        records.append(
            CheckpointRecord(
                checkpoint=table.label,
                index=i + 1,
                name=bn.name or "(root)",
                num_features=features[i],
                sigma=sigma,
                sigma_with_eps=sigma_eps,
                running_var_min=float(np.min(var)) if var.size else math.nan,
                running_var_max=float(np.max(var)) if var.size else math.nan,
                running_mean_mean=_mean_or_none(mean),
                gamma_mean=float(np.mean(gamma)) if gamma is not None else None,
                beta_mean=_mean_or_none(
                    _values(table, bn.keys["bias"]) if "bias" in bn.keys else None
                ),
                eps=layer_eps,
                effective_gain=gain,
                num_batches_tracked=_count(table, bn.keys.get("num_batches_tracked")),
                weight_name=weight_name,
                weight_shape=shape,
                weight_fro=fro,
                forward_ratio=fwd,
                backward_ratio=bwd,
                after_downsample=where.after_downsample[i],
                segment=segments[i],
                stage=where.stage[i],
                block=where.block[i],
                position=where.position[i],
                in_fit=i not in where.input_layers,
                sigma_fit=None,
                flags=flags,
            )
        )
    return records, where


def _shape(table: TensorTable, bn: _BatchNorm, leaf: str) -> tuple[int, ...]:
    return tuple(table.entries[bn.keys[leaf]].shape)


def _sigmas(var: np.ndarray, gamma: np.ndarray | None, eps: float) -> tuple[float, float, float]:
    """σ = sqrt(mean running_var), σ with eps, and the effective gain mean(|γ| / sqrt(var + eps))
    of one layer, from distinct values (``gamma`` None: γ = 1)."""
    if not var.size:
        return math.nan, math.nan, math.nan
    with np.errstate(invalid="ignore", divide="ignore"):
        mean_var = float(np.mean(var))
        sigma = math.sqrt(mean_var) if mean_var >= 0 else math.nan
        sigma_eps = math.sqrt(mean_var + eps) if mean_var + eps >= 0 else math.nan
        inverse = 1.0 / np.sqrt(var + eps)
        if gamma is None:
            gain = float(np.mean(inverse))
        elif gamma.size == var.size:
            gain = float(np.mean(np.abs(gamma) * inverse))
        else:  # 1-d, one of them an expand of one value: the mean factorises
            gain = float(np.mean(np.abs(gamma)) * np.mean(inverse))
    return sigma, sigma_eps, gain


def _norm_and_ratios(weight: TensorEntry) -> tuple[float, float, float]:
    """‖W‖_F, the forward ratio ‖W‖²/W.shape[0] and the backward ratio ‖W‖²/W.shape[1]."""
    fro = entry_norm(weight)
    return fro, fro**2 / weight.shape[0], fro**2 / weight.shape[1]


def weight_records(table: TensorTable) -> list[WeightRecord]:
    """Norms of every weight tensor with two or more dimensions, in table order."""
    out = []
    index = 0
    for name, entry in table.entries.items():
        if len(entry.shape) < 2 or math.prod(entry.shape) == 0:
            continue
        index += 1
        fro, fwd, bwd = _norm_and_ratios(entry)
        numel = math.prod(entry.shape)
        out.append(
            WeightRecord(
                checkpoint=table.label,
                index=index,
                name=name,
                shape=tuple(entry.shape),
                numel=numel,
                fro=fro,
                rms=fro / math.sqrt(numel),
                forward_ratio=fwd,
                backward_ratio=bwd,
            )
        )
    return out


def describe_without_batchnorm(table: TensorTable) -> str:
    """What a checkpoint without BatchNorm holds instead (one sentence)."""
    norms = []
    matrices = 0
    for name, entry in table.entries.items():
        prefix, leaf = _split(name)
        if len(entry.shape) >= 2:
            matrices += 1
        elif leaf == "weight" and len(entry.shape) == 1:
            # A vector weight named like a norm, or one with a bias of its shape (an affine
            # LayerNorm/GroupNorm under any name): a normalisation layer without statistics.
            bias = table.entries.get(f"{prefix}.bias" if prefix else "bias")
            if NORM_WITHOUT_STATS.search(prefix) or (
                bias is not None and tuple(bias.shape) == tuple(entry.shape)
            ):
                norms.append(prefix)
    what = f"{len(table.entries)} tensors, {matrices} of them weight matrices"
    if norms:
        what += (
            f", and {len(norms)} normalisation layers without running statistics "
            f"(LayerNorm/GroupNorm-like, e.g. {norms[0]})"
        )
    return (
        f"{table.label} has no BatchNorm layers (no running_var buffers): it holds {what}; "
        "use --weights to list per-layer weight norms"
    )
