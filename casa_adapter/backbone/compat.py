"""Shims over what differs between transformers versions, and what casa_adapter relies on in them.

- `cache_kwarg`: the name under which this version's causal-LM `forward` takes its cache;
- `packed_llm_kwargs`: the keyword arguments that make transformers keep packed samples apart in
  self-attention (it splits rows where `position_ids` do not step by one, under conditions).
"""

from __future__ import annotations

import inspect

import torch
import torch.nn.functional as F
from torch import nn


def cache_kwarg(llm: nn.Module) -> str:
    """transformers renamed `past_key_values` to `cache` (5.2x); use whichever this version's forward names."""
    return "cache" if "cache" in inspect.signature(llm.forward).parameters else "past_key_values"


def packed_llm_kwargs(sample_ids: torch.Tensor, position_ids: torch.Tensor | None = None) -> dict:
    """Keyword arguments for the HF forward of a packed batch, so self-attention stays inside each sample.

    transformers (5.x) splits a row into independent sequences wherever `position_ids` do not step by one
    (`masking_utils.find_packed_sequence_indices`, used by the sdpa, eager and flex masks, sliding windows
    included; flash attention reads `position_ids` itself), but only when the call has no 2D
    `attention_mask` and no cache: with either, samples see each other. So a packed forward passes
    `attention_mask=None`, `use_cache=False` and per-sample `position_ids` (derived from `sample_ids`
    (B, T), 1..k per sample, 0 = padding, when not given). Raises ValueError when the given
    `position_ids` would merge two samples or split one.
    """
    starts = F.pad(sample_ids[:, 1:] != sample_ids[:, :-1], (1, 0), value=True)  # (B, T) first token of a run
    if position_ids is None:
        idx = torch.arange(sample_ids.shape[1], device=sample_ids.device).expand_as(sample_ids)  # (B, T)
        position_ids = idx - torch.where(starts, idx, torch.zeros_like(idx)).cummax(-1).values  # (B, T)
        position_ids = position_ids.masked_fill(sample_ids == 0, 0)
    step = F.pad(position_ids[:, 1:] - position_ids[:, :-1] == 1, (1, 0), value=False)  # (B, T) continues
    real = sample_ids > 0
    if bool(((step == starts) & real).any()):
        raise ValueError(
            "position_ids must restart at each packed sample and step by one inside it "
            "(transformers separates samples where position_ids do not step by one)"
        )
    return {"attention_mask": None, "position_ids": position_ids, "use_cache": False}


__all__ = ["cache_kwarg", "packed_llm_kwargs"]
