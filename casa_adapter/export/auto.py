"""Registration with transformers' Auto classes, done by `import casa_adapter`.

    import casa_adapter, transformers
    model = transformers.AutoModelForImageTextToText.from_pretrained("runs/demo/export")   # a CasaModel
    processor = transformers.AutoProcessor.from_pretrained("runs/demo/export")              # a Processor

`register()` adds `CasaVLConfig` (model_type `casa_adapter_vlm`) to `AutoConfig`, `CasaVLAutoModel`
to `AutoModelForImageTextToText` and `AutoModelForCausalLM`, and a loader that returns a
`casa_adapter.Processor` to `AutoProcessor`. It is idempotent. Folders carry no `auto_map`, so no
code is ever executed from a folder and `trust_remote_code` is never needed.
"""

from __future__ import annotations

import os
from pathlib import Path

from huggingface_hub import snapshot_download
from transformers import AutoConfig, AutoModelForCausalLM, AutoModelForImageTextToText, AutoProcessor

from casa_adapter.export.hf_config import MODEL_TYPE, CasaVLConfig
from casa_adapter.export.load import load_pretrained
from casa_adapter.export.processor_files import ProcessorLoader

HUB_OPTIONS = (
    "cache_dir",
    "force_download",
    "local_files_only",
    "token",
    "revision",
    "trust_remote_code",
    "subfolder",
    "use_safetensors",
    "weights_only",
    "low_cpu_mem_usage",
    "adapter_kwargs",
    "attn_implementation",
    "proxies",
    "code_revision",
    "_commit_hash",
    "_from_auto",
    "_from_pipeline",
)
"""`from_pretrained` keywords the Auto classes pass that do not apply to a local casa_adapter folder (from 5.25
they pass their hub keywords, `proxies` and `_from_auto` among them, on to the model class)."""


class CasaVLAutoModel:
    """The model class transformers' Auto classes see for `casa_adapter_vlm` folders; `from_pretrained`
    returns a `casa_adapter.CasaModel` (or `InsertionModel`), an `nn.Module` with `forward` and `generate`."""

    config_class = CasaVLConfig

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path: str | os.PathLike, *args, config=None, **kwargs):
        """Keywords: `dtype` (or `torch_dtype`), `device_map` (one device), `vision` (a custom tower module),
        `base` (where the base LLM is, for the adapter form)."""
        if args:
            raise TypeError(f"unexpected positional arguments {args}")
        dtype = kwargs.pop("dtype", None) or kwargs.pop("torch_dtype", None)
        options = {k: kwargs.pop(k, None) for k in ("vision", "base", "device_map")}
        for key in HUB_OPTIONS:
            kwargs.pop(key, None)
        if kwargs:
            raise TypeError(f"unknown keyword arguments {sorted(kwargs)} for a casa_adapter folder")
        return load_pretrained(_local_folder(pretrained_model_name_or_path), dtype=dtype, **options)


def _local_folder(name: str | os.PathLike) -> str:
    """A folder as given, or a hub id's snapshot in the local cache (nothing is downloaded)."""
    if Path(name).is_dir():
        return str(name)
    try:
        return snapshot_download(str(name), local_files_only=True)
    except Exception as e:  # huggingface_hub raises several error types for "not cached"
        raise FileNotFoundError(f"{name!r} is neither a local folder nor in the local Hugging Face cache") from e


def register() -> None:
    """Register the config, model and processor classes with the Auto classes (safe to call again)."""
    AutoConfig.register(MODEL_TYPE, CasaVLConfig, exist_ok=True)
    AutoModelForImageTextToText.register(CasaVLConfig, CasaVLAutoModel, exist_ok=True)
    AutoModelForCausalLM.register(CasaVLConfig, CasaVLAutoModel, exist_ok=True)
    AutoProcessor.register(CasaVLConfig, ProcessorLoader, exist_ok=True)


__all__ = ["CasaVLAutoModel", "register"]
