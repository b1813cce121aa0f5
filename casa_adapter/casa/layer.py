"""`CasaLayer`: cross-attention from text queries to [window image tokens ; window text so far].

    h   = x + SA(norm(x)) + CASA(norm(x), norm'(image_tokens))
    out = h + FFN(norm2(h))

This is the attention computation every variant shares: project the call's text (queries, and keys
and values where the variant has text keys) and its image tokens (keys and values only: image tokens
are never queries), apply the family's q/k norms and RoPE (image keys sit at their window's start),
put the keys of the layer's window cache in front, and run the CASA kernel over the call's
`KeyLayout` with the family's score modifiers (ALiBi, softcapping, sliding window, sinks: `kernels/mods.py`).
`norm'` is the layer's own RMSNorm on image tokens (`CasaSettings.image_norm`).

Where the projections come from, whether text keys take part and whether RoPE applies is the
variant's business: the subclasses in `variants.py`, one per `CasaSettings.variant`. The options
every variant shares live here: `image_ffn` (image tokens through the block's FFN, `casa/ffn.py`),
`history="gist"` (keys of earlier windows' gist tokens, `casa/history.py`) and `replace` (read by
`CasaAttention`: the layer's output takes the place of self-attention's inside windows).
"""

from __future__ import annotations

from typing import ClassVar

import torch
from torch import nn

from casa_adapter.backbone.access import AttentionAccess
from casa_adapter.backbone.rotary import rope_tables
from casa_adapter.backbone.score_mods import family_score_mods
from casa_adapter.casa import history
from casa_adapter.casa.cache import LayerCache
from casa_adapter.casa.ffn import ImageFFN
from casa_adapter.casa.kernels import KERNELS
from casa_adapter.casa.kernels.mods import effective
from casa_adapter.casa.windows import CasaInputs
from casa_adapter.config import CasaSettings


