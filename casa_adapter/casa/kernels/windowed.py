"""Windowed CASA attention: one SDPA call per bucket of window blocks, never the dense mask.

`windowed_casa_attention` computes exactly what `dense.reference_casa_attention` computes (the rule
is in `casa_adapter.casa.kernels.layout`). It follows the layout's `plan.WindowPlan` (made once per
forward): each bucket's queries and keys are gathered into one block batch (n, H, Lq, Lk), run
through `scaled_dot_product_attention` (GQA through `enable_gqa`), and scattered back to their
(row, token) places. Only row gathers, SDPA and `index_put` touch q/k/v: the kernel is
differentiable and works in fp32/bf16/fp16 on CPU and CUDA.

With score modifiers (`mods.ScoreMods`: ALiBi, a sliding window, softcapping, sinks) each bucket goes through
`mods.block_attention` with its slots' sequence indices (`WindowPlan.q_index` / `k_index`): ALiBi and
the window become the bucket's float/boolean mask, softcapping and sinks take the explicit fp32 path per bucket.
The plan itself does not depend on them, so layers with different modifiers (Gemma 2's sliding and full
layers) share it.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from casa_adapter.casa.kernels.layout import KeyLayout
from casa_adapter.casa.kernels.mods import BlockMask, ScoreMods, block_attention, effective, prepare_block
from casa_adapter.casa.kernels.plan import WindowPlan, plan_windows


def _gather_blocks(x: torch.Tensor, slots: torch.Tensor, sizes: list[tuple[int, int]]) -> list[torch.Tensor]:
    """Blocks (n, h, L, hd) of x (B, h, T, hd) read at flat token slots (N,) (b * T + t); sizes = (n, L) per block."""
    _, h, T, hd = x.shape  # (B, h, T, hd)
    if x.transpose(1, 2).is_contiguous():  # token-major memory, as projections produce: rows need no copy
        rows, (sb, sh, st) = x.transpose(1, 2).reshape(-1, hd), (T * h, 1, h)  # (B*T*h, hd)
    else:
        rows, (sb, sh, st) = x.contiguous().view(-1, hd), (h * T, T, 1)  # (B*h*T, hd)
    with torch.no_grad():
        at = torch.div(slots, T, rounding_mode="floor") * sb + slots % T * st  # (N,)
        heads = torch.arange(h, device=x.device).view(1, h, 1) * sh  # (1, h, 1)
        parts = at.split([n * L for n, L in sizes])
        index = torch.cat([(p.view(n, 1, L) + heads).reshape(-1) for p, (n, L) in zip(parts, sizes)])
    blocks = rows.index_select(0, index).split([n * h * L for n, L in sizes])  # (sum n*h*L, hd)
    return [b.view(n, h, L, hd) for b, (n, L) in zip(blocks, sizes)]


def windowed_casa_attention(q, k, v, layout: KeyLayout, scaling: float, mods: ScoreMods | None = None):
    """CASA attention per window block. q (B, H, Tq, hd); k, v (B, Hkv, K, hd) -> (B, H, Tq, hd)."""
    B, H, Tq, hd = q.shape
    mods = effective(mods)
    plan = layout.derived("windowed", plan_windows)
    if plan is None:
        return q.new_zeros(q.shape)
    q_sizes, k_sizes = [(n, lq) for n, lq, _ in plan.shapes], [(n, lk) for n, _, lk in plan.shapes]
    qs, ks, vs = (
        _gather_blocks(x, sl, sz)
        for x, sl, sz in ((q, plan.q_slots, q_sizes), (k, plan.k_slots, k_sizes), (v, plan.k_slots, k_sizes))
    )
    with torch.no_grad():  # output row of each (chunk, head, slot); dropped slots go to the spare row B * Tq
        dest = torch.where(plan.keep, plan.q_slots, B * Tq).split([n * lq for n, lq in q_sizes])
        head = torch.arange(H, device=q.device).view(1, H, 1)
        dest = [(d.view(n, 1, lq) * H + head).reshape(-1) for d, (n, lq) in zip(dest, q_sizes)]
    masks = plan.masks
    if mods is not None:  # one BlockMask per bucket, made once per layout, modifiers and dtype
        masks = layout.derived(("windowed", mods, q.dtype), lambda lay: _modded_masks(plan, mods, q.dtype))
    out = q.new_zeros((B * Tq + 1) * H, hd)  # token-major rows, one spare token
    for qb, kb, vb, mask, at in zip(qs, ks, vs, masks, dest):
        if mods is None:
            ob = F.scaled_dot_product_attention(qb, kb, vb, attn_mask=mask, scale=scaling, enable_gqa=k.shape[1] != H)
        else:
            ob = block_attention(qb, kb, vb, mask, scaling, mods)
        out = out.index_put_((at,), ob.reshape(-1, hd).to(out.dtype))  # ob (n, H, Lq, hd); bf16 under autocast
    return out[: B * Tq * H].view(B, Tq, H, hd).transpose(1, 2)  # (B, H, Tq, hd)


def _modded_masks(plan: WindowPlan, mods: ScoreMods, dtype: torch.dtype) -> list[BlockMask]:
    """Each bucket's mask with the modifiers, from its slots' indices. Padding and key-less slots become rows
    without keys (their outputs go to the spare row anyway)."""
    keeps = plan.keep.split([n * lq for n, lq, _ in plan.shapes])
    out = []
    for (n, _, _), mask, keep, qi, ki in zip(plan.shapes, plan.masks, keeps, plan.q_index, plan.k_index):
        allowed = None if mask is None else mask & keep.view(n, 1, -1, 1)  # (n, 1, Lq, Lk)
        out.append(prepare_block(allowed, qi, ki, mods, dtype))
    return out


__all__ = ["windowed_casa_attention"]
