"""`wrap()`: turn a loaded HF decoder-only LM into a CASA vision-language model, in place.

Steps: fingerprint the pristine base weights; find the decoder blocks (families.py); freeze the
LLM; inject LoRA (before CASA, so CASA is never a LoRA target); set a `CasaAttention` beside the
self-attention of each chosen block; add the marker embedding; build the vision encoder; mark
exactly the new parameters trainable.
"""

from __future__ import annotations

import logging

import torch
from torch import nn

from casa_adapter.attention import KERNELS
from casa_adapter.config import CasaSettings, LoraSettings, VisionSettings
from casa_adapter.embedding import MarkerEmbedding
from casa_adapter.families import AttentionAccess, UnsupportedModelError, decoder_blocks, family_spec
from casa_adapter.insertion import InsertionModel, build_insertion, check_not_inserted
from casa_adapter.layer import CasaAttention, CasaLayer
from casa_adapter.lora import apply_lora, remove_lora
from casa_adapter.model import CasaModel
from casa_adapter.windows import CasaInputs

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


def attach_casa(llm: nn.Module, settings: CasaSettings, lora: LoraSettings | None, kernel: str):
    """Freeze, add LoRA, CASA layers and the marker embedding; probe them. Returns (indices, LoRA targets).

    Every check that can fail runs before the first change; if the probe forward fails, the LLM is put
    back as it was and the error names the model_type.
    """
    spec = family_spec(llm)
    blocks = decoder_blocks(llm, spec)
    indices = layer_indices(len(blocks), settings.every, settings.layers)
    for i in indices:  # raises UnsupportedModelError before anything is modified
        AttentionAccess(getattr(blocks[i], spec.attention), spec, llm.config, llm.config.model_type)
    grads = {n: p.requires_grad for n, p in llm.named_parameters()}
    embedding = llm.get_input_embeddings()
    originals = {i: getattr(blocks[i], spec.attention) for i in indices}
    try:
        for p in llm.parameters():
            p.requires_grad_(False)
        targets = apply_lora(llm, spec.blocks, lora) if lora is not None else None
        for i in indices:
            attn = getattr(blocks[i], spec.attention)
            access = AttentionAccess(attn, spec, llm.config, llm.config.model_type)
            layer = CasaLayer(access, i, settings.variant, settings.init, kernel, image_norm=settings.image_norm)
            setattr(blocks[i], spec.attention, CasaAttention(attn, layer))
        llm.set_input_embeddings(MarkerEmbedding(embedding))
        probe_casa(llm, spec, indices)
    except Exception:
        for i, attn in originals.items():
            setattr(blocks[i], spec.attention, attn)
        llm.set_input_embeddings(embedding)
        remove_lora(llm)
        for n, p in llm.named_parameters():
            p.requires_grad_(grads.get(n, False))
        raise
    return indices, targets


def probe_casa(llm: nn.Module, spec, indices: list[int]) -> None:
    """One 2-token forward with an image: every CASA layer must receive `casa_inputs` and run."""
    ref = next(llm.parameters())
    marker = llm.get_input_embeddings().marker_id
    ids = torch.tensor([[0, marker]], device=ref.device)
    inputs = CasaInputs(torch.tensor([[0, 1]], device=ref.device), torch.tensor([[0, 1]], device=ref.device),
                        torch.zeros(1, 1, llm.config.hidden_size, device=ref.device, dtype=ref.dtype),
                        torch.ones(1, 1, dtype=torch.long, device=ref.device), torch.ones(1, 1, dtype=torch.long, device=ref.device))
    reached: list[int] = []
    blocks = decoder_blocks(llm, spec)
    hooks = [getattr(blocks[i], spec.attention).register_forward_pre_hook(
        lambda m, a, kw, i=i: reached.append(i) if kw.get("casa_inputs") is not None else None, with_kwargs=True)
        for i in indices]
    try:
        with torch.no_grad():
            llm(input_ids=ids, casa_inputs=inputs, use_cache=False)
    except Exception as e:
        raise UnsupportedModelError(f"model_type {llm.config.model_type!r}: a forward through the CASA layers failed "
                                    f"({type(e).__name__}: {e}); add a FamilySpec (docs/adding-a-family.md)") from e
    finally:
        for h in hooks:
            h.remove()
    missed = sorted(set(indices) - set(reached))
    if missed:
        raise UnsupportedModelError(
            f"model_type {llm.config.model_type!r}: decoder blocks {missed} do not pass keyword arguments on to their "
            f"attention, so images cannot reach the CASA layers; this family cannot be wrapped as is")


def wrap(llm: nn.Module, vision: str | VisionSettings | nn.Module = "siglip", every: int = 1,
         layers: list[int] | None = None, variant: str = "casa", lora: LoraSettings | None = None,
         fusion: str = "casa", init: str = "zero", kernel: str = "auto", image_norm: bool = True,
         train_marker: bool = True, **vision_overrides) -> CasaModel | InsertionModel:
    """Wrap `llm` (an `AutoModelForCausalLM`) into a `CasaModel`. The LLM is modified in place and frozen.

    vision: "siglip", any open_clip name, a `VisionSettings`, or an `nn.Module` tower with an int `embed_dim`.
    every / layers: CASA placement (see `layer_indices`). variant: "casa" | "ca" | "shared".
    init: "zero" (output starts at exactly 0; default) | "copy" (paper). lora: LoraSettings or None.
    kernel: CASA attention kernel name (`casa_adapter.attention.KERNELS`).
    image_norm / train_marker: see `CasaSettings` (normalise image tokens per CASA layer; train the marker).
    fusion: "casa" (CASA layers, a `CasaModel`) | "insertion" (the token-insertion baseline, an `InsertionModel`).
    vision_overrides: `unfreeze_last`, `pool`, `projector`, `pretrained` for the vision encoder.
    """
    from casa_adapter.checkpoint import fingerprint

    settings = CasaSettings(every=every, layers=layers, variant=variant, init=init, fusion=fusion,
                            image_norm=image_norm, train_marker=train_marker)
    family_spec(llm)  # a clear error for what is not a transformers causal LM, before anything else
    _check_not_wrapped(llm)
    return build_model(llm, settings, vision, lora, kernel, fingerprint(llm), **vision_overrides)


def build_model(llm: nn.Module, settings: CasaSettings, vision, lora: LoraSettings | None, kernel: str,
                base_fingerprint: str, **vision_overrides) -> CasaModel | InsertionModel:
    """wrap() once the settings are checked and the pristine base is fingerprinted (load_adapter reuses it)."""
    from casa_adapter.vision import build_vision

    if settings.fusion == "insertion":
        return build_insertion(llm, settings, vision, lora, kernel, base_fingerprint, **vision_overrides)
    check_not_inserted(llm)
    if kernel not in KERNELS:
        raise ValueError(f"kernel={kernel!r}: choose one of {sorted(KERNELS)}")
    indices, targets = attach_casa(llm, settings, lora, kernel)
    encoder = build_vision(vision, llm.config.hidden_size, **vision_overrides)
    ref = next(llm.parameters())
    encoder.to(device=ref.device)
    encoder.projector.to(dtype=ref.dtype)
    model = CasaModel(llm, encoder, settings, indices, lora, base_fingerprint, targets, kernel)
    log.info("wrapped %s: CASA in blocks %s, trainable %s", llm.config.model_type, indices, model.trainable_counts())
    return model
