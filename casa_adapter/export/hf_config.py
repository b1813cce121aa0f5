"""`CasaVLConfig`: the `config.json` of a casa_adapter folder, under its own `model_type`.

A folder written by `CasaModel.save_pretrained` is one of two forms:

- `form="adapter"`: it references the base LLM (`base`: name or path, fingerprint, model type, dtype)
  and holds only what trained (the adapter files of `casa_adapter.adapters.io`);
- `form="merged"`: it holds everything (base weights with LoRA merged, CASA layers, marker, vision
  tower, projector) and the base's own config as `llm_config`, so no base is needed to load it.

The `model_type` is namespaced (`casa_adapter_vlm`) so it never collides with a transformers type,
and the config carries no `auto_map`: loading never executes code from a folder.
"""

from __future__ import annotations

from typing import Any

from transformers import PreTrainedConfig

MODEL_TYPE = "casa_adapter_vlm"
FOLDER_FORMAT_VERSION = 1
"""Version of the folder layout (config fields and file names); a newer one is refused when loading."""


class CasaVLConfig(PreTrainedConfig):
    """Settings of a saved casa_adapter vision-language model (see the module docstring for the forms)."""

    model_type = MODEL_TYPE

    def __init__(
        self,
        form: str = "adapter",
        base: dict[str, Any] | None = None,
        llm_config: dict[str, Any] | None = None,
        casa: dict[str, Any] | None = None,
        vision: dict[str, Any] | None = None,
        lora: dict[str, Any] | None = None,
        image_token_id: int | None = None,
        folder_format_version: int = FOLDER_FORMAT_VERSION,
        **kwargs: Any,
    ) -> None:
        self.form = form
        self.base = base or {}
        """name (id or path), fingerprint, model_type and dtype of the base LLM the model was built on."""
        self.llm_config = llm_config
        """The base LLM's own config (a dict), for the merged form."""
        self.casa = casa or {}
        """`CasaSettings` fields plus `layer_indices`."""
        self.vision = vision or {}
        """`VisionEncoder.spec()`."""
        self.lora = lora
        """`LoraSettings`, or None without LoRA. Merged form: informative only (LoRA is in the base weights)."""
        self.image_token_id = image_token_id
        self.folder_format_version = folder_format_version
        super().__init__(**kwargs)


__all__ = ["CasaVLConfig", "FOLDER_FORMAT_VERSION", "MODEL_TYPE"]
