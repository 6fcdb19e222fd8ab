"""Gradient-growth gates: fail a build or a test when gradients grow too fast at initialisation.

``gradscope simulate ... --fail-if-rate-above 1.15`` exits 3 with one ``Gate:`` line per
failing configuration; :func:`assert_gradient_growth` does the same from a pytest suite,
raising ``AssertionError`` with the per-layer table.

The verdict is conservative, so that noise alone never fails a build:

- rate: a configuration fails when the lower end of the 95% CI of its fitted per-layer growth
  rate (``fitted_rate_ci_low``, bootstrap over repeats) is above the threshold;
- amplification (first layer's mean gradient norm over the last layer's): when the lower end
  of the first layer's 95% CI divided by the upper end of the last layer's is above it. Each
  interval misses with probability 0.05, so the bound holds with probability at least 0.90;
- gradient norms that overflowed to inf/NaN fail at any threshold.

For ``--model`` the gate reads the summary of the whole model (``path`` = ``all``: every weight
layer in execution order); the branch and main+skip summaries are reported, not gated.

Imports no torch until :func:`assert_gradient_growth` runs a model.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from gradscope.errors import SpecError
from gradscope.records import Row, as_row
from gradscope.schema import Result, Role, roles

MOST_GROWING = 3  # layers named in a Gate line


def check_thresholds(
    max_rate: float | None,
    max_amplification: float | None,
    *,
    names: tuple[str, str] = ("fail_if_rate_above", "fail_if_amplification_above"),
    required: bool = False,
) -> None:
    """Thresholds are positive finite numbers (``names``: the options that gave them).

    Raises:
        SpecError: a threshold ≤ 0, infinite or NaN (or none given when ``required``).
    """
    for name, value in zip(names, (max_rate, max_amplification), strict=True):
        if value is not None and not (math.isfinite(value) and value > 0):
            raise SpecError(
                f"{{option}} must be a positive finite number, got {value}", option=name
            )
    if required and max_rate is None and max_amplification is None:
        raise SpecError(f"give {names[0]}, {names[1]} or both: the thresholds of the gate")


@dataclasses.dataclass(frozen=True)
class GateFailure:
    """One configuration above a threshold: what failed, and its layers."""

    label: str
    reasons: tuple[str, ...]
    layers: tuple[Row, ...]  # layer, (module,) grad_norm_mean, its CI, growth from the next

    def line(self) -> str:
        """``Gate: <configuration>: <reasons>; <the layers that grow most>``."""
        return f"Gate: {self.label}: {'; '.join(self.reasons)}; {most_growing(self.layers)}"

    def report(self) -> str:
        """The line and the per-layer table under it."""
        from gradscope.output import render_table

        return self.line() + "\n" + render_table(self.layers, title=self.label)


def _number(value: Any) -> float:
    return math.nan if value is None else float(value)


def most_growing(layers: Sequence[Row]) -> str:
    """The layers whose gradient norm grows most from the next layer's, largest first."""
    steps = [(row["growth"], row) for row in layers if _number(row.get("growth")) > 1]
    if not steps:
        return "no layer's gradient norm exceeds the next layer's"
    steps.sort(key=lambda item: -item[0])
    named = ", ".join(
        f"{row['module'] if 'module' in row else 'layer ' + str(row['layer'])} ×{growth:.3g}"
        for growth, row in steps[:MOST_GROWING]
    )
    return f"grows most into {named} (its norm over the next layer's)"


def layer_table(rows: Sequence[Row]) -> tuple[Row, ...]:
    """Per layer: the gradient norm, its 95% CI, and its growth from the next layer's."""
    table = []
    for i, row in enumerate(rows):
        mean = _number(row["grad_norm_mean"])
        after = _number(rows[i + 1]["grad_norm_mean"]) if i + 1 < len(rows) else math.nan
        entry: Row = {"layer": row["layer"]}
        if "module" in row:
            entry["module"] = row["module"]
        entry.update(
            grad_norm_mean=mean,
            grad_norm_ci_low=_number(row["grad_norm_ci_low"]),
            grad_norm_ci_high=_number(row["grad_norm_ci_high"]),
            growth=mean / after if after > 0 else math.nan,
        )
        table.append(entry)
    return tuple(table)


def _label(summary: Row) -> str:
    if "model" in summary:
        return str(summary["model"])
    text = (
        f"{summary['arch']} {summary['activation']} {summary['norm']} {summary['init']} "
        f"L={summary['depth']} width={summary['width']} batch={summary['batch']}"
    )
    if summary.get("image_size") is not None:
        text += f" image={summary['image_size']}"
    return text


def _shared_configuration(summary: Any, record: Any) -> list[str]:
    """The configuration columns a summary and its layer records share (they key the rows)."""
    mine, theirs = roles(type(summary)), roles(type(record))
    return [
        name
        for name, role in mine.items()
        if role is Role.configuration and theirs.get(name) is Role.configuration
    ]


def _layers_of(summary: Any, records: Sequence[Any]) -> list[Row]:
    if not records:
        return []
    keys = _shared_configuration(summary, records[0])
    want = [getattr(summary, k) for k in keys]
    rows = [as_row(r) for r in records if [getattr(r, k) for k in keys] == want]
    return sorted(rows, key=lambda row: row["layer"])


