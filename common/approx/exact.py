"""Exact (float, autograd-friendly) torch forms of the Comet non-linear functions.

These are the functions a Comet-form model computes, with exact square roots; they
are what `comet-adapt` trains against. The two-party protocol computes the same
formulas with `rsqrt` by Newton iteration (`common.approx.functions`), whose error
over the calibrated ranges is below 2^-12 relative.
"""

from __future__ import annotations

import torch


def smu(x: torch.Tensor, alpha: torch.Tensor | float, mu: torch.Tensor | float) -> torch.Tensor:
    """Smooth maximum unit: ((1+α)x + sqrt(((1−α)x)² + μ²)) / 2.

    α=0, μ→0 gives ReLU; the Comet form replaces GeLU by it with (α, μ) trainable.
    """
    return ((1 + alpha) * x + torch.sqrt(((1 - alpha) * x) ** 2 + mu**2)) / 2


def relu_softmax(
    scores: torch.Tensor, keep: torch.Tensor | None, mu: float, eps: float
) -> torch.Tensor:
    """ReLU-softmax over the last axis: r / (Σ r + eps), r = smu(scores, 0, mu) · keep.

    `keep` is a 0/1 mask broadcastable to `scores` (0 at padded key positions).
    """
    r = smu(scores, 0.0, mu)
    if keep is not None:
        r = r * keep
    return r / (r.sum(dim=-1, keepdim=True) + eps)


def algebraic_tanh(x: torch.Tensor) -> torch.Tensor:
    """x / sqrt(1 + x²): the Comet form's pooler activation in place of tanh."""
    return x * torch.rsqrt(1 + x * x)
