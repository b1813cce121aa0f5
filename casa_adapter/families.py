"""Per-architecture knowledge: where the decoder blocks are and how to read their attention.

`FAMILIES` is keyed by `config.model_type`. A family not in the table goes through a
structural fallback (common block paths, common attention and projection names); what
neither can wrap raises `UnsupportedModelError` naming the `model_type` and what is missing.

`AttentionAccess` is the one object the CASA layer talks to: it copies the block's q/k/v/o
projections (and q/k norms) into plain `nn.Linear` modules, or, for the `shared` variant,
calls the block's live projections.
"""

from __future__ import annotations

import copy
import inspect
import sys
from dataclasses import dataclass
from typing import Callable, Literal

import torch
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
    "gpt2": FamilySpec(blocks="transformer.h", attention="attn", layout="conv1d_qkv", qkv="c_attn", o="c_proj", rope=False),
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
            f" with {n_layers} blocks). Add a FamilySpec to casa_adapter.families.FAMILIES (docs/adding-a-family.md)."
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
    return FamilySpec(blocks=blocks_path, attention=attn_name, layout=layout, qkv=qkv, o=out,
                      q_norm=norms[0], k_norm=norms[1], rope=rope)


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
            f"model_type {llm.config.model_type!r}: expected decoder blocks at `{spec.blocks}`, found {type(blocks).__name__}"
        )
    return blocks


def _base(module: nn.Module) -> nn.Module:
    """The frozen layer under a peft LoRA wrapper (or the module itself)."""
    return module.get_base_layer() if hasattr(module, "get_base_layer") else module


def _linear(weight: torch.Tensor, bias: torch.Tensor | None) -> nn.Linear:
    """A fresh nn.Linear holding copies of weight (out, in) and bias."""
    lin = nn.Linear(weight.shape[1], weight.shape[0], bias=bias is not None, device=weight.device, dtype=weight.dtype)
    with torch.no_grad():
        lin.weight.copy_(weight)
        if bias is not None:
            lin.bias.copy_(bias)
    return lin


def _generic_rope(q: torch.Tensor, k: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor):
    """Rotate-half RoPE on the first cos.shape[-1] dims (partial rotary aware). q/k: (B, h, T, hd), cos/sin: (B, T, rd)."""
    def rot(x):
        rd = cos.shape[-1]
        x_rot, x_pass = x[..., :rd], x[..., rd:]
        half = torch.cat((-x_rot[..., rd // 2:], x_rot[..., : rd // 2]), dim=-1)
        return torch.cat((x_rot * cos.unsqueeze(1) + half * sin.unsqueeze(1), x_pass), dim=-1)
    return rot(q), rot(k)


class AttentionAccess:
    """Reads one block's self-attention: head geometry, projections, norms and its RoPE function."""

    def __init__(self, attn: nn.Module, spec: FamilySpec, config, model_type: str):
        self.attn, self.spec = attn, spec
        self.num_heads = config.num_attention_heads
        self.hidden_size = config.hidden_size
        self.num_kv_heads = getattr(config, "num_key_value_heads", None) or self.num_heads
        self.head_dim = getattr(attn, "head_dim", None) or config.hidden_size // self.num_heads
        self.scaling = float(getattr(attn, "scaling", self.head_dim**-0.5))
        self.rope_fn: Callable | None = None
        if spec.rope:
            self.rope_fn = getattr(sys.modules.get(type(attn).__module__), "apply_rotary_pos_emb", _generic_rope)
        self._check(model_type)

    @property
    def q_size(self) -> int:
        return self.num_heads * self.head_dim

    @property
    def kv_size(self) -> int:
        return self.num_kv_heads * self.head_dim

    def _check(self, model_type: str) -> None:
        names = [self.spec.o] + ([self.spec.q, self.spec.k, self.spec.v] if self.spec.layout == "separate" else [self.spec.qkv])
        missing = [n for n in names if not hasattr(self.attn, n)]
        if missing:
            raise UnsupportedModelError(
                f"model_type {model_type!r}: attention {type(self.attn).__name__} lacks {missing} expected by its FamilySpec"
            )
        q_out = self.copies()[0].out_features
        if q_out != self.q_size:
            raise UnsupportedModelError(
                f"model_type {model_type!r}: q projection gives {q_out} features, expected heads*head_dim ="
                f" {self.num_heads}*{self.head_dim}"
            )

    def copies(self) -> tuple[nn.Linear, nn.Linear, nn.Linear, nn.Linear]:
        """Fresh q, k, v, o `nn.Linear` copies of the block's (frozen, pre-LoRA) projections."""
        a, s = self.attn, self.spec
        o = _base(getattr(a, s.o))
        if s.layout == "separate":
            q, k, v = (_base(getattr(a, n)) for n in (s.q, s.k, s.v))
            return _linear(q.weight, q.bias), _linear(k.weight, k.bias), _linear(v.weight, v.bias), _linear(o.weight, o.bias)
        fused = _base(getattr(a, s.qkv))
        weight = fused.weight.t() if s.layout == "conv1d_qkv" else fused.weight  # (q+2kv, D)
        sizes = [self.q_size, self.kv_size, self.kv_size]
        ws = weight.split(sizes, dim=0)
        bs = fused.bias.split(sizes) if fused.bias is not None else (None, None, None)
        o_weight = o.weight.t() if s.layout == "conv1d_qkv" else o.weight
        return _linear(ws[0], bs[0]), _linear(ws[1], bs[1]), _linear(ws[2], bs[2]), _linear(o_weight, o.bias)

    def norm_copies(self) -> tuple[nn.Module | None, nn.Module | None]:
        """Deep copies of the q/k norms (None where the family has none)."""
        get = lambda n: copy.deepcopy(getattr(self.attn, n)) if n and hasattr(self.attn, n) else None
        return get(self.spec.q_norm), get(self.spec.k_norm)

    def live_qkv(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """q, k, v from the block's own projections (LoRA included): (B, T, q_size), (B, T, kv_size) x2."""
        a, s = self.attn, self.spec
        if s.layout == "separate":
            return getattr(a, s.q)(x), getattr(a, s.k)(x), getattr(a, s.v)(x)
        return getattr(a, s.qkv)(x).split([self.q_size, self.kv_size, self.kv_size], dim=-1)

    def live_out(self, y: torch.Tensor) -> torch.Tensor:
        """The block's own output projection: (B, T, q_size) -> (B, T, D)."""
        return getattr(self.attn, self.spec.o)(y)

    def live_norms(self) -> tuple[nn.Module | None, nn.Module | None]:
        get = lambda n: getattr(self.attn, n) if n and hasattr(self.attn, n) else None
        return get(self.spec.q_norm), get(self.spec.k_norm)
