"""BatchNorm layers of a checkpoint's tensor table, their statistics and the growth fits.

The paper's Appendix A: σ = sqrt(mean of ``running_var``) per BatchNorm layer, against the layer
index, grows from deep to shallow layers and drops right after each downsample. This module
finds the BatchNorm layers of a :class:`~gradscope.checkpoint.table.TensorTable` (a
``running_var`` buffer and its siblings), the weight feeding each one and the downsamples
between them, and fits σ's growth per layer (:func:`summarize`). Only the tensors a row needs
are read.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from gradscope.checkpoint.table import TensorEntry, TensorTable, entry_norm, to_numpy
from gradscope.schema import CheckpointRecord, CheckpointSummaryRecord, WeightRecord
from gradscope.theory.stats import fit_log_linear

DEFAULT_EPS = 1e-5
DOWNSAMPLE_TYPE = re.compile(r"pool|downsampl|pixelunshuffle", re.IGNORECASE)
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


def _param_free_gap(a: str, b: str, module_prefixes: set[str]) -> tuple[str, int] | None:
    """Param-free Sequential slots between BatchNorms ``a`` and ``b`` (e.g. ReLU, MaxPool),
    from the index gap at the first path component where they differ."""
    pa, pb = a.split("."), b.split(".")
    for i, (x, y) in enumerate(zip(pa, pb, strict=False)):
        if x != y:
            if not (x.isdigit() and y.isdigit()) or int(y) <= int(x):
                return None
            parent = ".".join(pa[:i])
            free = 0
            for j in range(int(x) + 1, int(y)):
                slot = f"{parent}.{j}" if parent else str(j)
                if slot not in module_prefixes:
                    free += 1
            return parent, free
    return None


def _after_downsample(table: TensorTable, bns: list[_BatchNorm]) -> list[bool]:
    names = [b.name for b in bns]
    if not names:
        return []
    if table.modules:
        bn_set = set(names)
        seen_bn, pooled = False, False
        marks: dict[str, bool] = {}
        for module_name, cls in table.modules:
            if module_name in bn_set:
                marks[module_name] = seen_bn and pooled
                seen_bn, pooled = True, False
            elif DOWNSAMPLE_TYPE.search(cls):
                pooled = True
        return [marks.get(n, False) for n in names]
    module_prefixes: set[str] = set()
    for name in table.entries:
        parts = name.split(".")
        for i in range(1, len(parts)):
            module_prefixes.add(".".join(parts[:i]))
    gaps: list[tuple[str, int] | None] = [None]
    gaps += [_param_free_gap(a, b, module_prefixes) for a, b in zip(names, names[1:], strict=False)]
    baseline: dict[str, int] = {}
    for gap in gaps:
        if gap is not None:
            baseline[gap[0]] = min(baseline.get(gap[0], gap[1]), gap[1])
    return [gap is not None and gap[1] > baseline[gap[0]] for gap in gaps]


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


def batchnorm_records(table: TensorTable) -> list[CheckpointRecord]:
    """One record per BatchNorm layer of ``table``, in module order."""
    bns = find_batchnorms(table)
    bn_names = {b.name for b in bns}
    downsample = _after_downsample(table, bns)
    records = []
    for index, (bn, after) in enumerate(zip(bns, downsample, strict=True), start=1):
        var = to_numpy(table.entries[bn.keys["running_var"]].load())
        eps = table.eps.get(bn.name, DEFAULT_EPS)
        gamma = to_numpy(table.entries[bn.keys["weight"]].load()) if "weight" in bn.keys else None
        with np.errstate(invalid="ignore", divide="ignore"):
            mean_var = float(np.mean(var)) if var.size else math.nan
            sigma = math.sqrt(mean_var) if mean_var >= 0 else math.nan
            scale = np.abs(gamma) if gamma is not None and gamma.shape == var.shape else 1.0
            gain = float(np.mean(scale / np.sqrt(var + eps))) if var.size else math.nan
        weight_name = _feeding_weight(table, bn, int(var.size), bn_names)
        shape = fro = fwd = bwd = None
        if weight_name is not None:
            shape = tuple(table.entries[weight_name].shape)
            fro, fwd, bwd = _norm_and_ratios(table.entries[weight_name])
        records.append(
            CheckpointRecord(
                checkpoint=table.label,
                index=index,
                name=bn.name or "(root)",
                num_features=int(var.size),
                sigma=sigma,
                running_var_min=float(np.min(var)) if var.size else math.nan,
                running_var_max=float(np.max(var)) if var.size else math.nan,
                running_mean_mean=_mean_or_none(table, bn.keys.get("running_mean")),
                gamma_mean=float(np.mean(gamma)) if gamma is not None else None,
                beta_mean=_mean_or_none(table, bn.keys.get("bias")),
                eps=eps,
                effective_gain=gain,
                weight_name=weight_name,
                weight_shape=shape,
                weight_fro=fro,
                forward_ratio=fwd,
                backward_ratio=bwd,
                after_downsample=bool(after),
                flags=_variance_flags(var, eps),
            )
        )
    return records


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


def _fit_record(
    label: str, scope: str, rows: Sequence[CheckpointRecord]
) -> CheckpointSummaryRecord | None:
    usable = [r for r in rows if math.isfinite(r.sigma) and r.sigma > 0]
    if len(usable) < 2:
        return None
    # x = -index: the rate is the growth per layer from deep to shallow (toward the input).
    fit = fit_log_linear([-r.index for r in usable], [r.sigma for r in usable])
    return CheckpointSummaryRecord(
        checkpoint=label,
        scope=scope,
        from_index=rows[0].index,
        to_index=rows[-1].index,
        n_layers=fit.n,
        rate_per_layer=fit.rate,
        rate_ci_low=fit.ci_low,
        rate_ci_high=fit.ci_high,
        growth_per_layer=fit.rate - 1.0,
        r_squared=fit.r_squared,
        sigma_ratio=None,
    )


def summarize(records: Sequence[CheckpointRecord], jumps: int = 3) -> list[CheckpointSummaryRecord]:
    """Fits of sigma's growth per layer from deep to shallow, over the whole net and per
    segment between downsamples, and the largest jumps between consecutive layers."""
    out: list[CheckpointSummaryRecord] = []
    labels: list[str] = []
    for r in records:
        if r.checkpoint not in labels:
            labels.append(r.checkpoint)
    for label in labels:
        rows = [r for r in records if r.checkpoint == label]
        whole = _fit_record(label, "all", rows)
        if whole:
            out.append(whole)
        segments: list[list[CheckpointRecord]] = []
        for r in rows:
            if r.after_downsample or not segments:
                segments.append([])
            segments[-1].append(r)
        if len(segments) > 1:
            for k, seg in enumerate(segments, start=1):
                rec = _fit_record(label, f"segment {k}", seg)
                if rec:
                    out.append(rec)
        steps = [
            (b.sigma / a.sigma, a, b)
            for a, b in zip(rows, rows[1:], strict=False)
            if math.isfinite(a.sigma) and math.isfinite(b.sigma) and a.sigma > 0 and b.sigma > 0
        ]
        steps.sort(key=lambda s: -abs(math.log(s[0])))
        for ratio, a, b in steps[:jumps]:
            out.append(
                CheckpointSummaryRecord(
                    label, "jump", a.index, b.index, 2, None, None, None, None, None, ratio
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
