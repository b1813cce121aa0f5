"""The adapter manifest: `manifest.json`, what an adapter was trained on and with what settings.

Format version 2 (written now) names every tensor by its `state_dict()` key, in which the base
model's tensors keep their own names (`llm.model.layers.0.self_attn.q_proj.lora_A.default.weight`);
version 1 named them by module path (`...self_attn.sa.q_proj.lora_A.default.weight`) and still loads
(`casa_adapter.adapters.io.load_tensors` maps the names). docs/checkpoints.md lists every field.
"""

from __future__ import annotations

import dataclasses
import json
import os
import time
from pathlib import Path
from typing import Any

from casa_adapter.adapters.fingerprint import dtype_name
from casa_adapter.config import CasaSettings, LoraSettings, VisionSettings

FORMAT = "casa-adapter"
FORMAT_VERSION = 2
"""2: tensors named by state-dict key (base-compatible); 1: by parameter path."""
WEIGHTS, MANIFEST = "adapter.safetensors", "manifest.json"


class AdapterError(ValueError):
    """An adapter directory that cannot be loaded: missing, truncated, tampered or for another base."""


def base_record(model) -> dict:
    """What identifies the base LLM a fusion model was built on: name (as loaded), model type, dtype, fingerprint."""
    cfg = model.llm.config
    return {
        "name": getattr(cfg, "_name_or_path", "") or "",
        "model_type": cfg.model_type,
        "dtype": dtype_name(model.llm),
        "fingerprint": model.base_fingerprint,
    }


def manifest_for(model, names: list[str], tower_fingerprint: str) -> dict:
    """The manifest of `model` (a fusion model) whose adapter file holds the tensors `names` (state-dict keys)."""
    return {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "base_model": base_record(model),
        "casa": {
            **model.settings.to_dict(),
            "layer_indices": model.layer_indices,
            "image_token_id": model.image_token_id,
        },
        "vision": {**model.vision.spec(), "tower_fingerprint": tower_fingerprint},
        "lora": None if model.lora is None else model.lora.to_dict(),
        "trainable": {"names": model.trainable_state_keys(), "counts": model.trainable_counts()},
        "tensors": {"file": WEIGHTS, "names": names},
    }


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
        raise AdapterError(
            f"{path}: format version {manifest['format_version']} is newer than this casa_adapter "
            f"reads ({FORMAT_VERSION}); upgrade casa_adapter"
        )
    return manifest


OLDER = {"image_norm": False, "train_marker": True}
"""`CasaSettings` fields a record from before them lacks -> what it was built with then: no image norm, a trained
marker."""


def casa_settings(manifest: dict) -> CasaSettings:
    """The `CasaSettings` a manifest (or an exported config, `{"casa": config.casa}`) records; fields it lacks
    take what the versions before them meant (`OLDER`)."""
    casa = manifest["casa"]
    names = [f.name for f in dataclasses.fields(CasaSettings)]
    return CasaSettings.from_dict({**OLDER, **{k: casa[k] for k in names if k in casa}})


def lora_settings(manifest: dict) -> LoraSettings | None:
    return LoraSettings.from_dict(manifest["lora"]) if manifest["lora"] else None


def vision_arguments(spec: dict, vision: Any, directory) -> tuple[Any, dict]:
    """(what to pass as `vision=`, encoder overrides) for a recorded tower spec (`VisionEncoder.spec()`): a
    named tower is rebuilt from its settings; a custom tower must be passed again (`vision`)."""
    if spec["kind"] != "custom":
        return VisionSettings.from_dict(spec["settings"]), {}
    if vision is None:
        raise AdapterError(
            f"{directory}: trained with a custom vision tower ({spec.get('class')}); pass it again "
            f"as vision=tower (load_adapter(..., vision=tower), from_pretrained(..., vision=tower))"
        )
    return vision, {k: spec[k] for k in ("unfreeze_last", "pool", "projector") if k in spec}


__all__ = [
    "AdapterError",
    "base_record",
    "FORMAT",
    "FORMAT_VERSION",
    "MANIFEST",
    "WEIGHTS",
    "casa_settings",
    "lora_settings",
    "manifest_for",
    "read_manifest",
    "vision_arguments",
]
