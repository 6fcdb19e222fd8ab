"""BatchNorm layers of a checkpoint's tensor table and their statistics.

The paper's Appendix A: σ = sqrt(mean of ``running_var``) per BatchNorm layer, against the layer
index, grows from deep to shallow layers and drops right after each downsample. This module
finds the BatchNorm layers of a :class:`~gradscope.checkpoint.table.TensorTable` (a
``running_var`` buffer and its siblings), the weight feeding each one, and where each sits
(:mod:`~gradscope.checkpoint.structure`); :mod:`~gradscope.checkpoint.verdict` fits them. Only
the tensors a row needs are read.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from gradscope.checkpoint.structure import Structure, recognise
from gradscope.checkpoint.table import TensorEntry, TensorTable, entry_norm, to_numpy
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


def _feeding_weight(
    table: TensorTable, bn: _BatchNorm, channels: int, bn_names: set[str]
) -> str | None:
    """The weight of the layer feeding this BatchNorm (output size == num_features)."""
    entries = table.entries

    def ok(name: str) -> bool:
        entry = entries.get(name)
        return (
            entry is not None
            and len(entry.shape) >= 2
            and entry.shape[0] == channels
            and _split(name)[0] not in bn_names
        )

    parent, leaf = _split(bn.name)
    join = (lambda s: f"{parent}.{s}") if parent else (lambda s: s)
    if leaf.isdigit():
        for j in range(int(leaf) - 1, max(-1, int(leaf) - 4), -1):
            if ok(join(f"{j}.weight")):
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
        if ok(join(f"{guess}.weight")):
            return join(f"{guess}.weight")
    names = list(entries)
    before = names[: bn.position]
    for name in reversed(before):
        if name.endswith("weight") and ok(name):
            return name
    return None


def _mean_or_none(table: TensorTable, key: str | None) -> float | None:
    if key is None:
        return None
    return float(np.mean(to_numpy(table.entries[key].load())))


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


def _at_init(table: TensorTable, bn: _BatchNorm, var: np.ndarray) -> bool:
    """Running statistics still at BatchNorm's initial values (variance 1, mean 0)."""
    if not var.size or not np.all(var == 1.0):
        return False
    key = bn.keys.get("running_mean")
    return key is None or not np.any(to_numpy(table.entries[key].load()))


def _count(table: TensorTable, key: str | None) -> int | None:
    if key is None:
        return None
    value = to_numpy(table.entries[key].load())
    return int(value[0]) if value.size == 1 and math.isfinite(value[0]) else None


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
    bn_names = {b.name for b in bns}
    variances = [to_numpy(table.entries[b.keys["running_var"]].load()) for b in bns]
    where = recognise(table, [b.name for b in bns], [v.size for v in variances], downsample_after)
    records = []
    for i, (bn, var) in enumerate(zip(bns, variances, strict=True)):
        layer_eps = table.eps.get(bn.name, DEFAULT_EPS if eps is None else eps)
        gamma = to_numpy(table.entries[bn.keys["weight"]].load()) if "weight" in bn.keys else None
        with np.errstate(invalid="ignore", divide="ignore"):
            mean_var = float(np.mean(var)) if var.size else math.nan
            sigma = math.sqrt(mean_var) if mean_var >= 0 else math.nan
            sigma_eps = math.sqrt(mean_var + layer_eps) if mean_var + layer_eps >= 0 else math.nan
            scale = np.abs(gamma) if gamma is not None and gamma.shape == var.shape else 1.0
            gain = float(np.mean(scale / np.sqrt(var + layer_eps))) if var.size else math.nan
        weight_name = _feeding_weight(table, bn, int(var.size), bn_names)
        shape = fro = fwd = bwd = None
        if weight_name is not None:
            shape = tuple(table.entries[weight_name].shape)
            fro, fwd, bwd = _norm_and_ratios(table.entries[weight_name])
        flags = _variance_flags(var, layer_eps)
        if _at_init(table, bn, var):
            flags = ",".join(f for f in (flags, "init") if f)
        records.append(
            CheckpointRecord(
                checkpoint=table.label,
                index=i + 1,
                name=bn.name or "(root)",
                num_features=int(var.size),
                sigma=sigma,
                sigma_with_eps=sigma_eps,
                running_var_min=float(np.min(var)) if var.size else math.nan,
                running_var_max=float(np.max(var)) if var.size else math.nan,
                running_mean_mean=_mean_or_none(table, bn.keys.get("running_mean")),
                gamma_mean=float(np.mean(gamma)) if gamma is not None else None,
                beta_mean=_mean_or_none(table, bn.keys.get("bias")),
                eps=layer_eps,
                effective_gain=gain,
                num_batches_tracked=_count(table, bn.keys.get("num_batches_tracked")),
                weight_name=weight_name,
                weight_shape=shape,
                weight_fro=fro,
                forward_ratio=fwd,
                backward_ratio=bwd,
                after_downsample=where.after_downsample[i],
                segment=where.segments[i],
                stage=where.stage[i],
                block=where.block[i],
                position=where.position[i],
                in_fit=i not in where.input_layers,
                sigma_fit=None,
                flags=flags,
            )
        )
    return records, where


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
