"""Rotary styles: how a family's `position_embeddings` become the (cos, sin) tables CASA rotates with.

A CASA layer rotates its queries and text keys at their own positions and its image keys at their
window's start (`casa/layer.py` gathers the tables there), so it needs the rotation as per-position
tables `cos, sin` of shape (B, T, w) and a function applying them. `FamilySpec.rope_style` says which:

- `half` (most families): `position_embeddings` is `(cos, sin)`, each (B, T, rd); the family's own
  `apply_rotary_pos_emb(q, k, cos, sin)` rotates the two halves of the rotary dims (rotate-half);
- `pairs_sin_cos` (GPT-J, CodeGen): `position_embeddings` is `(sin, cos)`, each (B, T, rd/2); adjacent
  dims (2i, 2i+1) are rotated as pairs (GPT-J's `rotate_every_two`);
- `pairs_complex` (Llama 4, DeepSeek-V2): `position_embeddings` is one complex `freqs_cis` (B, T, rd/2);
  the pairs (2i, 2i+1) are complex numbers multiplied by it. That is the same rotation as
  `pairs_sin_cos` with cos = real part, sin = imaginary part.

Where the tables come from is `FamilySpec.rope_source`: `position_embeddings` (most families: the block
passes them to its attention) or `position_ids` (Moshi: the attention gets only `position_ids` and turns
them into (cos, sin) with its own `rotary_emb`; CASA calls that module the same way, `OwnRotary`). A CASA
layer beside a non-attention mixer (`CasaSettings.mixers="all"`) also uses an `OwnRotary`: the model's
shared rotary module, called with the call's sequence index, since its block passes the mixer no positions.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass
from typing import Literal

import torch
from torch import nn

RopeStyle = Literal["half", "pairs_sin_cos", "pairs_complex"]
RopeSource = Literal["position_embeddings", "position_ids"]


def rope_tables(style: RopeStyle, position_embeddings) -> tuple[torch.Tensor, torch.Tensor]:
    """The call's (cos, sin) tables, (B, T, w) each, from what the family passes its attention."""
    if style == "pairs_sin_cos":
        sin, cos = position_embeddings
        return cos, sin
    if style == "pairs_complex":
        return position_embeddings.real, position_embeddings.imag  # (B, T, rd/2) each
    return position_embeddings


def rotate_pairs(q: torch.Tensor, k: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor):
    """Rotate adjacent pairs (x_2i, x_2i+1) by the angle of position t: q (B, H, T, rd), k (B, Hkv, T, rd),
    cos/sin (B, T, rd/2). (x0, x1) -> (x0 cos - x1 sin, x0 sin + x1 cos), as GPT-J and Llama 4 rotate."""
    c, s = cos.unsqueeze(1), sin.unsqueeze(1)  # (B, 1, T, rd/2)

    def rot(x: torch.Tensor) -> torch.Tensor:
        x0, x1 = x[..., 0::2], x[..., 1::2]  # (B, h, T, rd/2) each
        return torch.stack((x0 * c - x1 * s, x0 * s + x1 * c), dim=-1).flatten(-2).to(x.dtype)  # (B, h, T, rd)

    return rot(q), rot(k)


def calls_with_position_ids(module: nn.Module | None) -> bool:
    """Whether `module` is a rotary module called as `module(x, position_ids)` (the Llama convention)."""
    if not isinstance(module, nn.Module):
        return False
    return "position_ids" in inspect.signature(type(module).forward).parameters


@dataclass
class OwnRotary:
    """Position embeddings a CASA layer computes itself with a rotary module `module(x, position_ids)`.

    `from_kwargs`: the position ids are the `position_ids=` the wrapped module received (Moshi's attention);
    otherwise the call's sequence index `CasaInputs.text_index` (a mixer's block passes it no positions).
    The module is held, not owned: it stays the base's (no new state-dict keys)."""

    module: nn.Module
    from_kwargs: bool

    def __call__(self, x: torch.Tensor, kwargs: dict, inputs):
        """What the family would pass as `position_embeddings` for x (B, T, D): (cos, sin) (B, T, rd) each."""
        position_ids = kwargs.get("position_ids") if self.from_kwargs else inputs.text_index  # (B, T) or (1, T)
        if position_ids is None:
            raise RuntimeError(
                f"{type(self.module).__name__} computes rotary tables from `position_ids`, and the attention got none:"
                " CASA cannot place image keys (see docs/adding-a-family.md)"
            )
        return self.module(x, position_ids)


__all__ = ["OwnRotary", "RopeSource", "RopeStyle", "calls_with_position_ids", "rope_tables", "rotate_pairs"]
