"""Adapter files: the trainable tensors in safetensors beside a JSON manifest, written atomically. No pickle.

Layout of an adapter directory:
    adapter.safetensors   the trainable tensors (and a random vision tower, which no hub can rebuild),
                          named by their state-dict keys
    manifest.json         format version, base model name and weight fingerprint, CASA placement and
                          variant, vision spec, LoRA settings, trainable names and counts, file sha256

This module reads and writes files and tensors; it builds no model (`casa_adapter.fusion.build`
does, in `load_adapter`). Models are handled through their public methods only.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from casa_adapter.adapters.fingerprint import dtype_name, matches, tower_fingerprint
from casa_adapter.adapters.manifest import MANIFEST, WEIGHTS, AdapterError, manifest_for
from casa_adapter.atomic import atomic_dir
from casa_adapter.backbone.state_keys import state_keys


def file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 22), b""):
            h.update(chunk)
    return h.hexdigest()


def saved_names(model) -> list[str]:
    """Parameter names an adapter carries: the trainable ones, plus the whole tower when it is random
    (no hub can rebuild it)."""
    names = model.trainable_parameter_names()
    spec = model.vision.spec()
    if spec.get("kind") == "open_clip" and spec["settings"].get("pretrained") is False:
        names += [f"vision.tower.{n}" for n, _ in model.vision.tower.named_parameters()]
        names += [f"vision.tower.{n}" for n, _ in model.vision.tower.named_buffers()]
    return list(dict.fromkeys(names))


def saved_state_keys(model) -> list[str]:
    """The state-dict keys of `saved_names(model)` (non-persistent buffers, which state dicts leave out, drop)."""
    keys = state_keys(model)
    return [keys[n] for n in saved_names(model) if n in keys]


def carried_tower_names(state_names: list[str]) -> set[str]:
    """Names, relative to the tower, of the tower tensors an adapter carries."""
    return {n[len("vision.tower.") :] for n in state_names if n.startswith("vision.tower.")}


def save_adapter(model, directory: str | os.PathLike, tensors: dict[str, torch.Tensor] | None = None) -> Path:
    """Write `directory` atomically (a temp folder beside it, then one swap).

    `tensors`: the model's full (unsharded) parameters by parameter name, when FSDP holds only shards."""
    with atomic_dir(directory) as tmp:
        write_adapter_files(model, tmp, tensors)
    return Path(directory).resolve()


def write_adapter_files(model, folder: Path, tensors: dict[str, torch.Tensor] | None = None) -> dict:
    """Write the adapter's weights and manifest into the existing `folder` (not atomically: `save_adapter`
    and `save_pretrained` call it inside their own temporary folder). Returns the manifest."""
    if model.lora is not None and not model.lora_targets:
        raise AdapterError("LoRA was merged into the base weights (merge_lora); save the adapter before merging")
    keys = state_keys(model)
    names = [n for n in saved_names(model) if n in keys]
    state = tensors or (dict(model.named_parameters()) | dict(model.named_buffers()))
    out = {keys[n]: state[n].detach().to("cpu").contiguous().clone() for n in names}
    manifest = manifest_for(model, list(out), tower_fingerprint(model.vision.tower, carried_tower_names(list(out))))
    save_file(out, str(folder / WEIGHTS), metadata={"format": manifest["format"]})
    manifest["tensors"]["sha256"] = file_sha256(folder / WEIGHTS)
    (folder / MANIFEST).write_text(json.dumps(manifest, indent=2))
    return manifest


def read_tensors(directory: str | os.PathLike, manifest: dict) -> dict[str, torch.Tensor]:
    """The adapter tensors, after checking the file's sha256 against the manifest."""
    path = Path(directory) / manifest["tensors"]["file"]
    if not path.is_file():
        raise AdapterError(f"{path}: weights file missing")
    digest = file_sha256(path)
    if digest != manifest["tensors"].get("sha256"):
        raise AdapterError(
            f"{path}: sha256 {digest[:16]}... does not match the manifest's "
            f"{str(manifest['tensors'].get('sha256'))[:16]}...; the file is truncated or was modified"
        )
    try:
        tensors = load_file(str(path))
    except Exception as e:  # safetensors raises its own error types
        raise AdapterError(f"{path}: cannot read safetensors ({e})") from e
    missing = sorted(set(manifest["tensors"]["names"]) - set(tensors))
    if missing:
        raise AdapterError(f"{path}: missing tensors {missing[:5]}{'...' if len(missing) > 5 else ''}")
    return tensors


def check_base(manifest: dict, llm: nn.Module, directory) -> str:
    """The fingerprint of the pristine `llm` (in the scheme the manifest recorded), after checking it is the base
    the adapter was trained on."""
    base = manifest["base_model"]
    same, found = matches(llm, base["fingerprint"])
    if not same:
        raise AdapterError(
            f"{directory}: adapter was trained on base {base['name']!r} ({base['model_type']}, {base.get('dtype')}) "
            f"with fingerprint {base['fingerprint']}, but the given model "
            f"({getattr(llm.config, '_name_or_path', '')!r}, "
            f"{llm.config.model_type}, {dtype_name(llm)}) has fingerprint {found}. Load the same base weights in the "
            f"same dtype (the fingerprint covers both)."
        )
    return found


def check_tower(tower: nn.Module, manifest: dict, directory) -> None:
    """A custom tower passed again must hold the same weights it was trained with."""
    spec, want = manifest["vision"], manifest["vision"].get("tower_fingerprint")
    if spec["kind"] != "custom" or want is None:
        return
    found = tower_fingerprint(tower, carried_tower_names(manifest["tensors"]["names"]))
    if found != want:
        raise AdapterError(
            f"{directory}: the vision tower passed has fingerprint {found}, but the adapter was "
            f"trained with a tower of fingerprint {want}; pass the same tower weights"
        )


def load_tensors(model, tensors: dict[str, torch.Tensor], manifest: dict, directory) -> None:
    """Copy an adapter's tensors into the rebuilt `model` (either format), then restore its trainable set."""
    if manifest["format_version"] < 2:
        tensors = _from_parameter_paths(model, tensors, directory)
    try:
        result = model.load_state_dict(tensors, strict=False)
    except RuntimeError as e:  # shape mismatches
        raise AdapterError(f"{directory}: the adapter's tensors do not fit the rebuilt model: {e}") from e
    if result.unexpected_keys:
        raise AdapterError(
            f"{directory}: tensors {sorted(result.unexpected_keys)[:5]} do not exist in the rebuilt "
            f"model; the adapter does not match this casa_adapter version or model"
        )
    model.freeze()


def _from_parameter_paths(model, tensors: dict[str, torch.Tensor], directory) -> dict[str, torch.Tensor]:
    """A format-1 file's tensors (named by parameter path) renamed to state-dict keys; non-persistent buffers,
    which the rebuilt model makes itself, are dropped."""
    keys, buffers = state_keys(model), {n for n, _ in model.named_buffers()}
    unknown = sorted(n for n in tensors if n not in keys and n not in buffers)
    if unknown:
        raise AdapterError(
            f"{directory}: tensors {unknown[:5]} do not exist in the rebuilt model; the adapter does "
            f"not match this casa_adapter version or model"
        )
    return {keys[n]: t for n, t in tensors.items() if n in keys}


__all__ = [
    "check_base",
    "check_tower",
    "file_sha256",
    "load_tensors",
    "read_tensors",
    "save_adapter",
    "saved_names",
    "saved_state_keys",
    "write_adapter_files",
]
