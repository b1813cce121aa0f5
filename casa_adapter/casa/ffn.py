"""`ImageFFN`: image tokens through a decoder block's feed-forward before they become CASA keys.

`CasaSettings.image_ffn` (the paper's CA+FFN): before a CASA layer projects the image tokens to
keys and values, they take the block's feed-forward step with its residual, as text does after
attention:

    image_tokens' = image_tokens + post(FFN(norm2(image_tokens)))    # (B, I, D)

`post` is the block's norm after its FFN where it has one (Gemma 2/3's sandwich norms, OLMo 2/3's and
EXAONE 4's post-norm blocks, whose FFN then reads the residual stream unnormed), else the identity.

`frozen` calls the block's own FFN and norm (live: frozen, no new parameters, LoRA on the MLP
included); `new` uses a trainable copy of both, which belongs to the CASA layer. The block's FFN
and the norm before it are found by attribute name (`FFN_NAMES`, `NORM_NAMES`). Blocks that run
attention and MLP in parallel from one input norm (GPT-J, CodeGen, Phi, Cohere, Falcon with
`parallel_attn`) use that norm (`PARALLEL`, `INPUT_NORM_NAMES`); OPT-style blocks with a bare
`fc1`/`fc2` pair get it as one module (`FcFeedForward`), pre-norm only. A block with neither is
refused with an error naming what was looked for. The rule checked for every family it covers
(tests/casa/test_image_ffn_families.py): with the block's attention output zeroed, the block maps
x to exactly `x + post(FFN(norm(x)))`.
"""

from __future__ import annotations

import copy
import inspect

import torch
from torch import nn

from casa_adapter.backbone.spec import UnsupportedModelError

FFN_NAMES = ("mlp", "feed_forward", "ffn", "block_sparse_moe")
"""Attribute names of a decoder block's feed-forward, tried in order (GraniteMoE's is `block_sparse_moe`)."""
NORM_NAMES = (
    "pre_feedforward_layernorm",
    "post_attention_layernorm",
    "ln_2",
    "ffn_norm",
    "pre_ff_layernorm",
    "feedforward_layernorm",
    "norm_2",
    "mlp_norm",
    "ln_mlp",
    "final_layer_norm",
)
"""Attribute names of the norm a block applies before its feed-forward, tried in order (Gemma 2/3
first: their `post_attention_layernorm` normalises the attention output instead). The later names:
Bamba / Jamba / Falcon-H1 (`pre_ff_layernorm`), Apertus (`feedforward_layernorm`), MPT (`norm_2`),
ModernBERT's decoder (`mlp_norm`), Falcon's two-norm parallel blocks (`ln_mlp`), OPT / XGLM / BioGPT
(`final_layer_norm` before `fc1`)."""
PARALLEL = ("gptj", "codegen", "phi", "cohere", "cohere2", "falcon")
"""Model types whose blocks can run attention and MLP in parallel on the output of one input norm."""
FC_PAIR = ("opt", "xglm", "biogpt")
"""Model types whose pre-norm blocks hold a bare `fc1` / `fc2` pair (after `final_layer_norm`) instead of an MLP
module; the post-norm BART-style decoders with the same names are not among them."""
INPUT_NORM_NAMES = ("ln_1", "input_layernorm")
"""The input norm of a `PARALLEL` block, which its MLP reads when the block has no norm of its own for it."""
POST_NORM_NAMES = ("post_feedforward_layernorm",)
"""The norm a block applies to its FFN's output before the residual add (Gemma 2/3, OLMo 2/3, EXAONE 4)."""


class FcFeedForward(nn.Module):
    """An OPT-style block's `fc2(activation_fn(fc1(x)))` as one feed-forward module (dropout left out: the image
    tokens' FFN step runs without it)."""

    def __init__(self, block: nn.Module):
        super().__init__()
        self.fc1, self.fc2, self.act = block.fc1, block.fc2, block.activation_fn

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))  # (B, I, D)


def _find(block: nn.Module, names: tuple[str, ...]) -> nn.Module | None:
    return next((getattr(block, n) for n in names if isinstance(getattr(block, n, None), nn.Module)), None)


def _fc_pair(block: nn.Module, model_type: str) -> nn.Module | None:
    """An OPT-style fc1/fc2 feed-forward; None where the block has none; refused for post-norm blocks."""
    if model_type not in FC_PAIR or not all(isinstance(getattr(block, n, None), nn.Module) for n in ("fc1", "fc2")):
        return None
    if getattr(block, "do_layer_norm_before", True) is False:
        raise UnsupportedModelError(
            f"model_type {model_type!r}: image_ffn needs a pre-norm block; {type(block).__name__} normalises after "
            "its feed-forward (do_layer_norm_before=False): use image_ffn='none'"
        )
    return FcFeedForward(block)


def block_ffn(block: nn.Module, model_type: str) -> tuple[nn.Module, nn.Module, nn.Module | None]:
    """The block's (norm before the FFN, FFN, norm after it or None); UnsupportedModelError when the FFN or the norm
    before it is missing."""
    ffn = _find(block, FFN_NAMES) or _fc_pair(block, model_type)
    post = _find(block, POST_NORM_NAMES)
    norm = _find(block, NORM_NAMES)
    if post is not None and _find(block, ("pre_feedforward_layernorm",)) is None:
        norm = nn.Identity()  # a post-norm block (OLMo 2/3, EXAONE 4): its FFN reads the residual stream itself
    if norm is None and model_type in PARALLEL:
        norm = _find(block, INPUT_NORM_NAMES)
    if ffn is None or norm is None:
        raise UnsupportedModelError(
            f"model_type {model_type!r}: image_ffn needs the decoder block's feed-forward (one of {FFN_NAMES} or "
            "fc1/fc2) and "
            f"the norm before it (one of {NORM_NAMES}); {type(block).__name__} has "
            f"{'no feed-forward' if ffn is None else 'no such norm'}: use image_ffn='none'"
        )
    return norm, ffn, post


class ImageFFN(nn.Module):
    """x + post(FFN(norm(x))) on image tokens, with the block's own modules (`frozen`) or a trainable copy (`new`)."""

    def __init__(self, block: nn.Module, model_type: str, mode: str):
        super().__init__()
        norm, ffn, post = block_ffn(block, model_type)
        self.mode = mode
        self.adds_residual = "residual" in inspect.signature(ffn.forward).parameters
        """The FFN takes the residual and returns residual + FFN (MPT's `MptMLP(hidden, residual)`)."""
        post = nn.Identity() if post is None else post
        if mode == "new":  # trainable copies: `wrap` puts them in `casa`
            self.norm, self.ffn, self.post = copy.deepcopy(norm), copy.deepcopy(ffn), copy.deepcopy(post)
        else:
            self._live = (norm, ffn, post)  # a tuple: the block's frozen modules stay out of this module's parameters

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, I, D) image tokens -> (B, I, D)."""
        norm, ffn, post = (self.norm, self.ffn, self.post) if self.mode == "new" else self._live
        if self.adds_residual:
            return ffn(norm(x), x)
        out = ffn(norm(x))
        return x + post(out[0] if isinstance(out, tuple) else out)  # MoE blocks may return (hidden, router logits)


__all__ = [
    "ImageFFN", "block_ffn", "FcFeedForward", "FC_PAIR", "FFN_NAMES", "INPUT_NORM_NAMES", "NORM_NAMES", "PARALLEL",
    "POST_NORM_NAMES",
]  # fmt: skip
