"""Every user-facing choice, as a ``str`` Enum shared by the CLI and the engine (no torch).

Typer lists the members in ``--help`` and rejects other values; the engine accepts the member
or its string value.
"""

from __future__ import annotations

from enum import Enum


class Arch(str, Enum):
    plain = "plain"
    resnet = "resnet"
    plain_conv = "plain-conv"
    resnet_conv = "resnet-conv"

    @property
    def is_conv(self) -> bool:
        return self in (Arch.plain_conv, Arch.resnet_conv)

    @property
    def is_resnet(self) -> bool:
        return self in (Arch.resnet, Arch.resnet_conv)


class NormPosition(str, Enum):
    """Where a residual block normalises: after each weight layer (the paper's basic block,
    ``post``) or at the start of each branch layer, x + W2·g(norm(W1·g(norm(x)))) (``pre``)."""

    post = "post"
    pre = "pre"


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


class Backend(str, Enum):
    """How CPU workers run: ``auto`` picks processes for long jobs, threads for short ones."""

    auto = "auto"
    threads = "threads"
    processes = "processes"


class Task(str, Enum):
    teacher = "teacher"
    gaussian_classes = "gaussian-classes"
    random_labels = "random-labels"


class Optimizer(str, Enum):
    sgd = "sgd"
    momentum = "momentum"
    adam = "adam"


class Reinit(str, Enum):
    """How each repeat gets fresh parameters."""

    auto = "auto"  # reset when it is bit-for-bit equivalent to calling the factory, else factory
    factory = "factory"  # call the factory again
    reset = "reset"  # re-run each module's reset_parameters()


class LinearInit(str, Enum):
    """Weight initialisations for ``linear:DOUTxDIN`` rows."""

    he = "he"
    lecun = "lecun"
    glorot = "glorot"


class Method(str, Enum):
    closed_form = "closed-form"
    quadrature = "quadrature"


class Format(str, Enum):
    auto = "auto"
    table = "table"
    csv = "csv"
    json = "json"


class FigureFormat(str, Enum):
    png = "png"
    svg = "svg"
    pdf = "pdf"


class Interval(str, Enum):
    """How a confidence interval is drawn."""

    band = "band"
    bars = "bars"


class RecordKind(str, Enum):
    """What a table of records holds, recognised from its columns."""

    layers = "layers"  # simulate, one row per layer and configuration
    sweep = "sweep"  # simulate summary, one fitted rate per configuration
    checkpoint = "checkpoint"  # inspect-checkpoint, one row per BatchNorm layer
    ratios = "ratios"  # ratios, one row per activation and input std
    columns = "columns"  # anything else, plotted by --x and --y


class ProgressMode(str, Enum):
    auto = "auto"
    log = "log"
    none = "none"


class Distributed(str, Enum):
    """``simulate --distributed``: share the sweep among torchrun's ranks (auto: when torchrun's
    environment is there) or not (off)."""

    auto = "auto"
    off = "off"
