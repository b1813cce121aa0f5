"""Per-architecture knowledge: where the decoder blocks are and what their attention is called.

`FAMILIES` is keyed by `config.model_type`; an entry is a `FamilySpec`, or a function of the config
returning one where the layout depends on the config (Falcon, GPT-BigCode). A family not in the table
goes through the structural fallback (`backbone/discover.py`); what neither can wrap raises
`UnsupportedModelError` naming the `model_type` and what is missing. How one block's attention is read
(heads, projections, norms, RoPE) is `access.AttentionAccess`; the fused layouts are `layouts.py`.

Hybrid stacks (attention blocks among state-space, linear-attention or convolution blocks) are
described by the same spec: `attention_blocks` lists the blocks whose `attention` attribute holds an
attention module the spec can read, and CASA placement (`every`, `layers`) counts those blocks only;
with `CasaSettings.mixers="all"` it counts every block, and the others get CASA beside their non-attention
mixer (`backbone/mixers.py`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace

from torch import nn

from casa_adapter.backbone.discover import structural_spec
from casa_adapter.backbone.spec import (
    FamilySpec,
    Layout,
    UnsupportedModelError,
    get_path,
    is_attention,
    set_path,
    text_config,
)

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


def _mla_complex(cfg) -> FamilySpec:
    """DeepSeek-V2: multi-head latent attention whose rope part turns by a complex `freqs_cis`."""
    return replace(_mla(cfg), rope_style="pairs_complex")


_GIT_LOSS = (
    "its causal-LM loss skips the first `image_patch_tokens` positions for its own image encoder even without"
    " pixel values, so a text loss over CASA's prompt is wrong; and its q/k/v sit one level below the attention"
)
_NO_CACHE = "its attention keeps no KV cache, so generate() cannot carry CASA's window state"
_OWN_CACHE = "it keeps its own cache class for lightning attention, which cannot carry CASA's window cache"
_QK_NORM = dict(q_norm="q_norm", k_norm="k_norm")
_GPT2 = dict(blocks="transformer.h", attention="attn", layout="conv1d_qkv", qkv="c_attn", o="c_proj", rope=False)
_PER_HEAD = dict(layout="grouped_qkv", qkv="query_key_value", o="dense")
_GPTJ = dict(blocks="transformer.h", attention="attn", o="out_proj", rope_style="pairs_sin_cos")
_LLAMA4 = FamilySpec(q_norm="qk_norm", k_norm="qk_norm", head_norms=True, rope_style="pairs_complex")
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
    "minicpm5_moe": FamilySpec(q="q_gate_proj", q_gated=True),
    "gptj": FamilySpec(**_GPTJ),
    "codegen": FamilySpec(layout="sharded_qvk", qkv="qkv_proj", shards=4, **_GPTJ),
    "llama4_text": _LLAMA4,
    "git": FamilySpec(unsupported=_GIT_LOSS),
    "openai-gpt": FamilySpec(unsupported=_NO_CACHE),
    "minimax": FamilySpec(unsupported=_OWN_CACHE),
    "deepseek_v2": _mla_complex,
    "deepseek_v3": _mla,
    "minicpm3": _mla,
    "moshi": FamilySpec(q="q_proj.linear", k="k_proj.linear", v="v_proj.linear", o="o_proj.linear",
                        rope_source="position_ids"),
}  # fmt: skip


def family_spec(llm: nn.Module) -> FamilySpec:
    """The FamilySpec for `llm`: from the table by `config.model_type`, else structural."""
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
    "Layout",
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
