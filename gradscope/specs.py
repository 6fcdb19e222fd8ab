"""What to run, validated once: network configurations and the engine's requests (no torch).

A :class:`NetSpec` fixes one synthetic configuration; :func:`build_specs` expands the options'
lists into the grid of them. The request dataclasses (:class:`SimulateRequest`,
:class:`TrainRequest`, :class:`ModelRequest`) carry everything else one engine run needs and
check it when they are built, so the engine and the CLI never validate the same thing twice.

Errors name the Python parameter (``depth must be at least 1``); the CLI shows the flag
instead (``--depth``), through :class:`~gradscope.errors.SpecError`'s ``option``.
"""

from __future__ import annotations

import ast
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path
from typing import Any, TypeVar

from gradscope.activations import ActivationSpec, parse_activation
from gradscope.errors import SpecError, UsageError
from gradscope.options import (
    Arch,
    Backend,
    Device,
    Dtype,
    Init,
    Norm,
    NormPosition,
    Optimizer,
    Reinit,
    ResidualScale,
    Task,
)

E = TypeVar("E", bound=Enum)

# Upfront bounds on the synthetic nets (the memory guard bounds width, batch and repeats):
# a layer costs about 1 ms a repeat on a CPU core whatever its width, so 10,000 layers is
# already minutes a repeat; a gain above 1e6 overflows float32 within six layers (and its
# square, float64 at 1.3e154).
MAX_DEPTH = 10_000
MAX_GAIN = 1e6


NORM_EPS = 1e-5
CONV_KERNEL = 3  # 3×3 convolutions, stride 1, zero padding 1 (the spatial size is kept)
DEFAULT_IMAGE_SIZE = 32  # PyTorch's BatchNorm1d / LayerNorm default
# Truncated at ±2σ, a standard normal keeps this std; dividing by it restores the variance
# (TensorFlow's variance_scaling does the same).
TRUNC_STD = 0.87962566103423978


def _as_list(value: Any) -> list[Any]:
    if isinstance(value, (list, tuple)):
        return list(value)
    return [value]


def coerce(kind: type[E], value: Any, option: str) -> E:
    """The member of ``kind`` that ``value`` names (a member, or its value in any case)."""
    try:
        return kind(value.value if isinstance(value, kind) else str(value).strip().lower())
    except ValueError:
        choices = ", ".join(m.value for m in kind)
        raise UsageError(
            f"unknown {{option}} {value!r}; choose from {choices}", option=option
        ) from None


def _applies_only(option: str, value: Any, archs: str) -> SpecError:
    """The one wording of an option given to an arch it does not apply to."""
    return SpecError(f"{{option}} {value} applies to the {archs} archs only", option=option)


def check_repeats(repeats: Any) -> int:
    """Repeats are a whole number of at least 1 (every engine request checks them here)."""
    if isinstance(repeats, bool) or not isinstance(repeats, int) or repeats < 1:
        raise SpecError(f"{{option}} must be at least 1, got {repeats!r}", option="repeats")
    return repeats


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


def conv_weight_std(spec: NetSpec, c_in: int, c_out: int) -> float:
    """The std of one weight of a c_in → c_out 3×3 conv (fan_in = 9·c_in), gain included."""
    k2 = CONV_KERNEL * CONV_KERNEL
    fan_in, fan_out = k2 * c_in, k2 * c_out
    scale = {
        Init.he: 2.0 / fan_in,
        Init.truncated_normal: 2.0 / fan_in,
        Init.lecun: 1.0 / fan_in,
        Init.xavier_normal: 2.0 / (fan_in + fan_out),
        Init.xavier_uniform: 2.0 / (fan_in + fan_out),
    }.get(spec.init)
    if scale is None:
        raise SpecError(
            f"{{option}} {spec.init.value} is not available for the conv archs", option="init"
        )
    return spec.gain * math.sqrt(scale)


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
        raise SpecError("internal: resolve init auto before building a NetSpec")
    if not 1 <= spec.depth <= MAX_DEPTH:
        raise SpecError(
            f"{{option}} must be from 1 to {MAX_DEPTH}, got {spec.depth}", option="depth"
        )
    if spec.width < 1:
        raise SpecError(f"width must be at least 1, got {spec.width}")
    if spec.batch < 1:
        raise SpecError(f"batch must be at least 1, got {spec.batch}")
    if spec.norm is Norm.batchnorm and spec.batch < 2:
        raise SpecError(f"batchnorm needs a batch of at least 2, got {spec.batch}")
    if spec.norm is Norm.layernorm and spec.width < 2:
        raise SpecError(f"layernorm needs a width of at least 2, got {spec.width}")
    if not (math.isfinite(spec.gain) and 0 < spec.gain <= MAX_GAIN):
        raise SpecError(
            f"{{option}} must be a positive number up to {MAX_GAIN:g}, got {spec.gain:g}",
            option="gain",
        )
    if spec.arch.is_resnet and spec.depth % 2:
        raise SpecError(
            f"a resnet has a skip every two layers, so its depth must be even, got {spec.depth}"
        )
    if not spec.arch.is_resnet and spec.residual_scale is not ResidualScale.none:
        raise _applies_only("residual_scale", spec.residual_scale.value, "resnet")
    if not spec.arch.is_resnet and spec.norm_position is not NormPosition.post:
        raise _applies_only("norm_position", spec.norm_position.value, "resnet")
    _validate_conv(spec)
    if spec.residual_scale is ResidualScale.zero_gamma and spec.norm is Norm.none:
        raise SpecError(
            "{option} zero-gamma zeroes the γ of the branch's last norm layer; "
            "with norm none there is none",
            option="residual_scale",
        )


