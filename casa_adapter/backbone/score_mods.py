"""The attention-score modifiers a family's self-attention applies, read once per CASA layer at wrap time.

`family_score_mods(access, layer_idx)` returns the `ScoreMods` (`casa_adapter.casa.kernels.mods`) that
the block's CASA layer hands its kernel, read the way the family's own code applies them:

- **ALiBi** (`ALIBI`): Bloom adds `slope_h * position(k)` (positions from the attention mask's cumsum) to
  the scaled scores, MPT `slope_h * (position(k) - (L - 1))`, Falcon with `alibi=True` the Bloom slopes
  rounded to bf16 and divided by sqrt(head_dim). Softmax ignores a per-query constant, so each is
  `slope_h * (index(k) - index(q))` with the family's slopes, which are read off the family's own function
  (Bloom's `_get_alibi_slopes`, MPT's `build_mpt_alibi_tensor` with the default `alibi_bias_max=8` its model
  uses, Falcon's `build_alibi_tensor`). A modelling module that mentions ALiBi but is not in the table is
  refused (`UnsupportedModelError`): CASA would leave the bias out.
- **Logit softcapping**: the attention's `attn_logit_softcapping`, where its `forward` passes `softcap=` to
  the attention function (Gemma 2, VaultGemma). Gemma 3 keeps the attribute but never passes it, so its SA
  has no cap, and neither has CASA.
- **Sliding window**: where the family's model builds sliding masks (its module uses transformers'
  `create_sliding_window_causal_mask`) and `config.sliding_window` is set: the blocks whose
  `config.layer_types[i]` is `"sliding_attention"` (Gemma 2/3, Qwen2, Cohere 2, ...), or every block when the
  config has no `layer_types` (Mistral, Mixtral, Phi-3, Starcoder2). The window is transformers'
  (`sliding_window_overlay`): a query sees the keys with `index(q) - index(k) < sliding_window`.
- **Attention sinks**: the attention's `sinks` parameter, one logit per head (gpt-oss, Flint, GraniteSWA,
  GraniteMoeSWA, MiMo-V2-Flash's sliding layers): a softmax entry with zero value. Read as floats once: the
  base is frozen, so they do not change while CASA trains.
"""

from __future__ import annotations

import inspect
import math
import sys
from collections.abc import Callable

import torch

from casa_adapter.backbone.access import AttentionAccess
from casa_adapter.backbone.spec import UnsupportedModelError
from casa_adapter.casa.kernels.mods import ScoreMods


def _bloom_slopes(module, access: AttentionAccess) -> torch.Tensor:
    return module._get_alibi_slopes(access.num_heads, torch.device("cpu"))  # (H,)


def _mpt_slopes(module, access: AttentionAccess) -> torch.Tensor:
    return -module.build_mpt_alibi_tensor(access.num_heads, 2)[:, 0, 0]  # slope * (0 - 1) at key 0: (H,)


def _falcon_slopes(module, access: AttentionAccess) -> torch.Tensor | None:
    if not access.config.alibi:
        return None
    ones = torch.ones(1, 2, dtype=torch.long)
    slopes = module.build_alibi_tensor(ones, access.num_heads, torch.float32)[:, 0, 1]  # bf16 slope * 1: (H,)
    return slopes / math.sqrt(access.config.hidden_size // access.num_heads)


ALIBI: dict[str, Callable] = {"bloom": _bloom_slopes, "mpt": _mpt_slopes, "falcon": _falcon_slopes}
"""model_type -> its ALiBi slopes (H,) from the family's modelling module (None: this config uses none)."""


def _alibi(access: AttentionAccess) -> tuple[float, ...] | None:
    module = sys.modules[type(access.attn).__module__]
    read = ALIBI.get(access.model_type)
    if read is None:
        if any("alibi" in name.lower() for name in vars(module)):
            raise UnsupportedModelError(
                f"model_type {access.model_type!r}: its attention module ({module.__name__}) uses ALiBi, which CASA"
                " only knows how to read for bloom, mpt and falcon; add it to casa_adapter.backbone.score_mods.ALIBI"
            )
        return None
    slopes = read(module, access)
    return None if slopes is None else tuple(float(s) for s in slopes)


def _softcap(access: AttentionAccess) -> float | None:
    cap = getattr(access.attn, "attn_logit_softcapping", None)
    if cap is None:
        return None
    try:
        passes = "softcap=" in inspect.getsource(type(access.attn).forward)
    except (OSError, TypeError):  # no source (a compiled or dynamically made class): assume the family uses it
        passes = True
    return float(cap) if passes else None


def _sliding_window(access: AttentionAccess, layer_idx: int) -> int | None:
    module = sys.modules[type(access.attn).__module__]
    window = getattr(access.config, "sliding_window", None)
    if window is None or not hasattr(module, "create_sliding_window_causal_mask"):
        return None
    layer_types = getattr(access.config, "layer_types", None)
    if layer_types is None:
        return int(window)
    idx = getattr(access.attn, "layer_idx", None)
    idx = idx if isinstance(idx, int) else layer_idx
    return int(window) if layer_types[idx] == "sliding_attention" else None


def _sinks(access: AttentionAccess) -> tuple[float, ...] | None:
    sinks = getattr(access.attn, "sinks", None)  # None on MiMo-V2-Flash's full-attention layers
    if not isinstance(sinks, torch.Tensor):
        return None
    if sinks.numel() != access.num_heads:
        raise UnsupportedModelError(
            f"model_type {access.model_type!r}: attention sinks of shape {tuple(sinks.shape)}, expected one per query "
            f"head ({access.num_heads})"
        )
    return tuple(float(x) for x in sinks.detach().float().cpu())


def family_score_mods(access: AttentionAccess, layer_idx: int) -> ScoreMods:
    """The score modifiers of block `layer_idx`'s self-attention (see the module docstring); none for a CASA layer
    beside a non-attention mixer."""
    if not access.has_self_attention:
        return ScoreMods()
    return ScoreMods(
        alibi=_alibi(access),
        softcap=_softcap(access),
        sliding_window=_sliding_window(access, layer_idx),
        sinks=_sinks(access),
    )


__all__ = ["ALIBI", "family_score_mods"]
