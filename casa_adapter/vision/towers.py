"""Vision towers: open_clip / timm image encoders reduced to "images in, patch tokens out".

`encoder.py` wraps a tower with pooling and a projector; this file builds the tower itself
from a `VisionSettings`:

- `"siglip"` is open_clip `ViT-B-16-SigLIP` (224 px, patch 16: 196 tokens of width 768);
  `"siglip-so400m"` is `ViT-SO400M-14-SigLIP-384` (384 px, patch 14: 729 tokens of width 1152);
- `"siglip-tiny"` is a small random SigLIP-style timm ViT (64 px, patch 8: 64 tokens of width
  128, 2 blocks, mean/std 0.5) that builds in milliseconds, for demos and tests;
- any other `open_clip.list_models()` name works too (timm-backed, native ViT or ResNet).

Only the image tower is built (no text tower, no pooling head). Where pretrained weights come from
is `weights.py`. open_clip is imported only when an open_clip tower is built: the local towers need
timm alone, so `import casa_adapter` works without open_clip_torch.
"""

from __future__ import annotations

import copy
import os
from dataclasses import dataclass
from typing import TYPE_CHECKING

from timm.models.vision_transformer import VisionTransformer as TimmViT
from torch import Tensor, nn

from casa_adapter.config import VisionSettings
from casa_adapter.vision.weights import load_into, resolve_weights

if TYPE_CHECKING:
    from open_clip.modified_resnet import ModifiedResNet

ALIASES: dict[str, str] = {"siglip": "ViT-B-16-SigLIP", "siglip-so400m": "ViT-SO400M-14-SigLIP-384"}
"""Short names accepted for `VisionSettings.name`, mapped to open_clip model names."""

LOCAL_TOWERS: dict[str, dict] = {
    "siglip-tiny": dict(img_size=64, patch_size=8, embed_dim=128, depth=2, num_heads=4, mlp_ratio=4.0)
}
"""Small SigLIP-style timm ViTs (no class token, mean/std 0.5, random init) registered by name."""

SIGLIP_MEAN_STD = ((0.5, 0.5, 0.5), (0.5, 0.5, 0.5))


@dataclass
class TowerBuild:
    """What `build_tower` returns: the tower and what the encoder needs to know about it."""

    tower: nn.Module
    embed_dim: int
    image_size: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]


class TimmTrunkTower(nn.Module):
    """A timm model (open_clip's `visual.trunk`, e.g. SigLIP) returning its patch tokens:
    `trunk.forward_features` (final norm applied, no pooling head) without prefix tokens."""

    blocks_path, norm_paths = "trunk.blocks", ("trunk.norm",)

    def __init__(self, trunk: nn.Module):
        super().__init__()
        self.trunk = trunk
        self.embed_dim = int(trunk.num_features)

    @property
    def grid_size(self) -> tuple[int, int] | None:
        grid = getattr(getattr(self.trunk, "patch_embed", None), "grid_size", None)
        return tuple(grid) if grid is not None else None

    def forward(self, images: Tensor) -> Tensor:
        x = self.trunk.forward_features(images)  # (n, P + N, D) or (n, C, h, w)
        if x.ndim == 4:
            return x.flatten(2).transpose(1, 2)  # (n, h*w, C)
        return x[:, getattr(self.trunk, "num_prefix_tokens", 0) :]  # (n, N, D)


class NativeViTTower(nn.Module):
    """An open_clip-native `VisionTransformer` returning its token output (no class token)."""

    blocks_path, norm_paths = "visual.transformer.resblocks", ("visual.ln_post",)

    def __init__(self, visual: nn.Module):
        super().__init__()
        visual.output_tokens = True
        visual.proj = None  # the pooled projection is not used for tokens
        self.visual = visual
        self.embed_dim = int(visual.transformer.width)

    @property
    def grid_size(self) -> tuple[int, int]:
        return tuple(self.visual.grid_size)

    def forward(self, images: Tensor) -> Tensor:
        _, tokens = self.visual(images)  # (n, N, D), after ln_post
        return tokens


