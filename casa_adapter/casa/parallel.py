"""`CasaAttention`: a decoder block's self-attention with a CASA layer beside it, in parallel.

It takes the place of the block's attention attribute and holds the original as `.sa` (wrapped,
not subclassed, so any family works): it runs SA, then adds the CASA layer's output computed on
the same normed input. In a hybrid stack with `CasaSettings.mixers="all"` it wraps a block's
non-attention mixer the same way (`.sa` is then the mamba / linear-attention / conv module; the
block's residual sees mixer + CASA). With `CasaSettings.replace` the CASA output takes the place of
SA's for the tokens inside windows; text before the first image (window 0) keeps SA's output.
Images arrive through the LLM's `CasaChannel` (`casa/channel.py`), which holds
the `casa_inputs` the causal LM was called with; during `generate` and streaming the layer's window
cache comes from the `CasaCache` that travels as the model's cache. The state dict keeps the base's
keys (`self_attn.q_proj.weight`, not `self_attn.sa.q_proj.weight`), and attribute access falls
through to the self-attention (`self_attn.q_proj` is the base's projection); the CASA layer's
tensors are `self_attn.casa.*`.

Example:
    >>> import casa_adapter
    >>> from casa_adapter.backbone.base_models import tiny_llm
    >>> llm = tiny_llm()
    >>> model = casa_adapter.wrap(llm, vision="siglip-tiny", pretrained=False, layers=[-1])
    >>> attention = llm.model.layers[-1].self_attn
    >>> type(attention).__name__, type(attention.sa).__name__, type(attention.casa).__name__
    ('CasaAttention', 'LlamaAttention', 'OwnProjectionLayer')
    >>> sorted(k for k in llm.state_dict() if k.startswith("model.layers.3.self_attn.") and "casa" not in k)[:2]
    ['model.layers.3.self_attn.k_proj.weight', 'model.layers.3.self_attn.o_proj.weight']
"""

from __future__ import annotations

import torch
from torch import nn

from casa_adapter.backbone.rotary import OwnRotary
from casa_adapter.backbone.state_keys import keep_base_keys
from casa_adapter.casa.cache import CasaCache
from casa_adapter.casa.channel import CasaChannel
from casa_adapter.casa.layer import CasaLayer
from casa_adapter.casa.windows import CasaInputs


class CasaAttention(nn.Module):
    """A decoder block's self-attention (`.sa`) with a CASA layer (`.casa`) beside it."""

    def __init__(self, sa: nn.Module, casa: CasaLayer, channel: CasaChannel, rotary: OwnRotary | None = None):
        super().__init__()
        self.sa, self.casa = sa, casa
        self.channel = channel
        """The LLM's channel: this forward call's `CasaInputs` (shared by all CASA layers of the LLM)."""
        self.rotary = rotary
        """Where the CASA layer's rotation comes from: None, the `position_embeddings` the block passes; else an
        `OwnRotary` (`backbone/rotary.py`: Moshi's attention, CASA beside a non-attention mixer)."""
        keep_base_keys(self, "sa")

    def __getattr__(self, name: str):
        """Attributes this wrapper lacks are the self-attention's (`self_attn.q_proj`, `.layer_idx`, ...), so code
        that walks state-dict keys as attribute paths (torch.distributed.checkpoint, FSDP2 state dicts) or reads
        the attention's own attributes sees the base's module."""
        try:
            return super().__getattr__(name)
        except AttributeError:
            if name == "sa":
                raise
            return getattr(self.sa, name)

    def forward(self, *args, **kwargs):
        inputs: CasaInputs | None = self.channel.read(self.casa.layer_idx)
        out = self.sa(*args, **kwargs)
        x = args[0] if args else kwargs["hidden_states"]  # (B, T, D), already normed
        cache = next((a for a in (*args, *kwargs.values()) if isinstance(a, CasaCache)), None)  # any argument name
        if cache is None:  # a mixer whose block passes it no cache (or its own kind): the causal LM's
            cache = self.channel.cache
        layer_cache = None
        if cache is not None:
            layer_cache = cache.layer(self.casa.layer_idx)
            if inputs is None:
                fresh = layer_cache.next_index is None
                inputs = cache.pending if fresh else layer_cache.continuation(x.shape[1])
        if inputs is None:
            return out
        positions = kwargs.get("position_embeddings") if self.rotary is None else self.rotary(x, kwargs, inputs)
        extra = self.casa(x, inputs, positions, layer_cache)
        if extra is None:
            return out
        if isinstance(out, (tuple, list)):
            return type(out)((self._combine(out[0], extra, inputs), *out[1:]))
        return self._combine(out, extra, inputs)

    def _combine(self, sa: torch.Tensor, extra: torch.Tensor, inputs: CasaInputs) -> torch.Tensor:
        """SA + CASA (parallel); with `CasaSettings.replace`, CASA alone inside windows and SA in window 0.
        sa, extra (B, T, D)."""
        if not self.casa.replace:
            return sa + extra
        return torch.where((inputs.text_windows == 0).unsqueeze(-1), sa, extra)  # (B, T, D)


__all__ = ["CasaAttention"]
