"""The MLP archs of ``simulate`` (plain and resnet): a hand-written forward and backward of
one repeat, or of a stack of R repeats on a leading dimension.

The forward keeps what the backward needs; the backward runs the fused ATen kernels of
:mod:`gradscope.engine.layers` without building an autograd graph, giving per layer the
weight-gradient norm, the variance of the layer's output and of the derivative at its input.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from gradscope.engine.layers import (
    activation_backward,
    activation_forward,
    norm_backward,
    norm_forward,
)
from gradscope.options import Arch, NormPosition
from gradscope.specs import NetSpec


def _unit_var(t: torch.Tensor, wide: bool = False) -> torch.Tensor:
    """Variance over the batch of each unit (divided by the batch size), averaged over units.

    From sums, as BLAS dot products for one repeat (torch.var over the batch dimension is ~15×
    slower on a CPU); ``wide`` computes in float64, for float32 values whose squares overflow.
    """

    if wide:
        t = t.to(torch.float64)
    batch, width = t.shape[-2], t.shape[-1]
    if t.dim() == 2 and t.is_contiguous():
        flat = t.view(-1)
        col = t.sum(dim=0)
        return (torch.dot(flat, flat) - torch.dot(col, col) / batch) / (batch * width)
    col = t.sum(dim=-2)  # (..., width)
    total_sq = (t * t).sum(dim=(-2, -1))
    return (total_sq - (col * col).sum(dim=-1) / batch) / (batch * width)


@dataclass
class RepeatOutput:
    """Per layer (layer 1 first): shapes (depth,) for one repeat, (R, depth) for a stack."""

    grad_norm: torch.Tensor
    forward_var: torch.Tensor
    backward_var: torch.Tensor


def forward_backward(
    spec: NetSpec,
    weights: torch.Tensor,
    x: torch.Tensor,
    dy: torch.Tensor,
    act_fn: Callable[[Any], Any] | None = None,
    act_back: Callable[[Any, Any, Any], Any] | None = None,
    wide_stats: bool = False,
) -> RepeatOutput:
    """Forward and hand-written backward of one repeat, or of R stacked repeats.

    Args:
        weights: (depth, width, width) or (R, depth, width, width); layer l computes x @ W_l.T.
        x: (batch, width) or (R, batch, width), the input.
        dy: like ``x``, the derivative of the loss at the last layer's output.
        wide_stats: compute the statistics in float64 (for float32 values whose squares
            overflow although the values do not).

    Returns:
        Per layer: the weight gradient's Frobenius norm, the variance of the layer's output and
        the variance of the derivative at the layer's input (both over the batch, per unit,
        averaged over units).
    """

    act_fn = act_fn or activation_forward(spec.activation)
    act_back = act_back or activation_backward(spec.activation)
    if spec.arch is Arch.resnet and spec.norm_position is NormPosition.pre:
        return _prenorm_forward_backward(spec, weights, x, dy, act_fn, act_back, wide_stats)
    depth, norm, resnet = spec.depth, spec.norm, spec.arch is Arch.resnet
    scale = spec.branch_scale
    stacked = weights.dim() == 4
    w_of = (lambda i: weights[:, i]) if stacked else (lambda i: weights[i])

    with torch.no_grad():
        xs = [x]  # x_0 .. x_L
        saved: list[tuple[Any, Any, Any, Any]] = []  # (h, norm state, u, y) per layer
        for i in range(depth):
            w = w_of(i)
            h = torch.matmul(xs[-1], w.transpose(-1, -2))
            n, state = norm_forward(norm, h)
            is_second = resnet and i % 2 == 1
            u = n
            if is_second:
                u = n * scale + xs[-2] if scale != 1.0 else n + xs[-2]
            y = act_fn(u)
            saved.append((h, state, u, y))
            xs.append(y)
        fvar = torch.stack([_unit_var(t, wide_stats) for t in xs[1:]], dim=-1)

        grads: list[torch.Tensor | None] = [None] * (depth + 1)  # ∂ℓ/∂x_l
        grads[depth] = dy
        norms: list[torch.Tensor] = [dy.new_empty(())] * depth
        bvars: list[torch.Tensor] = [dy.new_empty(())] * depth
        for i in range(depth - 1, -1, -1):
            h, state, u, y = saved[i]
            g_out = grads[i + 1]
            assert g_out is not None
            du = act_back(g_out, u, y)
            is_second = resnet and i % 2 == 1
            if is_second:
                grads[i - 1] = du  # the skip (only consumer of x_{i-1} besides layer i)
                dn = du * scale if scale != 1.0 else du
            else:
                dn = du
            dh = norm_backward(norm, dn, h, state)
            grad_w = torch.matmul(dh.transpose(-1, -2), xs[i])
            norms[i] = torch.linalg.vector_norm(
                grad_w, dim=(-2, -1), dtype=torch.float64 if wide_stats else None
            )
            dx = torch.matmul(dh, w_of(i))
            prev = grads[i]
            dx = dx if prev is None else dx + prev
            grads[i] = dx
            bvars[i] = _unit_var(dx, wide_stats)
            saved[i] = (None, None, None, None)
        return RepeatOutput(torch.stack(norms, -1), fvar, torch.stack(bvars, -1))


def _prenorm_forward_backward(
    spec: NetSpec,
    weights: torch.Tensor,
    x: torch.Tensor,
    dy: torch.Tensor,
    act_fn: Callable[[Any], Any],
    act_back: Callable[[Any, Any, Any], Any],
    wide_stats: bool,
) -> RepeatOutput:
    """Pre-norm blocks x_{k+1} = x_k + s·W2·g(norm(W1·g(norm(x_k)))) (pre-activation ResNet).

    Layer 2k+1 (W1) reports the derivative at the block input x_k (the stream, skip included)
    and the variance of g(norm(W1·…)), the input of W2; layer 2k+2 (W2) the derivative at its
    input and the variance of x_{k+1}. The net's output is the stream x_{L/2}.
    """

    norm, scale = spec.norm, spec.branch_scale
    stacked = weights.dim() == 4
    w_of = (lambda i: weights[:, i]) if stacked else (lambda i: weights[i])
    wide = torch.float64 if wide_stats else None
    blocks = spec.depth // 2
    with torch.no_grad():
        stream = x
        saved = []
        fvar: list[torch.Tensor] = []
        for k in range(blocks):
            w1, w2 = w_of(2 * k), w_of(2 * k + 1)
            n1, s1 = norm_forward(norm, stream)
            a1 = act_fn(n1)
            h1 = torch.matmul(a1, w1.transpose(-1, -2))
            n2, s2 = norm_forward(norm, h1)
            a2 = act_fn(n2)
            h2 = torch.matmul(a2, w2.transpose(-1, -2))
            new = stream + h2 * scale if scale != 1.0 else stream + h2
            fvar += [_unit_var(a2, wide_stats), _unit_var(new, wide_stats)]
            saved.append((stream, s1, n1, a1, h1, s2, n2, a2))
            stream = new
        norms: list[torch.Tensor] = [dy.new_empty(())] * spec.depth
        bvars: list[torch.Tensor] = [dy.new_empty(())] * spec.depth
        g = dy
        for k in range(blocks - 1, -1, -1):
            stream, s1, n1, a1, h1, s2, n2, a2 = saved[k]
            w1, w2 = w_of(2 * k), w_of(2 * k + 1)
            dh2 = g * scale if scale != 1.0 else g
            norms[2 * k + 1] = torch.linalg.vector_norm(
                torch.matmul(dh2.transpose(-1, -2), a2), dim=(-2, -1), dtype=wide
            )
            da2 = torch.matmul(dh2, w2)
            bvars[2 * k + 1] = _unit_var(da2, wide_stats)
            dh1 = norm_backward(norm, act_back(da2, n2, a2), h1, s2)
            norms[2 * k] = torch.linalg.vector_norm(
                torch.matmul(dh1.transpose(-1, -2), a1), dim=(-2, -1), dtype=wide
            )
            da1 = torch.matmul(dh1, w1)
            g = g + norm_backward(norm, act_back(da1, n1, a1), stream, s1)
            bvars[2 * k] = _unit_var(g, wide_stats)
            saved[k] = None  # type: ignore[call-overload]
        return RepeatOutput(torch.stack(norms, -1), torch.stack(fvar, -1), torch.stack(bvars, -1))


def _overflow_layer(out: Any, depth: int) -> int | None:
    """First layer, in the order computed (forward 1→L, then backward L→1), with inf/NaN."""
    fv = out.forward_var.cpu().numpy()
    bad = np.flatnonzero(~np.isfinite(fv))
    if bad.size:
        return int(bad[0]) + 1
    back = ~np.isfinite(out.backward_var.cpu().numpy()) | ~np.isfinite(out.grad_norm.cpu().numpy())
    bad = np.flatnonzero(back)
    if bad.size:
        return int(bad[-1]) + 1
    return None
