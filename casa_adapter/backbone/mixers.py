"""Non-attention mixers of hybrid stacks: finding them, and `MixerAccess` for a CASA layer beside one.

A hybrid stack (Jamba, Bamba, Qwen3-Next, LFM2, Nemotron-H, ...) has decoder blocks whose token mixer is a
state-space, linear-attention or convolution module instead of self-attention. With
`CasaSettings.mixers="all"` such a block can hold a CASA layer too (`casa/attach.py`): it sits beside the
mixer (found by `mixer_path`), is computed on the mixer's (normed) input, and its output is added to the
mixer's, so the block's residual sees mixer + CASA.

There are no self-attention projections to copy there, so `MixerAccess` gives the layer fresh ones sized by the
text config (`hidden_size`, `num_attention_heads`, `num_key_value_heads`, `head_dim`), as the `own` layout
does for multi-head latent attention; no q/k norms. RoPE: where the model holds one shared rotary module beside
its blocks (`rotary_emb`, LFM2's `pos_emb`, called as `(x, position_ids)`) and its attention blocks use RoPE, the layer
rotates with it at the call's sequence positions (`rotary.OwnRotary`); otherwise (Jamba: no RoPE anywhere) it
uses no positions, as CASA's `ca` variant does.
"""

from __future__ import annotations

from typing import ClassVar

from torch import nn

from casa_adapter.backbone.access import AttentionAccess, family_rope
from casa_adapter.backbone.rotary import calls_with_position_ids
from casa_adapter.backbone.spec import FamilySpec, UnsupportedModelError, get_path, text_config

MIXER_NAMES = ("mamba", "linear_attn", "conv", "mixer")
"""Block attributes that hold a non-attention mixer (Jamba/Bamba/GraniteMoeHybrid `mamba`, Qwen3-Next/OLMo-hybrid
`linear_attn`, LFM2 `conv`, Nemotron-H `mixer`), tried after the spec's `attention` path."""


def mixer_path(block: nn.Module, spec: FamilySpec, model_type: str) -> str:
    """The dotted path from `block` to its non-attention mixer; UnsupportedModelError naming what is there."""
    for name in (spec.attention, *MIXER_NAMES):
        if isinstance(get_path(block, name), nn.Module):
            return name
    children = sorted(n for n, _ in block.named_children())
    raise UnsupportedModelError(
        f"model_type {model_type!r}: a {type(block).__name__} block has no attention the FamilySpec reads and no"
        f" mixer CASA knows ({'/'.join(MIXER_NAMES)}); its children are {children}; use mixers='attention'"
    )


def model_rotary(llm: nn.Module, spec: FamilySpec) -> nn.Module | None:
    """The rotary module shared by the decoder stack: a child of the module holding the blocks whose class is a
    rotary embedding called as `(x, position_ids)` (`rotary_emb`, LFM2's `pos_emb`), where the family's attention
    takes the `position_embeddings` it makes; None otherwise."""
    stack_path = spec.blocks.rpartition(".")[0]
    stack = get_path(llm, stack_path) if stack_path else llm
    if not spec.rope or spec.rope_source != "position_embeddings" or stack is None:
        return None
    found = (m for m in stack.children() if "rotary" in type(m).__name__.lower() and calls_with_position_ids(m))
    return next(found, None)


class MixerAccess(AttentionAccess):
    """What a CASA layer beside a non-attention mixer reads: the config's head geometry and fresh projections.

    `attn` is the mixer (the layer takes device and dtype from its parameters); `rotary` the model's rotary
    module (`model_rotary`), or None for a layer without RoPE."""

    has_self_attention: ClassVar[bool] = False
    """No self-attention here: no ALiBi, softcap or sliding window to repeat (`score_mods.py`)."""

    def __init__(self, mixer: nn.Module, spec: FamilySpec, config, model_type: str, rotary: nn.Module | None):
        config = text_config(config)
        self.attn, self.spec = mixer, spec
        self.hidden_size = config.hidden_size
        self.num_heads = config.num_attention_heads
        self.head_dim = getattr(config, "head_dim", None) or config.hidden_size // self.num_heads
        self.num_kv_heads = getattr(config, "num_key_value_heads", None) or self.num_heads
        self.scaling = self.head_dim**-0.5
        self.rotary_dims = self._rotary_dims(config)
        self.rope_fn = None
        if rotary is not None:
            self.rope_fn = family_rope(rotary, spec.rope_style)
        if self.num_heads % self.num_kv_heads:
            raise UnsupportedModelError(
                f"model_type {model_type!r}: {self.num_heads} attention heads do not split into"
                f" {self.num_kv_heads} KV heads for a CASA layer beside a {type(mixer).__name__}"
            )

    def copies(self) -> tuple[nn.Linear, nn.Linear, nn.Linear, nn.Linear]:
        """Freshly initialised q, k, v (D -> heads*hd) and o (heads*hd -> D), bias-free, on the mixer's device."""
        ref = next(self.attn.parameters())
        make = lambda i, n: nn.Linear(i, n, bias=False, device=ref.device, dtype=ref.dtype)
        D = self.hidden_size
        return make(D, self.q_size), make(D, self.kv_size), make(D, self.kv_size), make(self.q_size, D)

    def norm_copies(self) -> tuple[None, None]:
        """No q/k norms: there is no attention whose norms the projections were trained with."""
        return None, None


__all__ = ["MIXER_NAMES", "MixerAccess", "mixer_path", "model_rotary"]
