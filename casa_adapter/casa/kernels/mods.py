"""Attention-score modifiers of the wrapped family, applied inside CASA as its self-attention applies them.

A `ScoreMods` is read once per CASA layer when it is built (`casa_adapter.backbone.score_mods`) and
handed to the kernel of every call (`kernel(q, k, v, layout, scaling, mods)`). With `s = q.k * scaling`
the score of an allowed (query, key) pair becomes

    s = softcap * tanh(s / softcap)                       (logit softcapping: Gemma 2)
    s = s + alibi[h] * (index(k) - index(q))              (ALiBi: Bloom, MPT, Falcon with alibi=True)
    p = softmax([s ; sink[h]])[:-1]                       (attention sinks: gpt-oss; a zero-value entry)

and a sliding window removes the pairs with `index(q) - index(k) >= sliding_window` (Mistral, Qwen2,
Gemma 2/3 sliding layers; transformers' `sliding_window_overlay`: a query sees its last `window` indices,
itself included). Indices are the layout's sequence indices: image keys (and gist-history keys) sit at
their window's start, so ALiBi biases them by the distance to the window start, and an image whose window
start has slid out of the window is not seen by that query (the window's recent text still is).

This module holds the rule once, in tensor form, for every kernel: `window_allowed` (the window as a
boolean), `alibi_bias` (the additive bias), `modded_scores` (cap then bias, the reference's order),
`prepare_block` (a block's boolean or float mask, from indices alone: kernels keep it with the layout,
so every CASA layer of a forward with the same modifiers shares it) and `block_attention` (one attention
call over a block: SDPA with that mask where it can, an explicit fp32 softmax where softcapping or sinks
need it, since SDPA has neither).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import NamedTuple

import torch
import torch.nn.functional as F


@dataclass(frozen=True)
class ScoreMods:
    """The score modifiers of one CASA layer (all None: plain softmax attention)."""

    alibi: tuple[float, ...] | None = None
    """One ALiBi slope per query head, (H,), as the family scales it (Falcon's already divided by
    sqrt(head_dim)); the bias `slope * (index(k) - index(q))` is added to the scaled scores. None: no ALiBi."""
    softcap: float | None = None
    """Logit cap: scaled scores become `softcap * tanh(s / softcap)` before bias and mask. None: no cap."""
    sliding_window: int | None = None
    """A query sees keys with `index(q) - index(k) < sliding_window` only. None: no window."""
    sinks: tuple[float, ...] | None = None
    """One attention-sink logit per query head, (H,) (gpt-oss, Flint, GraniteSWA, MiMo-V2-Flash): an extra
    softmax entry whose value is zero, so the output is scaled by `sigmoid(lse - sink_h)`. None: no sinks."""

    @property
    def active(self) -> bool:
        """Whether any modifier is set."""
        return any(x is not None for x in (self.alibi, self.softcap, self.sliding_window, self.sinks))

    @property
    def explicit(self) -> bool:
        """Whether a call needs the explicit fp32 softmax (softcap or sinks: SDPA has neither)."""
        return self.softcap is not None or self.sinks is not None

    def sink_logits(self, device: torch.device) -> torch.Tensor:
        """The sink logits as an fp32 tensor (H,) on `device`."""
        return _as_tensor(self.sinks, torch.device(device))

    def slopes(self, device: torch.device) -> torch.Tensor:
        """The ALiBi slopes as an fp32 tensor (H,) on `device` (made once per slopes and device)."""
        return _as_tensor(self.alibi, torch.device(device))


@functools.lru_cache(maxsize=16)
def _as_tensor(values: tuple[float, ...], device: torch.device) -> torch.Tensor:
    """Per-head floats (slopes, sink logits) as an fp32 tensor (H,) on `device`, made once per values and device."""
    return torch.tensor(values, dtype=torch.float32, device=device)  # (H,)


def effective(mods: ScoreMods | None) -> ScoreMods | None:
    """`mods` when it sets any modifier, else None (kernels take their plain path)."""
    return mods if mods is not None and mods.active else None


def window_allowed(mods: ScoreMods | None, q_index: torch.Tensor, k_index: torch.Tensor) -> torch.Tensor | None:
    """(..., Tq, K) bool: the pairs the sliding window keeps (q_index (..., Tq), k_index (..., K)); None: all."""
    if mods is None or mods.sliding_window is None:
        return None
    return (q_index.unsqueeze(-1) - k_index.unsqueeze(-2)) < mods.sliding_window


def alibi_bias(mods: ScoreMods, q_index: torch.Tensor, k_index: torch.Tensor) -> torch.Tensor:
    """(..., H, Tq, K) fp32 ALiBi bias `slope_h * (index(k) - index(q))` for q_index (..., Tq), k_index (..., K)."""
    distance = (k_index.unsqueeze(-2) - q_index.unsqueeze(-1)).float()  # (..., Tq, K)
    slopes = mods.slopes(distance.device).view(-1, 1, 1)  # (H, 1, 1)
    return slopes * distance.unsqueeze(-3)  # (..., H, Tq, K)


def modded_scores(scores: torch.Tensor, mods: ScoreMods | None, q_index, k_index) -> torch.Tensor:
    """Scaled scores (..., H, Tq, K) with the cap and the ALiBi bias applied (in that order), in fp32."""
    scores = scores.float()
    if mods is None:
        return scores
    if mods.softcap is not None:
        scores = mods.softcap * torch.tanh(scores / mods.softcap)
    if mods.alibi is not None:
        scores = scores + alibi_bias(mods, q_index, k_index)
    return scores


class BlockMask(NamedTuple):
    """What a block's attention call needs from the layout and the modifiers, independent of q/k/v (so the
    CASA layers of one forward share it: `prepare_block` runs once per layout, modifiers and dtype)."""

    mask: torch.Tensor | None
    """(n, 1, Lq, Lk) bool, or (n, H or 1, Lq, Lk) additive (ALiBi on allowed pairs, -inf elsewhere; fp32 for
    the explicit path of softcap and sinks, the call's dtype for SDPA); rows without a key are all allowed / 0.
    None: all pairs."""
    seen: torch.Tensor | None
    """(n, 1, Lq, 1) bool: the row has a key (the others are zeroed). None: every row has one."""


def prepare_block(allowed, q_index, k_index, mods: ScoreMods | None, dtype: torch.dtype) -> BlockMask:
    """The mask of one block batch. allowed (n, 1, Lq, Lk) bool or None (all pairs; padding rows must be all
    False); q_index (n, Lq), k_index (n, Lk) sequence indices; dtype: the call's q dtype."""
    window = window_allowed(mods, q_index, k_index)  # (n, Lq, Lk)
    if window is not None:
        allowed = window.unsqueeze(1) if allowed is None else allowed & window.unsqueeze(1)
    seen = None if allowed is None else allowed.any(-1, keepdim=True)  # (n, 1, Lq, 1)
    if mods is None or (mods.alibi is None and not mods.explicit):
        return BlockMask(None if allowed is None else allowed | ~seen, seen)  # key-less rows finite, zeroed after
    zero = torch.zeros((), dtype=torch.float32, device=q_index.device)
    bias = alibi_bias(mods, q_index, k_index) if mods.alibi is not None else zero  # (n, H, Lq, Lk) or ()
    if allowed is not None:  # padding's huge indices never reach the softmax: its rows are 0
        bias = torch.where(seen, torch.where(allowed, bias, float("-inf")), zero)
    return BlockMask(bias if mods.explicit else bias.to(dtype), seen)


def block_attention(q, k, v, prepared: BlockMask, scaling: float, mods: ScoreMods | None) -> torch.Tensor:
    """Attention over one block batch. q (n, H, Lq, hd); k, v (n, Hkv, Lk, hd); `prepared` from `prepare_block`.
    Returns (n, H, Lq, hd), exactly 0 for the queries left without any key."""
    if mods is not None and mods.explicit:
        out = _math_attention(q, k, v, prepared.mask, scaling, mods)
    else:
        gqa = k.shape[1] != q.shape[1]
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=prepared.mask, scale=scaling, enable_gqa=gqa)
    return out if prepared.seen is None else out * prepared.seen.to(out.dtype)


