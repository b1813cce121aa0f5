"""Base-compatible state-dict keys for modules that wrap one of the base model's modules.

casa_adapter wraps some modules of the base LLM in place: a block's self-attention beside its CASA
layer (`self_attn.sa`), the token embedding beside the marker row (`embed_tokens.base`), and peft's
LoRA layers around linears (`q_proj.base_layer`). Wrapping moves the original one level down, which
would rename the base's state-dict keys. `keep_base_keys(wrapper, inner)` registers two hooks so
that the wrapper's `state_dict()` lists the wrapped module's tensors under the names they had before
wrapping, and `load_state_dict()` takes those names (and the wrapped ones, as older files have
them). The wrapper's own tensors keep their keys (`self_attn.casa.*`, `embed_tokens.marker`,
`q_proj.lora_A.*`), so a base checkpoint loads into a wrapped model with `strict=False` and reports
no unexpected key, and what casa_adapter saves names base tensors as every HF tool does.

    >>> import torch
    >>> class Wrapper(torch.nn.Module):
    ...     def __init__(self, inner):
    ...         super().__init__()
    ...         self.inner, self.extra = inner, torch.nn.Parameter(torch.zeros(1))
    ...         keep_base_keys(self, "inner")
    >>> sorted(Wrapper(torch.nn.Linear(2, 2)).state_dict())
    ['bias', 'extra', 'weight']
"""

from __future__ import annotations

from functools import partial
from itertools import chain

from torch import nn


def keep_base_keys(wrapper: nn.Module, inner: str) -> None:
    """Make `wrapper.inner`'s tensors appear in state dicts under `wrapper`'s own prefix."""
    wrapper.register_state_dict_post_hook(partial(_lift, inner=inner))
    wrapper.register_load_state_dict_pre_hook(partial(_sink, inner=inner))


def _lift(module: nn.Module, state_dict: dict, prefix: str, local_metadata: dict, *, inner: str) -> None:
    """state_dict post-hook: `prefix + inner + "." + rest` -> `prefix + rest`, order kept."""
    head = prefix + inner + "."
    mine = [(k, state_dict.pop(k)) for k in [k for k in state_dict if k.startswith(prefix)]]
    for key, value in mine:  # this module's keys are the newest ones: re-adding them keeps the order
        state_dict[prefix + key[len(head) :] if key.startswith(head) else key] = value


def _sink(
    module: nn.Module,
    state_dict: dict,
    prefix: str,
    local_metadata: dict,
    strict: bool,
    missing_keys: list,
    unexpected_keys: list,
    error_msgs: list,
    *,
    inner: str,
) -> None:
    """load pre-hook: keys under `prefix` that name none of the wrapper's own tensors or children go to `inner`."""
    own = set(module._parameters) | set(module._buffers) | set(module._modules)
    for key in [k for k in state_dict if k.startswith(prefix)]:
        rest = key[len(prefix) :]
        if rest.split(".", 1)[0] not in own:
            state_dict[prefix + inner + "." + rest] = state_dict.pop(key)


def state_keys(module: nn.Module) -> dict[str, str]:
    """Parameter and buffer names of `module` -> their `state_dict()` keys (non-persistent buffers, which
    state dicts leave out, are absent). Tied tensors map to the first key that holds them."""
    by_tensor: dict[int, str] = {}
    for key, tensor in module.state_dict(keep_vars=True).items():
        by_tensor.setdefault(id(tensor), key)
    named = chain(module.named_parameters(remove_duplicate=False), module.named_buffers(remove_duplicate=False))
    return {name: by_tensor[id(t)] for name, t in named if id(t) in by_tensor}


__all__ = ["keep_base_keys", "state_keys"]
