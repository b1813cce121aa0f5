"""Writing a wrapped model as a Hugging Face-style folder: `save_pretrained` in its two forms.

    folder/
      config.json              `CasaVLConfig` (model_type `casa_adapter_vlm`, no `auto_map`)
      generation_config.json   the base LLM's generation settings
      adapter.safetensors      adapter form: what trained (casa_adapter's adapter files) ...
      manifest.json            ... with their manifest (`casa_adapter.adapters`)
      model.safetensors        merged form: every tensor (LoRA folded into the base weights)
      casa_processor.json, tokenizer files   when a tokenizer or processor is given
      README.md                the model card

Everything is written into a temporary folder beside the target and swapped in at the end.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from safetensors.torch import save_file

from casa_adapter.adapters.io import write_adapter_files
from casa_adapter.adapters.manifest import base_record
from casa_adapter.atomic import atomic_dir
from casa_adapter.export.card import model_card
from casa_adapter.export.hf_config import CasaVLConfig
from casa_adapter.export.processor_files import save_processor
from casa_adapter.export.text_llm import merged_state_dict
from casa_adapter.processor import Processor

CARD, MERGED_WEIGHTS = "README.md", "model.safetensors"


def save_pretrained(
    model,
    directory: str | os.PathLike,
    merged: bool = False,
    tokenizer=None,
    processor: Processor | None = None,
    training: dict[str, Any] | None = None,
) -> Path:
    """Write `model` (a `CasaModel` or `InsertionModel`) to `directory`; returns its path.

    merged: False (adapter form, needs the base at load time) or True (self-contained).
    tokenizer / processor: saved beside the model so `AutoProcessor.from_pretrained(directory)` works.
    training: facts for the model card (`data`, `steps`, `metrics`)."""
    if processor is None and tokenizer is not None:
        processor = Processor.from_model(model, tokenizer)
    with atomic_dir(directory) as tmp:
        config = _write_merged(model, tmp) if merged else _write_adapter(model, tmp)
        config.save_pretrained(tmp)
        if getattr(model.llm, "generation_config", None) is not None:
            model.llm.generation_config.save_pretrained(tmp)
        if processor is not None:
            save_processor(processor, tmp)
        (tmp / CARD).write_text(model_card(config, model.trainable_counts(), training))
    return Path(directory).resolve()


def _write_adapter(model, folder: Path) -> CasaVLConfig:
    manifest = write_adapter_files(model, folder)
    return CasaVLConfig(
        form="adapter",
        base=manifest["base_model"],
        casa=manifest["casa"],
        vision=manifest["vision"],
        lora=manifest["lora"],
        image_token_id=model.image_token_id,
    )


def _write_merged(model, folder: Path) -> CasaVLConfig:
    """Every tensor in one file: the LLM's state dict with LoRA folded in, and the vision encoder's."""
    llm_state = {k: v for k, v in merged_state_dict(model.llm).items() if "lora_" not in k}
    state = {f"llm.{k}": v for k, v in llm_state.items()} | {
        f"vision.{k}": v for k, v in model.vision.state_dict().items()
    }
    seen: set[int] = set()
    tensors = {}
    for key, value in state.items():  # tied tensors (embeddings / LM head) are stored once; loading re-ties them
        if value.numel() and value.data_ptr() in seen:
            continue
        seen.add(value.data_ptr())
        tensors[key] = value.detach().to("cpu").contiguous().clone()
    save_file(tensors, str(folder / MERGED_WEIGHTS), metadata={"format": "pt"})
    vision = model.vision.spec()
    if vision.get("kind") == "open_clip":  # the tower's weights are in the file: rebuild it without fetching any
        vision = {**vision, "settings": {**vision["settings"], "pretrained": False}}
    casa = {**model.settings.to_dict(), "layer_indices": model.layer_indices}
    return CasaVLConfig(
        form="merged",
        base=base_record(model),
        llm_config=model.llm.config.to_dict(),
        casa=casa,
        vision=vision,
        lora=None if model.lora is None else model.lora.to_dict(),
        image_token_id=model.image_token_id,
    )


__all__ = ["CARD", "MERGED_WEIGHTS", "save_pretrained"]
