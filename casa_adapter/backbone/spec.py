"""`FamilySpec`, the description of one architecture's blocks and attention, and the helpers that read it.

The table of specs is `families.FAMILIES`; the structural guess for unlisted families is `discover.py`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from torch import nn

from casa_adapter.backbone.rotary import RopeSource, RopeStyle

Layout = Literal["separate", "fused_qkv", "grouped_qkv", "sharded_qvk", "conv1d_qkv", "own"]


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
    Falcon, Persimmon: r = 1 per head without GQA); `sharded_qvk`: one Linear whose rows come in `shards` blocks,
    each [q ; v ; k] (CodeGen's model-parallel layout); `conv1d_qkv`: GPT-2's Conv1D, stacked; `own`: projections
    CASA cannot copy (multi-head latent attention), so the CASA layer gets fresh ones of the same head count."""
    q: str = "q_proj"
    """Projection names, dotted paths from the attention where the Linear sits one level down (Moshi's
    `q_proj.linear` inside its `MoshiLinear`)."""
    k: str = "k_proj"
    v: str = "v_proj"
    qkv: str = "qkv_proj"
    o: str = "o_proj"
    q_norm: str | None = None
    """Per-head or full-width norm applied to queries after projection (Qwen3, Gemma3, OLMo2)."""
    k_norm: str | None = None
    head_norms: bool = False
    """The q/k norms hold no weight and act on each head (Llama 4's L2 norm): CASA applies them per head."""
    rope: bool = True
    """Whether the family's attention uses rotary embeddings (how it gets them: `rope_source`)."""
    rope_style: RopeStyle = "half"
    """What `position_embeddings` holds and how it rotates (`rotary.py`): `half` (cos, sin) rotate-half, `pairs_sin_cos`
    (GPT-J, CodeGen) or `pairs_complex` (one complex `freqs_cis`: Llama 4, DeepSeek-V2) rotating adjacent pairs."""
    rope_source: RopeSource = "position_embeddings"
    """Where the rotation comes from (`rotary.py`): the `position_embeddings` the block passes its attention, or
    (`position_ids`, Moshi) the attention's own `rotary_emb` module called with the `position_ids` it got."""
    rope_optional: bool = False
    """Some blocks get `position_embeddings=None` and use no positions there (NoPE layers: Beam, LaraMini); CASA
    does the same in those blocks. Otherwise a RoPE family whose attention gets none is an error."""
    shards: int = 1
    """Row blocks of a `sharded_qvk` projection (CodeGen: 4)."""
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


def is_attention(module: nn.Module | None, spec: FamilySpec) -> bool:
    """Whether `module` is an attention the spec can read (its projection names are there)."""
    if module is None or get_path(module, spec.o) is None:
        return False
    if spec.layout == "own":
        return True
    names = (spec.q, spec.k, spec.v) if spec.layout == "separate" else (spec.qkv,)
    return all(get_path(module, n) is not None for n in names)


__all__ = ["FamilySpec", "Layout", "UnsupportedModelError", "get_path", "is_attention", "set_path", "text_config"]
