"""CASA attention through torch's own `flex_attention` (CUDA, no extra package; compiled there).

The CASA rule of a `KeyLayout` becomes a flex `mask_mod` (`layout_mask_mod`, the one place that reads
the layout), and `create_block_mask` turns it into a `BlockMask` once per layout (`flex_plan`, kept with
`KeyLayout.derived`, so all CASA layers of a forward share it). `flex_attention` then skips every
(128 x 128) block the mask leaves empty, which is what makes it sparse: keys of one window are
contiguous in the layer's key layout ([cached ; images by window ; text]), so a query block touches the
image block of its window and the text blocks up to itself. GQA runs through `enable_gqa`.

On CUDA the kernel calls `torch.compile(flex_attention)` (Triton; forward and backward) and builds
the block mask compiled too. Elsewhere it calls flex_attention eagerly, which torch runs as a dense
math fallback with no backward on CPU: there `flex` is for checking the mask (tests), not for use,
and asking it for gradients raises an error that says so. Queries without any allowed key get exactly
zero (and zero gradient) whatever flex returns for fully masked rows.

Score modifiers (`mods.ScoreMods`): a sliding window joins the mask_mod (so the block mask, made once per
layout and window, skips the blocks it hides), softcapping and ALiBi are a flex `score_mod`
(`layout_score_mod`) reading the same padded indices; attention sinks scale each row by
`sigmoid(lse - sink_h)` from the lse flex returns (`return_lse=True`).

Works with torch 2.5 and later (`torch.nn.attention.flex_attention`: `flex_attention(q, k, v,
block_mask=..., scale=..., enable_gqa=...)`, `create_block_mask(mask_mod, B, H, Q_LEN, KV_LEN, device,
BLOCK_SIZE, _compile)`); `flex_available()` is False on older ones.
"""

from __future__ import annotations

import functools
import warnings
from typing import NamedTuple

import torch
import torch.nn.functional as F

from casa_adapter.casa.kernels.layout import KeyLayout
from casa_adapter.casa.kernels.mods import ScoreMods, effective

BLOCK = 128
"""flex_attention's block size; the layout tensors the mask_mod reads are padded to a multiple of it."""


@functools.cache
def _flex():
    """(flex_attention, create_block_mask), or None when this torch has no flex attention."""
    try:
        from torch.nn.attention.flex_attention import create_block_mask, flex_attention
    except ImportError:
        return None
    return flex_attention, create_block_mask


def flex_available() -> bool:
    """Whether the installed torch has `torch.nn.attention.flex_attention`."""
    return _flex() is not None


@functools.cache
def _compiled_flex():
    """`torch.compile(flex_attention)`: the fused Triton kernel on CUDA (shapes become dynamic on a second size)."""
    return torch.compile(_flex()[0])


def _pad(x: torch.Tensor, value: int) -> torch.Tensor:
    """(B, T) -> (B, T') with T' the next multiple of BLOCK, filled with `value`."""
    return F.pad(x, (0, -x.shape[1] % BLOCK), value=value)


def layout_mask_mod(layout: KeyLayout, sliding_window: int | None = None):
    """The CASA rule of `layout` as a flex `mask_mod(b, h, q_idx, kv_idx) -> bool`:

        window(q) > 0  and  window(k) == window(q)  and  index(k) <= index(q)
        [and  index(q) - index(k) < sliding_window]

    It reads only the layout's public fields (q_window, q_index, k_window, k_index), padded to a
    multiple of BLOCK (padded keys carry window -1, so they match no query), so a kernel that looks at
    indices past the ends of a partial block reads defined values."""
    q_window, q_index = _pad(layout.q_window, 0), _pad(layout.q_index, 0)  # (B, Tq')
    k_window, k_index = _pad(layout.k_window, -1), _pad(layout.k_index, 0)  # (B, K')

    def mask_mod(b, h, q_idx, kv_idx):
        w, qi, ki = q_window[b, q_idx], q_index[b, q_idx], k_index[b, kv_idx]
        return (w > 0) & (k_window[b, kv_idx] == w) & (ki <= qi)

    def sliding_mask_mod(b, h, q_idx, kv_idx):
        return mask_mod(b, h, q_idx, kv_idx) & (q_index[b, q_idx] - k_index[b, kv_idx] < sliding_window)

    return mask_mod if sliding_window is None else sliding_mask_mod


def layout_score_mod(layout: KeyLayout, mods: ScoreMods | None):
    """The softcap and ALiBi of `mods` as a flex `score_mod(score, b, h, q_idx, kv_idx)` (flex has scaled the
    score already): `cap * tanh(score / cap)`, then `+ slope[h] * (index(k) - index(q))`. None when neither is set."""
    if mods is None or (mods.softcap is None and mods.alibi is None):
        return None
    q_index, k_index = _pad(layout.q_index, 0), _pad(layout.k_index, 0)  # (B, Tq'), (B, K')
    slopes = None if mods.alibi is None else mods.slopes(q_index.device)  # (H,)
    cap = mods.softcap

    def score_mod(score, b, h, q_idx, kv_idx):
        if cap is not None:
            score = cap * torch.tanh(score / cap)
        if slopes is not None:
            score = score + slopes[h] * (k_index[b, kv_idx] - q_index[b, q_idx])
        return score

    return score_mod


