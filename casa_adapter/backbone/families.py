"""Per-architecture knowledge: where the decoder blocks are and what their attention is called.

`FAMILIES` is keyed by `config.model_type`; an entry is a `FamilySpec`, or a function of the config
returning one where the layout depends on the config (Falcon, GPT-BigCode). A family not in the table
goes through the structural fallback (`backbone/discover.py`); what neither can wrap raises
`UnsupportedModelError` naming the `model_type` and what is missing. How one block's attention is read
(heads, projections, norms, RoPE) is `access.AttentionAccess`; the fused layouts are `layouts.py`.

Hybrid stacks (attention blocks among state-space, linear-attention or convolution blocks) are
described by the same spec: `attention_blocks` lists the blocks whose `attention` attribute holds an
attention module the spec can read, and CASA placement (`every`, `layers`) counts those blocks only.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

from torch import nn

Layout = Literal["separate", "fused_qkv", "grouped_qkv", "conv1d_qkv", "own"]


class UnsupportedModelError(ValueError):
    """The LLM's architecture cannot be wrapped; the message names its `model_type` and what is missing."""


@dataclass(frozen=True)
class FamilySpec:
    """How one architecture family lays out its decoder blocks and attention."""

    blocks: str = "model.layers"
    """Dotted path from the causal-LM object to the `nn.ModuleList` of decoder blocks."""
    attention: str = "self_attn"
    """Dotted path from a decoder block to its self-attention module (`attn.attention` for GPT-Neo)."""
    layout: Layout = "separate"
    """How q/k/v are produced (`layouts.py`): `separate` q/k/v Linear; `fused_qkv`: one Linear with stacked
    [q; k; v] rows; `grouped_qkv`: one Linear whose rows come in KV groups [q_1 .. q_r, k, v] (GPT-NeoX, Bloom,
    Falcon, Persimmon: r = 1 per head without GQA); `conv1d_qkv`: GPT-2's Conv1D, stacked; `own`: projections
    CASA cannot copy (multi-head latent attention), so the CASA layer gets fresh ones of the same head count."""
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
    kv_heads: int | None = None
    """KV head count where the config's `num_key_value_heads` does not say it (multi-query layouts)."""
    head_dim: int | None = None
    """Head width of the CASA layer where the attention's own `head_dim` does not fit (`own` projections)."""
    scaling: float | None = None
    """Softmax scale where the attention has no `scaling` attribute and does not use head_dim**-0.5 (GPT-Neo: 1)."""
    q_gated: bool = False
    """The q projection gives [q_h ; gate_h] per head (Qwen3-Next, Qwen3.5): CASA copies the q rows only."""
    unsupported: str | None = None
    """Why this family cannot be wrapped (`family_spec` raises it as `UnsupportedModelError`)."""


SpecEntry = FamilySpec | Callable[[object], FamilySpec]
"""A table entry: the spec, or a function of the (text) config giving it."""


def _falcon(cfg) -> FamilySpec:
    kv = cfg.num_kv_heads if cfg.new_decoder_architecture or not cfg.multi_query else 1
    return FamilySpec(
        blocks="transformer.h",
        attention="self_attention",
        layout="grouped_qkv",
        qkv="query_key_value",
        o="dense",
        kv_heads=kv,
        rope=not cfg.alibi,
    )


def _gpt_bigcode(cfg) -> FamilySpec:
    return FamilySpec(
        blocks="transformer.h",
        attention="attn",
        layout="fused_qkv" if cfg.multi_query else "grouped_qkv",
        qkv="c_attn",
        o="c_proj",
        kv_heads=1 if cfg.multi_query else None,
        rope=False,
    )


def _mla(cfg) -> FamilySpec:
    """Multi-head latent attention (DeepSeek-V2/V3, MiniCPM3): own projections, heads of v_head_dim, RoPE on the
    first qk_rope_head_dim dims as the family rotates its rope part."""
    return FamilySpec(layout="own", head_dim=cfg.v_head_dim, kv_heads=cfg.num_attention_heads)


