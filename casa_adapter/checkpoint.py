"""Adapter checkpoints: safetensors weights + a JSON manifest, written atomically. No pickle.

Layout of an adapter directory:
    adapter.safetensors   the trainable tensors (and a random vision tower, which no hub can rebuild)
    manifest.json         format version, base model name and weight fingerprint, CASA placement and
                          variant, vision spec, LoRA settings, trainable names and counts, file sha256

`load_adapter(dir, llm)` checks the base model's fingerprint *before* touching it, rebuilds the
model with the recorded settings and loads the tensors.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import shutil
import tempfile
import time
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from torch import nn

FORMAT = "casa-adapter"
FORMAT_VERSION = 1
WEIGHTS, MANIFEST = "adapter.safetensors", "manifest.json"


class AdapterError(ValueError):
    """An adapter directory that cannot be loaded: missing, truncated, tampered or for another base."""


def _hash_tensors(h, items) -> str:
    """Feed (name, tensor) pairs, sorted, into hash `h` (name, dtype, shape, bytes; shared storage once)."""
    seen: set[int] = set()
    for name, t in sorted(items):
        if t.data_ptr() in seen and t.numel() > 0:
            continue
        seen.add(t.data_ptr())
        t = t.detach().to("cpu").contiguous()
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}".encode())
        h.update(t.view(torch.uint8).numpy().data if t.numel() else b"")
    return "sha256:" + h.hexdigest()


def fingerprint(llm: nn.Module) -> str:
    """sha256 over the model type and every distinct weight tensor (name, dtype, shape, bytes)."""
    return _hash_tensors(hashlib.sha256(str(getattr(llm.config, "model_type", "")).encode()), llm.state_dict().items())


def tower_fingerprint(model, saved: list[str]) -> str:
    """sha256 of the vision tower's tensors that the adapter does not carry (what the user must pass again)."""
    carried = {n[len("vision.tower."):] for n in saved if n.startswith("vision.tower.")}
    return _hash_tensors(hashlib.sha256(b"tower"), ((n, t) for n, t in model.vision.tower.state_dict().items()
                                                     if n not in carried))


def _dtype(llm: nn.Module) -> str:
    return str(next(llm.parameters()).dtype).replace("torch.", "")


def _file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 22), b""):
            h.update(chunk)
    return h.hexdigest()


def _saved_names(model) -> list[str]:
    """Trainable parameters, plus the whole tower when it is random (no hub can rebuild it)."""
    names = model.trainable_parameter_names()
    spec = model.vision.spec()
    if spec.get("kind") == "open_clip" and spec["settings"].get("pretrained") is False:
        names += [f"vision.tower.{n}" for n, _ in model.vision.tower.named_parameters()]
        names += [f"vision.tower.{n}" for n, _ in model.vision.tower.named_buffers()]
    return list(dict.fromkeys(names))


def manifest_for(model, names: list[str]) -> dict:
    cfg = model.llm.config
    return {
        "format": FORMAT, "format_version": FORMAT_VERSION,
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "base_model": {"name": getattr(cfg, "_name_or_path", "") or "", "model_type": cfg.model_type,
                       "dtype": _dtype(model.llm), "fingerprint": model.base_fingerprint},
        "casa": {**model.settings.to_dict(), "layer_indices": model.layer_indices,
                 "kernel": model.kernel, "image_token_id": model.image_token_id},
        "vision": {**model.vision.spec(), "tower_fingerprint": tower_fingerprint(model, names)},
        "lora": None if model.lora is None else model.lora.to_dict(),
        "trainable": {"names": model.trainable_parameter_names(), "counts": model.trainable_counts()},
        "tensors": {"file": WEIGHTS, "names": names},
    }


def save_adapter(model, directory: str | os.PathLike, tensors: dict[str, torch.Tensor] | None = None) -> Path:
    """Write `directory` atomically: everything goes to a temp dir beside it, then one rename.

    `tensors`: the model's full (unsharded) parameters by name, when FSDP holds only shards."""
    if model.lora is not None and not model.lora_targets:
        raise AdapterError("LoRA was merged into the base weights (merge_lora); save the adapter before merging")
    target = Path(directory).resolve()
    target.parent.mkdir(parents=True, exist_ok=True)
    names = _saved_names(model)
    state = tensors or (dict(model.named_parameters()) | dict(model.named_buffers()))
    tensors = {n: state[n].detach().to("cpu").contiguous().clone() for n in names}
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.tmp-", dir=target.parent))
    os.chmod(tmp, 0o777 & ~_umask())  # mkdtemp makes 0700; an adapter dir gets the usual permissions
    try:
        save_file(tensors, str(tmp / WEIGHTS), metadata={"format": FORMAT})
        manifest = manifest_for(model, names)
        manifest["tensors"]["sha256"] = _file_sha256(tmp / WEIGHTS)
        (tmp / MANIFEST).write_text(json.dumps(manifest, indent=2))
        for f in (WEIGHTS, MANIFEST):
            os.chmod(tmp / f, 0o666 & ~_umask())
            with open(tmp / f, "rb") as fh:
                os.fsync(fh.fileno())
        _swap_in(tmp, target)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _swap_in(tmp: Path, target: Path) -> None:
    """Replace `target` by `tmp` so that a crash leaves either the old or the new adapter whole."""
    if not target.exists():
        os.replace(tmp, target)
        return
    old = Path(tempfile.mkdtemp(prefix=f".{target.name}.old-", dir=target.parent))
    os.replace(target, old / "adapter")
    os.replace(tmp, target)
    shutil.rmtree(old, ignore_errors=True)


