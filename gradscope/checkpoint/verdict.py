"""Fits of σ from deep to shallow layers, and the verdict they support.

The paper's footprint of exploding gradients in a trained plain net with BatchNorm: σ grows
toward the input *within* each segment between downsamples, and drops right after each
downsample. So the fits are log-linear in the layer index within segments, pooled over the
segments with one intercept per segment (a fixed-effects least-squares fit: the downsamples'
drops do not bend the slope). Residual and dense nets get one series per block position
(``bn1``, ``bn2``, …), against the block number, with one intercept per stage and position.

Every fit has a 95% Student-t interval on its rate (``n − groups − 1`` degrees of freedom) and
R² (within the groups, when pooled). The verdict is read from the interval, not a threshold:

- ``grows-toward-input``: the interval lies above 1;
- ``shrinks-toward-input``: it lies below 1;
- ``flat``: it contains 1;
- ``too-few-layers``: no interval (the fit rests on 2 points, or there is no fit);
- ``untrained``: every layer's running statistics are at their initial values.

The first summary record of a checkpoint is the headline fit: the one to read.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Hashable, Sequence
from dataclasses import dataclass

import numpy as np

from gradscope.schema import CheckpointRecord, CheckpointSummaryRecord
from gradscope.theory.student_t import student_t_quantile

LEVEL = 0.95
JUMPS = 3  # the largest steps between consecutive fitted layers of a segment ("jump" rows)
PAPER = "the footprint the paper attributes to exploding gradients"


@dataclass(frozen=True)
class GroupFit:
    """``log y = a_g + slope·x`` by least squares, one intercept per group.

    Only groups with two or more distinct x take part (a lone point only fixes its own
    intercept). ``ci_low``/``ci_high`` bound ``rate = exp(slope)`` (Student t, ``dof`` =
    n − groups − 1 degrees of freedom; NaN when ``dof`` < 1); ``r_squared`` is the share of
    the within-group variance of log y that the slope explains.
    """

    rate: float
    ci_low: float
    ci_high: float
    r_squared: float
    n: int
    groups: int
    dof: int
    slope: float
    intercepts: dict[Hashable, float]
    used: tuple[int, ...]  # positions (in the input) of the points that took part


def fit_within_groups(
    x: Sequence[float], y: Sequence[float], groups: Sequence[Hashable], level: float = LEVEL
) -> GroupFit | None:
    """The pooled fit of ``log y`` on ``x`` with an intercept per group; None when no group
    has two distinct x. ``y`` must be positive and finite."""
    members: dict[Hashable, list[int]] = {}
    for i, g in enumerate(groups):
        members.setdefault(g, []).append(i)
    kept = {g: idx for g, idx in members.items() if len({x[i] for i in idx}) > 1}
    if not kept:
        return None
    used = tuple(sorted(i for idx in kept.values() for i in idx))
    xs = np.asarray(x, dtype=np.float64)
    logy = np.log(np.asarray(y, dtype=np.float64))
    dx, dy = np.zeros(len(xs)), np.zeros(len(xs))
    for idx in kept.values():
        dx[idx] = xs[idx] - xs[idx].mean()
        dy[idx] = logy[idx] - logy[idx].mean()
    sxx = float(dx[list(used)] @ dx[list(used)])
    slope = float(dx[list(used)] @ dy[list(used)]) / sxx
    resid = dy[list(used)] - slope * dx[list(used)]
    sse, sst = float(resid @ resid), float(dy[list(used)] @ dy[list(used)])
    n, k = len(used), len(kept)
    dof = n - k - 1
    ci_low = ci_high = math.nan
    if dof >= 1:
        half = student_t_quantile(0.5 + level / 2, dof) * math.sqrt(sse / dof / sxx)
        ci_low, ci_high = math.exp(slope - half), math.exp(slope + half)
    intercepts = {g: float(logy[idx].mean() - slope * xs[idx].mean()) for g, idx in kept.items()}
    return GroupFit(
        rate=math.exp(slope),
        ci_low=ci_low,
        ci_high=ci_high,
        r_squared=1.0 - sse / sst if sst > 0 else math.nan,
        n=n,
        groups=k,
        dof=dof,
        slope=slope,
        intercepts=intercepts,
        used=used,
    )


def verdict_of(fit: GroupFit | None) -> str:
    """The verdict an interval supports (module docstring); never ``untrained``."""
    if fit is None or math.isnan(fit.ci_low):
        return "too-few-layers"
    if fit.ci_low > 1.0:
        return "grows-toward-input"
    if fit.ci_high < 1.0:
        return "shrinks-toward-input"
    return "flat"


# --------------------------------------------------------------------------------------------
# One checkpoint's fits


@dataclass
class CheckpointFits:
    """One checkpoint's summary records (headline first), its records with ``sigma_fit`` filled
    from the headline fit, and the verdict as one sentence."""

    summary: list[CheckpointSummaryRecord]
    records: list[CheckpointRecord]
    sentence: str


@dataclass(frozen=True)
class _Series:
    """Points of one fit: the records, their x (−index or −block) and intercept groups."""

    scope: str
    rows: tuple[CheckpointRecord, ...]
    x: tuple[float, ...]
    groups: tuple[Hashable, ...]

    def fit(self) -> GroupFit | None:
        return fit_within_groups(self.x, [r.sigma for r in self.rows], self.groups)


def _usable(r: CheckpointRecord) -> bool:
    return r.in_fit and math.isfinite(r.sigma) and r.sigma > 0


def _series(rows: Sequence[CheckpointRecord], blocks: bool, scope: str) -> _Series:
    if blocks:
        rows = [r for r in rows if r.block is not None]
        return _Series(
            scope,
            tuple(rows),
            tuple(-float(r.block or 0) for r in rows),
            tuple((r.position, r.segment) for r in rows),
        )
    return _Series(
        scope, tuple(rows), tuple(-float(r.index) for r in rows), tuple(r.segment for r in rows)
    )


def _fit_record(
    label: str, series: _Series, fit: GroupFit | None, verdict: str | None, note: str = ""
) -> CheckpointSummaryRecord:
    rows = [series.rows[i] for i in fit.used] if fit else list(series.rows)
    indices = [r.index for r in rows] or [0]
    if fit is not None and fit.dof < 1:
        note = "; ".join(x for x in (note, f"rests on {fit.n} points: no interval") if x)
    return CheckpointSummaryRecord(
        checkpoint=label,
        scope=series.scope,
        verdict=verdict,
        from_index=min(indices),
        to_index=max(indices),
        n_layers=fit.n if fit else len(rows),
        segments=fit.groups if fit else None,
        rate_per_layer=fit.rate if fit else None,
        rate_ci_low=fit.ci_low if fit else None,
        rate_ci_high=fit.ci_high if fit else None,
        ci_method=f"t ({fit.dof} df)" if fit and fit.dof >= 1 else None,
        growth_per_layer=fit.rate - 1.0 if fit else None,
        r_squared=fit.r_squared if fit else None,
        sigma_ratio=None,
        note=note,
    )


def _ratio(
    label: str, scope: str, a: CheckpointRecord, b: CheckpointRecord
) -> CheckpointSummaryRecord:
    return CheckpointSummaryRecord(
        label, scope, None, a.index, b.index, 2, None, None, None, None, None, None, None,
        b.sigma / a.sigma,
    )  # fmt: skip


def _headline(
    rows: Sequence[CheckpointRecord], usable: list[CheckpointRecord], blocks: bool
) -> tuple[_Series, GroupFit | None, str]:
    """The fit to read: within segments (per position for block nets); across the downsamples
    when no segment holds two fitted layers."""
    series = _series(usable, blocks, "per position" if blocks else "within segments")
    fit = series.fit()
    if fit is None and not blocks and len(usable) >= 2:
        across = _Series(
            "all layers", tuple(usable), tuple(-float(r.index) for r in usable), (0,) * len(usable)
        )
        return (
            across,
            across.fit(),
            (
                "every segment between downsamples holds one fitted layer: this fit runs across "
                "the downsamples"
            ),
        )
    note = "" if fit is not None else _why_no_fit(rows, usable, blocks)
    if fit is not None and fit.groups > 1:
        what = "stage and position" if blocks else "segment"
        note = f"one intercept per {what} ({fit.groups})"
    return series, fit, note


def _why_no_fit(
    rows: Sequence[CheckpointRecord], usable: list[CheckpointRecord], blocks: bool
) -> str:
    left_out = len([r for r in rows if not r.in_fit])
    if blocks and usable:
        return "no block position has two fitted layers in one stage"
    what = f"{len(usable)} fitted BatchNorm layer{'s' if len(usable) != 1 else ''}"
    return what + (f" ({left_out} left out)" if left_out else "")


def fit_checkpoint(rows: Sequence[CheckpointRecord]) -> CheckpointFits:
    """The fits of one checkpoint's records (module order), its verdict and sentence."""
    usable = [r for r in rows if _usable(r)]
    blocks = any(r.block is not None for r in rows)
    series, fit, note = _headline(rows, usable, blocks)
    untrained = bool(rows) and all("init" in r.flags.split(",") for r in rows)
    verdict = "untrained" if untrained else verdict_of(fit)
    label = rows[0].checkpoint if rows else ""
    head = _fit_record(label, series, fit, verdict, note)
    summary = [head]
    if blocks:
        for position in dict.fromkeys(r.position for r in usable if r.block is not None):
            one = _series(
                [r for r in usable if r.position == position], True, f"position {position}"
            )
            sub = one.fit()
            if sub is not None:
                summary.append(_fit_record(label, one, sub, verdict_of(sub), "per block"))
    else:
        summary.extend(_plain_extras(label, usable, series.scope))
    fitted = _fitted_sigma(series, fit, blocks)
    records = [dataclasses.replace(r, sigma_fit=fitted.get(r.index)) for r in rows]
    return CheckpointFits(summary, records, sentence(head, blocks))


