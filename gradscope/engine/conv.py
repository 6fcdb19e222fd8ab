"""The conv archs of ``simulate``: random draws and a hand-written forward/backward of one repeat.

Layer l is a 3×3 convolution (stride 1, zero padding 1, no bias) → norm → activation, on
images of ``spec.image_size``², with a 2×2 max-pool after every ``spec.pool_every``-th layer
(never after the last). ``resnet-conv`` adds a skip every two layers like the MLP ``resnet``
(post-norm: the paper's basic block; pre-norm: x + W2·g(norm(W1·g(norm(x))))).

The backward is written out with the ATen kernels autograd itself calls
(``convolution_backward`` gives the input and weight gradients in one call, then the fused
norm, activation and max-pool backward kernels), on channels_last tensors, without building a
graph. Norms: BatchNorm2d statistics (per channel over batch and positions) or LayerNorm over
each sample's (C, H, W) values (GroupNorm with one group), neither with an affine transform.

Statistics: a variance is per channel over the batch and the positions, averaged over channels
(for the MLPs: per unit over the batch). Per layer: the weight gradient's Frobenius norm, the
variance of the layer's output as the next layer sees it (after the pool, if one follows), the
variance of the derivative at the layer's input and, where a pool follows the layer, the
variance of the pool's input and of the derivative there.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from gradscope.engine.layers import norm_backward, norm_forward, pool_backward, pool_forward
from gradscope.options import Arch, NormPosition
from gradscope.specs import CONV_KERNEL, NetSpec

# --------------------------------------------------------------------------------------------
# Building blocks: forward keeps what the backward needs.

_STRIDE, _PAD, _DIL = [1, 1], [1, 1], [1, 1]


def _conv(x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    return torch.ops.aten.convolution(x, w, None, _STRIDE, _PAD, _DIL, False, [0, 0], 1)


def _conv_backward(
    grad: torch.Tensor, x: torch.Tensor, w: torch.Tensor, need_input: bool
) -> tuple[Any, torch.Tensor]:
    dx, dw, _ = torch.ops.aten.convolution_backward(
        grad, x, w, None, _STRIDE, _PAD, _DIL, False, [0, 0], 1, [need_input, True, False]
    )
    return dx, dw


def channel_var(t: torch.Tensor, wide: bool = False) -> torch.Tensor:
    """Variance over batch and positions of each channel, averaged over channels."""

    if wide:
        t = t.to(torch.float64)
    c = t.shape[1]
    flat = t.permute(0, 2, 3, 1).reshape(-1, c)  # (batch·H·W, C): a view for channels_last
    n = flat.shape[0]
    col = flat.sum(dim=0)
    values = flat.reshape(-1)
    # BLAS dot products: 2× faster than a product and a sum on a CPU.
    return (torch.dot(values, values) - torch.dot(col, col) / n) / (n * c)


# --------------------------------------------------------------------------------------------
# One repeat


@dataclass
class ConvOutput:
    """Per layer (layer 1 first), shape (depth,); the pool columns are NaN where no pool."""

    grad_norm: torch.Tensor
    forward_var: torch.Tensor
    backward_var: torch.Tensor
    pool_input_var: torch.Tensor
    pool_input_backward_var: torch.Tensor


def conv_forward_backward(
    spec: NetSpec,
    weights: list[torch.Tensor],
    x: torch.Tensor,
    dy: torch.Tensor,
    act_fn: Callable[[Any], Any],
    act_back: Callable[[Any, Any, Any], Any],
    wide_stats: bool = False,
) -> ConvOutput:
    """Forward and hand-written backward of one conv repeat (see the module docstring).

    Args:
        weights: per layer (c_out, c_in, 3, 3); x: (batch, C, S, S); dy: like the output.
    """

    if spec.arch.is_resnet and spec.norm_position is NormPosition.pre:
        return _prenorm(spec, weights, x, dy, act_fn, act_back, wide_stats)
    depth, norm = spec.depth, spec.norm
    resnet, scale = spec.arch is Arch.resnet_conv, spec.branch_scale
    pools = set(spec.pools_after)
    nan = torch.full((), math.nan, dtype=torch.float64 if wide_stats else x.dtype)
    with torch.no_grad():
        xs = [x]  # inputs of layers 1..L, then the output
        saved: list[Any] = []
        fvar, pin_var = [], []
        for i in range(depth):
            h = _conv(xs[-1], weights[i])
            n, state = norm_forward(norm, h)
            u = n
            if resnet and i % 2 == 1:
                u = n * scale + xs[-2] if scale != 1.0 else n + xs[-2]
            y = act_fn(u)
            idx = None
            if i + 1 in pools:
                pin_var.append(channel_var(y, wide_stats))
                out, idx = pool_forward(y)
            else:
                pin_var.append(nan)
                out = y
            saved.append((h, state, u, y, idx))
            fvar.append(channel_var(out, wide_stats))
            xs.append(out)

        grads: list[Any] = [None] * (depth + 1)  # ∂ℓ/∂(input of layer l+1)
        grads[depth] = dy
        norms: list[Any] = [nan] * depth
        bvars: list[Any] = [nan] * depth
        pin_bvar: list[Any] = [nan] * depth
        for i in range(depth - 1, -1, -1):
            h, state, u, y, idx = saved[i]
            g = grads[i + 1]
            if idx is not None:
                g = pool_backward(g, y, idx)
                pin_bvar[i] = channel_var(g, wide_stats)
            du = act_back(g, u, y)
            if resnet and i % 2 == 1:
                grads[i - 1] = du  # the skip
                dn = du * scale if scale != 1.0 else du
            else:
                dn = du
            dh = norm_backward(norm, dn, h, state)
            dx, dw = _conv_backward(dh, xs[i], weights[i], True)
            norms[i] = torch.linalg.vector_norm(dw, dtype=torch.float64 if wide_stats else None)
            assert dx is not None
            if grads[i] is not None:
                dx = dx + grads[i]
            grads[i] = dx
            bvars[i] = channel_var(dx, wide_stats)
            saved[i] = None
        return ConvOutput(
            torch.stack(norms),
            torch.stack(fvar),
            torch.stack(bvars),
            torch.stack(pin_var),
            torch.stack(pin_bvar),
        )


def _prenorm(
    spec: NetSpec,
    weights: list[torch.Tensor],
    x: torch.Tensor,
    dy: torch.Tensor,
    act_fn: Callable[[Any], Any],
    act_back: Callable[[Any, Any, Any], Any],
    wide_stats: bool,
) -> ConvOutput:
    """Pre-norm blocks x_{k+1} = x_k + s·W2·g(norm(W1·g(norm(x_k)))), a pool after some blocks.

    Layer 2k+1 (W1) reports the derivative at the block input x_k and the variance of
    g(norm(W1·…)), the input of W2; layer 2k+2 (W2) the derivative at its input and the
    variance of x_{k+1} (after the pool, if one follows).
    """

    depth, norm, scale = spec.depth, spec.norm, spec.branch_scale
    pools = set(spec.pools_after)
    nan = torch.full((), math.nan, dtype=torch.float64 if wide_stats else x.dtype)
    fvar: list[Any] = [nan] * depth
    bvar: list[Any] = [nan] * depth
    pin_var: list[Any] = [nan] * depth
    pin_bvar: list[Any] = [nan] * depth
    norms: list[Any] = [nan] * depth
    with torch.no_grad():
        stream = x
        blocks = []
        for k in range(depth // 2):
            w1, w2 = weights[2 * k], weights[2 * k + 1]
            n1, s1 = norm_forward(norm, stream)
            a1 = act_fn(n1)
            h1 = _conv(a1, w1)
            n2, s2 = norm_forward(norm, h1)
            a2 = act_fn(n2)
            h2 = _conv(a2, w2)
            new = stream + h2 * scale if scale != 1.0 else stream + h2
            fvar[2 * k] = channel_var(a2, wide_stats)
            idx = None
            if 2 * k + 2 in pools:
                pin_var[2 * k + 1] = channel_var(new, wide_stats)
                pooled, idx = pool_forward(new)
            else:
                pooled = new
            fvar[2 * k + 1] = channel_var(pooled, wide_stats)
            blocks.append((stream, s1, n1, a1, h1, s2, n2, a2, new, idx))
            stream = pooled
        g = dy
        for k in range(depth // 2 - 1, -1, -1):
            stream, s1, n1, a1, h1, s2, n2, a2, new, idx = blocks[k]
            w1, w2 = weights[2 * k], weights[2 * k + 1]
            if idx is not None:
                g = pool_backward(g, new, idx)
                pin_bvar[2 * k + 1] = channel_var(g, wide_stats)
            dh2 = g * scale if scale != 1.0 else g
            da2, dw2 = _conv_backward(dh2, a2, w2, True)
            norms[2 * k + 1] = torch.linalg.vector_norm(
                dw2, dtype=torch.float64 if wide_stats else None
            )
            bvar[2 * k + 1] = channel_var(da2, wide_stats)
            dh1 = norm_backward(norm, act_back(da2, n2, a2), h1, s2)
            da1, dw1 = _conv_backward(dh1, a1, w1, True)
            norms[2 * k] = torch.linalg.vector_norm(
                dw1, dtype=torch.float64 if wide_stats else None
            )
            g = g + norm_backward(norm, act_back(da1, n1, a1), stream, s1)
            bvar[2 * k] = channel_var(g, wide_stats)
            blocks[k] = None  # type: ignore[call-overload]
    return ConvOutput(
        torch.stack(norms),
        torch.stack(fvar),
        torch.stack(bvar),
        torch.stack(pin_var),
        torch.stack(pin_bvar),
    )


def conv_flop(spec: NetSpec) -> float:
    """Multiply-adds ×2 of one repeat: forward, input-gradient and weight-gradient convs."""
    ch, k2 = spec.channels, CONV_KERNEL * CONV_KERNEL
    fwd = sum(
        2.0 * spec.batch * spec.spatial[i] * k2 * ch[i] * ch[i + 1] for i in range(spec.depth)
    )
    return 3.0 * fwd
