"""`AttentionAccess`: the one object a CASA layer talks to about its block's self-attention.

It reads the head geometry, finds the family's RoPE function, copies the block's q/k/v/o
projections (and q/k norms) into plain `nn.Linear` modules, or, for variants that share the
block's projections, calls the live ones (LoRA included). The projection names and layouts come
from the block's `FamilySpec` (`families.py`; fused layouts split in `layouts.py`). With the `own`
layout (multi-head latent attention, whose factorised projections do not fit a CASA layer) the copies
are fresh projections of the attention's head count, the output projection copied where its shape fits.
"""

from __future__ import annotations

import copy
import inspect
import sys
from collections.abc import Callable
from typing import ClassVar

import torch
from torch import nn

from casa_adapter.backbone.families import FamilySpec, UnsupportedModelError, get_path, text_config
from casa_adapter.backbone.layouts import split_qkv, split_sharded
from casa_adapter.backbone.rotary import calls_with_position_ids, rotate_pairs


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
    """Rotate-half RoPE on the first cos.shape[-1] dims (partial rotary aware).
    q/k: (B, h, T, hd), cos/sin: (B, T, rd)."""

    def rot(x):
        rd = cos.shape[-1]
        x_rot, x_pass = x[..., :rd], x[..., rd:]
        half = torch.cat((-x_rot[..., rd // 2 :], x_rot[..., : rd // 2]), dim=-1)
        return torch.cat((x_rot * cos.unsqueeze(1) + half * sin.unsqueeze(1), x_pass), dim=-1)

    return rot(q), rot(k)


def family_rope(module: nn.Module, style: str) -> Callable:
    """The RoPE function of `module`'s family: its modeling file's `apply_rotary_pos_emb` for rotate-half (a generic
    rotate-half where it has none), `rotate_pairs` for the pair styles (`rotary.py`)."""
    if style != "half":
        return rotate_pairs
    return getattr(sys.modules.get(type(module).__module__), "apply_rotary_pos_emb", _generic_rope)


class HeadNorm(nn.Module):
    """A weightless norm applied to each head of a (B, T, n*hd) tensor (Llama 4's q/k L2 norm)."""

    def __init__(self, norm: nn.Module, head_dim: int):
        super().__init__()
        self.norm, self.head_dim = norm, head_dim

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(x.unflatten(-1, (-1, self.head_dim))).flatten(-2)  # (B, T, n*hd)


class AttentionAccess:
    """Reads one block's self-attention: head geometry, projections, norms and its RoPE function."""

    has_self_attention: ClassVar[bool] = True
    """Whether `attn` is the block's self-attention, whose score modifiers (`score_mods.py`) CASA repeats."""

    def __init__(self, attn: nn.Module, spec: FamilySpec, config, model_type: str):
        config = text_config(config)
        self.attn, self.spec = attn, spec
        self.config, self.model_type = config, model_type  # the (text) config, read by `score_mods.py` too
        self.num_heads = self._heads_here(config)
        self.hidden_size = config.hidden_size
        self.head_dim = spec.head_dim or getattr(attn, "head_dim", None) or config.hidden_size // self.num_heads
        self.num_kv_heads = spec.kv_heads or self._kv_heads(config)
        default_scaling = self.head_dim**-0.5
        if spec.scaling is not None:
            self.scaling = spec.scaling
        else:
            own = spec.layout == "own"
            self.scaling = default_scaling if own else float(getattr(attn, "scaling", default_scaling))
        self.rotary_dims = self._rotary_dims(config)
        self.rope_fn: Callable | None = None
        if spec.rope and getattr(attn, "use_rope", True) and self._has_rotary():  # Llama 4's NoPE: `use_rope` False
            self.rope_fn = family_rope(attn, spec.rope_style)
        self._check(model_type)

    def _has_rotary(self) -> bool:
        """With `rope_source="position_ids"`: whether the attention holds a rotary module CASA can call as it does
        (Moshi's depth decoder has `rotary_emb = None` and no RoPE)."""
        own = getattr(self.attn, "rotary_emb", None)
        return self.spec.rope_source != "position_ids" or calls_with_position_ids(own)

    def _module(self, name: str) -> nn.Module | None:
        """The attention's submodule at dotted `name` (a projection or norm the spec names), or None."""
        return get_path(self.attn, name)

    def _heads_here(self, config) -> int:
        """Query heads of this block: the config's per-layer count where it has one (Laguna), else the global one."""
        per_layer, idx = getattr(config, "num_attention_heads_per_layer", None), getattr(self.attn, "layer_idx", None)
        if isinstance(per_layer, (list, tuple)) and isinstance(idx, int) and idx < len(per_layer):
            return per_layer[idx]
        return config.num_attention_heads

    def _rotary_dims(self, config) -> int | None:
        """Dims of a head RoPE rotates where that is fewer than all (partial rotary, MLA's rope part), else None."""
        if self.spec.layout == "own":
            return getattr(config, "qk_rope_head_dim", None)
        absolute = getattr(self.attn, "rotary_dim", None)  # GPT-J, CodeGen: a width, None for all dims
        if isinstance(absolute, int):
            return absolute if absolute < self.head_dim else None
        params = getattr(config, "rope_parameters", None) or {}
        factor = params.get("partial_rotary_factor", getattr(config, "partial_rotary_factor", 1.0)) or 1.0
        return int(self.head_dim * factor) if factor < 1 else None

    def _kv_heads(self, config) -> int:
        """KV heads: read off a separate k projection's width, else the config's count."""
        if self.spec.layout == "separate":
            width = getattr(_base(self._module(self.spec.k)), "out_features", None)
            if width:
                return width // self.head_dim
        return getattr(config, "num_key_value_heads", None) or self.num_heads

    @property
    def query_temperature(self) -> tuple[float, float] | None:
        """(floor_scale, attn_scale) where the attention scales each query by
        `log1p(floor((position + 1) / floor_scale)) * attn_scale + 1` (Llama 4's NoPE blocks with
        `attn_temperature_tuning`, arXiv 2501.19399); None where it does not."""
        attn = self.attn
        if getattr(attn, "attn_temperature_tuning", False) and not getattr(attn, "use_rope", True):
            return float(attn.floor_scale), float(attn.attn_scale)
        return None

    @property
    def qkv_clip(self) -> float | None:
        """The bound the attention clamps its q, k and v to, `clip_qkv` (MPT and DBRX on the fused qkv, OLMo and
        OLMoE on q/k/v after their norms), where its forward applies it; None where it clamps nothing. OLMoE's config
        carries the field for every model, so the source is what decides, not the attribute."""
        if not self.has_self_attention or "clip_qkv" not in inspect.getsource(type(self.attn).forward):
            return None
        clip = getattr(self.attn, "clip_qkv", None)
        clip = getattr(self.config, "clip_qkv", None) if clip is None else clip  # OLMo reads it off its config
        return float(clip) if clip else None

    @property
    def q_size(self) -> int:
        return self.num_heads * self.head_dim

    @property
    def kv_size(self) -> int:
        return self.num_kv_heads * self.head_dim

    def _check(self, model_type: str) -> None:
        s = self.spec
        names = [s.o] + ([] if s.layout == "own" else [s.q, s.k, s.v] if s.layout == "separate" else [s.qkv])
        missing = [n for n in names if self._module(n) is None]
        if missing:
            raise UnsupportedModelError(
                f"model_type {model_type!r}: attention {type(self.attn).__name__} lacks {missing} "
                "expected by its FamilySpec"
            )
        unreadable = [n for n in names if getattr(_base(self._module(n)), "weight", None) is None]
        if unreadable:
            raise UnsupportedModelError(
                f"model_type {model_type!r}: attention {type(self.attn).__name__}'s projections {unreadable} hold no"
                " `weight` CASA can copy; add a FamilySpec (docs/adding-a-family.md)"
            )
        q_out = self._q_features()
        if q_out != self.q_size:
            raise UnsupportedModelError(
                f"model_type {model_type!r}: q projection gives {q_out} features, expected heads*head_dim ="
                f" {self.num_heads}*{self.head_dim}"
            )

    def _q_features(self) -> int:
        """The query features the block's projections give, read from weight shapes (nothing is copied)."""
        s = self.spec
        if s.layout == "own":
            return self.q_size
        if s.layout == "separate":
            return _base(self._module(s.q)).weight.shape[0] // (2 if s.q_gated else 1)
        weight = _base(self._module(s.qkv)).weight
        return weight.shape[1 if s.layout == "conv1d_qkv" else 0] - 2 * self.kv_size

    def _query_rows(self, weight: torch.Tensor, bias: torch.Tensor | None):
        """The q projection's query rows: all of them, or per head the first half of a gated [q_h ; gate_h]."""
        if not self.spec.q_gated:
            return weight, bias
        pick = lambda t: t.unflatten(0, (self.num_heads, 2, self.head_dim))[:, 0].flatten(0, 1)  # (H*hd, ...)
        return pick(weight), None if bias is None else pick(bias)

    def _split(self, x: torch.Tensor, dim: int):
        if self.spec.layout == "sharded_qvk":
            return split_sharded(x, self.spec.shards, dim)
        grouped = self.spec.layout == "grouped_qkv"
        return split_qkv(x, grouped, self.num_heads, self.num_kv_heads, self.head_dim, dim)

    def copies(self) -> tuple[nn.Linear, nn.Linear, nn.Linear, nn.Linear]:
        """Fresh q, k, v, o `nn.Linear` copies of the block's (frozen, pre-LoRA) projections."""
        s = self.spec
        o = _base(self._module(s.o))
        if s.layout == "own":
            return self._own(o)
        o_weight = o.weight.t() if s.layout == "conv1d_qkv" else o.weight
        if s.layout == "separate":
            q, k, v = (_base(self._module(n)) for n in (s.q, s.k, s.v))
            return (
                _linear(*self._query_rows(q.weight, q.bias)),
                _linear(k.weight, k.bias),
                _linear(v.weight, v.bias),
                _linear(o_weight, o.bias),
            )
        fused = _base(self._module(s.qkv))
        weight = fused.weight.t() if s.layout == "conv1d_qkv" else fused.weight  # (q+2kv, D)
        ws = self._split(weight, 0)
        bs = self._split(fused.bias, 0) if fused.bias is not None else (None, None, None)
        return _linear(ws[0], bs[0]), _linear(ws[1], bs[1]), _linear(ws[2], bs[2]), _linear(o_weight, o.bias)

    def _own(self, o: nn.Module) -> tuple[nn.Linear, nn.Linear, nn.Linear, nn.Linear]:
        """Freshly initialised q/k/v (D -> heads*hd); o copied from the block's where (D, H*hd) fits, else fresh."""
        ref = o.weight
        make = lambda i, n, bias=False: nn.Linear(i, n, bias=bias, device=ref.device, dtype=ref.dtype)
        D = self.hidden_size
        q, k, v = make(D, self.q_size), make(D, self.kv_size), make(D, self.kv_size)
        fits = tuple(ref.shape) == (D, self.q_size)
        out = _linear(ref, getattr(o, "bias", None)) if fits else make(self.q_size, D)
        return q, k, v, out

    def norm_copies(self) -> tuple[nn.Module | None, nn.Module | None]:
        """Deep copies of the q/k norms (None where the family has none)."""
        get = lambda n: copy.deepcopy(self._module(n)) if n and self._module(n) is not None else None
        return self._per_head(get(self.spec.q_norm)), self._per_head(get(self.spec.k_norm))

    def _per_head(self, norm: nn.Module | None) -> nn.Module | None:
        """`norm` as CASA applies it: wrapped in a `HeadNorm` where the spec says the norms act per head."""
        return HeadNorm(norm, self.head_dim) if norm is not None and self.spec.head_norms else norm

    def live_qkv(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """q, k, v from the block's own projections (LoRA included): (B, T, q_size), (B, T, kv_size) x2."""
        s = self.spec
        if s.layout == "separate":
            q = self._module(s.q)(x)  # (B, T, H*hd), or (B, T, H*2*hd) gated
            if s.q_gated:
                q = q.unflatten(-1, (self.num_heads, 2, self.head_dim))[..., 0, :].flatten(-2)  # (B, T, H*hd)
            return q, self._module(s.k)(x), self._module(s.v)(x)
        return self._split(self._module(s.qkv)(x), -1)

    def live_out(self, y: torch.Tensor) -> torch.Tensor:
        """The block's own output projection: (B, T, q_size) -> (B, T, D)."""
        return self._module(self.spec.o)(y)

    def live_norms(self) -> tuple[nn.Module | None, nn.Module | None]:
        get = lambda n: self._module(n) if n else None
        return self._per_head(get(self.spec.q_norm)), self._per_head(get(self.spec.k_norm))


__all__ = ["AttentionAccess", "family_rope"]
