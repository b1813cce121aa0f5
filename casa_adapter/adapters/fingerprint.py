"""Fingerprints: what identifies a base model's weights and a custom vision tower's weights.

The base fingerprint (`fingerprint`, scheme `sampled-v1`) is a sha256 over `config.model_type` and,
for every tensor of `state_dict()` in sorted name order: its name, dtype, shape, and the raw bytes of
`SAMPLES` elements read at fixed, evenly spaced flat positions (all of them when it has fewer; 0-dim
scalars included). It reads a few kilobytes per tensor, so it costs milliseconds for a 1B-parameter
model, on any device, and works on sharded (`DTensor`) weights (gathered one tensor at a time).

What it guarantees: the same weights in the same dtype always give the same string, on any device;
another architecture, another tensor name, shape or dtype, or a change to any sampled element (another
checkpoint, a fine-tune or a random init, which move essentially every element) gives another. What it
does not see: an edit confined to elements between the sampled positions. It identifies a base; it is
not a checksum against tampering.

Adapters written before `sampled-v1` recorded a full-byte hash (`sha256:...`, scheme `full`);
`matches` recomputes whichever scheme a recorded fingerprint names, so those adapters still load.
The vision tower's fingerprint (`tower_fingerprint`) stays a full-byte hash: towers are small.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable

import torch
from torch import nn

SCHEME = "sampled-v1"
"""Prefix of the fingerprints `fingerprint` writes; a bare `sha256:` prefix is the older full-byte scheme."""
SAMPLES = 1024
"""Elements read from each tensor (evenly spaced over its flattened form, first and last included)."""


def _local(t: torch.Tensor) -> torch.Tensor:
    """`t` as a plain tensor: a `DTensor` is gathered (its full value), anything else is detached."""
    full = getattr(t, "full_tensor", None)
    return (full() if callable(full) else t).detach()


def _raw(t: torch.Tensor) -> bytes:
    """The bytes of `t` (any shape, scalars included) in memory order, copied to CPU."""
    t = t.to("cpu").contiguous().reshape(-1)
    return t.view(torch.uint8).numpy().tobytes() if t.numel() else b""


def _sample(t: torch.Tensor) -> torch.Tensor:
    """`SAMPLES` elements of `t` at evenly spaced flat positions (all of them when it has fewer): (<= SAMPLES,)."""
    flat = t.reshape(-1)  # a view when t is contiguous, as weights are
    n = flat.numel()
    if n <= SAMPLES:
        return flat
    at = torch.linspace(0, n - 1, SAMPLES, dtype=torch.float64).round().long().to(flat.device)  # (SAMPLES,)
    return flat.index_select(0, at)


def hash_tensors(h, items: Iterable[tuple[str, torch.Tensor]]) -> str:
    """Full-byte hash: feed (name, tensor) pairs, sorted, into hash `h` (name, dtype, shape, every byte;
    shared storage once). The `full` scheme: tower fingerprints and base fingerprints before `sampled-v1`."""
    seen: set[int] = set()
    for name, t in sorted(items, key=lambda item: item[0]):
        t = _local(t)
        if t.data_ptr() in seen and t.numel() > 0:
            continue
        seen.add(t.data_ptr())
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}".encode())
        h.update(_raw(t))
    return "sha256:" + h.hexdigest()


def _model_type(llm: nn.Module) -> bytes:
    return str(getattr(llm.config, "model_type", "")).encode()


def fingerprint(llm: nn.Module) -> str:
    """`sampled-v1:<sha256>` over the model type and every state-dict tensor (name, dtype, shape, sampled bytes)."""
    h = hashlib.sha256(_model_type(llm))
    for name, t in sorted(llm.state_dict().items(), key=lambda item: item[0]):
        t = _local(t)
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}".encode())
        h.update(_raw(_sample(t)))
    return f"{SCHEME}:{h.hexdigest()}"


def full_fingerprint(llm: nn.Module) -> str:
    """The `full` scheme (every byte, shared storage once) that adapters before `sampled-v1` recorded."""
    return hash_tensors(hashlib.sha256(_model_type(llm)), llm.state_dict().items())


def matches(llm: nn.Module, recorded: str) -> tuple[bool, str]:
    """(whether `llm` has the fingerprint `recorded`, `llm`'s fingerprint in `recorded`'s scheme)."""
    found = full_fingerprint(llm) if recorded.startswith("sha256:") else fingerprint(llm)
    return found == recorded, found


def tower_fingerprint(tower: nn.Module, carried: set[str]) -> str:
    """sha256 of the tower's tensors that an adapter does not carry (`carried`: names relative to the tower),
    that is, what the user must pass again."""
    return hash_tensors(hashlib.sha256(b"tower"), ((n, t) for n, t in tower.state_dict().items() if n not in carried))


def dtype_name(module: nn.Module) -> str:
    """The dtype of `module`'s first parameter, as "float32" / "bfloat16" / ..."""
    return str(next(module.parameters()).dtype).replace("torch.", "")


__all__ = [
    "SAMPLES",
    "SCHEME",
    "dtype_name",
    "fingerprint",
    "full_fingerprint",
    "hash_tensors",
    "matches",
    "tower_fingerprint",
]