def softmax_with_sinks(scores: torch.Tensor, mods: ScoreMods | None) -> torch.Tensor:
    """softmax over the last dim of fp32 scores (..., H, Lq, K), with one more zero-value entry per head at
    its sink logit where `mods.sinks` is set (that entry is dropped: rows sum to less than 1)."""
    if mods is None or mods.sinks is None:
        return torch.softmax(scores, dim=-1)
    sink = mods.sink_logits(scores.device).view(-1, 1, 1).expand(*scores.shape[:-1], 1)  # (..., H, Lq, 1)
    return torch.softmax(torch.cat([scores, sink], -1), dim=-1)[..., :-1]


def _math_attention(q, k, v, bias: torch.Tensor, scaling: float, mods: ScoreMods) -> torch.Tensor:
    """The explicit path (softcapping and sinks, which SDPA lacks): fp32 scaled scores, cap, + bias (ALiBi and
    mask), softmax with the sinks. q (n, H, Lq, hd); k, v (n, Hkv, Lk, hd); bias (n, H or 1, Lq, Lk) fp32, () or
    None. GQA by grouping query heads."""
    n, H, Lq, hd = q.shape
    Hkv = k.shape[1]
    qg = q.view(n, Hkv, H // Hkv, Lq, hd)  # (n, Hkv, r, Lq, hd)
    scores = torch.matmul(qg, k.unsqueeze(2).transpose(-1, -2)).view(n, H, Lq, -1).float() * scaling  # (n, H, Lq, Lk)
    if mods.softcap is not None:
        scores = mods.softcap * torch.tanh(scores / mods.softcap)
    scores = scores if bias is None else scores + bias
    probs = softmax_with_sinks(scores, mods).to(v.dtype).view(n, Hkv, H // Hkv, Lq, -1)  # (n, Hkv, r, Lq, Lk)
    return torch.matmul(probs, v.unsqueeze(2)).view(n, H, Lq, hd)


__all__ = [
    "BlockMask",
    "ScoreMods",
    "alibi_bias",
    "block_attention",
    "effective",
    "modded_scores",
    "prepare_block",
    "softmax_with_sinks",
    "window_allowed",
]
