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

from gradscope.errors import SpecError
from gradscope.options import Device, Dtype, Init
from gradscope.specs import TRUNC_STD, NetSpec

if TYPE_CHECKING:
    import torch


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
