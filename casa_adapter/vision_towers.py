"""Vision towers: open_clip / timm image encoders reduced to "images in, patch tokens out".

`vision.py` wraps a tower with pooling and a projector; this file builds the tower itself
from a `VisionSettings`:

- `"siglip"` is open_clip `ViT-B-16-SigLIP` (224 px, patch 16: 196 tokens of width 768);
  `"siglip-so400m"` is `ViT-SO400M-14-SigLIP-384` (384 px, patch 14: 729 tokens of width 1152);
- `"siglip-tiny"` is a small random SigLIP-style timm ViT (64 px, patch 8: 64 tokens of width
  128, 2 blocks, mean/std 0.5) that builds in milliseconds, for demos and tests;
- any other `open_clip.list_models()` name works too (timm-backed, native ViT or ResNet).

Only the image tower is built (no text tower, no pooling head). Pretrained weights come from a
local file or the Hugging Face / open_clip cache, and are downloaded only when the hub answers
(`resolve_weights`); otherwise a `RuntimeError` fails fast and says what to pass instead.
"""

from __future__ import annotations

import copy
import os
import socket
from dataclasses import dataclass
from types import SimpleNamespace
from urllib.parse import urlparse

import open_clip
from huggingface_hub import constants as hf_constants
from huggingface_hub import try_to_load_from_cache
from open_clip.constants import HF_SAFE_WEIGHTS_NAME, HF_WEIGHTS_NAME
from open_clip.factory import get_model_config
from open_clip.model import _build_vision_tower, resize_pos_embed
from open_clip.modified_resnet import ModifiedResNet
from open_clip.timm_model import TimmModel
from open_clip.transform import PreprocessCfg
from safetensors import safe_open
from timm.models.vision_transformer import VisionTransformer as TimmViT
from torch import Tensor, nn

from .config import VisionSettings

ALIASES: dict[str, str] = {"siglip": "ViT-B-16-SigLIP", "siglip-so400m": "ViT-SO400M-14-SigLIP-384"}
"""Short names accepted for `VisionSettings.name`, mapped to open_clip model names."""

