"""Optimiser and schedule for adapter training: AdamW parameter groups, warmup then decay.

Groups (the paper's recipe): new parameters (CASA layers, marker, LoRA, projector, and the
vision blocks of a tower that started random) at `lr`; unfrozen pretrained vision blocks at
`lr_pretrained`. Norm weights, biases, gates and the marker embedding get no weight decay.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import torch


@dataclass
class OptimSettings:
    """AdamW and the learning-rate schedule."""

    lr: float = 1e-4
    """Learning rate of new parameters (CASA, marker, LoRA, projector, random vision blocks)."""
    lr_pretrained: float = 1e-5
    """Learning rate of unfrozen pretrained parameters (the last vision blocks of a pretrained tower)."""
    weight_decay: float = 0.0
    """AdamW weight decay (never on norms, biases, gates or the marker embedding)."""
    betas: tuple[float, float] = (0.9, 0.95)
    eps: float = 1e-8
    warmup_steps: int = 100
    """Linear warmup from 0 to the peak learning rate over this many optimizer steps."""
    schedule: Literal["linear", "cosine", "constant"] = "linear"
    """Decay after warmup, down to `min_lr_ratio` x peak at `total_steps`."""
    total_steps: int | None = None
    """Steps of the schedule; None: the trainer's estimated stepping batches."""
    min_lr_ratio: float = 0.0

    def __post_init__(self) -> None:
        if self.schedule not in ("linear", "cosine", "constant"):
            raise ValueError(f"OptimSettings.schedule must be linear, cosine or constant, got {self.schedule!r}")
        if self.warmup_steps < 0 or not 0 <= self.min_lr_ratio <= 1:
            raise ValueError(f"bad warmup_steps/min_lr_ratio: {self.warmup_steps}, {self.min_lr_ratio}")


def _no_decay(name: str, param: torch.Tensor) -> bool:
    lowered = name.lower()
    return param.dim() < 2 or "norm" in lowered or name.endswith((".bias", ".marker", ".gate"))


def param_groups(model, settings: OptimSettings) -> list[dict]:
    """AdamW groups over `model.trainable_groups()`: (new | pretrained) x (decay | no decay)."""
    params = dict(model.named_parameters())
    pretrained_tower = model.vision.spec().get("settings", {}).get("pretrained") not in (False, None)
    buckets: dict[tuple[bool, bool], list[torch.nn.Parameter]] = {}
    for group, names in model.trainable_groups().items():
        is_pretrained = group == "vision" and pretrained_tower
        for name in names:
            key = (is_pretrained, _no_decay(name, params[name]))
            buckets.setdefault(key, []).append(params[name])
    out = []
    for (is_pretrained, no_decay), plist in sorted(buckets.items()):
        out.append(
            {
                "params": plist,
                "lr": settings.lr_pretrained if is_pretrained else settings.lr,
                "weight_decay": 0.0 if no_decay else settings.weight_decay,
                "name": f"{'pretrained' if is_pretrained else 'new'}{'/no_decay' if no_decay else ''}",
            }
        )
    return out


def lr_lambda(settings: OptimSettings, total_steps: int):
    """Multiplier of the peak learning rate at optimizer step `step`."""
    warmup = settings.warmup_steps
    floor = settings.min_lr_ratio

    def factor(step: int) -> float:
        if warmup and step < warmup:
            return (step + 1) / warmup
        if settings.schedule == "constant" or total_steps <= warmup:
            return 1.0
        progress = min(1.0, (step - warmup) / max(1, total_steps - warmup))
        if settings.schedule == "cosine":
            return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * progress))
        return floor + (1 - floor) * (1 - progress)

    return factor


def build_optimizer(model, settings: OptimSettings, total_steps: int):
    """(AdamW, LambdaLR) for `model`; the scheduler steps once per optimizer step."""
    optimizer = torch.optim.AdamW(param_groups(model, settings), betas=settings.betas, eps=settings.eps)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda(settings, total_steps))
    return optimizer, scheduler
