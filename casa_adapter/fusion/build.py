"""Building models, in one place: `wrap()`, `load_adapter()` and `build_from_settings()`.

`build_model` runs the steps both fusions share, around what each fusion adds (`FUSIONS`):
every check that can fail first (family, blocks, attention layout); build the vision encoder (before
anything else draws random numbers, so a seed gives the same tower and projector whatever the fusion,
CASA and LoRA options, and A/B runs start from the same vision init); then freeze the LLM, inject
LoRA (before any CASA layer exists, so CASA is never a LoRA target), attach the fusion (CASA layers +
marker, or the insertion flag) and mark exactly the new parameters trainable. Any error on the way
puts the user's LLM back as it was.

    >>> import casa_adapter
    >>> from casa_adapter.backbone.base_models import tiny_llm
    >>> settings = casa_adapter.CasaSettings(every=2, variant="ca")
    >>> model = casa_adapter.wrap(tiny_llm(), vision="siglip-tiny", pretrained=False, casa=settings, every=1)
    >>> model.layer_indices, model.settings.variant          # `every=1` overrides the settings' `every`
    ([0, 1, 2, 3], 'ca')
"""

from __future__ import annotations

import dataclasses
import logging
import os
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from casa_adapter.adapters.fingerprint import fingerprint
from casa_adapter.adapters.io import check_base, check_tower, load_tensors, read_tensors
from casa_adapter.adapters.manifest import casa_settings, lora_settings, read_manifest, vision_arguments
from casa_adapter.backbone.base_models import load_base
from casa_adapter.backbone.families import FamilySpec, family_spec, text_config
from casa_adapter.backbone.lora import apply_lora, remove_lora
from casa_adapter.casa.attach import attach_casa, casa_blocks, detach_casa, pinned_placement
from casa_adapter.casa.marker import MarkerEmbedding
from casa_adapter.casa.parallel import CasaAttention
from casa_adapter.config import CasaSettings, LoraSettings, ModelSettings, VisionSettings
from casa_adapter.fusion.base import FusionModel
from casa_adapter.fusion.casa_model import CasaModel
from casa_adapter.fusion.insertion import InsertionModel, is_inserted, mark_inserted, unmark_inserted
from casa_adapter.vision.build import build_vision

log = logging.getLogger(__name__)

VISION_OPTIONS = ("unfreeze_last", "pool", "projector", "pretrained")
"""`wrap()` options that go to the vision encoder (`VisionSettings` fields of the same names)."""


@dataclass(frozen=True)
class Fusion:
    """What one fusion adds to the shared build steps."""

    model: type[FusionModel]
    blocks: Callable[[nn.Module, FamilySpec, CasaSettings], list[int]]
    """Blocks that get a layer; raises for what cannot be wrapped, before anything changes."""
    attach: Callable[[nn.Module, FamilySpec, CasaSettings, list[int]], None]
    detach: Callable[[nn.Module, FamilySpec], None]
    """Undo `attach` (a failed build is rolled back)."""


FUSIONS = {
    "casa": Fusion(CasaModel, casa_blocks, attach_casa, detach_casa),
    "insertion": Fusion(
        InsertionModel,
        lambda llm, spec, settings: [],
        lambda llm, spec, settings, indices: mark_inserted(llm),
        lambda llm, spec: unmark_inserted(llm),
    ),
}
"""`CasaSettings.fusion` -> how to build it."""


def wrap(
    llm: nn.Module,
    vision: str | VisionSettings | nn.Module = "siglip",
    casa: CasaSettings | None = None,
    lora: LoraSettings | None = None,
    **options,
) -> CasaModel | InsertionModel:
    """Wrap `llm` (an `AutoModelForCausalLM`) into a `CasaModel` (or, with `fusion="insertion"`, an
    `InsertionModel`). The LLM is modified in place and frozen.

    vision: "siglip", any open_clip name, a `VisionSettings`, or an `nn.Module` tower with an int `embed_dim`.
    casa: a whole `CasaSettings` (placement, variant, init, fusion, kernel, ...; default: `CasaSettings()`).
    lora: `LoraSettings` for LoRA on the frozen LLM, or None.
    options: any `CasaSettings` field by name (`every=2`, `layers=[-4, -1]`, `variant="ca"`, `fusion="insertion"`,
    `kernel="windowed"`, ...), overriding `casa`; or a vision option (`unfreeze_last`, `pool`, `projector`,
    `pretrained`) for the vision encoder.
    """
    fields = {f.name for f in dataclasses.fields(CasaSettings)}
    unknown = sorted(set(options) - fields - set(VISION_OPTIONS))
    if unknown:
        raise TypeError(
            f"wrap() got unknown option(s) {unknown}: options are CasaSettings fields {sorted(fields)} "
            f"or vision options {list(VISION_OPTIONS)}"
        )
    settings = dataclasses.replace(casa or CasaSettings(), **{k: v for k, v in options.items() if k in fields})
    family_spec(llm)  # a clear error for what is not a transformers causal LM, before anything else
    check_fresh(llm)
    vision_overrides = {k: v for k, v in options.items() if k in VISION_OPTIONS}
    return build_model(llm, settings, vision, lora, fingerprint(llm), **vision_overrides)


