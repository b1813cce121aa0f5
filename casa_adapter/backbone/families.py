"""Per-architecture knowledge: where the decoder blocks are and what their attention is called.

`FAMILIES` is keyed by `config.model_type`. A family not in the table goes through a
structural fallback (common block paths, common attention and projection names); what
neither can wrap raises `UnsupportedModelError` naming the `model_type` and what is missing.
How one block's attention is read (heads, projections, norms, RoPE) is `access.AttentionAccess`.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass
from typing import Literal

from torch import nn

Layout = Literal["separate", "fused_qkv", "conv1d_qkv"]


class UnsupportedModelError(ValueError):
    """The LLM's architecture cannot be wrapped; the message names its `model_type` and what is missing."""


@dataclass(frozen=True)
class FamilySpec:
    """How one architecture family lays out its decoder blocks and attention."""

    blocks: str = "model.layers"
    """Dotted path from the causal-LM object to the `nn.ModuleList` of decoder blocks."""
    attention: str = "self_attn"
    """Attribute of a decoder block that holds its self-attention module."""
    layout: Layout = "separate"
    """`separate` q/k/v Linear; `fused_qkv`: one Linear with [q; k; v] rows; `conv1d_qkv`: GPT-2 Conv1D."""
    q: str = "q_proj"
    k: str = "k_proj"
    v: str = "v_proj"
    qkv: str = "qkv_proj"
    o: str = "o_proj"
    q_norm: str | None = None
    """Per-head or full-width norm applied to queries after projection (Qwen3, Gemma3, OLMo2)."""
    k_norm: str | None = None
    rope: bool = True
    """Whether the family uses rotary embeddings passed to attention as `position_embeddings`."""


_QK_NORM = dict(q_norm="q_norm", k_norm="k_norm")
FAMILIES: dict[str, FamilySpec] = {
    "llama": FamilySpec(),
    "mistral": FamilySpec(),
    "qwen2": FamilySpec(),
    "qwen3": FamilySpec(**_QK_NORM),
    "gemma": FamilySpec(),
    "gemma2": FamilySpec(),
    "gemma3_text": FamilySpec(**_QK_NORM),
    "olmo2": FamilySpec(**_QK_NORM),
    "phi3": FamilySpec(layout="fused_qkv", qkv="qkv_proj"),
    "gpt2": FamilySpec(
        blocks="transformer.h", attention="attn", layout="conv1d_qkv", qkv="c_attn", o="c_proj", rope=False
    ),
}

_BLOCK_PATHS = ("model.layers", "transformer.h", "model.decoder.layers", "transformer.layers", "transformer.blocks")
_ATTENTION_NAMES = ("self_attn", "attn", "attention", "self_attention")
_OUT_NAMES = ("o_proj", "out_proj", "dense", "c_proj")
_NORM_NAMES = (("q_norm", "k_norm"), ("q_layernorm", "k_layernorm"))


def _get_path(root: nn.Module, path: str) -> nn.Module | None:
    obj = root
    for part in path.split("."):
        obj = getattr(obj, part, None)
        if obj is None:
            return None
    return obj


def _structural_spec(llm: nn.Module, model_type: str) -> FamilySpec:
    """Guess a FamilySpec from module names for a model_type not in FAMILIES."""
    n_layers = getattr(llm.config, "num_hidden_layers", None)
    blocks_path = next((p for p in _BLOCK_PATHS if isinstance(_get_path(llm, p), nn.ModuleList)), None)
    if blocks_path is None:
        raise UnsupportedModelError(
            f"model_type {model_type!r}: no decoder-block list found (looked for {', '.join(_BLOCK_PATHS)}"
            f" with {n_layers} blocks). Add a FamilySpec to casa_adapter.backbone.families.FAMILIES"
            " (docs/adding-a-family.md)."
        )
    block = _get_path(llm, blocks_path)[0]
    attn_name = next((a for a in _ATTENTION_NAMES if isinstance(getattr(block, a, None), nn.Module)), None)
    if attn_name is None:
        raise UnsupportedModelError(
            f"model_type {model_type!r}: decoder block {type(block).__name__} has no self-attention attribute"
            f" (looked for {', '.join(_ATTENTION_NAMES)}); it may not be an attention model."
        )
    attn = getattr(block, attn_name)
    out = next((o for o in _OUT_NAMES if hasattr(attn, o)), None)
    norms = next((n for n in _NORM_NAMES if hasattr(attn, n[0]) and hasattr(attn, n[1])), (None, None))
    if all(hasattr(attn, n) for n in ("q_proj", "k_proj", "v_proj")) and out:
        layout, qkv = "separate", "qkv_proj"
    elif hasattr(attn, "qkv_proj") and out:
        layout, qkv = "fused_qkv", "qkv_proj"
    else:
        raise UnsupportedModelError(
            f"model_type {model_type!r}: attention {type(attn).__name__} has neither q_proj/k_proj/v_proj nor a"
            f" [q; k; v] qkv_proj with an output projection ({'/'.join(_OUT_NAMES)}); children are"
            f" {[n for n, _ in attn.named_children()]}. Add a FamilySpec (docs/adding-a-family.md)."
        )
    rope = "position_embeddings" in inspect.signature(type(attn).forward).parameters
    return FamilySpec(
        blocks=blocks_path,
        attention=attn_name,
        layout=layout,
        qkv=qkv,
        o=out,
        q_norm=norms[0],
        k_norm=norms[1],
        rope=rope,
    )


def family_spec(llm: nn.Module) -> FamilySpec:
    """The FamilySpec for `llm`: from the table by `config.model_type`, else structural."""
    model_type = getattr(getattr(llm, "config", None), "model_type", None)
    if model_type is None:
        raise UnsupportedModelError(f"{type(llm).__name__} has no `config.model_type`: pass a transformers causal LM")
    return FAMILIES.get(model_type) or _structural_spec(llm, model_type)


def decoder_blocks(llm: nn.Module, spec: FamilySpec) -> nn.ModuleList:
    blocks = _get_path(llm, spec.blocks)
    if not isinstance(blocks, nn.ModuleList):
        raise UnsupportedModelError(
            f"model_type {llm.config.model_type!r}: expected decoder blocks at `{spec.blocks}`, "
            f"found {type(blocks).__name__}"
        )
    return blocks


__all__ = ["FAMILIES", "FamilySpec", "UnsupportedModelError", "decoder_blocks", "family_spec"]