class CasaLayer(nn.Module):
    """The CASA attention of one decoder block; a variant subclass says where its projections come from."""

    text_keys: ClassVar[bool] = True
    """Whether the window's text (up to each query) is among the keys, beside the images."""
    uses_rope: ClassVar[bool] = True
    """Whether queries and keys get the family's rotary embedding."""

    def __init__(
        self, access: AttentionAccess, layer_idx: int, settings: CasaSettings, image_ffn: ImageFFN | None = None
    ):
        super().__init__()
        self.layer_idx, self.kernel, self.replace = layer_idx, settings.kernel, settings.replace
        self.history_size = settings.history_size if settings.history == "gist" else None
        """How many earlier gist tokens a window sees (`history="gist"`); None: no history."""
        if (image_ffn is None) != (settings.image_ffn == "none"):
            raise ValueError(f"image_ffn={settings.image_ffn!r} needs an ImageFFN of the block (and 'none' none)")
        self.image_ffn = image_ffn
        """x + FFN(norm(x)) on the image tokens before k/v (`casa/ffn.py`); None with `image_ffn="none"`."""
        ref = next(access.attn.parameters())
        self.image_norm = None  # None: image tokens reach k/v as the projector gives them
        if settings.image_norm:
            self.image_norm = nn.RMSNorm(access.hidden_size, eps=1e-6, device=ref.device, dtype=ref.dtype)
        self.num_heads, self.num_kv_heads = access.num_heads, access.num_kv_heads
        self.head_dim, self.scaling = access.head_dim, access.scaling
        self.rope_fn = access.rope_fn if self.uses_rope else None
        self.rope_style, self.rope_optional = access.spec.rope_style, access.spec.rope_optional
        self.rotary_dims = access.rotary_dims
        self.query_temperature = access.query_temperature
        self.qkv_clip = access.qkv_clip
        """The family's `clip_qkv` (MPT, DBRX, OLMo, OLMoE): q, k and v clamped to [-clip, clip]; None: none."""
        """Llama 4's position-dependent query scale in NoPE blocks, as (floor_scale, attn_scale); None: none."""
        self.mods = effective(family_score_mods(access, layer_idx))
        """The family's ALiBi / softcap / sliding window / sinks here (`backbone/score_mods.py`); None: none."""

    # -- what a variant provides ----------------------------------------------------------
    def project_text(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
        """x (B, T, D) -> q (B, T, H*hd) and, with text keys, k, v (B, T, Hkv*hd) (else None)."""
        raise NotImplementedError

    def project_images(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Image tokens (B, I, D) -> k, v (B, I, Hkv*hd)."""
        raise NotImplementedError

    def project_out(self, y: torch.Tensor) -> torch.Tensor:
        """(B, T, H*hd) -> (B, T, D)."""
        raise NotImplementedError

    def qk_norms(self) -> tuple[nn.Module | None, nn.Module | None]:
        """The q and k norms applied after projection (None where the family has none)."""
        raise NotImplementedError

    # -- the shared computation --------------------------------------------------------------
    def _heads(self, x: torch.Tensor, n: int, norm: nn.Module | None) -> torch.Tensor:
        """(B, T, n*hd) -> (B, n, T, hd), applying a per-head or full-width norm."""
        B, T, _ = x.shape
        per_head = (
            norm is not None and getattr(norm, "weight", None) is not None and norm.weight.numel() == self.head_dim
        )
        if norm is not None and not per_head:
            x = norm(x)
        x = x.view(B, T, n, self.head_dim)  # (B, T, n, hd)
        if per_head:
            x = norm(x)
        return x.transpose(1, 2)  # (B, n, T, hd)

    def _clip(self, x: torch.Tensor) -> torch.Tensor:
        """The family's q/k/v clamp (after projection and q/k norm, before RoPE, as its attention does)."""
        return x if self.qkv_clip is None else x.clamp(-self.qkv_clip, self.qkv_clip)

    def _image_kv(self, inputs: CasaInputs, cos, sin) -> tuple[torch.Tensor, torch.Tensor]:
        """Keys/values of this call's image tokens, RoPE'd at their window start: (B, Hkv, I, hd) x2."""
        tokens = inputs.image_tokens if self.image_ffn is None else self.image_ffn(inputs.image_tokens)  # (B, I, D)
        tokens = tokens if self.image_norm is None else self.image_norm(tokens)
        k, v = self.project_images(tokens)  # (B, I, Hkv*hd)
        k = self._clip(self._heads(k, self.num_kv_heads, self.qk_norms()[1]))  # (B, Hkv, I, hd)
        v = self._clip(self._heads(v, self.num_kv_heads, None))
        if cos is not None:
            B, I = inputs.image_start.shape
            at = inputs.image_start.unsqueeze(-1).expand(B, I, cos.shape[-1])  # (B, I, rd)
            cos_i = cos.expand(B, -1, -1).gather(1, at)  # (B, I, rd)
            sin_i = sin.expand(B, -1, -1).gather(1, at)
            k = self._rope(k, k, cos_i, sin_i)[1]
        return k, v

    def _rope(self, q: torch.Tensor, k: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor):
        """The family's RoPE on q (B, H, T, hd) and k (B, Hkv, T, hd); with partial rotary (`rotary_dims` rd < hd:
        Phi, StableLM, Persimmon, GPT-NeoX, MLA's rope part) on the first rd dims only, the rest passed through."""
        rd = self.rotary_dims
        if rd is None:
            return self.rope_fn(q, k, cos, sin)
        q_rot, k_rot = self.rope_fn(q[..., :rd], k[..., :rd], cos, sin)
        return torch.cat((q_rot, q[..., rd:]), -1), torch.cat((k_rot, k[..., rd:]), -1)

    def _temper(self, q: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
        """Llama 4's attention temperature on q (B, H, T, hd) at sequence indices (B, T), as its NoPE blocks do."""
        floor_scale, attn_scale = self.query_temperature
        scale = torch.log1p(torch.floor((index.float() + 1.0) / floor_scale)) * attn_scale + 1.0  # (B, T)
        return (q * scale[:, None, :, None]).to(q.dtype)

    def _rotary(self, position_embeddings):
        """(cos, sin) tables (B, T, w) of this call, or (None, None) for a layer without RoPE."""
        if self.rope_fn is None or (position_embeddings is None and self.rope_optional):
            return None, None
        if position_embeddings is None:
            raise RuntimeError(
                "this family uses RoPE but its attention got no `position_embeddings`: "
                "CASA cannot place image keys (see docs/adding-a-family.md)"
            )
        return rope_tables(self.rope_style, position_embeddings)

    def forward(
        self, x: torch.Tensor, inputs: CasaInputs, position_embeddings=None, cache: LayerCache | None = None
    ) -> torch.Tensor | None:
        """x (B, T, D) normed hidden states -> CASA output (B, T, D), or None when no query has any key."""
        has_cached = cache is not None and cache.keys is not None
        if not inputs.has_images and not has_cached:
            if cache is not None:
                cache.advance(inputs, None)
            return None
        cos, sin = self._rotary(position_embeddings)
        B, T, _ = x.shape
        q, k, v = self.project_text(x)
        q_norm, k_norm = self.qk_norms()
        q = self._clip(self._heads(q, self.num_heads, q_norm))  # (B, H, T, hd)
        if k is not None:
            k = self._clip(self._heads(k, self.num_kv_heads, k_norm))  # (B, Hkv, T, hd)
            v = self._clip(self._heads(v, self.num_kv_heads, None))
        if cos is not None and k is not None:
            q, k = self._rope(q, k, cos, sin)
        elif cos is not None:
            q = self._rope(q, q, cos, sin)[0]
        if self.query_temperature is not None:
            q = self._temper(q, inputs.text_index)
        keys, values = ([cache.keys], [cache.values]) if has_cached else ([], [])
        if inputs.has_images:
            image_k, image_v = self._image_kv(inputs, cos, sin)
            keys.append(image_k)
            values.append(image_v)
        past = None
        if self.history_size is not None:
            past = self._history(inputs, cache, k, v, keys, values)
        if k is not None:
            keys.append(k)
            values.append(v)
        keys, values = torch.cat(keys, 2), torch.cat(values, 2)  # (B, Hkv, K, hd)
        layout = inputs.key_layout((cache.windows, cache.index) if has_cached else None, k is not None, past)
        y = KERNELS[self.kernel](q, keys, values, layout, self.scaling, self.mods)  # (B, H, T, hd)
        y = y.transpose(1, 2).reshape(B, T, self.num_heads * self.head_dim)  # (B, T, H*hd)
        out = self.project_out(y) * (inputs.text_windows > 0).unsqueeze(-1).to(x.dtype)  # (B, T, D), 0 outside windows
        if cache is not None:
            cache.advance(inputs, (keys, values, layout))
        return out

    def _history(self, inputs: CasaInputs, cache: LayerCache | None, k, v, keys: list, values: list):
        """Gist history: append the history keys of the windows this call opens to `keys`/`values`, update the
        cache's kept gists, and return the history's (windows, index) (B, Kh) for the layout (None if none).
        k, v (B, Hkv, T, hd): this call's text keys."""
        kept = cache is not None and cache.gist_keys is not None
        cand_w = history.candidates(cache.gist_windows if kept else None, inputs.text_windows, inputs.text_gist)
        cand_k = torch.cat([cache.gist_keys, k], 2) if kept else k  # (B, Hkv, G + T, hd)
        cand_v = torch.cat([cache.gist_values, v], 2) if kept else v
        part = None
        if inputs.has_images:
            plan = inputs.derived(
                ("history", cand_w.shape[1], self.history_size),
                lambda: history.plan(
                    cand_w,
                    inputs.text_windows,
                    inputs.text_index,
                    history.opened_windows(inputs.image_windows),
                    self.history_size,
                ),
            )
            keys.append(history.gather(cand_k, plan.select))  # (B, Hkv, Kh, hd)
            values.append(history.gather(cand_v, plan.select))
            part = (plan.windows, plan.index)
        if cache is not None:
            cache.gist_keys, cache.gist_values, cache.gist_windows = history.keep_latest(
                cand_k, cand_v, cand_w, self.history_size
            )
        return part


__all__ = ["CasaLayer"]