def _validate_conv(spec: NetSpec) -> None:
    if not spec.arch.is_conv:
        if spec.pool_every:
            raise _applies_only("pool_every", spec.pool_every, "conv")
        if spec.image_size:
            raise _applies_only("image_size", spec.image_size, "conv")
        if spec.double_channels:
            raise SpecError("{option} applies to the conv archs only", option="double_channels")
        return
    if spec.image_size < 1:
        raise SpecError(f"image size must be at least 1, got {spec.image_size}")
    if spec.pool_every < 0:
        raise SpecError(
            f"{{option}} must be 0 (no pooling) or positive, got {spec.pool_every}",
            option="pool_every",
        )
    pools = len(spec.pools_after)
    if spec.image_size < 2**pools:
        raise SpecError(
            f"image size {spec.image_size} is too small for {pools} 2×2 max-pools "
            f"(every {spec.pool_every} of {spec.depth} layers); it needs at least {2**pools}"
        )
    if spec.arch is Arch.resnet_conv and spec.pool_every % 2:
        raise SpecError(
            f"{{option}} {spec.pool_every} would pool inside a residual block; "
            "use an even number with resnet-conv",
            option="pool_every",
        )
    if spec.arch is Arch.resnet_conv and spec.double_channels:
        raise SpecError(
            "doubling channels at the pools needs projection shortcuts: plain-conv only"
        )
    if spec.norm is Norm.layernorm and spec.width * spec.image_size**2 < 2:
        raise SpecError("layernorm needs at least two values per sample")
    if spec.init in (Init.orthogonal, Init.identity):
        raise SpecError(
            f"{{option}} {spec.init.value} is not available for the conv archs", option="init"
        )


def build_specs(
    *,
    arch: Arch | str | Sequence[Arch | str] = Arch.plain,
    activation: str | ActivationSpec | Sequence[str | ActivationSpec] = "relu",
    norm: Norm | str | Sequence[Norm | str] = Norm.batchnorm,
    init: Init | str | Sequence[Init | str] = Init.auto,
    gain: float = 1.0,
    depth: int | Sequence[int] = 20,
    width: int | Sequence[int] = 256,
    batch: int | Sequence[int] = 128,
    residual_scale: ResidualScale | str = ResidualScale.none,
    norm_position: NormPosition | str | Sequence[NormPosition | str] = NormPosition.post,
    image_size: int | None = None,
    pool_every: int | None = None,
    double_channels: bool = False,
) -> list[NetSpec]:
    """The grid of configurations (activation, norm, arch, init, depth, width, batch order)."""
    archs = [coerce(Arch, a, "arch") for a in _as_list(arch)]
    acts = [
        a if isinstance(a, ActivationSpec) else parse_activation(a) for a in _as_list(activation)
    ]
    norms = [coerce(Norm, n, "norm") for n in _as_list(norm)]
    inits = [coerce(Init, i, "init") for i in _as_list(init)]
    rscale = coerce(ResidualScale, residual_scale, "residual_scale")
    positions = [coerce(NormPosition, p, "norm_position") for p in _as_list(norm_position)]
    resnets = [a for a in archs if a.is_resnet]
    convs = [a for a in archs if a.is_conv]
    # Options that apply to some archs only are refused when none of the archs takes them
    # (a sweep over plain and resnet gives the plain nets no residual scale).
    if rscale is not ResidualScale.none and not resnets:
        raise _applies_only("residual_scale", rscale.value, "resnet")
    if any(p is not NormPosition.post for p in positions) and not resnets:
        raise _applies_only("norm_position", positions[-1].value, "resnet")
    if not convs and pool_every:
        raise _applies_only("pool_every", pool_every, "conv")
    if not convs and image_size is not None:
        raise _applies_only("image_size", image_size, "conv")
    specs: list[NetSpec] = []
    for a in acts:
        for nm in norms:
            for ar in archs:
                for pos in positions if ar.is_resnet else [NormPosition.post]:
                    for it in inits:
                        for d in _as_list(depth):
                            for w in _as_list(width):
                                for b in _as_list(batch):
                                    spec = NetSpec(
                                        arch=ar,
                                        activation=a,
                                        norm=nm,
                                        init=resolve_init(it, a),
                                        gain=float(gain),
                                        depth=int(d),
                                        width=int(w),
                                        batch=int(b),
                                        residual_scale=rscale
                                        if ar.is_resnet
                                        else ResidualScale.none,
                                        norm_position=pos,
                                        image_size=(
                                            DEFAULT_IMAGE_SIZE
                                            if image_size is None
                                            else int(image_size)
                                        )
                                        if ar.is_conv
                                        else 0,
                                        pool_every=int(pool_every or 0) if ar.is_conv else 0,
                                        double_channels=bool(double_channels) and ar.is_conv,
                                    )
                                    if spec not in specs:
                                        specs.append(spec)
    return specs


