"""LoRA on the frozen LLM, through peft.

Targets are chosen by structure: the linear layers (nn.Linear, and GPT-2's Conv1D) inside the
decoder blocks, filtered by `LoraSettings.targets` suffixes. LoRA is injected *before* the CASA
layers exist, so CASA layers, the projector and the vision tower are never targets, and the LM
head (tied or not) is never touched. peft's `inject_adapter_in_model` mutates the LLM in place
(no PeftModel wrapper), so the rest of casa_adapter sees the same module tree. Each LoRA layer keeps
its base layer's state-dict keys (`q_proj.weight`, not peft's `q_proj.base_layer.weight`; see
`state_keys`); its own tensors are `q_proj.lora_A.default.weight` and so on.
"""

from __future__ import annotations

import torch
from peft import LoraConfig, inject_adapter_in_model
from peft.tuners.lora import LoraLayer
from torch import nn
from transformers.pytorch_utils import Conv1D

from casa_adapter.backbone.state_keys import keep_base_keys
from casa_adapter.config import LoraSettings

ADAPTER = "default"
"""The name peft gives the one adapter casa_adapter injects."""


def _fused_scan_outputs(llm: nn.Module) -> set[str]:
    """Names of the `out_proj` of state-space mixers (modules with an `A_log` parameter: Mamba, Mamba-2 and the
    hybrids built on them). Their fused CUDA scan reads `out_proj.weight` directly, so a LoRA there would be
    skipped on GPU; peft refuses it for the Mamba model types it knows."""
    return {
        f"{name}.out_proj"
        for name, module in llm.named_modules()
        if isinstance(getattr(module, "A_log", None), nn.Parameter)
        and isinstance(getattr(module, "out_proj", None), nn.Linear)
    }


def lora_blocks(n_blocks: int, settings: LoraSettings, casa_blocks: list[int]) -> set[int]:
    """The decoder block indices `settings.blocks` names, given the blocks holding CASA layers (none: insertion)."""
    if settings.blocks == "all":
        return set(range(n_blocks))
    if settings.blocks == "from_casa":
        return set(range(min(casa_blocks, default=0), n_blocks))
    bad = [i for i in settings.blocks if not -n_blocks <= i < n_blocks]
    if bad:
        raise ValueError(f"LoraSettings.blocks {bad} out of range for {n_blocks} decoder blocks")
    return {i % n_blocks for i in settings.blocks}


def lora_target_names(
    llm: nn.Module, blocks_path: str, settings: LoraSettings, casa_blocks: list[int] | None = None
) -> list[str]:
    """Full module names of the linear layers in the decoder blocks that LoRA adapts (by default all of them but a
    state-space mixer's output projection, `_fused_scan_outputs`), in the blocks `settings.blocks` names
    (`casa_blocks`: the blocks holding CASA layers, for `from_casa`)."""
    names, skipped = [], _fused_scan_outputs(llm) if settings.targets is None else set()
    chosen = lora_blocks(len(llm.get_submodule(blocks_path)), settings, casa_blocks or [])
    for name, module in llm.named_modules():
        if not name.startswith(blocks_path + ".") or not isinstance(module, (nn.Linear, Conv1D)):
            continue
        if name in skipped or int(name[len(blocks_path) + 1 :].split(".", 1)[0]) not in chosen:
            continue
        if settings.targets is None or any(name.endswith("." + t) for t in settings.targets):
            names.append(name)
    if not names:
        raise ValueError(
            f"LoRA targets {settings.targets} match no linear layer under `{blocks_path}` in blocks {sorted(chosen)}"
        )
    return names


def apply_lora(
    llm: nn.Module, blocks_path: str, settings: LoraSettings, casa_blocks: list[int] | None = None
) -> list[str]:
    """Inject LoRA adapters (B initialised to zero, so outputs are unchanged) and return their targets
    (`casa_blocks`: the blocks that will hold CASA layers, for `LoraSettings.blocks="from_casa"`)."""
    targets = lora_target_names(llm, blocks_path, settings, casa_blocks)
    uses_conv1d = any(isinstance(llm.get_submodule(n), Conv1D) for n in targets)
    config = LoraConfig(
        r=settings.rank,
        lora_alpha=settings.alpha,
        lora_dropout=settings.dropout,
        target_modules=targets,
        fan_in_fan_out=uses_conv1d,
        bias="none",
    )
    inject_adapter_in_model(config, llm, adapter_name=ADAPTER)
    for module in llm.modules():
        if isinstance(module, LoraLayer):
            keep_base_keys(module, "base_layer")
    return targets


def lora_delta(layer: LoraLayer) -> torch.Tensor:
    """The update LoRA adds to `layer`'s base weight, in fp32 and in the base weight's layout: (alpha / r) B A.
    `merge_lora` and the merged exports fold it with the same arithmetic, so they give identical weights."""
    if ADAPTER not in layer.lora_A or layer.use_dora.get(ADAPTER, False):
        raise ValueError(f"only a plain LoRA adapter {ADAPTER!r} can be merged, not {list(layer.lora_A)} / DoRA")
    a = layer.lora_A[ADAPTER].weight.detach().float()  # (r, in)
    b = layer.lora_B[ADAPTER].weight.detach().float()  # (out, r)
    delta = layer.scaling[ADAPTER] * (b @ a)  # (out, in)
    return delta.T if layer.fan_in_fan_out else delta  # Conv1D stores (in, out)


def merged_weight(layer: LoraLayer, weight: torch.Tensor | None = None) -> torch.Tensor:
    """`weight` (by default `layer`'s base weight; a state dict's copy of it, for exports) with the layer's LoRA
    update folded in, as a new tensor of its dtype."""
    weight = layer.get_base_layer().weight.detach() if weight is None else weight
    return (weight.float() + lora_delta(layer).to(weight.device)).to(weight.dtype)


def _replace_lora(model: nn.Module, merge: bool) -> int:
    count = 0
    for name, module in list(model.named_modules()):
        if isinstance(module, LoraLayer):
            if merge:
                with torch.no_grad():
                    module.get_base_layer().weight.copy_(merged_weight(module))
            parent_name, _, child = name.rpartition(".")
            setattr(model.get_submodule(parent_name), child, module.get_base_layer())
            count += 1
    return count


def merge_lora(model: nn.Module) -> int:
    """Fold every LoRA update into its base layer and put the plain layer back. Returns the count merged."""
    return _replace_lora(model, merge=True)


def remove_lora(model: nn.Module) -> int:
    """Drop every LoRA adapter, putting the untouched base layers back. Returns the count removed."""
    return _replace_lora(model, merge=False)


__all__ = ["apply_lora", "lora_blocks", "lora_delta", "lora_target_names", "merge_lora", "merged_weight", "remove_lora"]