def check_fresh(llm: nn.Module) -> None:
    """Refuse an LLM that an earlier `wrap()` already modified (it works in place)."""
    if any(isinstance(m, (CasaAttention, MarkerEmbedding)) for m in llm.modules()):
        raise ValueError("this LLM already holds CASA layers (wrap() modifies it in place); load a fresh base model")
    if is_inserted(llm):
        raise ValueError(
            "this LLM is already wrapped for token insertion (wrap() modifies it in place); load a fresh base model"
        )


def build_model(
    llm: nn.Module, settings: CasaSettings, vision, lora: LoraSettings | None, base_fingerprint: str, **vision_overrides
) -> CasaModel | InsertionModel:
    """The shared build steps around `FUSIONS[settings.fusion]` (see the module docstring)."""
    fusion = FUSIONS[settings.fusion]
    spec = family_spec(llm)
    if settings.fusion == "casa":  # the default placement written out, so a saved adapter records it
        settings = pinned_placement(llm, spec, settings)
    indices = fusion.blocks(llm, spec, settings)
    # the first random draws: a seed gives the same tower and projector whatever the fusion, CASA and LoRA options
    encoder = build_vision(vision, text_config(llm.config).hidden_size, **vision_overrides)
    grads = {n: p.requires_grad for n, p in llm.named_parameters()}
    try:
        llm.requires_grad_(False)
        targets = apply_lora(llm, spec.blocks, lora, indices) if lora is not None else None
        fusion.attach(llm, spec, settings, indices)
    except Exception:
        fusion.detach(llm, spec)
        remove_lora(llm)
        for n, p in llm.named_parameters():
            p.requires_grad_(grads.get(n, False))
        raise
    ref = next(llm.parameters())
    encoder.to(device=ref.device)
    encoder.projector.to(dtype=ref.dtype)
    model = fusion.model(llm, encoder, settings, spec, indices, lora, base_fingerprint, targets)
    log.info(
        "wrapped %s (%s): layers %s, trainable %s",
        llm.config.model_type,
        settings.fusion,
        indices,
        model.trainable_counts(),
    )
    return model


def load_adapter(directory: str | os.PathLike, llm: nn.Module, vision: nn.Module | None = None):
    """Rebuild a model from the adapter in `directory` onto the pristine base `llm` (modified in place).

    Raises AdapterError naming both fingerprints when `llm` is not the base the adapter was trained on,
    before `llm` is touched. A custom `nn.Module` tower must be passed again as `vision=`; spec-named
    towers are rebuilt. Reads format versions 1 and 2 (docs/checkpoints.md)."""
    manifest = read_manifest(directory)
    tensors = read_tensors(directory, manifest)
    check_fresh(llm)
    found = check_base(manifest, llm, directory)
    tower, overrides = vision_arguments(manifest["vision"], vision, directory)
    if isinstance(tower, nn.Module):
        check_tower(tower, manifest, directory)
    model = build_model(llm, casa_settings(manifest), tower, lora_settings(manifest), found, **overrides)
    load_tensors(model, tensors, manifest, directory)
    return model


def build_from_settings(settings: ModelSettings):
    """(model, tokenizer) from `ModelSettings`: the base loaded offline, then a fresh `wrap`, or the saved
    adapter `settings.adapter` (whose manifest then decides the CASA, vision and LoRA settings)."""
    llm, tokenizer = load_base(settings.base, getattr(torch, settings.dtype))
    if settings.adapter:
        return load_adapter(settings.adapter, llm), tokenizer
    return wrap(llm, vision=settings.vision, casa=settings.casa, lora=settings.lora), tokenizer


__all__ = ["FUSIONS", "build_from_settings", "build_model", "check_fresh", "load_adapter", "wrap"]