@dataclass(frozen=True)
class TrainConfig:
    """The training options shared by every configuration of one :func:`train` call."""

    task: Task
    optimizer: Optimizer
    lr: float
    weight_decay: float
    clip_grad_norm: float | None
    steps: int
    record_every: int
    classes: int
    samples: int
    momentum: float

    def record_steps(self) -> list[int]:
        """0, K, 2K, … and the last step."""
        steps = list(range(0, self.steps, self.record_every))
        if steps[-1] != self.steps - 1:
            steps.append(self.steps - 1)
        return steps

    def growth_basis(self, spec: NetSpec) -> str | None:
        """Why ‖W‖² growth is predicted exactly, or None when it is not."""
        if spec.norm is Norm.none:
            return None
        if self.optimizer is not Optimizer.sgd:
            return None
        if self.weight_decay:
            return "sgd + weight decay: |W|^2 <- (1 - lr*wd)^2 |W|^2 + lr^2 |grad W|^2"
        return "sgd: |W|^2 grows by lr^2 |grad W|^2 per step"


def _finite_positive(value: float, option: str) -> None:
    if not (isinstance(value, (int, float)) and math.isfinite(value) and value > 0):
        raise SpecError(f"{{option}} must be a positive number, got {value!r}", option=option)


def make_config(
    *,
    task: Task | str,
    optimizer: Optimizer | str,
    lr: float,
    weight_decay: float,
    clip_grad_norm: float | None,
    steps: int,
    record_every: int,
    classes: int,
    samples: int,
    momentum: float,
) -> TrainConfig:
    """Validate the training options (SpecError with one sentence naming the bad value)."""
    for option, value, least in (
        ("steps", steps, 1), ("record_every", record_every, 1), ("classes", classes, 2),
        ("samples", samples, 1),
    ):  # fmt: skip
        if isinstance(value, bool) or not isinstance(value, int) or value < least:
            raise SpecError(f"{{option}} must be at least {least}, got {value!r}", option=option)
    _finite_positive(lr, "lr")
    if not (math.isfinite(weight_decay) and weight_decay >= 0):
        raise SpecError(
            f"{{option}} must be zero or positive, got {weight_decay!r}", option="weight_decay"
        )
    if clip_grad_norm is not None:
        _finite_positive(clip_grad_norm, "clip_grad_norm")
    if not (math.isfinite(momentum) and 0 <= momentum < 1):
        raise SpecError(f"{{option}} must be in [0, 1), got {momentum!r}", option="momentum")
    return TrainConfig(
        task=coerce(Task, task, "task"),
        optimizer=coerce(Optimizer, optimizer, "optimizer"),
        lr=float(lr),
        weight_decay=float(weight_decay),
        clip_grad_norm=None if clip_grad_norm is None else float(clip_grad_norm),
        steps=steps,
        record_every=record_every,
        classes=classes,
        samples=samples,
        momentum=float(momentum),
    )


@dataclass(frozen=True)
class ModelSpec:
    """A model factory and how to call it."""

    target: str
    kwargs: dict[str, Any] = field(default_factory=dict)
    input_shape: tuple[int, ...] = ()

    @property
    def label(self) -> str:
        if not self.kwargs:
            return self.target
        args = ",".join(f"{k}={v!r}" for k, v in sorted(self.kwargs.items()))
        return f"{self.target}({args})"


