"""Dense-mask CASA attention: the reference kernel and its SDPA twin.

Both form the full (B, Tq, K) mask of `KeyLayout.mask()`. The reference is a plain masked softmax,
the source of truth for every test; `sdpa_casa_attention` runs the same mask through
`scaled_dot_product_attention` and is what `auto` uses for one-query decode steps, whose mask is
only (B, 1, K).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from casa_adapter.casa.kernels.layout import KeyLayout


def repeat_kv(x: torch.Tensor, n_rep: int) -> torch.Tensor:
    """(B, Hkv, K, hd) -> (B, Hkv * n_rep, K, hd), each kv head serving n_rep query heads."""
    return x if n_rep == 1 else x.repeat_interleave(n_rep, dim=1)


def reference_casa_attention(q, k, v, layout: KeyLayout, scaling: float) -> torch.Tensor:
    """Dense-mask CASA attention. q (B, H, Tq, hd); k, v (B, Hkv, K, hd) -> (B, H, Tq, hd)."""
    k, v = repeat_kv(k, q.shape[1] // k.shape[1]), repeat_kv(v, q.shape[1] // v.shape[1])
    allowed = layout.mask().unsqueeze(1)  # (B, 1, Tq, K)
    scores = torch.matmul(q, k.transpose(-1, -2)) * scaling  # (B, H, Tq, K)
    scores = scores.masked_fill(~allowed, float("-inf"))
    probs = torch.softmax(scores, dim=-1).nan_to_num(0.0)  # rows with no key -> 0
    return torch.matmul(probs, v)  # (B, H, Tq, hd)


def sdpa_casa_attention(q, k, v, layout: KeyLayout, scaling: float) -> torch.Tensor:
    """Same as the reference through SDPA. q (B, H, Tq, hd); k, v (B, Hkv, K, hd) -> (B, H, Tq, hd)."""
    k, v = repeat_kv(k, q.shape[1] // k.shape[1]), repeat_kv(v, q.shape[1] // v.shape[1])
    allowed = layout.mask()  # (B, Tq, K)
    has_key = allowed.any(-1, keepdim=True)  # (B, Tq, 1)
    allowed = allowed | ~has_key  # keep SDPA finite on empty rows; zeroed below
    out = F.scaled_dot_product_attention(q, k, v, attn_mask=allowed.unsqueeze(1), scale=scaling)  # (B, H, Tq, hd)
    return out * has_key.unsqueeze(1).to(out.dtype)


__all__ = ["reference_casa_attention", "sdpa_casa_attention", "repeat_kv"]
