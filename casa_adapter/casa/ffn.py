"""`ImageFFN`: image tokens through a decoder block's feed-forward before they become CASA keys.

`CasaSettings.image_ffn` (the paper's CA+FFN): before a CASA layer projects the image tokens to
keys and values, they take the block's feed-forward step with its residual, as text does after
attention:

    image_tokens' = image_tokens + FFN(norm2(image_tokens))          # (B, I, D)

`frozen` calls the block's own FFN and norm (live: frozen, no new parameters, LoRA on the MLP
included); `new` uses a trainable copy of both, which belongs to the CASA layer. The block's FFN
and the norm before it are found by attribute name (`FFN_NAMES`, `NORM_NAMES`); a block without
them (parallel attention/MLP blocks such as GPT-NeoX or Phi) is refused with an error naming
what was looked for.
"""

from __future__ import annotations

import copy
import inspect

import torch
from torch import nn

from casa_adapter.backbone.spec import UnsupportedModelError

FFN_NAMES = ("mlp", "feed_forward", "ffn")
"""Attribute names of a decoder block's feed-forward, tried in order."""
NORM_NAMES = (
    "pre_feedforward_layernorm",
    "post_attention_layernorm",
    "ln_2",
    "ffn_norm",
    "pre_ff_layernorm",
    "feedforward_layernorm",
    "norm_2",
    "mlp_norm",
)
"""Attribute names of the norm a block applies before its feed-forward, tried in order (Gemma 2/3
first: their `post_attention_layernorm` normalises the attention output instead). The later names:
Bamba / Jamba / Falcon-H1 (`pre_ff_layernorm`), Apertus (`feedforward_layernorm`), MPT (`norm_2`),
ModernBERT's decoder (`mlp_norm`)."""


def block_ffn(block: nn.Module, model_type: str) -> tuple[nn.Module, nn.Module]:
    """The block's (norm before the FFN, FFN); UnsupportedModelError when either is missing."""
    ffn = next((getattr(block, n) for n in FFN_NAMES if isinstance(getattr(block, n, None), nn.Module)), None)
    norm = next((getattr(block, n) for n in NORM_NAMES if isinstance(getattr(block, n, None), nn.Module)), None)
    if ffn is None or norm is None:
        raise UnsupportedModelError(
            f"model_type {model_type!r}: image_ffn needs the decoder block's feed-forward (one of {FFN_NAMES}) and "
            f"the norm before it (one of {NORM_NAMES}); {type(block).__name__} has "
            f"{'no feed-forward' if ffn is None else 'no such norm'}: use image_ffn='none'"
        )
    return norm, ffn


class ImageFFN(nn.Module):
    """x + FFN(norm(x)) on image tokens, with the block's own modules (`frozen`) or a trainable copy (`new`)."""

    def __init__(self, block: nn.Module, model_type: str, mode: str):
        super().__init__()
        norm, ffn = block_ffn(block, model_type)
        self.mode = mode
        self.adds_residual = "residual" in inspect.signature(ffn.forward).parameters
        """The FFN takes the residual and returns residual + FFN (MPT's `MptMLP(hidden, residual)`)."""
        if mode == "new":
            self.norm, self.ffn = copy.deepcopy(norm), copy.deepcopy(ffn)  # trainable: `wrap` puts them in `casa`
        else:
            self._live = (norm, ffn)  # a tuple: the block's frozen modules stay out of this module's parameters

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, I, D) image tokens -> (B, I, D)."""
        norm, ffn = (self.norm, self.ffn) if self.mode == "new" else self._live
        return ffn(norm(x), x) if self.adds_residual else x + ffn(norm(x))


__all__ = ["ImageFFN", "block_ffn", "FFN_NAMES", "NORM_NAMES"]
