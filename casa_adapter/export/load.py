"""Reading a folder written by `save_pretrained` back into a `CasaModel` (or `InsertionModel`).

- adapter form: the base named in `config.json` is loaded offline (`backbone.base_models.load_base`:
  a local path, a `.gguf`, `smollm2-135m`, or a hub id in the local cache) in the dtype the adapter
  was trained on (its fingerprint covers the dtype), then `load_adapter` puts the adapter on it;
- merged form: the base architecture is built from the recorded `llm_config` (no base needed), the
  CASA layers and the vision encoder from the recorded settings, and every tensor comes from
  `model.safetensors`.

`dtype` and `device_map` (one device: "cpu", "cuda", "cuda:1", "auto", or `{"": device}`) apply
after loading.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch
from safetensors.torch import load_file
from transformers import AutoConfig

from casa_adapter.adapters.manifest import AdapterError, casa_settings, vision_arguments
from casa_adapter.backbone.base_models import empty_llm, load_base
from casa_adapter.export.hf_config import FOLDER_FORMAT_VERSION, MODEL_TYPE, CasaVLConfig
from casa_adapter.export.pretrained import MERGED_WEIGHTS
from casa_adapter.fusion.build import build_model, load_adapter


def read_config(directory: str | os.PathLike) -> CasaVLConfig:
    """The folder's `CasaVLConfig`, checked for model type, form and folder version."""
    path = Path(directory) / "config.json"
    if not path.is_file():
        raise FileNotFoundError(f"{directory}: no config.json; not a folder written by save_pretrained")
    raw = json.loads(path.read_text())
    if raw.get("model_type") != MODEL_TYPE:
        raise AdapterError(f"{path}: model_type {raw.get('model_type')!r} is not {MODEL_TYPE!r}")
    if raw.get("folder_format_version", 0) > FOLDER_FORMAT_VERSION:
        raise AdapterError(
            f"{path}: folder format version {raw['folder_format_version']} is newer than this "
            f"casa_adapter reads ({FOLDER_FORMAT_VERSION}); upgrade casa_adapter"
        )
    if raw.get("form") not in ("adapter", "merged"):
        raise AdapterError(f"{path}: unknown form {raw.get('form')!r} (expected 'adapter' or 'merged')")
    return CasaVLConfig.from_dict(raw)


def load_pretrained(directory: str | os.PathLike, vision=None, base: str | None = None, dtype=None, device_map=None):
    """The model in `directory` (eval mode). vision: the custom tower module when one was used;
    base: where to find the base LLM when the recorded name does not load here (adapter form)."""
    config = read_config(directory)
    if config.form == "adapter":
        model = _adapter_form(directory, config, vision, base)
    else:
        model = _merged_form(directory, config, vision)
    return place(model, dtype, device_map).eval()


def _adapter_form(directory, config: CasaVLConfig, vision, base: str | None):
    return adapter_on_recorded_base(directory, config.base, base, vision, with_tokenizer=False)[0]


def adapter_on_recorded_base(directory, record: dict, base: str | None, vision, with_tokenizer: bool):
    """(model, tokenizer or None): the adapter in `directory` on its base, loaded offline from `base` or the
    record's name (`adapters.manifest.base_record`) in the recorded dtype (the fingerprint covers the dtype)."""
    name = base or record.get("name")
    if not name:
        raise AdapterError(f"{directory}: no base model name is recorded; pass base=PATH_OR_ID (--base)")
    try:
        llm, tokenizer = load_base(name, getattr(torch, record.get("dtype") or "float32"), with_tokenizer)
    except (FileNotFoundError, OSError) as e:
        raise FileNotFoundError(
            f"{directory}: the base model {name!r} this adapter was trained on cannot be loaded "
            f"here ({e}); pass base=PATH to a local copy of it"
        ) from e
    return load_adapter(directory, llm, vision=vision), tokenizer


def _merged_form(directory, config: CasaVLConfig, vision):
    llm_config = dict(config.llm_config)
    llm_cfg = AutoConfig.for_model(llm_config.pop("model_type"), **llm_config)
    llm = empty_llm(llm_cfg, getattr(torch, config.base["dtype"]))  # every weight comes from the file
    llm.config._name_or_path = config.base.get("name", "")
    settings = casa_settings({"casa": config.casa})
    tower, overrides = vision_arguments(config.vision, vision, directory)  # a custom tower's weights: the file
    model = build_model(llm, settings, tower, None, config.base.get("fingerprint", ""), **overrides)
    load_weights(model, Path(directory) / MERGED_WEIGHTS)
    return model


def load_weights(model, path: Path) -> None:
    """Every tensor of `model` from `path`; tied tensors stored once are the only ones allowed to be absent."""
    if not path.is_file():
        raise AdapterError(f"{path}: weights file missing")
    try:
        tensors = load_file(str(path))
    except Exception as e:  # safetensors raises its own error types
        raise AdapterError(f"{path}: cannot read safetensors ({e})") from e
    try:
        result = model.load_state_dict(tensors, strict=False)
    except RuntimeError as e:
        raise AdapterError(f"{path}: the tensors do not fit the model built from config.json: {e}") from e
    state = model.state_dict()
    loaded = {state[k].data_ptr() for k in tensors if k in state}
    absent = [k for k in result.missing_keys if state[k].data_ptr() not in loaded]
    if result.unexpected_keys or absent:
        raise AdapterError(
            f"{path}: unexpected tensors {sorted(result.unexpected_keys)[:5]}, missing tensors "
            f"{absent[:5]}; the file does not match config.json"
        )


def place(model, dtype=None, device_map=None):
    """`model` cast to `dtype` (a torch dtype, its name, or "auto" / None: as saved) and moved to the one device
    `device_map` names."""
    if isinstance(dtype, str) and dtype != "auto":
        dtype = getattr(torch, dtype)
    if isinstance(dtype, torch.dtype):
        model.to(dtype=dtype)
    if isinstance(device_map, dict):
        devices = set(device_map.values())
        if len(devices) != 1:
            raise ValueError(f"device_map={device_map}: a casa_adapter model is placed on one device")
        device_map = devices.pop()
    if device_map == "auto":
        device_map = "cuda" if torch.cuda.is_available() else "cpu"
    if device_map is not None:
        model.to(torch.device(device_map) if not isinstance(device_map, int) else torch.device("cuda", device_map))
    return model


__all__ = ["adapter_on_recorded_base", "load_pretrained", "load_weights", "place", "read_config"]