def _plain_extras(
    label: str, usable: list[CheckpointRecord], headline: str
) -> list[CheckpointSummaryRecord]:
    """Per-segment fits, the fit across downsamples, the σ ratio across each downsample and
    the largest jumps between consecutive fitted layers within a segment."""
    out = []
    segments = list(dict.fromkeys(r.segment for r in usable))
    if len(segments) > 1:
        if headline != "all layers":
            every = _Series(
                "all layers", tuple(usable), tuple(-float(r.index) for r in usable),
                (0,) * len(usable),
            )  # fmt: skip
            fit = every.fit()
            out.append(_fit_record(label, every, fit, verdict_of(fit), "across the downsamples"))
        by_segment: dict[int, list[CheckpointRecord]] = {}
        for r in usable:
            by_segment.setdefault(r.segment, []).append(r)
        for k, members in by_segment.items():
            one = _series(members, False, f"segment {k}")
            fit = one.fit()
            if fit is not None:
                out.append(_fit_record(label, one, fit, verdict_of(fit)))
    pairs = list(zip(usable, usable[1:], strict=False))
    out.extend(_ratio(label, "downsample", a, b) for a, b in pairs if b.segment != a.segment)
    inside = [(a, b) for a, b in pairs if b.segment == a.segment]
    steps = sorted(inside, key=lambda p: -abs(math.log(p[1].sigma / p[0].sigma)))
    out.extend(_ratio(label, "jump", a, b) for a, b in steps[:JUMPS])
    return out


