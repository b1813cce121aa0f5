"""`CasaChannel`: how one forward call's `CasaInputs` reach the CASA layers, whatever the blocks pass on.

The caller hands `CasaInputs` to the causal LM as the keyword `casa_inputs=` (`CasaModel.forward`,
streaming, the attach probe). The channel takes it at the LLM's entrance (a forward pre-hook on the
causal-LM module, so the HF forward never sees the keyword), holds it for exactly that call, and
every `CasaAttention` of the LLM reads it from there. Decoder blocks therefore need not forward
`**kwargs` to their attention (StableLM's do not). The channel also holds the call's `CasaCache` (the
causal LM's cache argument during `generate` and streaming), for a CASA layer beside a non-attention mixer
whose block hands the mixer no cache, or its own kind. The channel belongs to one wrapped LLM (it is
created by `attach_casa` and closed by `detach_casa`): no globals, no state between calls.
"""

from __future__ import annotations

from torch import nn
from torch.utils.hooks import RemovableHandle

from casa_adapter.casa.cache import CasaCache
from casa_adapter.casa.windows import CasaInputs


class CasaChannel:
    """The `CasaInputs` of the forward call now running through one LLM (None between calls, or text only)."""

    def __init__(self, llm: nn.Module):
        self.inputs: CasaInputs | None = None
        self.cache: CasaCache | None = None
        """The `CasaCache` the causal LM was called with (None between calls, or without one)."""
        self.readers: set[int] = set()
        """Layer indices of the CASA layers that read this call's inputs (what the attach probe checks)."""
        self._depth = 0
        self._handles: list[RemovableHandle] = [
            llm.register_forward_pre_hook(self._enter, with_kwargs=True),
            llm.register_forward_hook(self._leave, always_call=True),
        ]

    def _enter(self, module, args, kwargs):
        inputs = kwargs.pop("casa_inputs", None)
        if self._depth == 0:
            self.inputs, self.readers = inputs, set()
            self.cache = next((v for v in (*args, *kwargs.values()) if isinstance(v, CasaCache)), None)
        self._depth += 1
        return args, kwargs

    def _leave(self, module, args, output):
        self._depth -= 1
        if self._depth == 0:
            self.inputs, self.cache = None, None

    def read(self, layer_idx: int) -> CasaInputs | None:
        """This call's inputs, for the CASA layer of block `layer_idx`."""
        if self.inputs is not None:
            self.readers.add(layer_idx)
        return self.inputs

    def close(self) -> None:
        """Remove the channel from its LLM (`detach_casa`)."""
        for handle in self._handles:
            handle.remove()
        self._handles.clear()


__all__ = ["CasaChannel"]