def parse_model_args(items: Sequence[str]) -> dict[str, Any]:
    """``key=value`` pairs; values are Python literals, anything else is taken as a string."""
    out: dict[str, Any] = {}
    for item in items:
        key, sep, value = item.partition("=")
        key = key.strip()
        if not sep or not key.isidentifier():
            raise UsageError(
                f"{{option}} takes key=value with a Python name as key, got {item!r}",
                option="model_arg",
            )
        try:
            out[key] = ast.literal_eval(value.strip())
        except (ValueError, SyntaxError):
            out[key] = value.strip()
    return out


def parse_input_shape(text: str) -> tuple[int, ...]:
    """``3,32,32`` (per sample; the batch size comes from --batch)."""
    try:
        shape = tuple(int(v) for v in text.replace("x", ",").split(","))
    except ValueError:
        shape = ()
    if not shape or any(v < 1 for v in shape):
        raise UsageError(
            f"{{option}} takes positive integers separated by commas, got {text!r}",
            option="input_shape",
        )
    return shape


# --------------------------------------------------------------------------------------------
# Engine requests: everything one run needs besides the seed, progress and stop callbacks


def check_seed(seed: Any) -> int:
    """A seed is a whole number from 0 to 2**63-1 (it seeds every repeat's generator)."""
    if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed < 2**63:
        raise SpecError(
            f"{{option}} must be a whole number from 0 to 2**63-1, got {seed!r}", option="seed"
        )
    return seed


def _positive_or_none(value: int | None, option: str) -> None:
    if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
        raise SpecError(f"{{option}} must be at least 1, got {value!r}", option=option)


def _check_resamples(resamples: int) -> None:
    if resamples < 10:
        raise SpecError(f"{{option}} must be at least 10, got {resamples}", option="resamples")


@dataclass(frozen=True)
class SimulateRequest:
    """A ``simulate`` run over the synthetic nets of ``specs`` (see :func:`build_specs`).

    ``max_memory``: refuse to start above this estimate in bytes (default: half the available
    RAM). ``workers``/``chunk``/``backend``: how repeats run; the output never depends on them.
    """

    specs: tuple[NetSpec, ...]
    repeats: int = 256
    dtype: Dtype = Dtype.float32
    device: Device = Device.auto
    max_memory: int | None = None
    workers: int | None = None
    chunk: int | None = None
    backend: Backend = Backend.auto
    resamples: int = 1000

    def __post_init__(self) -> None:
        if not self.specs:
            raise SpecError("no network configuration to run")
        check_repeats(self.repeats)
        _check_resamples(self.resamples)
        _positive_or_none(self.workers, "workers")
        _positive_or_none(self.chunk, "chunk")
        object.__setattr__(self, "specs", tuple(self.specs))
        object.__setattr__(self, "dtype", coerce(Dtype, self.dtype, "dtype"))
        object.__setattr__(self, "device", coerce(Device, self.device, "device"))
        object.__setattr__(self, "backend", coerce(Backend, self.backend, "backend"))


@dataclass(frozen=True)
class TrainRequest:
    """A training run (``simulate --train-steps``): every configuration of ``specs`` trained
    with ``config`` over ``repeats`` nets; ``save_checkpoint`` receives repeat 0's trained state
    dict of the first configuration."""

    specs: tuple[NetSpec, ...]
    config: TrainConfig
    repeats: int = 4
    dtype: Dtype = Dtype.float32
    device: Device = Device.auto
    workers: int | None = None
    resamples: int = 1000
    save_checkpoint: Path | None = None

    def __post_init__(self) -> None:
        if not self.specs:
            raise SpecError("no network configuration to train")
        check_repeats(self.repeats)
        _check_resamples(self.resamples)
        _positive_or_none(self.workers, "workers")
        object.__setattr__(self, "specs", tuple(self.specs))
        object.__setattr__(self, "dtype", coerce(Dtype, self.dtype, "dtype"))
        object.__setattr__(self, "device", coerce(Device, self.device, "device"))


@dataclass(frozen=True)
class ModelRequest:
    """A ``simulate --model`` run of the user's model ``spec`` at ``batch`` inputs."""

    spec: ModelSpec
    batch: int
    repeats: int = 64
    dtype: Dtype = Dtype.float32
    device: Device = Device.auto
    reinit: Reinit = Reinit.auto

    def __post_init__(self) -> None:
        check_repeats(self.repeats)
        _positive_or_none(self.batch, "batch")
        if not self.spec.input_shape:
            raise SpecError(
                "{option} is needed: the shape of one sample, e.g. 3,32,32 or 256",
                option="input_shape",
            )
        object.__setattr__(self, "dtype", coerce(Dtype, self.dtype, "dtype"))
        object.__setattr__(self, "device", coerce(Device, self.device, "device"))
        object.__setattr__(self, "reinit", coerce(Reinit, self.reinit, "reinit"))
