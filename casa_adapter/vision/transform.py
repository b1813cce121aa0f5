"""Image preprocessing shared by every tower: any image -> float (3, S, S), resized, center-cropped, normalised.

`ImageTransform(image_size, mean, std)` is what `VisionEncoder.transform` applies; it is a plain
dataclass, so a processor saved to a folder describes it in JSON and rebuilds it without the model.

    >>> t = ImageTransform(64, (0.5, 0.5, 0.5), (0.5, 0.5, 0.5))
    >>> t(torch.rand(3, 120, 90)).shape
    torch.Size([3, 64, 64])
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import Tensor


@dataclass(frozen=True)
class ImageTransform:
    """One image -> (3, image_size, image_size) float32, normalised with `mean` / `std`.

    Accepts a PIL image (any mode, RGB-converted), an (H, W[, C]) ndarray or a (C, H, W) / (H, W)
    tensor (uint8 in [0, 255] or float in [0, 1]; 1 channel is repeated, alpha dropped). The
    shorter side is resized to `image_size` (bicubic, antialiased), then center-cropped."""

    image_size: int
    """Side S of the square output."""
    mean: tuple[float, float, float]
    std: tuple[float, float, float]

    def __call__(self, image: Image.Image | np.ndarray | Tensor) -> Tensor:
        x = resize_center_crop(to_float_chw(image), self.image_size)  # (3, S, S) in [0, 1]
        mean = torch.tensor(self.mean, device=x.device).view(3, 1, 1)
        std = torch.tensor(self.std, device=x.device).view(3, 1, 1)
        return (x - mean) / std

    def to_dict(self) -> dict:
        return {"image_size": self.image_size, "mean": list(self.mean), "std": list(self.std)}

    @classmethod
    def from_dict(cls, data: dict) -> ImageTransform:
        return cls(int(data["image_size"]), tuple(data["mean"]), tuple(data["std"]))


def to_float_chw(image: Image.Image | np.ndarray | Tensor) -> Tensor:
    """A PIL image, (H, W[, C]) array or (C, H, W) / (H, W) tensor -> (3, H, W) float in [0, 1]."""
    if isinstance(image, Image.Image):
        image = np.asarray(image.convert("RGB"))
    if isinstance(image, np.ndarray):
        if image.ndim == 2:
            image = image[..., None]  # (H, W, 1)
        image = torch.from_numpy(np.array(image)).permute(2, 0, 1)  # (C, H, W), a writable copy
    if not isinstance(image, Tensor):
        raise TypeError(f"transform() takes a PIL image, a numpy array or a tensor, got {type(image).__name__}")
    x = image[None] if image.ndim == 2 else image  # (C, H, W)
    if x.ndim != 3 or x.shape[0] not in (1, 3, 4):
        raise ValueError(
            f"transform() expects (H, W[, C]) arrays or (C, H, W) tensors with C in 1/3/4, "
            f"got shape {tuple(image.shape)}"
        )
    x = x.float() / 255.0 if x.dtype == torch.uint8 else x.float()
    return x.expand(3, -1, -1) if x.shape[0] == 1 else x[:3]  # (3, H, W)


def resize_center_crop(x: Tensor, size: int) -> Tensor:
    """(3, H, W) -> (3, size, size): the shorter side resized to `size` (bicubic, antialiased), then center-cropped."""
    _, h, w = x.shape
    scale = size / min(h, w)
    new_h, new_w = max(size, round(h * scale)), max(size, round(w * scale))
    if (new_h, new_w) != (h, w):
        x = F.interpolate(x[None], size=(new_h, new_w), mode="bicubic", antialias=True, align_corners=False)[0].clamp(
            0.0, 1.0
        )  # (3, new_h, new_w)
    top, left = (new_h - size) // 2, (new_w - size) // 2
    return x[:, top : top + size, left : left + size]  # (3, size, size)


__all__ = ["ImageTransform", "resize_center_crop", "to_float_chw"]