_ROTATE_EVERY_TWO = "its rotary embedding rotates interleaved pairs with a (sin, cos) signature CASA does not call"
_COMPLEX_ROPE = "its rotary embedding is one complex `freqs_cis` tensor, not the (cos, sin) pair CASA applies"
_NO_CACHE = "its attention keeps no KV cache, so generate() cannot carry CASA's window state"
_OWN_CACHE = "it keeps its own cache class for lightning attention, which cannot carry CASA's window cache"
_QK_NORM = dict(q_norm="q_norm", k_norm="k_norm")
_GPT2 = dict(blocks="transformer.h", attention="attn", layout="conv1d_qkv", qkv="c_attn", o="c_proj", rope=False)
_PER_HEAD = dict(layout="grouped_qkv", qkv="query_key_value", o="dense")
FAMILIES: dict[str, SpecEntry] = {
    "llama": FamilySpec(),
    "mistral": FamilySpec(),
    "qwen2": FamilySpec(),
    "qwen3": FamilySpec(**_QK_NORM),
    "gemma": FamilySpec(),
    "gemma2": FamilySpec(),
    "gemma3_text": FamilySpec(**_QK_NORM),
    "olmo2": FamilySpec(**_QK_NORM),
    "phi3": FamilySpec(layout="fused_qkv", qkv="qkv_proj"),
    "gpt2": FamilySpec(**_GPT2),
    "gpt_neox": FamilySpec(blocks="gpt_neox.layers", attention="attention", **_PER_HEAD),
    "gpt_neox_japanese": FamilySpec(blocks="gpt_neox_japanese.layers", attention="attention", **_PER_HEAD),
    "fuyu": FamilySpec(blocks="model.language_model.layers", q_norm="q_layernorm", k_norm="k_layernorm", **_PER_HEAD),
    "bloom": FamilySpec(blocks="transformer.h", attention="self_attention", rope=False, **_PER_HEAD),
    "persimmon": FamilySpec(q_norm="q_layernorm", k_norm="k_layernorm", **_PER_HEAD),
    "falcon": _falcon,
    "gpt_bigcode": _gpt_bigcode,
    "mpt": FamilySpec(
        blocks="transformer.blocks", attention="attn", layout="fused_qkv", qkv="Wqkv", o="out_proj", rope=False
    ),
    "gpt_neo": FamilySpec(blocks="transformer.h", attention="attn.attention", o="out_proj", rope=False, scaling=1.0),
    "phi": FamilySpec(o="dense"),
    "stablelm": FamilySpec(),
    "qwen3_next": FamilySpec(q_gated=True, **_QK_NORM),
    "qwen3_5_text": FamilySpec(q_gated=True, **_QK_NORM),
    "qwen3_5_moe_text": FamilySpec(q_gated=True, **_QK_NORM),
    "gptj": FamilySpec(unsupported=_ROTATE_EVERY_TWO),
    "codegen": FamilySpec(unsupported=_ROTATE_EVERY_TWO),
    "llama4_text": FamilySpec(unsupported=_COMPLEX_ROPE),
    "openai-gpt": FamilySpec(unsupported=_NO_CACHE),
    "minimax": FamilySpec(unsupported=_OWN_CACHE),
    "deepseek_v2": FamilySpec(unsupported=_COMPLEX_ROPE),
    "deepseek_v3": _mla,
    "minicpm3": _mla,
}  # fmt: skip


def get_path(root: nn.Module, path: str) -> nn.Module | None:
    """The module at dotted `path` under `root`, or None."""
    obj = root
    for part in path.split("."):
        obj = getattr(obj, part, None)
        if obj is None:
            return None
    return obj


def set_path(root: nn.Module, path: str, module: nn.Module) -> None:
    """Put `module` at dotted `path` under `root`."""
    parent, _, name = path.rpartition(".")
    setattr(get_path(root, parent) if parent else root, name, module)


def text_config(config):
    """The config that describes the decoder stack (a composite vision-language config's text config)."""
    get = getattr(config, "get_text_config", None)
    return get() if callable(get) else config


def family_spec(llm: nn.Module) -> FamilySpec:
    """The FamilySpec for `llm`: from the table by `config.model_type`, else structural."""
    from casa_adapter.backbone.discover import structural_spec

    model_type = getattr(getattr(llm, "config", None), "model_type", None)
    if model_type is None:
        raise UnsupportedModelError(f"{type(llm).__name__} has no `config.model_type`: pass a transformers causal LM")
    entry = FAMILIES.get(model_type)
    if entry is None:
        return structural_spec(llm, model_type)
    spec = entry if isinstance(entry, FamilySpec) else entry(text_config(llm.config))
    if spec.unsupported:
        raise UnsupportedModelError(f"model_type {model_type!r} cannot be wrapped: {spec.unsupported}")
    return spec


def decoder_blocks(llm: nn.Module, spec: FamilySpec) -> nn.ModuleList:
    blocks = get_path(llm, spec.blocks)
    if not isinstance(blocks, nn.ModuleList):
        raise UnsupportedModelError(
            f"model_type {llm.config.model_type!r}: expected decoder blocks at `{spec.blocks}`, "
            f"found {type(blocks).__name__}"
        )
    return blocks


def is_attention(module: nn.Module | None, spec: FamilySpec) -> bool:
    """Whether `module` is an attention the spec can read (its projection names are there)."""
    if module is None or not hasattr(module, spec.o):
        return False
    if spec.layout == "own":
        return True
    names = (spec.q, spec.k, spec.v) if spec.layout == "separate" else (spec.qkv,)
    return all(hasattr(module, n) for n in names)


def attention_blocks(llm: nn.Module, spec: FamilySpec) -> list[int]:
    """Indices of the decoder blocks whose `spec.attention` is an attention module (all of them but in hybrids)."""
    blocks = decoder_blocks(llm, spec)
    found = [i for i, b in enumerate(blocks) if is_attention(get_path(b, spec.attention), spec)]
    if not found:
        raise UnsupportedModelError(
            f"model_type {llm.config.model_type!r}: no decoder block has an attention at `{spec.attention}` with the "
            f"projections its FamilySpec names; add a FamilySpec (docs/adding-a-family.md)"
        )
    return found


__all__ = [
    "FAMILIES",
    "FamilySpec",
    "UnsupportedModelError",
    "attention_blocks",
    "decoder_blocks",
    "family_spec",
    "get_path",
    "is_attention",
    "set_path",
    "text_config",
]
