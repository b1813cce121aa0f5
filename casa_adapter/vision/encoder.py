"""The vision encoder: a tower (images -> patch tokens), patch pooling and a projector to the LLM width.

`VisionEncoder` runs them and knows what trains (the projector, the last `unfreeze_last` tower
blocks); `build.py` turns what a user writes as `vision=` into one. `tower_layout` finds a tower's
transformer blocks and final norm.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from PIL import Image
from torch import Tensor, nn

from casa_adapter.config import VisionSettings
from casa_adapter.vision.projector import PatchPool, make_projector, square_side
from casa_adapter.vision.transform import ImageTransform

DEFAULT_MEAN_STD = (0.5, 0.5, 0.5)
"""Normalisation of a custom tower that declares no `mean` / `std` (SigLIP's)."""


class VisionEncoder(nn.Module):
    """Images (n, 3, S, S) -> LLM-width image tokens (n, N', llm_hidden).

    `tower` gives patch features (n, N, D), `pool` average-pools the patch grid, `projector`
    maps D to the LLM width. Only the projector (and the last `unfreeze_last` tower blocks plus
    the tower's final norm) train; see `freeze`. `transform` is the matching preprocessing.
    `settings` is the `VisionSettings` a named tower was built from (None for a custom module).
    """

    def __init__(
        self,
        tower: nn.Module,
        embed_dim: int,
        llm_hidden: int,
        *,
        image_size: int = 224,
        mean: tuple[float, float, float] = DEFAULT_MEAN_STD,
        std: tuple[float, float, float] = DEFAULT_MEAN_STD,
        pool: int = 1,
        projector: str = "mlp",
        unfreeze_last: int = 0,
        settings: VisionSettings | None = None,
    ):
        super().__init__()
        self.tower = tower
        self.pool = PatchPool(pool)
        self.projector = make_projector(projector, embed_dim, llm_hidden)
        self.embed_dim, self.llm_hidden, self.projector_kind = embed_dim, llm_hidden, projector
        self.image_size = image_size
        self.mean, self.std = tuple(float(v) for v in mean), tuple(float(v) for v in std)
        self.unfreeze_last, self.settings = unfreeze_last, settings
        self._tokens: int | None = None
        self._check_unfreeze()

    def forward(self, images: Tensor) -> Tensor:
        """(n, 3, H, W) -> (n, N', llm_hidden) in the projector's dtype. A fully frozen tower
        runs without autograd."""
        tower_param = next(self.tower.parameters(), None)
        images = images.to(tower_param.dtype) if tower_param is not None else images
        with torch.set_grad_enabled(torch.is_grad_enabled() and self._tower_trains()):
            feats = self.tower(images)  # (n, N, D)
        if feats.ndim != 3 or feats.shape[-1] != self.embed_dim:
            raise ValueError(
                f"vision tower {type(self.tower).__name__} returned shape {tuple(feats.shape)}; "
                f"expected (n, N, embed_dim={self.embed_dim})"
            )
        feats = self.pool(feats)  # (n, N', D)
        proj_dtype = next(self.projector.parameters()).dtype
        return self.projector(feats.to(proj_dtype))  # (n, N', llm_hidden)

    def check_pixels(self, pixels: Tensor) -> None:
        """Refuse pixels (n, 3, H, W) this encoder cannot take, with what to do instead: tensors are taken as
        preprocessed pixels everywhere (`forward(images=)`, streaming); a named tower needs its own size."""
        if pixels.ndim != 4 or pixels.shape[1] != 3:
            raise ValueError(f"images must be (n, 3, H, W) pixel tensors, got shape {tuple(pixels.shape)}")
        size = self.image_size
        if self.settings is not None and tuple(pixels.shape[-2:]) != (size, size):
            raise ValueError(
                f"the {self.settings.name!r} tower takes (3, {size}, {size}) pixels, got {tuple(pixels.shape[1:])}: a "
                "tensor is taken as preprocessed pixels; pass a PIL image or an array to have it resized and "
                "normalised (model.vision.transform, which the Processor applies)"
            )

    def num_tokens(self) -> int:
        """N': image tokens per image after pooling."""
        if self._tokens is None:
            h, w = self._grid()
            s = self.pool.stride
            self._tokens = -(-h // s) * -(-w // s)
        return self._tokens

    def _grid(self) -> tuple[int, int]:
        grid = getattr(self.tower, "grid_size", None)
        if isinstance(grid, (tuple, list)) and len(grid) == 2:
            return int(grid[0]), int(grid[1])
        param = next(self.tower.parameters(), None)
        probe = torch.zeros(
            1,
            3,
            self.image_size,
            self.image_size,
            dtype=param.dtype if param is not None else torch.float32,
            device=param.device if param is not None else None,
        )
        with torch.no_grad():
            tokens = self.tower(probe).shape[1]  # (1, N, D) -> N
        if self.pool.stride == 1:
            return tokens, 1
        side = square_side(tokens, self.pool.stride)
        return side, side

    def transform(self, image: Image.Image | np.ndarray | Tensor) -> Tensor:
        """One image -> (3, image_size, image_size) float32, normalised with `mean` / `std`
        (`image_transform()`; see `casa_adapter.vision.transform.ImageTransform`)."""
        return self.image_transform()(image)

    def image_transform(self) -> ImageTransform:
        """This encoder's preprocessing as a stand-alone, JSON-describable `ImageTransform`."""
        return ImageTransform(self.image_size, self.mean, self.std)

    def spec(self) -> dict[str, Any]:
        """A JSON-able description for adapter manifests; `build_vision(spec)` rebuilds a named
        tower. A custom tower's spec records its class; the module itself is passed again."""
        if self.settings is not None:
            return {"kind": "open_clip", "settings": self.settings.to_dict()}
        cls = type(self.tower)
        return {
            "kind": "custom",
            "class": f"{cls.__module__}.{cls.__qualname__}",
            "embed_dim": self.embed_dim,
            "image_size": self.image_size,
            "pool": self.pool.stride,
            "projector": self.projector_kind,
            "unfreeze_last": self.unfreeze_last,
        }

    def trainable_tower_prefixes(self) -> list[str]:
        """Parameter-name prefixes (relative to this encoder, ending in ".") of the unfrozen tower
        blocks and final norm; [] when `unfreeze_last == 0`."""
        if self.unfreeze_last == 0:
            return []
        blocks_path, norm_paths = tower_layout(self.tower)
        count = len(self.tower.get_submodule(blocks_path))
        blocks = [f"tower.{blocks_path}.{i}." for i in range(count - self.unfreeze_last, count)]
        norms = [f"tower.{p}." for p in norm_paths if any(True for _ in self.tower.get_submodule(p).parameters())]
        return blocks + norms

    def freeze(self) -> None:
        """Tower frozen except `trainable_tower_prefixes()`; projector trainable."""
        prefixes = tuple(self.trainable_tower_prefixes())
        for name, param in self.tower.named_parameters(prefix="tower"):
            param.requires_grad_(name.startswith(prefixes) if prefixes else False)
        self.projector.requires_grad_(True)

    def train(self, mode: bool = True) -> VisionEncoder:
        """Like `nn.Module.train`, but a fully frozen tower stays in eval mode."""
        super().train(mode)
        if mode and not self._tower_trains():
            self.tower.eval()
        return self

    def _tower_trains(self) -> bool:
        return any(p.requires_grad for p in self.tower.parameters())

    def _check_unfreeze(self) -> None:
        if self.unfreeze_last == 0:
            return
        blocks_path, _ = tower_layout(self.tower)
        if blocks_path is None:
            raise ValueError(
                f"unfreeze_last={self.unfreeze_last} needs the vision tower to expose its transformer "
                f"blocks as a `blocks` nn.ModuleList; {type(self.tower).__name__} has none"
            )
        count = len(self.tower.get_submodule(blocks_path))
        if self.unfreeze_last > count:
            raise ValueError(f"unfreeze_last={self.unfreeze_last} but the vision tower has only {count} blocks")


def tower_layout(tower: nn.Module) -> tuple[str | None, tuple[str, ...]]:
    """(path of the transformer-block ModuleList or None, paths of the final norms) in `tower`.

    Built-in towers declare `blocks_path` / `norm_paths`; a custom module is expected to have a
    `blocks` nn.ModuleList and optionally a final norm named `norm`, `ln_post`, `final_norm`,
    `post_layernorm` or `ln_f`."""
    if hasattr(type(tower), "blocks_path"):
        return tower.blocks_path, tuple(tower.norm_paths)
    blocks = "blocks" if isinstance(getattr(tower, "blocks", None), nn.ModuleList) else None
    norms = [
        n
        for n in ("norm", "ln_post", "final_norm", "post_layernorm", "ln_f")
        if isinstance(getattr(tower, n, None), nn.Module)
    ]
    return blocks, tuple(norms[:1])


__all__ = ["VisionEncoder", "tower_layout", "DEFAULT_MEAN_STD"]
