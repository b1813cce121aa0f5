"""What `casa-adapter export` reads: an adapter directory, a `save_pretrained` folder, or a Lightning resume
checkpoint, each turned back into (model, tokenizer) offline.

- adapter directory (`manifest.json`, e.g. `runs/demo/adapter/step-000200`): the base named in the
  manifest (or `base=`) is loaded with `load_base` in the recorded dtype, then `load_adapter`;
- `save_pretrained` folder (`config.json` of model_type `casa_adapter_vlm`): `load_pretrained`, and
  the folder's tokenizer when it holds one;
- resume checkpoint (`*.ckpt`, written by `CasaModule`): its hyper-parameters rebuild the model
  (`ModelSettings`, `base=` replacing the recorded base), then its trainable tensors are loaded.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch

from casa_adapter.adapters.manifest import MANIFEST, AdapterError, read_manifest
from casa_adapter.eval.loading import model_settings
from casa_adapter.export.load import adapter_on_recorded_base, load_pretrained
from casa_adapter.fusion.build import build_from_settings


def load_source(source: str | os.PathLike, base: str | None = None, vision=None):
    """(model in eval mode, tokenizer or None) from an adapter directory, a saved folder or a resume checkpoint."""
    path = Path(source)
    if path.is_dir() and (path / MANIFEST).is_file() and not (path / "config.json").is_file():
        model, tokenizer = adapter_on_recorded_base(path, read_manifest(path)["base_model"], base, vision, True)
        return model.eval(), tokenizer
    if path.is_dir() and (path / "config.json").is_file():
        return load_pretrained(path, vision=vision, base=base), _folder_tokenizer(path)
    if path.is_file() and path.suffix == ".ckpt":
        return from_checkpoint(path, base)
    raise FileNotFoundError(f"{source}: neither an adapter directory, a save_pretrained folder nor a .ckpt file")


def from_checkpoint(path: Path, base: str | None = None):
    """(model, tokenizer) from a `CasaModule` resume checkpoint: settings from its hyper-parameters, the
    trainable tensors (and a random tower) from its state dict."""
    checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    hparams = checkpoint.get("hyper_parameters") or {}
    if "model" not in hparams:
        raise AdapterError(f"{path}: no `model` hyper-parameters; not a checkpoint written by casa_adapter.CasaModule")
    settings = model_settings(hparams["model"])
    if base:
        settings.base = base
    model, tokenizer = build_from_settings(settings)
    state = {k[len("model.") :]: v for k, v in checkpoint["state_dict"].items() if k.startswith("model.")}
    try:
        result = model.load_state_dict(state, strict=False)
    except RuntimeError as e:
        raise AdapterError(f"{path}: its tensors do not fit the model its settings build: {e}") from e
    if result.unexpected_keys:
        raise AdapterError(f"{path}: tensors {sorted(result.unexpected_keys)[:5]} do not exist in the rebuilt model")
    model.freeze()
    return model.eval(), tokenizer


def _folder_tokenizer(path: Path):
    if not (path / "tokenizer_config.json").is_file():
        return None
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(path)


__all__ = ["from_checkpoint", "load_source"]