def _fitted_sigma(series: _Series, fit: GroupFit | None, blocks: bool) -> dict[int, float]:
    """σ on the headline fit's line at each layer that took part (record index → σ)."""
    if fit is None:
        return {}
    out = {}
    for i in fit.used:
        row, group = series.rows[i], series.groups[i]
        out[row.index] = math.exp(fit.intercepts[group] + fit.slope * series.x[i])
    return out


def summarize(records: Sequence[CheckpointRecord]) -> list[CheckpointSummaryRecord]:
    """The summary records of every checkpoint among ``records`` (headline fit first)."""
    out: list[CheckpointSummaryRecord] = []
    by_label: dict[str, list[CheckpointRecord]] = {}
    for r in records:
        by_label.setdefault(r.checkpoint, []).append(r)
    for rows in by_label.values():
        out.extend(fit_checkpoint(rows).summary)
    return out


# --------------------------------------------------------------------------------------------
# The verdict as one sentence


def sentence(head: CheckpointSummaryRecord, blocks: bool = False) -> str:
    """The headline fit's verdict as one plain sentence (what ``Verdict:`` prints)."""
    unit = "block" if blocks else "layer"
    where = f"BatchNorm layers {head.from_index}–{head.to_index}"
    if head.verdict == "untrained":
        return (
            "the running statistics are at their initial values (running_var 1, running_mean "
            "0): the checkpoint was never trained, so σ says nothing about its gradients."
        )
    if head.verdict == "too-few-layers" or head.rate_per_layer is None:
        why = head.note or f"{head.n_layers} fitted layers"
        return f"too few layers for a verdict: {why}."
    rate, low, high = head.rate_per_layer, head.rate_ci_low, head.rate_ci_high
    how = {
        "within segments": " within segments between downsamples"
        if (head.segments or 1) > 1
        else "",
        "per position": ", per block position within stages",
        "all layers": ", across the downsamples",
    }.get(head.scope, "")
    stats = f"95% t-interval {low:.3g}–{high:.3g}, R² {head.r_squared:.2f}"
    if head.verdict == "grows-toward-input":
        return (
            f"σ grows {rate:.3g}× per {unit} from deep to shallow over {where}{how} ({stats}): "
            f"{PAPER}."
        )
    if head.verdict == "shrinks-toward-input":
        return (
            f"σ shrinks toward the input, {rate:.3g}× per {unit} from deep to shallow over "
            f"{where}{how} ({stats}): the opposite of {PAPER}."
        )
    return (
        f"σ is flat: {rate:.3g}× per {unit} from deep to shallow over {where}{how} ({stats}); "
        "the interval contains 1, so no growth toward the input can be told from none."
    )
