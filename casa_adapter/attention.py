"""CASA attention kernels.

Every kernel computes the same thing. Each query (a text token) carries a window id and a
sequence index; each key carries the window id and index of where it sits:

    allowed(q, k) = window(q) > 0  and  window(k) == window(q)  and  index(k) <= index(q)

Image keys carry the index of the token that opened their window, so every query of that
window sees all of them; text keys of the window are seen causally. Window 0 is "no window"
(text before the first image, padding): those queries get an output of exactly zero.
Window ids are unique within a row, so packed samples never see each other.

- `reference_casa_attention`: plain dense-mask softmax, the source of truth for tests;
- `sdpa_casa_attention`: the same dense mask through `scaled_dot_product_attention`;
- `windowed_casa_attention` (`casa_adapter.windowed`): per-window blocks, bucketed SDPA; never
  forms the dense mask;
- `flash_casa_attention` (`casa_adapter.flash`): FlashAttention varlen over the windows (CUDA, reached
  through "auto");
- `auto_casa_attention`: picks one of these per call (see its docstring).

All take (q, k, v, q_window, q_index, k_window, k_index, scaling); docs/kernels.md compares them.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from casa_adapter.flash import flash_casa_attention, use_flash
from casa_adapter.windowed import windowed_casa_attention


def casa_mask(q_window: torch.Tensor, q_index: torch.Tensor, k_window: torch.Tensor, k_index: torch.Tensor) -> torch.Tensor:
    """Boolean (B, Tq, K) mask of allowed query/key pairs. Inputs (B, Tq) and (B, K) long."""
    same = q_window.unsqueeze(-1) == k_window.unsqueeze(-2)  # (B, Tq, K)
    causal = k_index.unsqueeze(-2) <= q_index.unsqueeze(-1)  # (B, Tq, K)
    return same & causal & (q_window > 0).unsqueeze(-1)


def _repeat_kv(x: torch.Tensor, n_rep: int) -> torch.Tensor:
    """(B, Hkv, K, hd) -> (B, Hkv * n_rep, K, hd), each kv head serving n_rep query heads."""
    return x if n_rep == 1 else x.repeat_interleave(n_rep, dim=1)


def reference_casa_attention(q, k, v, q_window, q_index, k_window, k_index, scaling: float) -> torch.Tensor:
    """Dense-mask CASA attention. q (B, H, Tq, hd); k, v (B, Hkv, K, hd) -> (B, H, Tq, hd)."""
    k, v = _repeat_kv(k, q.shape[1] // k.shape[1]), _repeat_kv(v, q.shape[1] // v.shape[1])
    allowed = casa_mask(q_window, q_index, k_window, k_index).unsqueeze(1)  # (B, 1, Tq, K)
    scores = torch.matmul(q, k.transpose(-1, -2)) * scaling  # (B, H, Tq, K)
    scores = scores.masked_fill(~allowed, float("-inf"))
    probs = torch.softmax(scores, dim=-1).nan_to_num(0.0)  # rows with no key -> 0
    return torch.matmul(probs, v)  # (B, H, Tq, hd)


def sdpa_casa_attention(q, k, v, q_window, q_index, k_window, k_index, scaling: float) -> torch.Tensor:
    """Same as the reference through SDPA. q (B, H, Tq, hd); k, v (B, Hkv, K, hd) -> (B, H, Tq, hd)."""
    k, v = _repeat_kv(k, q.shape[1] // k.shape[1]), _repeat_kv(v, q.shape[1] // v.shape[1])
    allowed = casa_mask(q_window, q_index, k_window, k_index)  # (B, Tq, K)
    has_key = allowed.any(-1, keepdim=True)  # (B, Tq, 1)
    allowed = allowed | ~has_key  # keep SDPA finite on empty rows; zeroed below
    out = F.scaled_dot_product_attention(q, k, v, attn_mask=allowed.unsqueeze(1), scale=scaling)  # (B, H, Tq, hd)
    return out * has_key.unsqueeze(1).to(out.dtype)


def auto_casa_attention(q, k, v, q_window, q_index, k_window, k_index, scaling: float) -> torch.Tensor:
    """FlashAttention varlen on CUDA in fp16/bf16 when `flash-attn` is installed; the dense SDPA kernel for
    one query per row (a decode step: nothing to group, its mask is (B, 1, K)); the windowed kernel otherwise."""
    if use_flash(q):
        kernel = flash_casa_attention
    elif q.shape[2] == 1:
        kernel = sdpa_casa_attention
    else:
        kernel = windowed_casa_attention
    return kernel(q, k, v, q_window, q_index, k_window, k_index, scaling)


KERNELS = {
    "reference": reference_casa_attention,
    "sdpa": sdpa_casa_attention,
    "windowed": windowed_casa_attention,
    "auto": auto_casa_attention,
}
"""Kernel names for `wrap(kernel=...)`. The flash path has no entry of its own: it needs CUDA and flash-attn,
and "auto" takes it whenever it can run."""
