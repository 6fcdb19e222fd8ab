"""Random draws of one repeat: weights, input and output derivative, from a generator seeded
by (seed, configuration, repeat index) only, so a repeat's numbers never depend on which other
repeats ran, in which order or in which chunk."""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass
from typing import Any

import torch

from gradscope.errors import SpecError
from gradscope.options import Dtype, Init
from gradscope.specs import CONV_KERNEL, TRUNC_STD, NetSpec, conv_weight_std


def torch_dtype(dtype: Dtype) -> Any:
    return torch.float32 if dtype is Dtype.float32 else torch.float64


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


@dataclass
class ConvDraw:
    """One repeat: ``weights[l]`` (c_out, c_in, 3, 3) channels_last, ``x`` (batch, C, S, S),
    ``dy`` like the last layer's output; all channels_last."""

    weights: list[torch.Tensor]
    x: torch.Tensor
    dy: torch.Tensor


def draw_conv_repeat(
    spec: NetSpec,
    seed: int,
    repeat: int,
    dtype: Dtype = Dtype.float32,
    device: str = "cpu",
    out: ConvDraw | None = None,
) -> ConvDraw:
    """Weights (layer 1 first), then the N(0, 1) input, then the output derivative
    N(0, 1/(C·H·W)) (the MLP's N(0, 1/width), per sample), from the repeat's own generator."""

    cl = torch.channels_last
    tdt = torch_dtype(dtype)
    ch, size = spec.channels, spec.image_size
    last = int(math.isqrt(spec.spatial[-1]))
    if out is None:
        k = CONV_KERNEL
        out = ConvDraw(
            weights=[
                torch.empty(ch[i + 1], ch[i], k, k, dtype=tdt, device=device).to(memory_format=cl)
                for i in range(spec.depth)
            ],
            x=torch.empty(spec.batch, ch[0], size, size, dtype=tdt, device=device).to(
                memory_format=cl
            ),
            dy=torch.empty(spec.batch, ch[-1], last, last, dtype=tdt, device=device).to(
                memory_format=cl
            ),
        )
    gen = torch.Generator(device=device)
    gen.manual_seed(repeat_seed(seed, spec, repeat))
    # Draws fill each channels_last tensor in memory order (N, H, W, C): on a CPU, normal_ on
    # the contiguous view is 7× faster than on the strided NCHW view.
    for i, w4 in enumerate(out.weights):
        w = _memory_order(w4)
        std = conv_weight_std(spec, ch[i], ch[i + 1])
        if spec.init is Init.xavier_uniform:
            w.uniform_(-std * math.sqrt(3.0), std * math.sqrt(3.0), generator=gen)
        elif spec.init is Init.truncated_normal:
            lo = 0.5 * math.erfc(2.0 / math.sqrt(2.0))
            w.uniform_(lo, 1.0 - lo, generator=gen)
            torch.special.ndtri(w, out=w)
            w.mul_(std / TRUNC_STD)
        else:
            w.normal_(0.0, std, generator=gen)
    _memory_order(out.x).normal_(0.0, 1.0, generator=gen)
    _memory_order(out.dy).normal_(0.0, 1.0 / math.sqrt(ch[-1] * last * last), generator=gen)
    return out


def _memory_order(t: torch.Tensor) -> torch.Tensor:
    """The contiguous (N, H, W, C) view of a channels_last tensor."""
    return t.permute(0, 2, 3, 1)
