"""The activation table: each g with its derivative g', in one entry (no torch at import).

Every entry holds the NumPy forward ``g`` and derivative ``dg`` used by the Gaussian
expectations, the kinks where g or g' is not smooth (quadrature splits there), a closed form
where one exists (piecewise-linear activations), and the PyTorch functional used by
``simulate`` (imported lazily). Parameters follow PyTorch's defaults and are written
``name:value`` on the command line (``leaky_relu:0.2``, ``elu:0.5``, ``softplus:2``).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from gradscope.errors import SpecError, UsageError

Array = np.ndarray
Func = Callable[[Array, float], Array]

SELU_ALPHA = 1.6732632423543772848170429916717
SELU_SCALE = 1.0507009873554804934193349852946
GELU_TANH_C = math.sqrt(2.0 / math.pi)
SOFTPLUS_THRESHOLD = 20.0  # PyTorch's default: linear above beta*x > 20

_erf = np.frompyfunc(math.erf, 1, 1)
_erfc = np.frompyfunc(math.erfc, 1, 1)


def norm_cdf(x: Array) -> Array:
    """Standard normal CDF, accurate in both tails (erfc on the left)."""
    x = np.asarray(x, dtype=float)
    return np.asarray(0.5 * _erfc(-x / math.sqrt(2.0)), dtype=float)


def norm_pdf(x: Array) -> Array:
    x = np.asarray(x, dtype=float)
    return np.exp(-0.5 * x * x) / math.sqrt(2.0 * math.pi)


def _sigmoid(x: Array) -> Array:
    # exp of a non-positive number only: no overflow warnings in either tail.
    e = np.exp(-np.abs(x))
    return np.where(x >= 0, 1.0 / (1.0 + e), e / (1.0 + e))


def _softplus(x: Array, beta: float) -> Array:
    bx = beta * x
    return np.where(bx > SOFTPLUS_THRESHOLD, x, np.logaddexp(0.0, bx) / beta)


def _softplus_grad(x: Array, beta: float) -> Array:
    bx = beta * x
    return np.where(bx > SOFTPLUS_THRESHOLD, 1.0, _sigmoid(bx))


@dataclass(frozen=True)
class Piece:
    """g(x) = slope * x + intercept on [lo, hi): a piece of a piecewise-linear activation."""

    lo: float
    hi: float
    slope: float
    intercept: float


TorchForward = Callable[[Any, Any, float], Any]
TorchBackward = Callable[[Any, Any, Any, Any, float], Any]


@dataclass(frozen=True)
class Activation:
    """One table entry: g and g' side by side (numpy), with what the quadrature needs and the
    same pair in torch. Adding an activation is adding one entry (:func:`register`)."""

    name: str
    g: Func
    dg: Func
    description: str
    param_name: str | None = None
    default_param: float | None = None
    kinks: Callable[[float], tuple[float, ...]] = lambda p: ()
    pieces: Callable[[float], tuple[Piece, ...]] | None = None  # closed form when present
    # The same function and derivative in PyTorch: forward(F, x, p) with F =
    # torch.nn.functional, and backward(aten, grad, u, y, p) = grad·g'(u) with aten =
    # torch.ops.aten, y = g(u) the saved output (the fused kernels autograd itself calls).
    forward: TorchForward = lambda F, x, p: x
    backward: TorchBackward = lambda aten, g, u, y, p: g
    check_param: Callable[[float], str | None] = lambda p: None
    aliases: tuple[str, ...] = field(default_factory=tuple)


def _positive(what: str) -> Callable[[float], str | None]:
    return lambda p: None if p > 0 else f"{what} must be positive, got {p:g}"


def _relu_pieces(_: float) -> tuple[Piece, ...]:
    return (Piece(-math.inf, 0.0, 0.0, 0.0), Piece(0.0, math.inf, 1.0, 0.0))


def _leaky_pieces(a: float) -> tuple[Piece, ...]:
    return (Piece(-math.inf, 0.0, a, 0.0), Piece(0.0, math.inf, 1.0, 0.0))


def _clip_pieces(lo: float, hi: float) -> tuple[Piece, ...]:
    return (
        Piece(-math.inf, lo, 0.0, lo),
        Piece(lo, hi, 1.0, 0.0),
        Piece(hi, math.inf, 0.0, hi),
    )


def _hardswish(x: Array, _: float) -> Array:
    return x * np.clip(x + 3.0, 0.0, 6.0) / 6.0


def _hardswish_grad(x: Array, _: float) -> Array:
    return np.where(x < -3.0, 0.0, np.where(x > 3.0, 1.0, (2.0 * x + 3.0) / 6.0))


def _gelu(x: Array, _: float) -> Array:
    return x * norm_cdf(x)


def _gelu_grad(x: Array, _: float) -> Array:
    return norm_cdf(x) + x * norm_pdf(x)


def _gelu_tanh(x: Array, _: float) -> Array:
    return 0.5 * x * (1.0 + np.tanh(GELU_TANH_C * (x + 0.044715 * x**3)))


def _gelu_tanh_grad(x: Array, _: float) -> Array:
    t = np.tanh(GELU_TANH_C * (x + 0.044715 * x**3))
    return 0.5 * (1.0 + t) + 0.5 * x * (1.0 - t * t) * GELU_TANH_C * (1.0 + 3 * 0.044715 * x * x)


def _mish(x: Array, _: float) -> Array:
    return x * np.tanh(_softplus(x, 1.0))


def _mish_grad(x: Array, _: float) -> Array:
    t = np.tanh(_softplus(x, 1.0))
    return t + x * _sigmoid(x) * (1.0 - t * t)


def _elu(x: Array, a: float) -> Array:
    return np.where(x > 0, x, a * np.expm1(np.minimum(x, 0.0)))


def _elu_grad(x: Array, a: float) -> Array:
    return np.where(x > 0, 1.0, a * np.exp(np.minimum(x, 0.0)))


def _celu(x: Array, a: float) -> Array:
    return np.where(x > 0, x, a * np.expm1(np.minimum(x, 0.0) / a))


def _celu_grad(x: Array, a: float) -> Array:
    return np.where(x > 0, 1.0, np.exp(np.minimum(x, 0.0) / a))


_TABLE: tuple[Activation, ...] = (
    Activation(
        "relu",
        lambda x, p: np.maximum(x, 0.0),
        lambda x, p: (x > 0).astype(float),
        "max(x, 0)",
        kinks=lambda p: (0.0,),
        pieces=_relu_pieces,
        forward=lambda F, x, p: F.relu(x),
        backward=lambda aten, g, u, y, p: aten.threshold_backward(g, y, 0),
    ),
    Activation(
        "leaky_relu",
        lambda x, a: np.where(x > 0, x, a * x),
        lambda x, a: np.where(x > 0, 1.0, a),
        "x for x > 0, slope·x otherwise",
        param_name="negative_slope",
        default_param=0.01,
        kinks=lambda p: (0.0,),
        pieces=_leaky_pieces,
        forward=lambda F, x, p: F.leaky_relu(x, p),
        backward=lambda aten, g, u, y, p: aten.leaky_relu_backward(g, u, p, False),
    ),
    Activation(
        "elu",
        _elu,
        _elu_grad,
        "x for x > 0, alpha·(exp(x) − 1) otherwise",
        param_name="alpha",
        default_param=1.0,
        kinks=lambda p: (0.0,),
        forward=lambda F, x, p: F.elu(x, p),
        backward=lambda aten, g, u, y, p: aten.elu_backward(g, p, 1, 1, False, u),
        check_param=lambda p: None if p >= 0 else f"elu alpha must be non-negative, got {p:g}",
    ),
    Activation(
        "selu",
        lambda x, p: SELU_SCALE * _elu(x, SELU_ALPHA),
        lambda x, p: SELU_SCALE * _elu_grad(x, SELU_ALPHA),
        "scale·elu(x, alpha) with PyTorch's constants",
        kinks=lambda p: (0.0,),
        forward=lambda F, x, p: F.selu(x),
        backward=lambda aten, g, u, y, p: aten.elu_backward(g, SELU_ALPHA, SELU_SCALE, 1, False, u),
    ),
    Activation(
        "celu",
        _celu,
        _celu_grad,
        "x for x > 0, alpha·(exp(x/alpha) − 1) otherwise",
        param_name="alpha",
        default_param=1.0,
        kinks=lambda p: (0.0,),
        forward=lambda F, x, p: F.celu(x, p),
        backward=lambda aten, g, u, y, p: aten.elu_backward(g, p, 1, 1.0 / p, False, u),
        check_param=_positive("celu alpha"),
    ),
    Activation(
        "gelu",
        _gelu,
        _gelu_grad,
        "x·Φ(x) (exact erf form)",
        forward=lambda F, x, p: F.gelu(x),
        backward=lambda aten, g, u, y, p: aten.gelu_backward(g, u),
    ),
    Activation(
        "gelu_tanh",
        _gelu_tanh,
        _gelu_tanh_grad,
        "GELU, tanh approximation",
        forward=lambda F, x, p: F.gelu(x, approximate="tanh"),
        backward=lambda aten, g, u, y, p: aten.gelu_backward(g, u, approximate="tanh"),
    ),
    Activation(
        "silu",
        lambda x, p: x * _sigmoid(x),
        lambda x, p: _sigmoid(x) * (1.0 + x * (1.0 - _sigmoid(x))),
        "x·sigmoid(x)",
        forward=lambda F, x, p: F.silu(x),
        backward=lambda aten, g, u, y, p: aten.silu_backward(g, u),
        aliases=("swish",),
    ),
    Activation(
        "mish",
        _mish,
        _mish_grad,
        "x·tanh(softplus(x))",
        forward=lambda F, x, p: F.mish(x),
        backward=lambda aten, g, u, y, p: aten.mish_backward(g, u),
    ),
    Activation(
        "softplus",
        _softplus,
        _softplus_grad,
        "log(1 + exp(beta·x))/beta, linear above 20",
        param_name="beta",
        default_param=1.0,
        kinks=lambda b: (SOFTPLUS_THRESHOLD / b,),
        forward=lambda F, x, p: F.softplus(x, beta=p),
        backward=lambda aten, g, u, y, p: aten.softplus_backward(g, u, p, SOFTPLUS_THRESHOLD),
        check_param=_positive("softplus beta"),
    ),
    Activation(
        "tanh",
        lambda x, p: np.tanh(x),
        lambda x, p: 1.0 - np.tanh(x) ** 2,
        "tanh(x)",
        forward=lambda F, x, p: x.tanh(),
        backward=lambda aten, g, u, y, p: aten.tanh_backward(g, y),
    ),
    Activation(
        "sigmoid",
        lambda x, p: _sigmoid(x),
        lambda x, p: _sigmoid(x) * (1.0 - _sigmoid(x)),
        "1/(1 + exp(−x))",
        forward=lambda F, x, p: x.sigmoid(),
        backward=lambda aten, g, u, y, p: aten.sigmoid_backward(g, y),
    ),
    Activation(
        "hardtanh",
        lambda x, a: np.clip(x, -a, a),
        lambda x, a: (np.abs(x) < a).astype(float),
        "clip(x, −a, a)",
        param_name="max_val",
        default_param=1.0,
        kinks=lambda a: (-a, a),
        pieces=lambda a: _clip_pieces(-a, a),
        forward=lambda F, x, p: F.hardtanh(x, -p, p),
        backward=lambda aten, g, u, y, p: aten.hardtanh_backward(g, u, -p, p),
        check_param=_positive("hardtanh max_val"),
    ),
    Activation(
        "hardswish",
        _hardswish,
        _hardswish_grad,
        "x·relu6(x + 3)/6",
        kinks=lambda p: (-3.0, 3.0),
        forward=lambda F, x, p: F.hardswish(x),
        backward=lambda aten, g, u, y, p: aten.hardswish_backward(g, u),
    ),
    Activation(
        "relu6",
        lambda x, p: np.clip(x, 0.0, 6.0),
        lambda x, p: ((x > 0) & (x < 6.0)).astype(float),
        "min(max(x, 0), 6)",
        kinks=lambda p: (0.0, 6.0),
        pieces=lambda p: _clip_pieces(0.0, 6.0),
        forward=lambda F, x, p: F.relu6(x),
        backward=lambda aten, g, u, y, p: aten.hardtanh_backward(g, u, 0.0, 6.0),
    ),
    Activation(
        "softsign",
        lambda x, p: x / (1.0 + np.abs(x)),
        lambda x, p: 1.0 / (1.0 + np.abs(x)) ** 2,
        "x/(1 + |x|)",
        kinks=lambda p: (0.0,),
        forward=lambda F, x, p: F.softsign(x),
        backward=lambda aten, g, u, y, p: g / (1.0 + u.abs()).square(),
    ),
    Activation(
        "identity",
        lambda x, p: np.asarray(x, dtype=float),
        lambda x, p: np.ones_like(x),
        "x (a linear network)",
        pieces=lambda p: (Piece(-math.inf, math.inf, 1.0, 0.0),),
        forward=lambda F, x, p: x,
        backward=lambda aten, g, u, y, p: g,
        aliases=("linear",),
    ),
)

ACTIVATIONS: dict[str, Activation] = {a.name: a for a in _TABLE}
ALIASES: dict[str, str] = {alias: a.name for a in _TABLE for alias in a.aliases}


def register(activation: Activation) -> None:
    """Add an activation to the table: ``ratios``, ``simulate`` and the predictions then know
    it by its name (and aliases)."""
    if activation.name in ACTIVATIONS or activation.name in ALIASES:
        raise SpecError(f"an activation named {activation.name!r} exists already")
    ACTIVATIONS[activation.name] = activation
    ALIASES.update({alias: activation.name for alias in activation.aliases})


# The default `gradscope ratios` table: the activations people actually use.
COMMON = (
    "relu",
    "leaky_relu",
    "elu",
    "selu",
    "gelu",
    "silu",
    "mish",
    "softplus",
    "tanh",
    "sigmoid",
    "hardswish",
    "softsign",
    "identity",
)


@dataclass(frozen=True)
class ActivationSpec:
    """An activation with its parameter resolved: ``leaky_relu:0.2`` → (leaky_relu, 0.2)."""

    name: str
    param: float

    @property
    def entry(self) -> Activation:
        return ACTIVATIONS[self.name]

    @property
    def label(self) -> str:
        """Canonical text: the bare name at PyTorch's default, ``name:value`` otherwise."""
        entry = self.entry
        if entry.param_name is None or self.param == entry.default_param:
            return self.name
        return f"{self.name}:{self.param:g}"

    def g(self, x: Array) -> Array:
        return self.entry.g(np.asarray(x, dtype=float), self.param)

    def dg(self, x: Array) -> Array:
        return self.entry.dg(np.asarray(x, dtype=float), self.param)

    def kinks(self) -> tuple[float, ...]:
        return self.entry.kinks(self.param)

    def pieces(self) -> tuple[Piece, ...] | None:
        return None if self.entry.pieces is None else self.entry.pieces(self.param)

    def torch_forward(self, functional: Any) -> Callable[[Any], Any]:
        """x ↦ g(x) in torch; ``functional`` is ``torch.nn.functional``."""
        forward, p = self.entry.forward, self.param
        return lambda x: forward(functional, x, p)

    def torch_backward(self, aten: Any) -> Callable[[Any, Any, Any], Any]:
        """``back(grad, u, y)`` = grad·g'(u) in torch; ``aten`` is ``torch.ops.aten``."""
        backward, p = self.entry.backward, self.param
        return lambda g, u, y: backward(aten, g, u, y, p)


