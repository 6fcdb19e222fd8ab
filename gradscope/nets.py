"""Synthetic architectures for ``simulate``: their options, their specs and their random draws.

A :class:`NetSpec` fixes one configuration (architecture, activation, normalisation,
initialisation, sizes). :func:`draw_repeat` draws one repeat's weights, input and output
derivative from a generator seeded by (seed, configuration, repeat index) only, so a
repeat's numbers never depend on which other repeats ran, in which order or in which chunk.

The enums are imported by the CLI without torch; torch is imported inside the functions.
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass
from enum import Enum
from typing import TYPE_CHECKING, Any

from gradscope.activations import ActivationSpec
from gradscope.errors import SpecError

if TYPE_CHECKING:
    import torch


class Arch(str, Enum):
    plain = "plain"
    resnet = "resnet"


class Norm(str, Enum):
    batchnorm = "batchnorm"
    layernorm = "layernorm"
    none = "none"


class Init(str, Enum):
    auto = "auto"
    he = "he"
    lecun = "lecun"
    xavier_normal = "xavier-normal"
    xavier_uniform = "xavier-uniform"
    truncated_normal = "truncated-normal"
    orthogonal = "orthogonal"
    identity = "identity"


class ResidualScale(str, Enum):
    none = "none"
    invsqrt_depth = "invsqrt-depth"
    zero_gamma = "zero-gamma"


class Dtype(str, Enum):
    float32 = "float32"
    float64 = "float64"


class Device(str, Enum):
    auto = "auto"
    cpu = "cpu"
    cuda = "cuda"


NORM_EPS = 1e-5  # PyTorch's BatchNorm1d / LayerNorm default
# Truncated at ±2σ, a standard normal keeps this std; dividing by it restores the variance
# (TensorFlow's variance_scaling does the same).
TRUNC_STD = 0.87962566103423978


def resolve_init(init: Init, activation: ActivationSpec) -> Init:
    """``auto`` is the paper's choice: LeCun for SELU (its authors require it), He otherwise."""
    if init is not Init.auto:
        return init
    return Init.lecun if activation.name == "selu" else Init.he


def weight_variance_scale(init: Init, width: int) -> float:
    """σ_w² = fan_in · Var[w] before the gain (He 2, LeCun 1, Xavier 1 for square layers)."""
    return {
        Init.he: 2.0,
        Init.truncated_normal: 2.0,
        Init.lecun: 1.0,
        Init.xavier_normal: 2.0 * width / (width + width),
        Init.xavier_uniform: 2.0 * width / (width + width),
        Init.orthogonal: 1.0,
        Init.identity: 1.0,
    }[init]