def _reasons(
    summary: Row, layers: Sequence[Row], max_rate: float | None, max_amp: float | None
) -> list[str]:
    """Why a configuration fails the gate (nothing when it passes)."""
    if summary.get("overflow_layer") is not None:
        return [f"gradient norms overflowed to inf/NaN from layer {summary['overflow_layer']}"]
    reasons = []
    rate, low, high = (_number(summary[k]) for k in
                       ("fitted_rate", "fitted_rate_ci_low", "fitted_rate_ci_high"))  # fmt: skip
    if max_rate is not None and low > max_rate:
        reasons.append(
            f"fitted rate {rate:.4f} [95% CI {low:.4f}, {high:.4f}]: its lower end is above "
            f"{max_rate:g}"
        )
    if max_amp is not None and layers:
        bound = amplification_lower_bound(layers)
        if bound > max_amp:
            reasons.append(
                f"amplification {_number(summary['amplification']):.4g} (at least {bound:.4g}: "
                f"the first layer's CI low over the last layer's CI high) is above {max_amp:g}"
            )
    return reasons


def amplification_lower_bound(layers: Sequence[Row]) -> float:
    """A conservative lower bound of the amplification (first layer's gradient norm over the
    last layer's): the first layer's 95% CI low over the last layer's 95% CI high."""
    low = _number(layers[0]["grad_norm_ci_low"])
    high = _number(layers[-1]["grad_norm_ci_high"])
    return low / high if high > 0 and math.isfinite(high) else math.nan


def _gated(result: Result) -> list[tuple[Row, list[Row]]]:
    """The summaries the gate judges, each with its layer records in layer order: every
    configuration, the whole model for ``--model`` (not its branch or main+skip path)."""
    out = []
    for summary in result.summary:
        row = as_row(summary)
        if row.get("path", "all") == "all" and "step" not in row:
            out.append((row, _layers_of(summary, result.records)))
    return out


def gate_failures(
    result: Result, *, max_rate: float | None = None, max_amplification: float | None = None
) -> list[GateFailure]:
    """The configurations of an engine result that fail the gate, in result order (see the
    module docstring for the rule)."""
    check_thresholds(max_rate, max_amplification)
    failures = []
    for row, layers in _gated(result):
        reasons = _reasons(row, layers, max_rate, max_amplification)
        if reasons:
            failures.append(GateFailure(_label(row), tuple(reasons), layer_table(layers)))
    return failures


def gate_passed(
    result: Result, *, max_rate: float | None = None, max_amplification: float | None = None
) -> str:
    """One line for a result that passes: how close its worst configuration came."""
    gated = _gated(result)
    parts = []
    if max_rate is not None:
        lows = [_number(row["fitted_rate_ci_low"]) for row, _ in gated]
        parts.append(f"highest fitted-rate CI low {_highest(lows):.4f} ≤ {max_rate:g}")
    if max_amplification is not None:
        bounds = [amplification_lower_bound(layers) for _, layers in gated if layers]
        parts.append(f"highest amplification bound {_highest(bounds):.4g} ≤ {max_amplification:g}")
    unjudged = sum(not math.isfinite(_number(row["fitted_rate_ci_low"])) for row, _ in gated)
    if unjudged:
        parts.append(f"{unjudged} without a confidence interval, not judged")
    count = f"{len(gated)} configuration{'s' if len(gated) != 1 else ''}"
    return f"Gate passed: {count}; {', '.join(parts)}"


def _highest(values: Sequence[float]) -> float:
    finite = [v for v in values if math.isfinite(v)]
    return max(finite) if finite else math.nan


def _factory_label(factory: Callable[..., Any]) -> str:
    module = getattr(factory, "__module__", None) or "<unknown>"
    name = getattr(factory, "__qualname__", None) or type(factory).__name__
    return f"{module}:{name}"


def assert_gradient_growth(
    factory: Callable[..., Any] | str,
    *,
    input_shape: Sequence[int] | str,
    max_rate: float | None = None,
    max_amplification: float | None = None,
    repeats: int = 16,
    seed: int = 0,
    batch: int = 128,
    model_args: Mapping[str, Any] | None = None,
    dtype: str = "float32",
    device: str = "auto",
    reinit: str = "auto",
) -> Result:
    """Fail (``AssertionError``, with the per-layer table) when the model's gradients grow
    faster than ``max_rate`` per layer, or more than ``max_amplification`` from the last layer
    to the first, at initialisation; the same rule as ``simulate --fail-if-rate-above``.

    Args:
        factory: a callable returning an ``nn.Module``, or ``"file.py:function"`` /
            ``"module:function"`` as ``simulate --model`` takes.
        input_shape: one sample's shape, e.g. ``(3, 32, 32)`` or ``"3,32,32"``.
        repeats, seed, batch, model_args, dtype, device, reinit: as ``simulate --model``.

    Returns:
        The run's records and summaries, when the model passes.

    Raises:
        AssertionError: a threshold is exceeded.
        SpecError, ModelError: bad options, or a model that cannot be built or run.
    """
    check_thresholds(
        max_rate, max_amplification, names=("max_rate", "max_amplification"), required=True
    )
    if repeats < 2:
        raise SpecError(f"the gate needs repeats ≥ 2 for its confidence intervals, got {repeats}")
    from gradscope.engine.user_model import run
    from gradscope.specs import ModelRequest, ModelSpec, parse_input_shape

    shape = (
        parse_input_shape(input_shape)
        if isinstance(input_shape, str)
        else tuple(int(v) for v in input_shape)
    )
    target = factory if isinstance(factory, str) else _factory_label(factory)
    spec = ModelSpec(target, dict(model_args or {}), shape)
    request = ModelRequest(spec, batch, repeats, dtype, device, reinit)  # type: ignore[arg-type]
    result = run(request, seed=seed, factory=None if isinstance(factory, str) else factory)
    failures = gate_failures(result, max_rate=max_rate, max_amplification=max_amplification)
    if failures:
        raise AssertionError("\n\n".join(failure.report() for failure in failures))
    return result
