"""Export the text LLM of a wrapped model as a plain Hugging Face causal LM, LoRA merged in.

`save_text_llm(model, directory, tokenizer=None)` writes a `save_pretrained` folder (config,
generation config, safetensors weights, and the tokenizer if given) of the base architecture's
own class: no CASA layers, no marker row, no LoRA modules, nothing of casa_adapter. It loads with

    AutoModelForCausalLM.from_pretrained(directory)

and its logits equal the wrapped model's on text-only input (where CASA is never reached).

The live model is not modified: the merged weights are computed from `model.llm.state_dict()`
(whose keys are the base's own, see `backbone.state_keys`) into new tensors, and loaded with
`strict=True` into a fresh instance of the base class built from the LLM's config.
"""

from __future__ import annotations

import copy
import os
from pathlib import Path

import torch
from peft.tuners.lora import LoraLayer
from torch import nn

from casa_adapter.atomic import atomic_dir
from casa_adapter.backbone.base_models import empty_llm
from casa_adapter.backbone.lora import merged_weight
from casa_adapter.backbone.state_keys import state_keys


def merged_state_dict(llm: nn.Module) -> dict[str, torch.Tensor]:
    """`llm.state_dict()` with every LoRA update folded into its base weight, as new tensors: W + (alpha / r) B A.
    The LoRA tensors are still in it; the live weights are untouched."""
    state = dict(llm.state_dict())
    keys = state_keys(llm)
    for name, layer in llm.named_modules():
        if not isinstance(layer, LoraLayer):
            continue
        key = keys[f"{name}.base_layer.weight"]
        try:
            state[key] = merged_weight(layer, state[key])
        except ValueError as err:
            raise ValueError(f"{name}: {err}; cannot export") from err
    return state


def fresh_base(llm: nn.Module) -> nn.Module:
    """An uninitialised instance of `llm`'s base class (what AutoModelForCausalLM maps its config to), on CPU."""
    base = empty_llm(llm.config, llm.dtype)
    if type(base) is not type(llm):
        raise ValueError(
            f"AutoModelForCausalLM maps model_type {llm.config.model_type!r} to {type(base).__name__}, not "
            f"{type(llm).__name__}; the exported folder would not load back as this LLM"
        )
    base.generation_config = copy.deepcopy(llm.generation_config)
    return base


def base_weights(llm: nn.Module, base: nn.Module) -> dict[str, torch.Tensor]:
    """The merged tensors `base` takes (its own state-dict keys); refuses tensors it cannot account for."""
    merged = merged_state_dict(llm)
    wanted = set(base.state_dict())
    extra = [k for k in merged if k not in wanted]
    unknown = [k for k in extra if not ("lora_" in k or ".casa." in k or k.endswith(".marker"))]
    if unknown:
        raise ValueError(f"tensors {unknown[:5]} are neither base weights nor CASA, marker or LoRA; cannot export")
    return {k: v for k, v in merged.items() if k in wanted}


def save_text_llm(model, directory: str | os.PathLike, tokenizer=None) -> Path:
    """Write the wrapped model's text LLM, LoRA merged, as a plain HF causal-LM folder (atomically).

    `model` is left as it was (LoRA, CASA layers and logits). `tokenizer`, if given, is saved beside
    the weights. Returns the folder's path."""
    base = fresh_base(model.llm)
    base.load_state_dict(base_weights(model.llm, base), strict=True)  # tied embeddings stay one tensor
    with atomic_dir(directory) as tmp:
        base.save_pretrained(tmp)
        if tokenizer is not None:
            tokenizer.save_pretrained(tmp)
    return Path(directory).resolve()


__all__ = ["merged_state_dict", "save_text_llm"]
