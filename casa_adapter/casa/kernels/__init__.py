"""CASA attention kernels, by name.

Every kernel takes `(q, k, v, layout, scaling, mods=None)`: q (B, H, Tq, hd), k and v (B, Hkv, K, hd), a
`KeyLayout` saying which query may see which key, the softmax scale, and the family's score modifiers
(`mods.ScoreMods`: ALiBi, logit softcapping, a sliding window, attention sinks; None for none); it returns
(B, H, Tq, hd) with exactly zero for queries that see no key. All compute the same thing (docs/kernels.md):

- `reference` (`dense.py`): a plain dense-mask softmax, the source of truth for tests;
- `sdpa` (`dense.py`): the same dense mask through `scaled_dot_product_attention`;
- `windowed` (`windowed.py`, planned in `plan.py`): per-window blocks bucketed into a few SDPA calls;
- flash varlen (`flash.py`): FlashAttention over the windows (CUDA + flash-attn, reached through `auto`);
- `flex` (`flex.py`): torch's flex_attention with a block mask from the layout (compiled on CUDA; no extra package);
- `auto`: picks one of these per call (see `auto_casa_attention`).
"""

from __future__ import annotations

import torch

from casa_adapter.casa.kernels.dense import reference_casa_attention, sdpa_casa_attention
from casa_adapter.casa.kernels.flash import flash_casa_attention, flash_fits, use_flash
from casa_adapter.casa.kernels.flex import flex_available, flex_casa_attention
from casa_adapter.casa.kernels.layout import KeyLayout
from casa_adapter.casa.kernels.mods import ScoreMods
from casa_adapter.casa.kernels.windowed import windowed_casa_attention


def auto_casa_attention(q, k, v, layout: KeyLayout, scaling: float, mods: ScoreMods | None = None) -> torch.Tensor:
    """The dense SDPA kernel for one query per row (a decode step: nothing to group, its mask is (B, 1, K),
    and no varlen bookkeeping per layer and step); FlashAttention varlen on CUDA in fp16/bf16 when
    `flash-attn` is installed and can apply `mods` (`flash_fits`: no ALiBi, sliding window or sinks); torch's
    flex_attention on CUDA otherwise (any dtype); the windowed kernel elsewhere (CPU)."""
    if q.shape[2] == 1:
        kernel = sdpa_casa_attention
    elif use_flash(q) and flash_fits(mods):
        kernel = flash_casa_attention
    elif q.is_cuda and flex_available():
        kernel = flex_casa_attention
    else:
        kernel = windowed_casa_attention
    return kernel(q, k, v, layout, scaling, mods)


KERNELS = {
    "reference": reference_casa_attention,
    "sdpa": sdpa_casa_attention,
    "windowed": windowed_casa_attention,
    "flex": flex_casa_attention,
    "auto": auto_casa_attention,
}
"""Kernel names for `CasaSettings.kernel`. The flash path has no entry of its own: it needs CUDA and
flash-attn, and "auto" takes it whenever it can run."""

__all__ = [
    "KERNELS",
    "KeyLayout",
    "ScoreMods",
    "auto_casa_attention",
    "reference_casa_attention",
    "sdpa_casa_attention",
    "windowed_casa_attention",
    "flash_casa_attention",
    "flex_casa_attention",
]