def known_names() -> list[str]:
    return sorted([*ACTIVATIONS, *ALIASES])


def parse_activation(text: str) -> ActivationSpec:
    """Parse ``name`` or ``name:value`` into a spec with PyTorch's default parameter.

    Raises:
        SpecError: unknown name, a parameter for an activation that takes none, or a bad value.
    """
    raw = text.strip()
    name, sep, value = raw.partition(":")
    name = name.strip().lower().replace("-", "_")
    name = ALIASES.get(name, name)
    if name not in ACTIVATIONS:
        import difflib

        close = difflib.get_close_matches(name, known_names(), n=1)
        hint = f" (did you mean {close[0]}?)" if close else ""
        raise UsageError(
            f"unknown activation {raw!r}{hint}; known: {', '.join(known_names())}; "
            "`gradscope ratios --expr` takes any expression in x"
        )
    entry = ACTIVATIONS[name]
    if not sep:
        return ActivationSpec(name, entry.default_param if entry.default_param is not None else 0.0)
    if entry.param_name is None:
        raise SpecError(f"activation {name} takes no parameter, got {raw!r}")
    try:
        param = float(value)
    except ValueError:
        raise UsageError(
            f"the {entry.param_name} of {name} must be a number, got {value.strip()!r}"
        ) from None
    if not math.isfinite(param):
        raise SpecError(f"the {entry.param_name} of {name} must be finite, got {value.strip()!r}")
    problem = entry.check_param(param)
    if problem:
        raise SpecError(problem)
    return ActivationSpec(name, param)
