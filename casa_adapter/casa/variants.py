"""The CASA layer's variants (`CasaSettings.variant`), one small class each.

- `OwnProjectionLayer` ("casa", the paper's CA_t+v): its own q/k/v/o, copied from the block's
  self-attention (and its q/k norms); keys = window images + window text so far; RoPE.
  `init="zero"` zeroes the output projection so the wrapped model starts exactly at the base.
- `CrossAttentionLayer` ("ca", Flamingo-style baseline): the same projections, image keys only,
  no positional encoding.
- `SharedProjectionLayer` ("shared"): the block's own live projections (LoRA included) and norms,
  no new attention weights; a learned scalar gate on the output (0 at `init="zero"`).

`VARIANTS` maps the setting to the class; `build_layer` makes one for a block.
"""

from __future__ import annotations

import torch
from torch import nn

from casa_adapter.backbone.access import AttentionAccess
from casa_adapter.casa.ffn import ImageFFN
from casa_adapter.casa.layer import CasaLayer
from casa_adapter.config import CasaSettings


class OwnProjectionLayer(CasaLayer):
    """CASA with its own projections: image + local text keys (the paper's CA_t+v)."""

    def __init__(self, access: AttentionAccess, layer_idx: int, settings: CasaSettings, image_ffn=None):
        super().__init__(access, layer_idx, settings, image_ffn)
        self.q_proj, self.k_proj, self.v_proj, self.o_proj = access.copies()
        self.q_norm, self.k_norm = access.norm_copies()
        if settings.init == "zero":
            nn.init.zeros_(self.o_proj.weight)
            if self.o_proj.bias is not None:
                nn.init.zeros_(self.o_proj.bias)

    def project_text(self, x: torch.Tensor):
        return self.q_proj(x), self.k_proj(x), self.v_proj(x)

    def project_images(self, x: torch.Tensor):
        return self.k_proj(x), self.v_proj(x)

    def project_out(self, y: torch.Tensor) -> torch.Tensor:
        return self.o_proj(y)

    def qk_norms(self):
        return self.q_norm, self.k_norm


class CrossAttentionLayer(OwnProjectionLayer):
    """Plain cross-attention: text queries see the window's image tokens only, without positions."""

    text_keys = False
    uses_rope = False

    def project_text(self, x: torch.Tensor):
        return self.q_proj(x), None, None


class SharedProjectionLayer(CasaLayer):
    """CASA through the block's own self-attention projections, behind a learned scalar gate."""

    def __init__(self, access: AttentionAccess, layer_idx: int, settings: CasaSettings, image_ffn=None):
        super().__init__(access, layer_idx, settings, image_ffn)
        ref = next(access.attn.parameters())
        self.gate = nn.Parameter(
            torch.tensor(0.0 if settings.init == "zero" else 1.0, dtype=ref.dtype, device=ref.device)
        )
        self._access = (access,)  # a tuple: SA and its norms stay out of this module's parameters
        self._norms = access.live_norms()

    def project_text(self, x: torch.Tensor):
        return self._access[0].live_qkv(x)

    def project_images(self, x: torch.Tensor):
        return self._access[0].live_qkv(x)[1:]

    def project_out(self, y: torch.Tensor) -> torch.Tensor:
        return self._access[0].live_out(y) * self.gate

    def qk_norms(self):
        return self._norms


VARIANTS: dict[str, type[CasaLayer]] = {
    "casa": OwnProjectionLayer,
    "ca": CrossAttentionLayer,
    "shared": SharedProjectionLayer,
}
"""`CasaSettings.variant` -> the layer class."""


def build_layer(
    access: AttentionAccess, layer_idx: int, settings: CasaSettings, image_ffn: ImageFFN | None = None
) -> CasaLayer:
    """The CASA layer of `settings.variant` for the block whose attention `access` reads (with the block's
    `ImageFFN` when `settings.image_ffn` is not "none")."""
    return VARIANTS[settings.variant](access, layer_idx, settings, image_ffn)


__all__ = ["VARIANTS", "build_layer", "OwnProjectionLayer", "CrossAttentionLayer", "SharedProjectionLayer"]
