"""Forward and backward of every layer the synthetic nets use, side by side.

Each forward keeps what its backward needs; each backward is the fused ATen kernel autograd
itself calls (or its closed form), so the engine runs without building a graph. The norm pairs
serve the MLPs (``(batch, width)`` or a stack of repeats ``(R, batch, width)``) and the conv
nets (``(batch, C, H, W)``, channels_last) alike.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from gradscope.activations import ActivationSpec
from gradscope.options import Norm
from gradscope.specs import NORM_EPS

aten = torch.ops.aten


def activation_forward(act: ActivationSpec) -> Callable[[torch.Tensor], torch.Tensor]:
    """x ↦ g(x), from the activation's own table entry."""
    return act.torch_forward(torch.nn.functional)


def activation_backward(act: ActivationSpec) -> Callable[[Any, Any, Any], Any]:
    """``back(grad, u, y)`` = grad · g'(u), where y = g(u) is the saved output."""
    return act.torch_backward(aten)


def norm_forward(norm: Norm, h: torch.Tensor) -> tuple[torch.Tensor, Any]:
    """(normalised output, what the backward needs). No affine transform.

    BatchNorm: statistics per unit (per channel over batch and positions for images) over the
    batch; a stack ``(R, batch, width)`` normalises each repeat's batch. LayerNorm: over each
    sample's features (for images: its (C, H, W) values, GroupNorm with one group).
    """
    if norm is Norm.batchnorm:
        if h.dim() != 3:
            out, mean, invstd = torch.native_batch_norm(
                h, None, None, None, None, True, 0.0, NORM_EPS
            )
            return out, (mean, invstd)
        # (R, batch, width): statistics over the batch of each repeat
        # Two passes of sums: torch.var_mean over the batch dimension is slow on a CPU.
        centred = h - h.mean(dim=-2, keepdim=True)
        invstd = torch.rsqrt((centred * centred).mean(dim=-2, keepdim=True) + NORM_EPS)
        out = centred * invstd
        return out, (out, invstd)
    if norm is Norm.layernorm:
        if h.dim() == 4:
            n, c, hw = h.shape[0], h.shape[1], h.shape[2] * h.shape[3]
            out, mean, rstd = torch.native_group_norm(h, None, None, n, c, hw, 1, NORM_EPS)
            return out, (mean, rstd)
        out, mean, rstd = torch.native_layer_norm(h, [h.shape[-1]], None, None, NORM_EPS)
        return out, (mean, rstd)
    return h, None


def norm_backward(norm: Norm, grad: torch.Tensor, h: torch.Tensor, saved: Any) -> torch.Tensor:
    """The derivative at the norm's input, from the derivative at its output."""
    if norm is Norm.batchnorm:
        if h.dim() != 3:
            mean, invstd = saved
            return aten.native_batch_norm_backward(
                grad, h, None, None, None, mean, invstd, True, NORM_EPS, [True, False, False]
            )[0]
        out, invstd = saved
        g_mean = grad.mean(dim=-2, keepdim=True)
        go_mean = (grad * out).mean(dim=-2, keepdim=True)
        return (grad - g_mean - out * go_mean) * invstd
    if norm is Norm.layernorm:
        mean, rstd = saved
        if h.dim() == 4:
            n, c, hw = h.shape[0], h.shape[1], h.shape[2] * h.shape[3]
            dx = aten.native_group_norm_backward(
                grad.contiguous(), h.contiguous(), mean, rstd, None, n, c, hw, 1,
                [True, False, False],
            )[0]  # fmt: skip
            return dx.contiguous(memory_format=torch.channels_last)
        return aten.native_layer_norm_backward(
            grad, h, [h.shape[-1]], mean, rstd, None, None, [True, False, False]
        )[0]
    return grad


def pool_forward(y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """2×2 max-pool, stride 2: (output, indices of the maxima)."""
    return aten.max_pool2d_with_indices(y, [2, 2], [2, 2], [0, 0], [1, 1], False)


def pool_backward(grad: torch.Tensor, y: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
    """The derivative at the pool's input: each output's derivative goes to its maximum."""
    return aten.max_pool2d_with_indices_backward(
        grad, y, [2, 2], [2, 2], [0, 0], [1, 1], False, idx
    )
