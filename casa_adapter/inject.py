"""`wrap()`: turn a loaded HF decoder-only LM into a CASA vision-language model, in place.

Steps: fingerprint the pristine base weights; find the decoder blocks (families.py); freeze the
LLM; inject LoRA (before CASA, so CASA is never a LoRA target); set a `CasaAttention` beside the
self-attention of each chosen block; add the marker embedding; build the vision encoder; mark
exactly the new parameters trainable.
"""

from __future__ import annotations

import logging

from torch import nn

from casa_adapter.attention import KERNELS
from casa_adapter.config import CasaSettings, LoraSettings, VisionSettings
from casa_adapter.embedding import MarkerEmbedding
from casa_adapter.families import AttentionAccess, decoder_blocks, family_spec
from casa_adapter.layer import CasaAttention, CasaLayer
from casa_adapter.lora import apply_lora
from casa_adapter.model import CasaModel

log = logging.getLogger(__name__)


def layer_indices(n_blocks: int, every: int = 1, layers: list[int] | None = None) -> list[int]:
    """Blocks that get a CASA layer. `layers` (negatives count from the end) overrides `every`;
    `every=N` takes every N-th block counted down from the last one, so the last block always has one."""
    if layers is not None:
        out = sorted({i + n_blocks if i < 0 else i for i in layers})
        bad = [i for i in out if not 0 <= i < n_blocks]
        if bad or not out:
            raise ValueError(f"layers={layers}: indices must be within [-{n_blocks}, {n_blocks}) and non-empty")
        return out
    return sorted(range(n_blocks - 1, -1, -every))


def _check_not_wrapped(llm: nn.Module) -> None:
    if any(isinstance(m, (CasaAttention, MarkerEmbedding)) for m in llm.modules()):
        raise ValueError("this LLM already holds CASA layers (wrap() modifies it in place); load a fresh base model")


def wrap(llm: nn.Module, vision: str | VisionSettings | nn.Module = "siglip", every: int = 1,
         layers: list[int] | None = None, variant: str = "casa", lora: LoraSettings | None = None,
         fusion: str = "casa", init: str = "zero", kernel: str = "sdpa", **vision_overrides) -> CasaModel:
    """Wrap `llm` (an `AutoModelForCausalLM`) into a `CasaModel`. The LLM is modified in place and frozen.

    vision: "siglip", any open_clip name, a `VisionSettings`, or an `nn.Module` tower with an int `embed_dim`.
    every / layers: CASA placement (see `layer_indices`). variant: "casa" | "ca" | "shared".
    init: "zero" (output starts at exactly 0; default) | "copy" (paper). lora: LoraSettings or None.
    kernel: CASA attention kernel name (`casa_adapter.attention.KERNELS`).
    vision_overrides: `unfreeze_last`, `pool`, `projector`, `pretrained` for the vision encoder.
    """
    from casa_adapter.checkpoint import fingerprint

    settings = CasaSettings(every=every, layers=layers, variant=variant, init=init, fusion=fusion)
    _check_not_wrapped(llm)
    return build_model(llm, settings, vision, lora, kernel, fingerprint(llm), **vision_overrides)


def build_model(llm: nn.Module, settings: CasaSettings, vision, lora: LoraSettings | None, kernel: str,
                base_fingerprint: str, **vision_overrides) -> CasaModel:
    """wrap() once the settings are checked and the pristine base is fingerprinted (load_adapter reuses it)."""
    from casa_adapter.vision import build_vision

    if settings.fusion != "casa":
        raise NotImplementedError("fusion='insertion' (the token-insertion baseline) is not available yet")
    if kernel not in KERNELS:
        raise ValueError(f"kernel={kernel!r}: choose one of {sorted(KERNELS)}")
    spec = family_spec(llm)
    blocks = decoder_blocks(llm, spec)
    indices = layer_indices(len(blocks), settings.every, settings.layers)
    for p in llm.parameters():
        p.requires_grad_(False)
    targets = apply_lora(llm, spec.blocks, lora) if lora is not None else None
    for i in indices:
        attn = getattr(blocks[i], spec.attention)
        access = AttentionAccess(attn, spec, llm.config, llm.config.model_type)
        layer = CasaLayer(access, i, settings.variant, settings.init, kernel)
        setattr(blocks[i], spec.attention, CasaAttention(attn, layer))
    llm.set_input_embeddings(MarkerEmbedding(llm.get_input_embeddings()))
    encoder = build_vision(vision, llm.config.hidden_size, **vision_overrides)
    ref = next(llm.parameters())
    encoder.to(device=ref.device)
    encoder.projector.to(dtype=ref.dtype)
    model = CasaModel(llm, encoder, settings, indices, lora, base_fingerprint, targets, kernel)
    log.info("wrapped %s: CASA in blocks %s, trainable %s", llm.config.model_type, indices, model.trainable_counts())
    return model
