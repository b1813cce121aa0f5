"""The CASA layer and the wrapper that sets it beside a decoder block's self-attention.

    h   = x + SA(norm(x)) + CASA(norm(x), norm'(image_tokens))
    out = h + FFN(norm2(h))

`CasaAttention` replaces the block's attention attribute and holds the original as `.sa` (it is
wrapped, not subclassed, so any family works). It runs SA, then adds the CASA layer's output
computed on the same normed input. `CasaLayer` owns its projections (copied from SA) or, for
the `shared` variant, calls SA's live projections behind a learned gate; `norm'` is its own
trainable RMSNorm (unit weight at the start) on the image tokens (`CasaSettings.image_norm`).

Example:
    >>> import torch, casa_adapter
    >>> from transformers import LlamaConfig, LlamaForCausalLM
    >>> llm = LlamaForCausalLM(LlamaConfig(hidden_size=64, intermediate_size=128, num_hidden_layers=2,
    ...     num_attention_heads=4, num_key_value_heads=2, vocab_size=128))
    >>> class Tower(torch.nn.Module):
    ...     embed_dim = 32
    ...     def forward(self, x): return x.flatten(2)[:, :, :32].transpose(1, 2)[:, :4]  # (B, 4, 32)
    >>> model = casa_adapter.wrap(llm, vision=Tower(), every=1)
    >>> type(llm.model.layers[0].self_attn).__name__
    'CasaAttention'
"""

from __future__ import annotations

import torch
from torch import nn

from casa_adapter.attention import KERNELS
from casa_adapter.families import AttentionAccess
from casa_adapter.windows import CasaCache, CasaInputs, LayerCache


