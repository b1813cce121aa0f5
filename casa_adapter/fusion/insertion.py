"""`InsertionModel`: the LLaVA-style token-insertion baseline, `wrap(llm, ..., fusion="insertion")`.

Same vision tower, projector and LoRA as CASA, no CASA layers and no marker embedding: each image
marker in `input_ids` is replaced by that image's N projected tokens in the embedding stream, the
LLM runs full causal attention over text and image tokens, and the image tokens stay in the KV
cache for as long as the conversation lasts. It is the A/B baseline of every benchmark.

Inputs and outputs speak CASA's language, so the two fusions are interchangeable: the same
`input_ids` (one marker per image), `images` and `labels`, and logits with ONE ROW PER POSITION OF
`input_ids`. The row of a marker is the row of its image's last token (the one that predicts the
text after the image); image tokens carry no label. Rows of a batch that grow to different lengths
are left-padded, with positions counted from the attention mask; packed rows (`sample_ids`) get
positions restarting at each sample, and no attention crosses samples.

Example:
    >>> import torch, casa_adapter
    >>> from casa_adapter.backbone.base_models import tiny_llm
    >>> model = casa_adapter.wrap(tiny_llm(), vision="siglip-tiny", pretrained=False, fusion="insertion")
    >>> ids = torch.tensor([[5, model.image_token_id, 7, 8]])
    >>> model(ids, images=[torch.rand(1, 3, 64, 64)]).logits.shape   # 4 rows, not 4 - 1 + 64
    torch.Size([1, 4, 384])
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from casa_adapter.fusion.base import FusionModel, ImagesArg
from casa_adapter.fusion.stream.chunks import InsertionChunks

INSERTION_FLAG = "_casa_insertion"
"""Attribute set on an LLM wrapped for insertion, so that wrapping it again is refused."""


@dataclass
class Expanded:
    """`input_ids` with every marker replaced by its image's tokens: B rows of L slots, left-padded."""

    embeds: torch.Tensor
    """(B, L, D) input embeddings: text embeddings and projected image tokens."""
    attention_mask: torch.Tensor | None
    """(B, L) long: 0 on left padding and on the input's own padding; None for packed rows."""
    position_ids: torch.Tensor
    """(B, L) long: positions counted over attended slots (restarting at each sample when packed)."""
    last: torch.Tensor
    """(B, T) long: the slot of each input position (for a marker, its image's last token)."""