LOCAL_TOWERS: dict[str, dict] = {
    "siglip-tiny": dict(img_size=64, patch_size=8, embed_dim=128, depth=2, num_heads=4, mlp_ratio=4.0),
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
        return x[:, getattr(self.trunk, "num_prefix_tokens", 0):]  # (n, N, D)


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
    model = open_clip_name(settings.name)
    model_cfg = get_model_config(model)
    if model_cfg is None:
        known = ", ".join(sorted(ALIASES) + sorted(LOCAL_TOWERS))
        raise ValueError(f"unknown vision tower {settings.name!r}: not one of {known} and not an open_clip "
                         "model name (see open_clip.list_models())")
    weights, tag_cfg = resolve_weights(settings.name, model, settings.pretrained, settings.cache_dir)
    visual, size = _build_visual(model_cfg, tag_cfg, settings.image_size)
    tower = _wrap_visual(visual)  # unused heads dropped: every remaining key must load
    inner = tower.trunk if isinstance(tower, TimmTrunkTower) else tower.visual
    if weights is not None:
        _load_into(inner, weights)
    if isinstance(tower, TimmTrunkTower):
        _set_input_size(tower.trunk, size)
    mean, std = tag_cfg.get("mean", PreprocessCfg().mean), tag_cfg.get("std", PreprocessCfg().std)
    return TowerBuild(tower, tower.embed_dim, size, tuple(mean), tuple(std))


def _build_local(settings: VisionSettings) -> TowerBuild:
    kwargs = LOCAL_TOWERS[settings.name]
    trunk = TimmViT(**kwargs, class_token=False, global_pool="", num_classes=0)
    if isinstance(settings.pretrained, str):  # a local file with this tower's weights
        _load_into(trunk, os.path.expanduser(settings.pretrained))
    size = settings.image_size or kwargs["img_size"]
    _set_input_size(trunk, size)
    tower = TimmTrunkTower(trunk)
    return TowerBuild(tower, tower.embed_dim, size, *SIGLIP_MEAN_STD)


def _build_visual(model_cfg: dict, tag_cfg: dict, image_size: int | None) -> tuple[nn.Module, int]:
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
    if isinstance(visual, TimmModel):
        trunk = visual.trunk
        if hasattr(trunk, "reset_classifier"):
            trunk.reset_classifier(0, global_pool="")  # drop the pooling head (e.g. SigLIP's MAP)
        return TimmTrunkTower(trunk)
    if isinstance(visual, ModifiedResNet):
        return ResNetTower(visual)
    if hasattr(visual, "transformer") and hasattr(visual, "ln_post"):
        return NativeViTTower(visual)
    raise ValueError(f"open_clip vision tower {type(visual).__name__} is not supported (expected a timm "
                     "trunk, an open_clip VisionTransformer or a ModifiedResNet)")


# ---- pretrained weights ---------------------------------------------------------------------


def resolve_weights(name: str, model: str, pretrained: bool | str, cache_dir: str | None) -> tuple[str | None, dict]:
    """(local checkpoint path, or None for random init; the open_clip pretrained config whose
    preprocessing applies). `pretrained`: True = the model's first open_clip tag, a str = a tag
    or a file path, False = random (no network access)."""
    tags = open_clip.list_pretrained_tags_by_model(model)
    default_cfg = _tag_cfg(model, tags[0] if tags else None)
    if isinstance(pretrained, str) and os.path.isfile(os.path.expanduser(pretrained)):
        return os.path.expanduser(pretrained), default_cfg
    if isinstance(pretrained, str) and pretrained not in tags:
        raise ValueError(f"pretrained={pretrained!r} is neither an existing file nor an open_clip tag of "
                         f"{model!r} (tags: {tags})")
    if pretrained is False:
        return None, default_cfg
    if not tags:
        raise RuntimeError(f"open_clip has no pretrained weights for {model!r} (vision={name!r}); pass "
                           "VisionSettings(pretrained=\"/path/to/open_clip_model.safetensors\") or pretrained=False")
    tag = pretrained if isinstance(pretrained, str) else tags[0]
    cfg = _tag_cfg(model, tag)
    return _fetch(name, model, tag, cfg, cache_dir), cfg


def _tag_cfg(model: str, tag: str | None) -> dict:
    return dict(open_clip.get_pretrained_cfg(model, tag)) if tag else {}


def _fetch(name: str, model: str, tag: str, cfg: dict, cache_dir: str | None) -> str:
    """The cached checkpoint for `cfg`; downloaded only when the hub is quickly reachable."""
    hub, url = cfg.get("hf_hub", ""), cfg.get("url", "")
    cached = cfg.get("file") or (_cached_hub_file(hub, cache_dir) if hub else _cached_url_file(url, cache_dir))
    if cached:
        return cached
    if _offline():
        raise weights_error(name, model, tag, "offline mode: HF_HUB_OFFLINE is set")
    endpoint = (os.environ.get("HF_ENDPOINT") or hf_constants.ENDPOINT) if hub else url
    if not _reachable(endpoint):
        raise weights_error(name, model, tag, f"{urlparse(endpoint).netloc or endpoint} is unreachable")
    try:
        return open_clip.pretrained.download_pretrained(cfg, cache_dir=cache_dir)
    except Exception as err:  # any download failure becomes the one actionable error
        raise weights_error(name, model, tag, f"{type(err).__name__}: {err}") from err


def weights_error(name: str, model: str, tag: str, reason: str) -> RuntimeError:
    """The error raised when pretrained weights are neither cached nor downloadable."""
    return RuntimeError(
        f"Pretrained weights for open_clip model {model!r} (vision={name!r}, pretrained tag {tag!r}) could not "
        f"be found locally or downloaded ({reason}). Pass a local checkpoint path, e.g. "
        "VisionSettings(pretrained=\"/path/to/open_clip_model.safetensors\"), or pretrained=False for a "
        "randomly initialised tower.")


def _offline() -> bool:
    flag = os.environ.get("HF_HUB_OFFLINE") or os.environ.get("TRANSFORMERS_OFFLINE") or ""
    return flag.upper() in ("1", "ON", "YES", "TRUE") or bool(hf_constants.HF_HUB_OFFLINE)


def _reachable(url: str, timeout: float = 3.0) -> bool:
    """Does `url`'s host accept a TCP connection within `timeout`? (Assumed yes behind a proxy.)"""
    if any(os.environ.get(k) for k in ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy")):
        return True
    parsed = urlparse(url)
    try:
        port = parsed.port or (80 if parsed.scheme == "http" else 443)
        socket.create_connection((parsed.hostname or url, port), timeout=timeout).close()
        return True
    except (OSError, ValueError):
        return False


def _cached_hub_file(hub: str, cache_dir: str | None) -> str | None:
    repo, filename = os.path.split(hub)  # "org/repo/" -> ("org/repo", "")
    filename = filename or HF_WEIGHTS_NAME
    safe = HF_SAFE_WEIGHTS_NAME if filename == HF_WEIGHTS_NAME else os.path.splitext(filename)[0] + ".safetensors"
    for fname in (safe, filename):
        found = try_to_load_from_cache(repo, fname, cache_dir=cache_dir)
        if isinstance(found, str):
            return found
    return None


def _cached_url_file(url: str, cache_dir: str | None) -> str | None:
    path = os.path.join(cache_dir or os.path.expanduser("~/.cache/clip"), os.path.basename(url))
    return path if url and os.path.isfile(path) else None


def _load_into(module: nn.Module, path: str) -> None:
    """Load the image-tower part of the checkpoint at `path` into `module` (an open_clip `visual`
    or a timm trunk); `visual.` / `trunk.` key prefixes are stripped. Missing keys raise."""
    state = _strip(_read_state_dict(path), "visual.")
    if hasattr(module, "forward_features"):  # a timm trunk
        state = _strip(state, "trunk.")
    if "positional_embedding" in state and hasattr(module, "grid_size"):
        holder = {"visual.positional_embedding": state["positional_embedding"]}
        resize_pos_embed(holder, SimpleNamespace(visual=module))  # checkpoint grid -> tower grid
        state["positional_embedding"] = holder["visual.positional_embedding"]
    missing, _ = module.load_state_dict(state, strict=False)
    if missing:
        raise RuntimeError(f"checkpoint {path} does not fit the {type(module).__name__} vision tower: "
                           f"{len(missing)} missing key(s), e.g. {missing[:4]}")


def _strip(state: dict[str, Tensor], prefix: str) -> dict[str, Tensor]:
    if not any(k.startswith(prefix) for k in state):
        return state
    return {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}


def _read_state_dict(path: str) -> dict[str, Tensor]:
    """Read a checkpoint; from a .safetensors file only the `visual.` tensors when it has any."""
    if not path.endswith(".safetensors"):
        return open_clip.factory.load_state_dict(path)
    with safe_open(path, framework="pt") as f:
        keys = [k for k in f.keys() if k.startswith("visual.")] or list(f.keys())
        return {k: f.get_tensor(k) for k in keys}


__all__ = ["ALIASES", "LOCAL_TOWERS", "TowerBuild", "TimmTrunkTower", "NativeViTTower", "ResNetTower",
           "build_tower", "open_clip_name", "resolve_weights", "weights_error"]
