"""`build_vision`: what a user writes as `vision=` -> a frozen `VisionEncoder`.

It takes:

- a name (`"siglip"` = open_clip `ViT-B-16-SigLIP`, `"siglip-so400m"`, `"siglip-tiny"`, or any
  open_clip model name), a `VisionSettings`, or a spec dict written by `VisionEncoder.spec()`;
  the towers themselves are built in `towers.py` (weights found by `weights.py`);
- any `nn.Module` with an integer `embed_dim` that maps (B, 3, H, W) -> (B, N, D).

Example (random tiny tower, no download):

    >>> import torch
    >>> from casa_adapter.vision import build_vision
    >>> enc = build_vision("siglip-tiny", llm_hidden=96, pretrained=False, pool=2)
    >>> x = enc.transform(torch.rand(3, 120, 90))                   # (3, 64, 64), normalised
    >>> enc(x[None]).shape                                           # 8x8 grid pooled to 4x4
    torch.Size([1, 16, 96])
"""

from __future__ import annotations

import dataclasses
from typing import Any

from torch import nn

from casa_adapter.config import VisionSettings
from casa_adapter.vision.encoder import DEFAULT_MEAN_STD, VisionEncoder
from casa_adapter.vision.towers import LOCAL_TOWERS, build_tower


def build_vision(
    vision: str | VisionSettings | dict | nn.Module,
    llm_hidden: int,
    *,
    unfreeze_last: int | None = None,
    pool: int | None = None,
    projector: str | None = None,
    pretrained: bool | str | None = None,
) -> VisionEncoder:
    """Build the frozen vision encoder for `vision=` (see the module docstring); keyword
    arguments that are not None override the settings."""
    overrides = {
        k: v
        for k, v in dict(unfreeze_last=unfreeze_last, pool=pool, projector=projector, pretrained=pretrained).items()
        if v is not None
    }
    if isinstance(vision, VisionEncoder):
        return _reuse(vision, llm_hidden, overrides)
    if isinstance(vision, nn.Module):
        encoder = _from_module(vision, llm_hidden, overrides)
    else:
        settings = dataclasses.replace(as_vision_settings(vision), **overrides)
        if settings.name in LOCAL_TOWERS and settings.pretrained is True:  # no published weights: say so
            settings = dataclasses.replace(settings, pretrained=False)
        built = build_tower(settings)
        encoder = VisionEncoder(
            built.tower,
            built.embed_dim,
            llm_hidden,
            image_size=built.image_size,
            mean=built.mean,
            std=built.std,
            pool=settings.pool,
            projector=settings.projector,
            unfreeze_last=settings.unfreeze_last,
            settings=settings,
        )
    encoder.freeze()
    return encoder


def as_vision_settings(vision: str | VisionSettings | dict) -> VisionSettings:
    """A `VisionSettings` from a name, a settings object, a settings dict or an encoder spec."""
    if isinstance(vision, VisionSettings):
        return vision
    if isinstance(vision, str):
        return VisionSettings(name=vision)
    if isinstance(vision, dict) and vision.get("kind") == "custom":
        raise ValueError(
            f"the vision spec describes a custom tower ({vision.get('class')}); it cannot be rebuilt "
            "from the spec: pass the module again as vision="
        )
    if isinstance(vision, dict):
        return VisionSettings.from_dict(vision["settings"] if "kind" in vision else vision)
    raise TypeError(f"vision= takes a name, VisionSettings, spec dict or nn.Module, got {type(vision).__name__}")


def _from_module(module: nn.Module, llm_hidden: int, overrides: dict[str, Any]) -> VisionEncoder:
    embed_dim = getattr(module, "embed_dim", None)
    if not isinstance(embed_dim, int) or isinstance(embed_dim, bool):
        raise TypeError(
            f"{type(module).__name__} cannot be used as a vision tower: it needs an integer attribute "
            f"`embed_dim` (the width D of its (B, N, D) output), found {embed_dim!r}"
        )
    if "pretrained" in overrides:
        raise ValueError("pretrained= applies to named (open_clip) towers, not to a custom nn.Module")
    checked = VisionSettings(name=type(module).__name__, pretrained=False, **overrides)  # validates values
    size = getattr(module, "image_size", 224)
    size = int(size[0] if isinstance(size, (tuple, list)) else size)
    return VisionEncoder(
        module,
        embed_dim,
        llm_hidden,
        image_size=size,
        mean=tuple(getattr(module, "mean", DEFAULT_MEAN_STD)),
        std=tuple(getattr(module, "std", DEFAULT_MEAN_STD)),
        pool=checked.pool,
        projector=checked.projector,
        unfreeze_last=checked.unfreeze_last,
    )


def _reuse(encoder: VisionEncoder, llm_hidden: int, overrides: dict[str, Any]) -> VisionEncoder:
    if overrides or encoder.llm_hidden != llm_hidden:
        raise ValueError(
            f"vision= is an already built VisionEncoder (llm_hidden={encoder.llm_hidden}); it is used "
            f"as is, so it cannot take overrides {sorted(overrides)} or llm_hidden={llm_hidden}"
        )
    return encoder


__all__ = ["as_vision_settings", "build_vision"]