class ResNetTower(nn.Module):
    """An open_clip `ModifiedResNet` (RN50, ...) returning its last feature map as tokens."""

    blocks_path, norm_paths = None, ()

    def __init__(self, visual: ModifiedResNet):
        super().__init__()
        visual.attnpool = nn.Identity()  # unused: tokens are taken before the attention pool
        self.visual = visual
        self.embed_dim = int(visual.layer4[-1].bn3.num_features)

    @property
    def grid_size(self) -> tuple[int, int]:
        return (self.visual.image_size // 32,) * 2

    def forward(self, images: Tensor) -> Tensor:
        v = self.visual
        x = v.layer4(v.layer3(v.layer2(v.layer1(v.stem(images)))))  # (n, C, H/32, W/32)
        return x.flatten(2).transpose(1, 2)  # (n, N, C)


def open_clip_name(name: str) -> str:
    """The open_clip model name behind a `VisionSettings.name` (aliases resolved)."""
    return ALIASES.get(name, name)


def build_tower(settings: VisionSettings) -> TowerBuild:
    """Build (and load, if asked) the tower named by `settings`."""
    if settings.name in LOCAL_TOWERS:
        return _build_local(settings)
    from open_clip.factory import get_model_config
    from open_clip.transform import PreprocessCfg

    model = open_clip_name(settings.name)
    model_cfg = get_model_config(model)
    if model_cfg is None:
        known = ", ".join(sorted(ALIASES) + sorted(LOCAL_TOWERS))
        raise ValueError(
            f"unknown vision tower {settings.name!r}: not one of {known} and not an open_clip "
            "model name (see open_clip.list_models())"
        )
    weights, tag_cfg = resolve_weights(settings.name, model, settings.pretrained, settings.cache_dir)
    visual, size = _build_visual(model_cfg, tag_cfg, settings.image_size)
    tower = _wrap_visual(visual)  # unused heads dropped: every remaining key must load
    inner = tower.trunk if isinstance(tower, TimmTrunkTower) else tower.visual
    if weights is not None:
        load_into(inner, weights)
    if isinstance(tower, TimmTrunkTower):
        _set_input_size(tower.trunk, size)
    mean, std = tag_cfg.get("mean", PreprocessCfg().mean), tag_cfg.get("std", PreprocessCfg().std)
    return TowerBuild(tower, tower.embed_dim, size, tuple(mean), tuple(std))


def _build_local(settings: VisionSettings) -> TowerBuild:
    kwargs = LOCAL_TOWERS[settings.name]
    trunk = TimmViT(**kwargs, class_token=False, global_pool="", num_classes=0)
    if isinstance(settings.pretrained, str):  # a local file with this tower's weights
        load_into(trunk, os.path.expanduser(settings.pretrained))
    size = settings.image_size or kwargs["img_size"]
    _set_input_size(trunk, size)
    tower = TimmTrunkTower(trunk)
    return TowerBuild(tower, tower.embed_dim, size, *SIGLIP_MEAN_STD)


def _build_visual(model_cfg: dict, tag_cfg: dict, image_size: int | None) -> tuple[nn.Module, int]:
    from open_clip.model import _build_vision_tower

    vision_cfg = copy.deepcopy(model_cfg["vision_cfg"])
    native = vision_cfg.get("image_size", 224)
    size = image_size or (native if isinstance(native, int) else native[0])
    vision_cfg.update(timm_model_pretrained=False, patch_dropout=0.0)  # never download; keep all tokens
    if "timm_model_name" not in vision_cfg:
        vision_cfg["image_size"] = size  # timm trunks are resized after loading instead
    quick_gelu = bool(model_cfg.get("quick_gelu", False) or tag_cfg.get("quick_gelu", False))
    return _build_vision_tower(model_cfg["embed_dim"], vision_cfg, quick_gelu=quick_gelu), size


def _set_input_size(trunk: nn.Module, size: int) -> None:
    """Resize a timm trunk (its position embedding is resampled) when it was built for another size."""
    built = getattr(getattr(trunk, "patch_embed", None), "img_size", None)
    if built is not None and tuple(built) != (size, size):
        trunk.set_input_size(img_size=(size, size))


def _wrap_visual(visual: nn.Module) -> nn.Module:
    from open_clip.modified_resnet import ModifiedResNet
    from open_clip.timm_model import TimmModel

    if isinstance(visual, TimmModel):
        trunk = visual.trunk
        if hasattr(trunk, "reset_classifier"):
            trunk.reset_classifier(0, global_pool="")  # drop the pooling head (e.g. SigLIP's MAP)
        return TimmTrunkTower(trunk)
    if isinstance(visual, ModifiedResNet):
        return ResNetTower(visual)
    if hasattr(visual, "transformer") and hasattr(visual, "ln_post"):
        return NativeViTTower(visual)
    raise ValueError(
        f"open_clip vision tower {type(visual).__name__} is not supported (expected a timm "
        "trunk, an open_clip VisionTransformer or a ModifiedResNet)"
    )


__all__ = [
    "ALIASES",
    "LOCAL_TOWERS",
    "TowerBuild",
    "TimmTrunkTower",
    "NativeViTTower",
    "ResNetTower",
    "build_tower",
    "open_clip_name",
]
