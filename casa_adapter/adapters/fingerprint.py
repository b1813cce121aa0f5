"""Fingerprints: what identifies a base model's weights and a custom vision tower's weights.

A fingerprint is sha256 over every distinct tensor (name, dtype, shape, bytes; shared storage once)
in sorted name order, so the same weights in the same dtype always give the same string, and any
other model (another checkpoint, a fine-tune, another dtype) gives another.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable

import torch
from torch import nn


def hash_tensors(h, items: Iterable[tuple[str, torch.Tensor]]) -> str:
    """Feed (name, tensor) pairs, sorted, into hash `h` (name, dtype, shape, bytes; shared storage once)."""
    seen: set[int] = set()
    for name, t in sorted(items, key=lambda item: item[0]):
        if t.data_ptr() in seen and t.numel() > 0:
            continue
        seen.add(t.data_ptr())
        t = t.detach().to("cpu").contiguous()
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}".encode())
        h.update(t.view(torch.uint8).numpy().data if t.numel() else b"")
    return "sha256:" + h.hexdigest()


def fingerprint(llm: nn.Module) -> str:
    """sha256 over the model type and every distinct weight tensor (name, dtype, shape, bytes)."""
    return hash_tensors(hashlib.sha256(str(getattr(llm.config, "model_type", "")).encode()), llm.state_dict().items())


def tower_fingerprint(tower: nn.Module, carried: set[str]) -> str:
    """sha256 of the tower's tensors that an adapter does not carry (`carried`: names relative to the tower),
    that is, what the user must pass again."""
    return hash_tensors(hashlib.sha256(b"tower"), ((n, t) for n, t in tower.state_dict().items() if n not in carried))


def dtype_name(module: nn.Module) -> str:
    """The dtype of `module`'s first parameter, as "float32" / "bfloat16" / ..."""
    return str(next(module.parameters()).dtype).replace("torch.", "")


__all__ = ["dtype_name", "fingerprint", "hash_tensors", "tower_fingerprint"]
