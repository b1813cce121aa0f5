"""Between the tower and the LLM: patch pooling (fewer image tokens) and the projector (tower width -> LLM width)."""

from __future__ import annotations

import math

import torch.nn.functional as F
from torch import Tensor, nn


class PatchPool(nn.Module):
    """Average-pool a square patch grid by `stride` (ceil mode; partial windows average what they
    cover): (n, h*w, D) -> (n, ceil(h/s)*ceil(w/s), D). `stride=1` is the identity."""

    def __init__(self, stride: int = 1):
        super().__init__()
        self.stride = stride

    def forward(self, x: Tensor) -> Tensor:
        if self.stride == 1:
            return x
        n, tokens, dim = x.shape
        side = square_side(tokens, self.stride)
        grid = x.transpose(1, 2).reshape(n, dim, side, side)  # (n, D, h, w)
        grid = F.avg_pool2d(grid, self.stride, self.stride, ceil_mode=True)  # (n, D, h', w')
        return grid.flatten(2).transpose(1, 2)  # (n, N', D)


def square_side(tokens: int, stride: int) -> int:
    """Side h of a square grid of `tokens` patches; a clear error when it is not square."""
    side = math.isqrt(tokens)
    if side * side != tokens:
        raise ValueError(
            f"pool={stride} needs a square patch grid, but the tower returns N={tokens} tokens, "
            "which is not a perfect square (does it keep a class token?)"
        )
    return side


def make_projector(kind: str, in_dim: int, out_dim: int) -> nn.Module:
    """`mlp`: Linear(D, H)-GELU-Linear(H, H) (LLaVA-1.5); `linear`: Linear(D, H)."""
    if kind == "linear":
        return nn.Linear(in_dim, out_dim)
    if kind == "mlp":
        return nn.Sequential(nn.Linear(in_dim, out_dim), nn.GELU(), nn.Linear(out_dim, out_dim))
    raise ValueError(f"projector must be 'mlp' or 'linear', got {kind!r}")


__all__ = ["PatchPool", "make_projector", "square_side"]
