"""`KeyLayout`: which query may see which key, for one CASA attention call.

Every CASA kernel reads the same rule from the same four tensors. Each query (a text token)
carries a window id and a sequence index; each key carries the window id and index of where it
sits:

    allowed(q, k) = window(q) > 0  and  window(k) == window(q)  and  index(k) <= index(q)

Image keys carry the index of the token that opened their window, so every query of that window
sees all of them; text keys of the window are seen causally. Window 0 is "no window" (text before
the first image, padding): those queries get an output of exactly zero. Window ids are unique
within a row, so packed samples never see each other.

A layout also carries what kernels derive from it (the windowed kernel's block plan, the flash
kernel's varlen segments), computed on first use and kept on the layout object: the CASA layers of
one forward call share one `KeyLayout` (see `casa_adapter.casa.windows.CasaInputs.key_layout`), so
the plan is made once per forward, never kept in module state.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable
from dataclasses import dataclass, field
from typing import Any

import torch


@dataclass(eq=False)
class KeyLayout:
    """Window ids and sequence indices of the queries (B, Tq) and keys (B, K) of one call."""

    q_window: torch.Tensor
    """(B, Tq) long: window id of each query; 0 = no window."""
    q_index: torch.Tensor
    """(B, Tq) long: sequence index of each query."""
    k_window: torch.Tensor
    """(B, K) long: window id of each key; 0 = padding."""
    k_index: torch.Tensor
    """(B, K) long: sequence index of each key (an image key: its window's start)."""
    _derived: dict[Hashable, Any] = field(default_factory=dict, init=False, repr=False)
    """Kernel plans by name (`derived`); `dataclasses.replace(layout)` gives a copy without them."""

    def derived(self, name: Hashable, build: Callable[[KeyLayout], Any]) -> Any:
        """`build(self)`, computed once per layout and kept under `name` (a kernel's plan; a tuple where it
        depends on more than the layout, e.g. `("windowed", mods, dtype)` for the masks with score modifiers)."""
        if name not in self._derived:
            with torch.no_grad():
                self._derived[name] = build(self)
        return self._derived[name]

    def mask(self) -> torch.Tensor:
        """Boolean (B, Tq, K) mask of allowed query/key pairs (the dense form of the rule)."""
        same = self.q_window.unsqueeze(-1) == self.k_window.unsqueeze(-2)  # (B, Tq, K)
        causal = self.k_index.unsqueeze(-2) <= self.q_index.unsqueeze(-1)  # (B, Tq, K)
        return same & causal & (self.q_window > 0).unsqueeze(-1)


__all__ = ["KeyLayout"]
