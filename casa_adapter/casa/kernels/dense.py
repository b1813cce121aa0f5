"""Dense-mask CASA attention: the reference kernel and its SDPA twin.

Both form the full (B, Tq, K) mask of `KeyLayout.mask()`. The reference is a plain masked softmax,
the source of truth for every test, and applies the family's score modifiers (`mods.ScoreMods`) one by
one; `sdpa_casa_attention` runs the same mask through `scaled_dot_product_attention` (ALiBi and the
sliding window as a float/boolean mask; softcapping and sinks, which SDPA cannot do, through the explicit fp32
path of `mods.block_attention`) and is what `auto` uses for one-query decode steps, whose mask is only (B, 1, K).
"""

from __future__ import annotations

import torch

from casa_adapter.casa.kernels.layout import KeyLayout
from casa_adapter.casa.kernels.mods import (
    BlockMask,
    ScoreMods,
    block_attention,
    effective,
    modded_scores,
    prepare_block,
    softmax_with_sinks,
    window_allowed,
)


def repeat_kv(x: torch.Tensor, n_rep: int) -> torch.Tensor:
    """(B, Hkv, K, hd) -> (B, Hkv * n_rep, K, hd), each kv head serving n_rep query heads."""
    return x if n_rep == 1 else x.repeat_interleave(n_rep, dim=1)


def reference_casa_attention(q, k, v, layout: KeyLayout, scaling: float, mods: ScoreMods | None = None):
    """Dense-mask CASA attention. q (B, H, Tq, hd); k, v (B, Hkv, K, hd) -> (B, H, Tq, hd)."""
    k, v = repeat_kv(k, q.shape[1] // k.shape[1]), repeat_kv(v, q.shape[1] // v.shape[1])
    mods = effective(mods)
    allowed = layout.mask()  # (B, Tq, K)
    window = window_allowed(mods, layout.q_index, layout.k_index)  # (B, Tq, K) or None
    if window is not None:
        allowed = allowed & window
    scores = torch.matmul(q, k.transpose(-1, -2)) * scaling  # (B, H, Tq, K)
    if mods is not None:  # cap, then ALiBi, in fp32; the result goes back to q's dtype for the softmax
        scores = modded_scores(scores, mods, layout.q_index, layout.k_index).to(q.dtype)
    scores = scores.masked_fill(~allowed.unsqueeze(1), float("-inf"))
    if mods is not None and mods.sinks is not None:  # the sink entry, in fp32 (as the families do)
        probs = softmax_with_sinks(scores.float(), mods).to(q.dtype)  # rows with no key: all weight on the sink
    else:
        probs = torch.softmax(scores, dim=-1).nan_to_num(0.0)  # rows with no key -> 0
    return torch.matmul(probs, v)  # (B, H, Tq, hd)


def sdpa_casa_attention(q, k, v, layout: KeyLayout, scaling: float, mods: ScoreMods | None = None):
    """Same as the reference through SDPA. q (B, H, Tq, hd); k, v (B, Hkv, K, hd) -> (B, H, Tq, hd)."""
    k, v = repeat_kv(k, q.shape[1] // k.shape[1]), repeat_kv(v, q.shape[1] // v.shape[1])
    mods = effective(mods)
    prepared = layout.derived(("sdpa", mods, q.dtype), lambda lay: _prepare(lay, mods, q.dtype))
    return block_attention(q, k, v, prepared, scaling, mods)


def _prepare(layout: KeyLayout, mods: ScoreMods | None, dtype: torch.dtype) -> BlockMask:
    """The dense (B, 1, Tq, K) mask of the layout with the modifiers, as one block batch of B."""
    return prepare_block(layout.mask().unsqueeze(1), layout.q_index, layout.k_index, mods, dtype)


__all__ = ["reference_casa_attention", "sdpa_casa_attention", "repeat_kv"]