@dataclass(frozen=True)
class NetSpec:
    """One configuration of the synthetic network.

    ``init`` is already resolved (never ``auto``); ``residual_scale`` is ``none`` for plain nets.
    """

    arch: Arch
    activation: ActivationSpec
    norm: Norm
    init: Init
    gain: float
    depth: int
    width: int
    batch: int
    residual_scale: ResidualScale = ResidualScale.none

    def __post_init__(self) -> None:
        validate(self)

    @property
    def sigma_w2(self) -> float:
        """Mean-field weight variance σ_w² (fan_in · Var[w], gain included)."""
        return self.gain**2 * weight_variance_scale(self.init, self.width)

    @property
    def weight_std(self) -> float:
        """Standard deviation of one weight (for the Gaussian inits)."""
        return math.sqrt(self.sigma_w2 / self.width)

    @property
    def branch_scale(self) -> float:
        """Multiplier of the residual branch's normalised output (γ of its last norm)."""
        if self.arch is not Arch.resnet or self.residual_scale is ResidualScale.none:
            return 1.0
        if self.residual_scale is ResidualScale.zero_gamma:
            return 0.0
        return 1.0 / math.sqrt(self.depth // 2)

    def key(self) -> str:
        """Text that identifies the configuration in the per-repeat seed."""
        return "|".join(
            [
                self.arch.value,
                self.activation.label,
                self.norm.value,
                self.init.value,
                repr(float(self.gain)),
                str(self.depth),
                str(self.width),
                str(self.batch),
                self.residual_scale.value,
            ]
        )


def validate(spec: NetSpec) -> None:
    """Raise SpecError with one sentence for an impossible configuration."""
    if spec.init is Init.auto:
        raise SpecError("internal: resolve --init auto before building a NetSpec")
    if spec.depth < 1:
        raise SpecError(f"depth must be at least 1, got {spec.depth}")
    if spec.width < 1:
        raise SpecError(f"width must be at least 1, got {spec.width}")
    if spec.batch < 1:
        raise SpecError(f"batch must be at least 1, got {spec.batch}")
    if spec.norm is Norm.batchnorm and spec.batch < 2:
        raise SpecError(f"batchnorm needs a batch of at least 2, got {spec.batch}")
    if spec.norm is Norm.layernorm and spec.width < 2:
        raise SpecError(f"layernorm needs a width of at least 2, got {spec.width}")
    if not (math.isfinite(spec.gain) and spec.gain > 0):
        raise SpecError(f"gain must be a positive number, got {spec.gain:g}")
    if spec.arch is Arch.resnet and spec.depth % 2:
        raise SpecError(
            f"a resnet has a skip every two layers, so its depth must be even, got {spec.depth}"
        )
    if spec.arch is Arch.plain and spec.residual_scale is not ResidualScale.none:
        raise SpecError(
            f"--residual-scale {spec.residual_scale.value} applies to --arch resnet only"
        )
    if spec.residual_scale is ResidualScale.zero_gamma and spec.norm is Norm.none:
        raise SpecError(
            "--residual-scale zero-gamma zeroes the γ of the branch's last norm layer; "
            "with --norm none there is none"
        )


def repeat_seed(seed: int, spec: NetSpec, repeat: int) -> int:
    """The seed of one repeat's generator: a hash of (seed, configuration, repeat index)."""
    text = f"gradscope-simulate|{seed}|{spec.key()}|{repeat}".encode()
    return int.from_bytes(hashlib.blake2b(text, digest_size=8).digest(), "little") >> 1


@dataclass
class RepeatDraw:
    """One repeat's random numbers.

    Shapes: ``weights`` (depth, width, width) with y = x @ W.T, ``x`` (batch, width),
    ``dy`` (batch, width) the derivative of the loss at the last layer's output.
    """

    weights: torch.Tensor
    x: torch.Tensor
    dy: torch.Tensor


def torch_dtype(dtype: Dtype) -> Any:
    import torch

    return torch.float32 if dtype is Dtype.float32 else torch.float64


def resolve_device(device: Device) -> str:
    """``auto`` is CUDA when present, else CPU; asking for CUDA without one is an error."""
    import torch

    if device is Device.auto:
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device is Device.cuda and not torch.cuda.is_available():
        raise SpecError("--device cuda was asked for, but PyTorch sees no CUDA device")
    return device.value


def draw_repeat(
    spec: NetSpec,
    seed: int,
    repeat: int,
    dtype: Dtype = Dtype.float32,
    device: str = "cpu",
    out: RepeatDraw | None = None,
) -> RepeatDraw:
    """Draw one repeat: weights (in draw order, layer 1 first), then input, then derivative.

    ``out`` reuses preallocated tensors (no allocation per repeat).
    """
    import torch

    tdt = torch_dtype(dtype)
    depth, width, batch = spec.depth, spec.width, spec.batch
    if out is None:
        out = RepeatDraw(
            weights=torch.empty(depth, width, width, dtype=tdt, device=device),
            x=torch.empty(batch, width, dtype=tdt, device=device),
            dy=torch.empty(batch, width, dtype=tdt, device=device),
        )
    gen = torch.Generator(device=device)
    gen.manual_seed(repeat_seed(seed, spec, repeat))
    _draw_weights(spec, out.weights, gen)
    out.x.normal_(0.0, 1.0, generator=gen)
    out.dy.normal_(0.0, 1.0 / math.sqrt(width), generator=gen)
    return out


def _draw_weights(spec: NetSpec, w: torch.Tensor, gen: torch.Generator) -> None:
    import torch

    init, width = spec.init, spec.width
    if init in (Init.he, Init.lecun, Init.xavier_normal):
        w.normal_(0.0, spec.weight_std, generator=gen)
    elif init is Init.xavier_uniform:
        limit = spec.gain * math.sqrt(6.0 / (width + width))
        w.uniform_(-limit, limit, generator=gen)
    elif init is Init.truncated_normal:
        # Inverse CDF of N(0,1) on [-2, 2]: one uniform per weight, no rejection loop.
        lo = 0.5 * math.erfc(2.0 / math.sqrt(2.0))
        w.uniform_(lo, 1.0 - lo, generator=gen)
        torch.special.ndtri(w, out=w)
        w.mul_(spec.weight_std / TRUNC_STD)
    elif init is Init.orthogonal:
        # As nn.init.orthogonal_: QR of a Gaussian matrix, signs fixed by diag(R).
        w.normal_(0.0, 1.0, generator=gen)
        q, r = torch.linalg.qr(w)
        q = q * torch.sign(torch.diagonal(r, dim1=-2, dim2=-1)).unsqueeze(-2)
        w.copy_(q).mul_(spec.gain)
    elif init is Init.identity:
        w.zero_()
        w.diagonal(dim1=-2, dim2=-1).fill_(spec.gain)
    else:  # pragma: no cover - resolve_init removes auto
        raise SpecError(f"unsupported init {init.value}")