def read_manifest(directory: str | os.PathLike) -> dict:
    """The manifest of an adapter directory, checked for format and version."""
    path = Path(directory) / MANIFEST
    if not path.is_file():
        raise AdapterError(f"{directory}: no {MANIFEST}; not a casa_adapter adapter directory")
    try:
        manifest = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise AdapterError(f"{path}: manifest is not valid JSON ({e}); the file is truncated or edited") from e
    if manifest.get("format") != FORMAT or not isinstance(manifest.get("format_version"), int):
        raise AdapterError(f"{path}: not a {FORMAT} manifest")
    if manifest["format_version"] > FORMAT_VERSION:
        raise AdapterError(f"{path}: format version {manifest['format_version']} is newer than this casa_adapter "
                           f"reads ({FORMAT_VERSION}); upgrade casa_adapter")
    return manifest


def read_tensors(directory: str | os.PathLike, manifest: dict) -> dict[str, torch.Tensor]:
    """The adapter tensors, after checking the file's sha256 against the manifest."""
    path = Path(directory) / manifest["tensors"]["file"]
    if not path.is_file():
        raise AdapterError(f"{path}: weights file missing")
    digest = _file_sha256(path)
    if digest != manifest["tensors"].get("sha256"):
        raise AdapterError(f"{path}: sha256 {digest[:16]}... does not match the manifest's "
                           f"{str(manifest['tensors'].get('sha256'))[:16]}...; the file is truncated or was modified")
    try:
        tensors = load_file(str(path))
    except Exception as e:  # safetensors raises its own error types
        raise AdapterError(f"{path}: cannot read safetensors ({e})") from e
    missing = sorted(set(manifest["tensors"]["names"]) - set(tensors))
    if missing:
        raise AdapterError(f"{path}: missing tensors {missing[:5]}{'...' if len(missing) > 5 else ''}")
    return tensors


def load_adapter(directory: str | os.PathLike, llm: nn.Module, vision: nn.Module | None = None):
    """Rebuild a CasaModel from `directory` onto the pristine base `llm` (modified in place).

    Raises AdapterError naming both fingerprints when `llm` is not the base the adapter was trained on.
    A custom `nn.Module` tower must be passed again as `vision=`; spec-named towers are rebuilt.
    """
    from casa_adapter.config import CasaSettings, LoraSettings, VisionSettings
    from casa_adapter.inject import _check_not_wrapped, build_model

    manifest = read_manifest(directory)
    tensors = read_tensors(directory, manifest)
    _check_not_wrapped(llm)
    base = manifest["base_model"]
    found = fingerprint(llm)
    if found != base["fingerprint"]:
        raise AdapterError(
            f"{directory}: adapter was trained on base {base['name']!r} ({base['model_type']}, {base.get('dtype')}) "
            f"with fingerprint {base['fingerprint']}, but the given model ({getattr(llm.config, '_name_or_path', '')!r}, "
            f"{llm.config.model_type}, {_dtype(llm)}) has fingerprint {found}. Load the same base weights in the same "
            f"dtype (the fingerprint covers both).")
    casa = manifest["casa"]
    names = [f.name for f in dataclasses.fields(CasaSettings)]
    settings = CasaSettings.from_dict({"image_norm": False, **{k: casa[k] for k in names if k in casa}})  # older: no norm
    spec = manifest["vision"]
    if spec["kind"] == "custom":
        if vision is None:
            raise AdapterError(f"{directory}: trained with a custom vision tower ({spec.get('class')}); pass it again "
                               f"as load_adapter(..., vision=tower)")
        tower, overrides = vision, {k: spec[k] for k in ("unfreeze_last", "pool", "projector") if k in spec}
    else:
        tower, overrides = VisionSettings.from_dict(spec["settings"]), {}
    lora = LoraSettings.from_dict(manifest["lora"]) if manifest["lora"] else None
    model = build_model(llm, settings, tower, lora, casa["kernel"], found, **overrides)
    _check_tower(model, spec, manifest["tensors"]["names"], directory)
    _load_into(model, tensors, directory)
    return model


def _check_tower(model, spec: dict, saved: list[str], directory) -> None:
    """A custom tower passed again must hold the same weights it was trained with."""
    want = spec.get("tower_fingerprint")
    if spec["kind"] == "custom" and want is not None:
        found = tower_fingerprint(model, saved)
        if found != want:
            raise AdapterError(f"{directory}: the vision tower passed has fingerprint {found}, but the adapter was "
                               f"trained with a tower of fingerprint {want}; pass the same tower weights")


def _load_into(model, tensors: dict[str, torch.Tensor], directory) -> None:
    state = dict(model.named_parameters()) | dict(model.named_buffers())
    unknown = sorted(set(tensors) - set(state))
    if unknown:
        raise AdapterError(f"{directory}: tensors {unknown[:5]} do not exist in the rebuilt model; the adapter does "
                           f"not match this casa_adapter version or model")
    with torch.no_grad():
        for name, value in tensors.items():
            if state[name].shape != value.shape:
                raise AdapterError(f"{directory}: {name} has shape {tuple(value.shape)} in the adapter but "
                                   f"{tuple(state[name].shape)} in the model")
            state[name].copy_(value)
    model.freeze()
