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
from typing import TYPE_CHECKING, Any

from gradscope.activations import ActivationSpec
from gradscope.errors import SpecError
from gradscope.options import Arch, Device, Dtype, Init, Norm, NormPosition, ResidualScale

if TYPE_CHECKING:
    import torch


NORM_EPS = 1e-5
CONV_KERNEL = 3  # 3×3 convolutions, stride 1, zero padding 1 (the spatial size is kept)
DEFAULT_IMAGE_SIZE = 32  # PyTorch's BatchNorm1d / LayerNorm default
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
    norm_position: NormPosition = NormPosition.post
    # Conv archs only (0 for the MLPs): input images are image_size × image_size; a 2×2
    # max-pool follows every pool_every-th layer (0: none; never after the last layer); with
    # double_channels the channel count doubles at each pool, as in VGG.
    image_size: int = 0
    pool_every: int = 0
    double_channels: bool = False

    def __post_init__(self) -> None:
        validate(self)

    @property
    def pools_after(self) -> tuple[int, ...]:
        """The layers (1-based) that a 2×2 max-pool follows."""
        if not self.pool_every:
            return ()
        return tuple(range(self.pool_every, self.depth, self.pool_every))

    @property
    def channels(self) -> tuple[int, ...]:
        """Channels (units for the MLPs) of the input, then of every layer's output: L+1 values."""
        out = [self.width]
        pools = set(self.pools_after)
        for layer in range(1, self.depth + 1):
            c = out[-1]
            if self.double_channels and (layer - 1) in pools:
                c *= 2  # the first conv after a pool doubles the channels
            out.append(c)
        return tuple(out)

    @property
    def spatial(self) -> tuple[int, ...]:
        """Positions (H·W) of every layer's conv output, layer 1 first (1 for the MLPs)."""
        if not self.arch.is_conv:
            return tuple(1 for _ in range(self.depth))
        size, out = self.image_size, []
        pools = set(self.pools_after)
        for layer in range(1, self.depth + 1):
            out.append(size * size)
            if layer in pools:
                size //= 2
        return tuple(out)

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
        """Multiplier of the residual branch's output: γ of its last norm (post-norm), or the
        factor on W2's output (pre-norm, where zero-γ is zero-initialised branch output)."""
        if not self.arch.is_resnet or self.residual_scale is ResidualScale.none:
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
            # Extra parts only when they differ from the MLP defaults, so the MLP seeds (and
            # outputs) are the same as before these options existed.
            + (
                [f"norm-position={self.norm_position.value}"]
                if self.norm_position.value != "post"
                else []
            )
            + (
                [
                    f"image={self.image_size}",
                    f"pool={self.pool_every}",
                    f"double={self.double_channels}",
                ]
                if self.arch.is_conv
                else []
            )
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
    if spec.arch.is_resnet and spec.depth % 2:
        raise SpecError(
            f"a resnet has a skip every two layers, so its depth must be even, got {spec.depth}"
        )
    if not spec.arch.is_resnet and spec.residual_scale is not ResidualScale.none:
        raise SpecError(
            f"--residual-scale {spec.residual_scale.value} applies to --arch resnet only"
        )
    if not spec.arch.is_resnet and spec.norm_position is not NormPosition.post:
        raise SpecError(
            f"--norm-position {spec.norm_position.value} applies to the resnet archs only, "
            f"not {spec.arch.value}"
        )
    _validate_conv(spec)
    if spec.residual_scale is ResidualScale.zero_gamma and spec.norm is Norm.none:
        raise SpecError(
            "--residual-scale zero-gamma zeroes the γ of the branch's last norm layer; "
            "with --norm none there is none"
        )


def _validate_conv(spec: NetSpec) -> None:
    if not spec.arch.is_conv:
        if spec.pool_every:
            raise SpecError(
                f"--pool-every {spec.pool_every} applies to the conv archs only, "
                f"not {spec.arch.value}"
            )
        if spec.image_size:
            raise SpecError(
                f"--image-size {spec.image_size} applies to the conv archs only, "
                f"not {spec.arch.value}"
            )
        if spec.double_channels:
            raise SpecError(
                f"doubling channels applies to the conv archs only, not {spec.arch.value}"
            )
        return
    if spec.image_size < 1:
        raise SpecError(f"image size must be at least 1, got {spec.image_size}")
    if spec.pool_every < 0:
        raise SpecError(f"--pool-every must be 0 (no pooling) or positive, got {spec.pool_every}")
    pools = len(spec.pools_after)
    if spec.image_size < 2**pools:
        raise SpecError(
            f"image size {spec.image_size} is too small for {pools} 2×2 max-pools "
            f"(every {spec.pool_every} of {spec.depth} layers); it needs at least {2**pools}"
        )
    if spec.arch is Arch.resnet_conv and spec.pool_every % 2:
        raise SpecError(
            f"--pool-every {spec.pool_every} would pool inside a residual block; "
            "use an even number with resnet-conv"
        )
    if spec.arch is Arch.resnet_conv and spec.double_channels:
        raise SpecError(
            "doubling channels at the pools needs projection shortcuts: plain-conv only"
        )
    if spec.norm is Norm.layernorm and spec.width * spec.image_size**2 < 2:
        raise SpecError("layernorm needs at least two values per sample")
    if spec.init in (Init.orthogonal, Init.identity):
        raise SpecError(f"--init {spec.init.value} is not available for the conv archs")


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