class CasaLayer(nn.Module):
    """Cross-attention from text queries to [window image tokens ; window text so far]."""

    def __init__(self, access: AttentionAccess, layer_idx: int, variant: str = "casa", init: str = "zero",
                 kernel: str = "auto", image_norm: bool = True):
        super().__init__()
        self.layer_idx, self.variant, self.kernel = layer_idx, variant, kernel
        ref = next(access.attn.parameters())
        self.image_norm = None  # None: image tokens reach k/v as the projector gives them
        if image_norm:
            self.image_norm = nn.RMSNorm(access.hidden_size, eps=1e-6, device=ref.device, dtype=ref.dtype)
        self.num_heads, self.num_kv_heads = access.num_heads, access.num_kv_heads
        self.head_dim, self.scaling = access.head_dim, access.scaling
        self.rope_fn = access.rope_fn if variant != "ca" else None
        self._access = (access,)  # a tuple: SA stays out of this module's parameters
        if variant == "shared":
            self.gate = nn.Parameter(torch.tensor(0.0 if init == "zero" else 1.0, dtype=ref.dtype, device=ref.device))
            self._live_norms = access.live_norms()  # a tuple: SA's norms, not registered here
            return
        self.q_proj, self.k_proj, self.v_proj, self.o_proj = access.copies()
        self.q_norm, self.k_norm = access.norm_copies()
        if init == "zero":
            nn.init.zeros_(self.o_proj.weight)
            if self.o_proj.bias is not None:
                nn.init.zeros_(self.o_proj.bias)

    # -- projections ---------------------------------------------------------------------
    def _norms(self) -> tuple[nn.Module | None, nn.Module | None]:
        return self._live_norms if self.variant == "shared" else (self.q_norm, self.k_norm)

    def _qkv(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """x (B, T, D) -> q (B, T, H*hd), k, v (B, T, Hkv*hd)."""
        if self.variant == "shared":
            return self._access[0].live_qkv(x)
        return self.q_proj(x), self.k_proj(x), self.v_proj(x)

    def _kv(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """x (B, I, D) -> k, v (B, I, Hkv*hd), without the unused query projection where it can be skipped."""
        if self.variant == "shared":
            return self._access[0].live_qkv(x)[1:]
        return self.k_proj(x), self.v_proj(x)

    def _heads(self, x: torch.Tensor, n: int, norm: nn.Module | None) -> torch.Tensor:
        """(B, T, n*hd) -> (B, n, T, hd), applying a per-head or full-width norm."""
        B, T, _ = x.shape
        per_head = norm is not None and getattr(norm, "weight", None) is not None and norm.weight.numel() == self.head_dim
        if norm is not None and not per_head:
            x = norm(x)
        x = x.view(B, T, n, self.head_dim)  # (B, T, n, hd)
        if per_head:
            x = norm(x)
        return x.transpose(1, 2)  # (B, n, T, hd)

    def _out(self, y: torch.Tensor) -> torch.Tensor:
        """(B, T, H*hd) -> (B, T, D)."""
        if self.variant == "shared":
            return self._access[0].live_out(y) * self.gate
        return self.o_proj(y)

    def _rope(self, q, k, cos, sin):
        if self.rope_fn is None:
            return q, k
        return self.rope_fn(q, k, cos, sin)

    # -- forward -------------------------------------------------------------------------
    def _image_keys(self, inputs: CasaInputs, cos, sin):
        """Keys/values of this call's image tokens, RoPE'd at their window start: (B, Hkv, I, hd) x2, meta (B, I) x2."""
        tokens = inputs.image_tokens if self.image_norm is None else self.image_norm(inputs.image_tokens)  # (B, I, D)
        k, v = self._kv(tokens)  # (B, I, Hkv*hd): image tokens are never queries
        q_norm, k_norm = self._norms()
        k, v = self._heads(k, self.num_kv_heads, k_norm), self._heads(v, self.num_kv_heads, None)
        if self.rope_fn is not None:
            B, I = inputs.image_start.shape
            at = inputs.image_start.unsqueeze(-1).expand(B, I, cos.shape[-1])  # (B, I, rd)
            cos_i = cos.expand(B, -1, -1).gather(1, at)  # (B, I, rd)
            sin_i = sin.expand(B, -1, -1).gather(1, at)
            k = self.rope_fn(k, k, cos_i, sin_i)[1]
        index = inputs.text_index.gather(1, inputs.image_start)  # (B, I)
        return k, v, inputs.image_windows, index

    def forward(self, x: torch.Tensor, inputs: CasaInputs, position_embeddings=None,
                cache: LayerCache | None = None) -> torch.Tensor | None:
        """x (B, T, D) normed hidden states -> CASA output (B, T, D), or None when no query has any key."""
        has_cached = cache is not None and cache.keys is not None
        if not inputs.has_images and not has_cached:
            _advance(cache, inputs, None)
            return None
        if self.rope_fn is not None and position_embeddings is None:
            raise RuntimeError("this family uses RoPE but its attention got no `position_embeddings`: "
                               "CASA cannot place image keys (see docs/adding-a-family.md)")
        cos, sin = position_embeddings if position_embeddings is not None else (None, None)
        B, T, _ = x.shape
        q, k, v = self._qkv(x)
        q_norm, k_norm = self._norms()
        q = self._heads(q, self.num_heads, q_norm)  # (B, H, T, hd)
        k, v = self._heads(k, self.num_kv_heads, k_norm), self._heads(v, self.num_kv_heads, None)  # (B, Hkv, T, hd)
        q, k = self._rope(q, k, cos, sin)
        parts = [(cache.keys, cache.values, cache.windows, cache.index)] if has_cached else []
        if inputs.has_images:
            parts.append(self._image_keys(inputs, cos, sin))
        if self.variant != "ca":
            parts.append((k, v, inputs.text_windows, inputs.text_index))
        keys, values = torch.cat([p[0] for p in parts], 2), torch.cat([p[1] for p in parts], 2)  # (B, Hkv, K, hd)
        k_win, k_idx = torch.cat([p[2] for p in parts], 1), torch.cat([p[3] for p in parts], 1)  # (B, K)
        y = KERNELS[self.kernel](q, keys, values, inputs.text_windows, inputs.text_index, k_win, k_idx, self.scaling)
        y = y.transpose(1, 2).reshape(B, T, self.num_heads * self.head_dim)  # (B, T, H*hd)
        out = self._out(y) * (inputs.text_windows > 0).unsqueeze(-1).to(x.dtype)  # (B, T, D), 0 outside windows
        _advance(cache, inputs, (keys, values, k_win, k_idx))
        return out


def _advance(cache: LayerCache | None, inputs: CasaInputs, keys) -> None:
    """Keep only the keys of each row's current window, and where the next token continues."""
    if cache is None:
        return
    current = inputs.text_windows.max(-1).values  # (B,)
    cache.last_window = current if cache.last_window is None else torch.maximum(cache.last_window, current)
    cache.next_index = inputs.text_index[:, -1] + 1
    if keys is None:
        return
    k, v, win, idx = keys
    keep = (win == cache.last_window.unsqueeze(-1)) & (win > 0)  # (B, K)
    n_keep = int(keep.sum(-1).max())
    order = torch.argsort(keep.int(), dim=-1, stable=True)[:, keep.shape[1] - n_keep:]  # (B, n_keep) kept last
    gather = order[:, None, :, None].expand(k.shape[0], k.shape[1], n_keep, k.shape[-1])
    cache.keys, cache.values = k.gather(2, gather), v.gather(2, gather)  # (B, Hkv, n_keep, hd)
    kept = keep.gather(1, order)
    cache.windows = torch.where(kept, win.gather(1, order), torch.zeros_like(order))
    cache.index = idx.gather(1, order)


class CasaAttention(nn.Module):
    """A decoder block's self-attention (`.sa`) with a CASA layer (`.casa`) beside it."""

    def __init__(self, sa: nn.Module, casa: CasaLayer):
        super().__init__()
        self.sa, self.casa = sa, casa

    def forward(self, *args, **kwargs):
        inputs: CasaInputs | None = kwargs.pop("casa_inputs", None)
        out = self.sa(*args, **kwargs)
        x = args[0] if args else kwargs["hidden_states"]  # (B, T, D), already normed
        cache = kwargs.get("cache", kwargs.get("past_key_values"))
        layer_cache = None
        if isinstance(cache, CasaCache):
            layer_cache = cache.layer(self.casa.layer_idx)
            if inputs is None:
                fresh = layer_cache.next_index is None
                inputs = cache.pending if fresh else layer_cache.continuation(x.shape[1])
        if inputs is None:
            return out
        extra = self.casa(x, inputs, kwargs.get("position_embeddings"), layer_cache)
        if extra is None:
            return out
        if isinstance(out, tuple):
            return (out[0] + extra, *out[1:])
        return out + extra
