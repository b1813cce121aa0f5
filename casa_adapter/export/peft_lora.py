"""Export a wrapped model's LoRA as a standard peft adapter of the text LLM alone.

`save_peft_lora(model, directory)` writes what `PeftModel.save_pretrained` would write for the
unwrapped base LLM with the same LoRA: `adapter_config.json` (a `peft.LoraConfig`) and
`adapter_model.safetensors`, keyed the peft way (`base_model.model.<module path>.lora_A.weight`:
no adapter name, and the base's module paths, never the `.sa.` that CASA wrapping adds). Any
peft user can then apply the LoRA to a fresh copy of the base, without casa_adapter:

    from peft import PeftModel
    save_peft_lora(model, "runs/demo/peft")
    text_only = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base_id), "runs/demo/peft")

The CASA layers, marker row, projector and vision tower are not part of it: on text-only input the
exported LoRA gives the wrapped model's logits.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch
from peft import LoraConfig
from peft.tuners.lora import LoraLayer
from safetensors.torch import save_file

from casa_adapter.adapters.manifest import AdapterError
from casa_adapter.atomic import atomic_dir
from casa_adapter.backbone.lora import ADAPTER

CONFIG_FILE, WEIGHTS_FILE = "adapter_config.json", "adapter_model.safetensors"
PEFT_PREFIX = "base_model.model."
"""What `PeftModel` puts before the base model's own key names."""


def check_has_lora(model) -> None:
    """Refuse a model without LoRA, or one whose LoRA was merged into the base weights."""
    if model.lora is None:
        raise AdapterError("this model has no LoRA (wrap(..., lora=None)); there is no peft adapter to export")
    if not model.lora_targets:
        raise AdapterError("LoRA was merged into the base weights (merge_lora); export the peft adapter before merging")


def peft_state_dict(llm: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The LoRA tensors of `llm` under the names `peft.get_peft_model_state_dict` gives a `PeftModel` of the
    base: `model.layers.0.self_attn.q_proj.lora_A.default.weight` -> `base_model.model.model.layers.0.
    self_attn.q_proj.lora_A.weight`. Tensors are copied to CPU."""
    out = {}
    for key, tensor in llm.state_dict().items():
        if "lora_" not in key:
            continue
        head, sep, tail = key.rpartition(f".{ADAPTER}.")
        if not sep or not head.endswith((".lora_A", ".lora_B")):
            raise AdapterError(f"unexpected LoRA tensor {key!r}: only lora_A/lora_B of adapter {ADAPTER!r} export")
        out[f"{PEFT_PREFIX}{head}.{tail}"] = tensor.detach().to("cpu").contiguous().clone()
    return out


def lora_modules(state: dict[str, torch.Tensor]) -> list[str]:
    """Base module paths that carry LoRA, from peft-named keys (`...q_proj.lora_A.weight` -> `...q_proj`)."""
    names = {k[len(PEFT_PREFIX) :].rsplit(".lora_", 1)[0] for k in state}
    return sorted(names)


def lora_config(model, targets: list[str]) -> LoraConfig:
    """The `LoraConfig` equivalent to how `wrap()` injected LoRA, aimed at the base's module paths."""
    layers = [m for m in model.llm.modules() if isinstance(m, LoraLayer)]
    settings = model.lora
    for layer in layers:  # peft's scaling is alpha / r (no rslora): what LoraConfig(r, lora_alpha) rebuilds
        if abs(layer.scaling[ADAPTER] - settings.alpha / settings.rank) > 1e-12:
            raise AdapterError(f"LoRA scaling {layer.scaling[ADAPTER]} is not alpha / rank; cannot export it")
    return LoraConfig(
        r=settings.rank,
        lora_alpha=settings.alpha,
        lora_dropout=settings.dropout,
        target_modules=targets,
        fan_in_fan_out=any(layer.fan_in_fan_out for layer in layers),  # GPT-2's Conv1D stores (in, out)
        bias="none",
        task_type="CAUSAL_LM",
        base_model_name_or_path=model.llm.config._name_or_path or None,
        inference_mode=True,  # what PeftModel.save_pretrained writes
    )


def save_peft_lora(model, directory: str | os.PathLike) -> Path:
    """Write `model`'s LoRA as a peft adapter directory for the text LLM (atomically); returns its path.

    Loads with `peft.PeftModel.from_pretrained(base_llm, directory)` onto a fresh copy of the base.
    Raises AdapterError when the model has no LoRA or its LoRA was merged."""
    check_has_lora(model)
    state = peft_state_dict(model.llm)
    config = lora_config(model, lora_modules(state))
    with atomic_dir(directory) as tmp:
        save_file(state, str(tmp / WEIGHTS_FILE), metadata={"format": "pt"})
        config.save_pretrained(str(tmp))
    return Path(directory).resolve()


__all__ = ["save_peft_lora"]
