"""FlashAttention varlen path for CASA attention (CUDA, fp16/bf16, optional `flash-attn` package).

Every window with queries becomes one varlen sequence: q = its text queries, k/v = its keys sorted
by sequence index (`cu_seqlens_q`, `cu_seqlens_k`). `flash_attn_varlen_func(causal=True)` aligns the
causal mask bottom-right, which is exactly the CASA rule when each window's sorted keys end with the
queries' own text keys (the layout the CASA layer builds: [images ; text so far]); `causal=False` is
exact when every query sees all its window's keys (the "ca" variant, decode steps). `varlen_layout`
checks which one holds, and `flash_casa_attention` falls back to the windowed kernel when neither does.

Score modifiers (`mods.ScoreMods`): softcapping goes to `flash_attn_varlen_func(softcap=...)`, which caps the
scaled scores as Gemma 2 does. ALiBi and sliding windows do not fit: flash measures both by a key's place in
its varlen sequence, where a window's image keys take one place each, while CASA measures them by sequence
index, where all of them sit at the window start. Calls with either, or with attention sinks (flash-attn 2 has
none), go to the windowed kernel (`flash_fits`), and `auto` sends them to flex on CUDA instead. Not run here
(no GPU, no flash-attn).
"""

from __future__ import annotations

import functools
import importlib.util

import torch

from casa_adapter.casa.kernels.layout import KeyLayout
from casa_adapter.casa.kernels.mods import ScoreMods, effective
from casa_adapter.casa.kernels.plan import chunk_windows
from casa_adapter.casa.kernels.windowed import windowed_casa_attention


@functools.cache
def flash_installed() -> bool:
    return importlib.util.find_spec("flash_attn") is not None


def use_flash(q: torch.Tensor) -> bool:
    """Whether the flash path can run for these queries: CUDA, fp16/bf16, `flash-attn` importable."""
    return q.is_cuda and q.dtype in (torch.float16, torch.bfloat16) and flash_installed()


def flash_fits(mods: ScoreMods | None) -> bool:
    """Whether flash varlen can apply these modifiers: softcapping yes; ALiBi, sliding windows, sinks no (above)."""
    return mods is None or (mods.alibi is None and mods.sliding_window is None and mods.sinks is None)


def _varlen():
    """`flash_attn_varlen_func`, imported on first use (flash-attn is an optional extra)."""
    from flash_attn import flash_attn_varlen_func

    return flash_attn_varlen_func


def _segments(sizes: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Sequence sizes (S,) -> cu_seqlens (S+1,) int32, sequence of each element (N,), rank inside it (N,)."""
    cu = torch.nn.functional.pad(sizes.cumsum(0), (1, 0))  # (S+1,)
    seq = torch.repeat_interleave(torch.arange(sizes.numel(), device=sizes.device), sizes)  # (N,)
    return cu.to(torch.int32), seq, torch.arange(seq.numel(), device=sizes.device) - cu[seq]


def varlen_layout(layout: KeyLayout):
    """(q rows (Nq,), k rows (Nk,), cu_q, cu_k, max_q, max_k, causal) for the varlen call, or None when the
    windows are not bottom-right causal nor fully visible. Rows are flat b * Tq + t and b * K + j."""
    q_index, k_index = layout.q_index, layout.k_index
    c = chunk_windows(layout, chunk=layout.q_window.shape[1] + 1)  # one chunk per window
    if c is None or not bool((c.lk > 0).any()):
        return None
    sel = c.lk > 0  # windows without keys give zero outputs: leave them out
    lq, lk, q_start, k_start = c.lq[sel], c.lk[sel], c.q_start[sel], c.k_start[sel]
    cu_q, q_seq, q_rank = _segments(lq)
    cu_k, k_seq, k_rank = _segments(lk)
    q_rows, k_rows = c.q_members[q_start[q_seq] + q_rank], c.k_members[k_start[k_seq] + k_rank]
    big = q_index.numel() + k_index.numel() + int(max(q_index.max(), k_index.max())) + 1
    k_key = k_seq * big + k_index.reshape(-1)[k_rows]  # (Nk,) sorted: by window, then index
    seen = torch.searchsorted(k_key, q_seq * big + q_index.reshape(-1)[q_rows], right=True) - cu_k[q_seq]  # (Nq,)
    bottom_right = (q_rank + (lk - lq)[q_seq] + 1).clamp(min=0)
    if bool((seen == bottom_right).all()):
        causal = True
    elif bool((seen == lk[q_seq]).all()):
        causal = False
    else:
        return None
    return q_rows, k_rows, cu_q, cu_k, int(lq.max()), int(lk.max()), causal


def flash_casa_attention(q, k, v, layout: KeyLayout, scaling: float, mods: ScoreMods | None = None):
    """CASA attention through FlashAttention varlen. q (B, H, Tq, hd); k, v (B, Hkv, K, hd) -> (B, H, Tq, hd)."""
    B, H, Tq, hd = q.shape
    mods = effective(mods)
    segments = layout.derived("varlen", varlen_layout) if flash_fits(mods) else None
    if segments is None:
        return windowed_casa_attention(q, k, v, layout, scaling, mods)
    q_rows, k_rows, cu_q, cu_k, max_q, max_k, causal = segments
    rows = lambda x: x.transpose(1, 2).reshape(-1, x.shape[1], hd)  # (B*T, h, hd)
    out = _varlen()(
        rows(q)[q_rows],
        rows(k)[k_rows],
        rows(v)[k_rows],
        cu_q,
        cu_k,
        max_q,
        max_k,
        softmax_scale=scaling,
        causal=causal,
        **({} if mods is None or mods.softcap is None else {"softcap": mods.softcap}),  # flash-attn >= 2.6
    )  # (Nq, H, hd)
    full = q.new_zeros(B * Tq, H, hd).index_put((q_rows,), out)  # (B*Tq, H, hd)
    return full.view(B, Tq, H, hd).transpose(1, 2)  # (B, H, Tq, hd)


__all__ = ["flash_casa_attention", "flash_fits", "flash_installed", "use_flash", "varlen_layout"]