def has_key(layout: KeyLayout, sliding_window: int | None = None) -> torch.Tensor:
    """(B, Tq) bool: the query sees at least one key, i.e. its window's latest key at or before its index exists
    (and lies within the sliding window). Found by one sorted search per query, without the dense (Tq, K) mask."""
    (B, K), Tq = layout.k_window.shape, layout.q_window.shape[1]
    if K == 0 or Tq == 0:
        return torch.zeros(B, Tq, dtype=torch.bool, device=layout.q_window.device)
    span = int(max(layout.q_window.max(), layout.k_window.max())) + 1
    big = int(max(layout.q_index.max(), layout.k_index.max())) + 2  # > every index: (row, window, index) sorts
    rows = torch.arange(B, device=layout.k_window.device).unsqueeze(-1)  # (B, 1)
    k_key = torch.where(layout.k_window > 0, ((rows * span + layout.k_window) * big + layout.k_index), -1)  # (B, K)
    keys = k_key.reshape(-1).sort().values  # (B*K,)
    q_group = rows * span + layout.q_window  # (B, Tq)
    at = torch.searchsorted(keys, (q_group * big + layout.q_index).reshape(-1), right=True).view(B, Tq) - 1
    latest = keys[at.clamp(min=0)]  # (B, Tq) the latest key of any group at or before the query
    seen = (layout.q_window > 0) & (at >= 0) & (torch.div(latest, big, rounding_mode="floor") == q_group)
    if sliding_window is not None:
        seen &= layout.q_index - latest % big < sliding_window
    return seen


class FlexPlan(NamedTuple):
    """What `flex_casa_attention` derives from a layout, once (per sliding window)."""

    block_mask: object | None
    """The `BlockMask` (B, 1, Tq, K); None when no query sees any key."""
    keep: torch.Tensor
    """(B, Tq) bool: queries with at least one key (the others give exactly 0)."""


def flex_plan(layout: KeyLayout, sliding_window: int | None = None) -> FlexPlan:
    """The layout's `BlockMask` (compiled on CUDA) and the queries that see a key."""
    (B, Tq), K = layout.q_window.shape, layout.k_window.shape[1]
    keep = has_key(layout, sliding_window)  # (B, Tq)
    if Tq == 0 or K == 0 or not bool(keep.any()):  # one host sync per layout, as every varlen plan has
        return FlexPlan(None, keep)
    device = layout.q_window.device
    mask_mod = layout_mask_mod(layout, sliding_window)
    block_mask = _flex()[1](mask_mod, B, None, Tq, K, device=device, _compile=device.type == "cuda")
    return FlexPlan(block_mask, keep)


def _same_dtype(q, k, v):
    """q, k, v in one dtype, as flex_attention needs: autocast's dtype inside an autocast region (where
    RoPE may leave q in fp32 and the projections give bf16), else q's."""
    device = q.device.type
    dtype = torch.get_autocast_dtype(device) if torch.is_autocast_enabled(device) else q.dtype
    return (x if x.dtype == dtype else x.to(dtype) for x in (q, k, v))


def flex_casa_attention(q, k, v, layout: KeyLayout, scaling: float, mods: ScoreMods | None = None) -> torch.Tensor:
    """CASA attention through flex_attention. q (B, H, Tq, hd); k, v (B, Hkv, K, hd) -> (B, H, Tq, hd)."""
    if not flex_available():
        raise RuntimeError(
            f"CASA kernel 'flex' needs torch.nn.attention.flex_attention (torch >= 2.5); this torch is "
            f"{torch.__version__}: use kernel='windowed' or 'auto'"
        )
    if not q.is_cuda and torch.is_grad_enabled() and any(x.requires_grad for x in (q, k, v)):
        raise RuntimeError(
            "CASA kernel 'flex' has no backward on CPU (torch's flex_attention runs only its forward there): "
            "use kernel='windowed' or 'auto' to train on CPU"
        )
    mods = effective(mods)
    window = None if mods is None else mods.sliding_window
    name = "flex" if window is None else f"flex/sliding_window={window}"
    plan = layout.derived(name, functools.partial(flex_plan, sliding_window=window))
    if plan.block_mask is None:
        return q.new_zeros(q.shape)
    q, k, v = _same_dtype(q, k, v)
    call = dict(score_mod=layout_score_mod(layout, mods), block_mask=plan.block_mask, scale=scaling)
    call["enable_gqa"] = k.shape[1] != q.shape[1]
    sinks = mods is not None and mods.sinks is not None
    if sinks:
        call["return_lse"] = True
    if q.is_cuda:
        out = _compiled_flex()(q, k, v, **call)
    else:
        with warnings.catch_warnings():  # "flex_attention called without torch.compile()": expected off CUDA
            warnings.filterwarnings("ignore", message=".*without torch.compile.*")
            out = _flex()[0](q, k, v, **call)
    if sinks:  # a zero-value sink entry scales each row by sigmoid(lse - sink_h)
        out, lse = out  # (B, H, Tq, hd), (B, H, Tq)
        keep = torch.sigmoid(lse.float() - mods.sink_logits(q.device).view(1, -1, 1))  # (B, H, Tq)
        out = (out.float() * keep.unsqueeze(-1)).to(out.dtype)
    return torch.where(plan.keep[:, None, :, None], out, out.new_zeros(()))  # (B, H, Tq, hd)


__all__ = [
    "BLOCK",
    "FlexPlan",
    "flex_available",
    "flex_casa_attention",
    "flex_plan",
    "has_key",
    "layout_mask_mod",
    "layout_score_mod",
]
