"""The image-marker embedding: one learned row beside the frozen token embedding.

The marker id is one past the end of the LLM's embedding table, so it never collides with a
real token. `MarkerEmbedding` wraps the frozen embedding (its weight stays the same Parameter,
so tied LM heads stay tied) and looks the marker up in its own trainable (1, D) table. Its state
dict keeps the base's key (`embed_tokens.weight`) beside the new `embed_tokens.marker`.

Example:
    >>> import torch
    >>> base = torch.nn.Embedding(10, 4)
    >>> emb = MarkerEmbedding(base)
    >>> emb.marker_id
    10
    >>> emb(torch.tensor([[1, 10]])).shape
    torch.Size([1, 2, 4])
"""

from __future__ import annotations

import torch
from torch import nn

from casa_adapter.backbone.state_keys import keep_base_keys


class MarkerEmbedding(nn.Module):
    """Frozen token embedding (`.base`) plus a learned embedding for the image marker."""

    def __init__(self, base: nn.Module):
        super().__init__()
        self.base = base
        self.marker_id = int(base.weight.shape[0])
        with torch.no_grad():
            init = base.weight.float().mean(0, keepdim=True).to(base.weight.dtype)  # (1, D)
        self.marker = nn.Parameter(init)
        keep_base_keys(self, "base")

    @property
    def weight(self) -> torch.Tensor:
        """The frozen table, for code that reads `get_input_embeddings().weight` (tied heads, sizes)."""
        return self.base.weight

    @property
    def num_embeddings(self) -> int:
        return self.marker_id

    @property
    def embedding_dim(self) -> int:
        return int(self.base.weight.shape[1])

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        """(B, T) ids -> (B, T, D)."""
        is_marker = input_ids == self.marker_id  # (B, T)
        out = self.base(input_ids.masked_fill(is_marker, 0))  # (B, T, D)
        if not bool(is_marker.any()):
            return out
        return torch.where(is_marker.unsqueeze(-1), self.marker.to(out.dtype), out)


__all__ = ["MarkerEmbedding"]
