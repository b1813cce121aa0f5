"""Fused q/k/v layouts: how one projection's rows (or output features) split into q, k and v.

- stacked (`fused_qkv`, `conv1d_qkv`): rows [q (H*hd) ; k (Hkv*hd) ; v (Hkv*hd)] (Phi-3, MPT, GPT-2, the
  multi-query GPT-BigCode with Hkv = 1);
- grouped (`grouped_qkv`): Hkv groups, each [q_1 .. q_r ; k ; v] of hd rows, r = H / Hkv. Without GQA that is
  one [q ; k ; v] per head (GPT-NeoX, Bloom, Persimmon, Falcon's older layout); Falcon's new decoder
  architecture groups per KV head, and its multi-query layout is one group;
- sharded (`sharded_qvk`, CodeGen): S blocks of rows, each [q_s ; v_s ; k_s] of (H*hd)/S rows, the
  model-parallel shards it was trained with; q is the shards' q parts in order, and so are k and v.

`split_qkv` works on any tensor whose `dim` runs over the fused features: a weight (rows, D) with dim 0,
a bias with dim 0, or a projection's output (B, T, rows) with dim -1.
"""

from __future__ import annotations

import torch


def split_qkv(
    x: torch.Tensor, grouped: bool, heads: int, kv_heads: int, head_dim: int, dim: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(q, k, v) parts of `x` along `dim`: H*hd, Hkv*hd and Hkv*hd features, in head order."""
    if not grouped:
        return x.split([heads * head_dim, kv_heads * head_dim, kv_heads * head_dim], dim=dim)
    r = heads // kv_heads
    front = x.movedim(dim, 0)  # (G*(r+2)*hd, ...)
    groups = front.unflatten(0, (kv_heads, r + 2, head_dim))  # (G, r+2, hd, ...)
    parts = groups[:, :r], groups[:, r : r + 1], groups[:, r + 1 :]  # (G, r|1, hd, ...)
    return tuple(p.flatten(0, 2).movedim(0, dim) for p in parts)


def split_sharded(x: torch.Tensor, shards: int, dim: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(q, k, v) parts of a `sharded_qvk` tensor along `dim` (S shards of [q_s ; v_s ; k_s])."""
    front = x.movedim(dim, 0)  # (3*S*w, ...)
    blocks = front.unflatten(0, (shards, 3, -1))  # (S, 3, w, ...): [q, v, k] per shard
    parts = blocks[:, 0], blocks[:, 2], blocks[:, 1]  # (S, w, ...)
    return tuple(p.flatten(0, 1).movedim(0, dim) for p in parts)


__all__ = ["split_qkv", "split_sharded"]