class InsertionModel(FusionModel):
    """An HF causal LM fed image tokens in its input stream; build it with `wrap(..., fusion="insertion")`."""

    stream_chunks = InsertionChunks

    @property
    def image_token_id(self) -> int:
        """The id that marks each image in `input_ids`: one past the embedding table, as under CASA."""
        return int(self.llm.get_input_embeddings().weight.shape[0])

    def expand(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None,
        features: list[torch.Tensor | None],
        sample_ids: torch.Tensor | None = None,
    ) -> Expanded:
        """Replace each marker by its image's N tokens. features: per row (n_markers, N, D) or None.
        sample_ids (B, T), for packed rows: positions restart at each sample, and no mask is returned
        (transformers then keeps attention within each run of positions)."""
        marker = input_ids == self.image_token_id  # (B, T)
        images, N = _flat_images(features, marker.sum(-1))  # (B, I, D), tokens per image
        last, owner, pad = _slots(marker, N)  # (B, T), (B, L), (B, L)
        embeds = self._embeddings(input_ids, marker, images, N, last, owner, pad)  # (B, L, D)
        if sample_ids is not None:
            segment = torch.where(pad, -1, sample_ids.gather(1, owner))  # (B, L), -1 on left padding
            return Expanded(embeds, None, _segment_positions(segment), last)
        mask = torch.ones_like(input_ids) if attention_mask is None else attention_mask.long()
        mask = mask.gather(1, owner) * (~pad).long()  # (B, L)
        return Expanded(embeds, mask, (mask.cumsum(-1) - 1).clamp(min=0), last)

    def _embeddings(self, input_ids, marker, images, N: int, last, owner, pad) -> torch.Tensor:
        """Text embeddings (B, T, D) spread over the L slots, image tokens (B, I, D) on the image slots."""
        B, L = owner.shape
        text = self.llm.get_input_embeddings()(input_ids.masked_fill(marker, 0))  # (B, T, D)
        embeds = text.gather(1, owner.unsqueeze(-1).expand(B, L, text.shape[-1]))  # (B, L, D)
        if images is None:
            return embeds
        is_image = marker.gather(1, owner) & ~pad  # (B, L)
        slot = torch.arange(L, device=owner.device).expand(B, L)  # (B, L)
        nth = (marker.long().cumsum(-1) - 1).gather(1, owner)  # (B, L) which image of the row
        offset = slot - last.gather(1, owner) + N - 1  # (B, L) token within the image
        flat = torch.where(is_image, nth * N + offset, torch.zeros_like(slot))  # (B, L)
        picked = images.gather(1, flat.unsqueeze(-1).expand(B, L, images.shape[-1]))  # (B, L, D)
        return torch.where(is_image.unsqueeze(-1), picked.to(embeds.dtype), embeds)

    def _expanded(self, input_ids, attention_mask, images: ImagesArg, sample_ids=None) -> Expanded | None:
        """The expanded inputs, or None for unpacked text-only input without markers (the LLM then runs as is)."""
        if not images and sample_ids is None and not bool((input_ids == self.image_token_id).any()):
            return None
        return self.expand(input_ids, attention_mask, self._row_features(input_ids, images), sample_ids)

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        images: ImagesArg = None,
        labels: torch.Tensor | None = None,
        **kwargs,
    ):
        """HF-style causal-LM output with `.loss` over `labels` (B, T) and `.logits` (B, T, V).

        Positions are those of the expanded stream (a given `position_ids` is replaced). Packed rows
        (`sample_ids`, see casa_adapter.data.packing) keep attention within each sample."""
        sample_ids = kwargs.pop("sample_ids", None)
        kwargs.pop("position_ids", None)
        x = self._expanded(input_ids, attention_mask, images, sample_ids)
        if x is None:
            return self.llm(input_ids=input_ids, attention_mask=attention_mask, labels=labels, **kwargs)
        if sample_ids is not None:
            kwargs["use_cache"] = False  # transformers separates packed samples only without a cache
        keep = _keep_slots(x.last, kwargs.pop("logits_to_keep", 0))  # (B, P) slots of the kept input positions
        return self.llm(
            inputs_embeds=x.embeds,
            attention_mask=x.attention_mask,
            position_ids=x.position_ids,
            labels=labels,
            logits_to_keep=keep,
            **kwargs,
        )

    @torch.no_grad()
    def generate(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        images: ImagesArg = None,
        **generate_kwargs,
    ) -> torch.Tensor:
        """`transformers` generate with the image tokens in the prompt (and so in the KV cache).
        Returns `input_ids` followed by the new tokens, as for CASA."""
        x = self._expanded(input_ids, attention_mask, images)
        if x is None:
            return self.llm.generate(input_ids=input_ids, attention_mask=attention_mask, **generate_kwargs)
        new = self.llm.generate(inputs_embeds=x.embeds, attention_mask=x.attention_mask, **generate_kwargs)  # (B*k, n)
        prompt = input_ids.repeat_interleave(new.shape[0] // input_ids.shape[0], dim=0)  # (B*k, T)
        return torch.cat([prompt, new], dim=1)


def _keep_slots(last: torch.Tensor, logits_to_keep: int | torch.Tensor) -> torch.Tensor:
    """The slots whose logits to compute: `last` (B, T) narrowed to the input positions a caller keeps
    (`logits_to_keep` as in transformers: 0 = all, int n = the last n, 1D tensor = these positions)."""
    if isinstance(logits_to_keep, torch.Tensor):
        if logits_to_keep.ndim != 1 or logits_to_keep.dtype == torch.bool:
            raise ValueError("InsertionModel accepts logits_to_keep as an int or a 1D tensor of input positions")
        return last[:, logits_to_keep.to(last.device)]
    return last if logits_to_keep == 0 else last[:, -int(logits_to_keep) :]


def _slots(marker: torch.Tensor, N: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Where each input position lands once markers take N slots, rows right-aligned to L slots.

    marker (B, T) -> last (B, T): the slot of each position (a marker's last image slot);
    owner (B, L): the input position each slot belongs to; pad (B, L): left padding."""
    end = torch.where(marker, N, 1).cumsum(-1)  # (B, T)
    L = int(end[:, -1].max())
    shift = L - end[:, -1:]  # (B, 1)
    last = end - 1 + shift  # (B, T)
    slot = torch.arange(L, device=marker.device).repeat(marker.shape[0], 1)  # (B, L)
    return last, torch.searchsorted(last, slot), slot < shift


def _segment_positions(segment: torch.Tensor) -> torch.Tensor:
    """(B, L) segment ids -> positions 0, 1, ... restarting where the segment id changes."""
    slot = torch.arange(segment.shape[1], device=segment.device).expand_as(segment)  # (B, L)
    starts = torch.ones_like(segment, dtype=torch.bool)
    starts[:, 1:] = segment[:, 1:] != segment[:, :-1]
    return slot - torch.where(starts, slot, torch.zeros_like(slot)).cummax(-1).values


def _flat_images(features: list[torch.Tensor | None], markers: torch.Tensor) -> tuple[torch.Tensor | None, int]:
    """Per-row image tokens (n, N, D) -> ((B, I, D) zero-padded or None, N). Checks counts against markers (B,)."""
    counts = [0 if f is None else f.shape[0] for f in features]
    for b, (n, m) in enumerate(zip(counts, markers.tolist())):
        if n != m:
            raise ValueError(f"row {b}: input_ids has {m} image markers but {n} images were given")
    ref = next((f for f in features if f is not None and f.shape[0]), None)
    if ref is None:
        return None, 1
    N, D = ref.shape[1], ref.shape[2]
    out = ref.new_zeros(len(features), max(counts) * N, D)  # (B, I, D)
    for b, f in enumerate(features):
        if f is not None and f.shape[0]:
            out[b, : f.shape[0] * N] = f.reshape(-1, D)
    return out, N


def mark_inserted(llm: nn.Module) -> None:
    """Flag `llm` as wrapped for token insertion (insertion adds no module: the flag is what refuses a second wrap)."""
    setattr(llm, INSERTION_FLAG, True)


def unmark_inserted(llm: nn.Module) -> None:
    """Remove the flag `mark_inserted` set (rolling a failed wrap back)."""
    if hasattr(llm, INSERTION_FLAG):
        delattr(llm, INSERTION_FLAG)


def is_inserted(llm: nn.Module) -> bool:
    """Whether an earlier `wrap(..., fusion="insertion")` modified `llm`."""
    return bool(getattr(llm, INSERTION_FLAG, False))


__all__ = ["InsertionModel", "Expanded", "is_inserted", "mark_inserted", "unmark_inserted"]
