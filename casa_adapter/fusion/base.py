"""`FusionModel`: what CASA and token insertion share.

The LLM (modified in place: optional LoRA), the vision encoder (tower + projector), the settings
that built them, the trainable set (by structure, in named groups), image encoding and adapter
saving. `casa_model.CasaModel` adds CASA layers and a marker embedding; `insertion.InsertionModel`
is the token-insertion baseline. Both are built by `casa_adapter.fusion.build`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from casa_adapter.adapters.io import save_adapter
from casa_adapter.backbone.families import FamilySpec, decoder_blocks
from casa_adapter.backbone.lora import merge_lora
from casa_adapter.backbone.state_keys import state_keys
from casa_adapter.config import CasaSettings, LoraSettings
from casa_adapter.export.pretrained import save_pretrained
from casa_adapter.fusion.stream import StreamBatch, StreamLimits, StreamSession
from casa_adapter.fusion.stream.limits import Evict

ImagesArg = list[Any] | None


class FusionModel(nn.Module):
    """What CASA and token insertion share: LLM + vision encoder, trainable set, image encoding, adapters.

    Subclasses define `image_token_id`, `forward`, `generate` and `stream_chunks`, and may add trainable
    groups (`GROUPS`, `_classifier`)."""

    GROUPS: tuple[str, ...] = ("lora", "projector", "vision")
    """Trainable groups, in order; `trainable_groups()` returns exactly these keys."""
    stream_chunks: type
    """How a streaming session feeds images and text (`fusion.stream.chunks`)."""

    def __init__(
        self,
        llm: nn.Module,
        vision: nn.Module,
        settings: CasaSettings,
        family: FamilySpec,
        layer_indices: list[int],
        lora: LoraSettings | None,
        base_fingerprint: str,
        lora_targets: list[str] | None = None,
    ):
        super().__init__()
        self.llm, self.vision = llm, vision
        self.settings, self.family, self.lora = settings, family, lora
        self.layer_indices = list(layer_indices)
        self.base_fingerprint = base_fingerprint
        self.lora_targets = lora_targets or []
        self.freeze()

    # -- identity ------------------------------------------------------------------------
    @property
    def image_token_id(self) -> int:
        """The id that marks each image insertion point in `input_ids` (one past the embedding table)."""
        raise NotImplementedError

    @property
    def config(self):
        return self.llm.config

    @property
    def device(self) -> torch.device:
        return next(self.llm.parameters()).device

    def decoder_blocks(self) -> nn.ModuleList:
        """The LLM's decoder blocks (where the family's `FamilySpec` says they are)."""
        return decoder_blocks(self.llm, self.family)

    # -- trainable set -------------------------------------------------------------------
    def _classifier(self) -> Callable[[str], str | None]:
        """A function: parameter name -> its trainable group, or None for frozen."""
        vision_prefixes = tuple("vision." + p for p in self.vision.trainable_tower_prefixes())

        def classify(name: str) -> str | None:
            if "lora_" in name:
                return "lora"
            if name.startswith("vision.projector."):
                return "projector"
            if vision_prefixes and name.startswith(vision_prefixes):
                return "vision"
            return None

        return classify

    def trainable_groups(self) -> dict[str, list[str]]:
        """Trainable parameter names by group (`GROUPS`)."""
        classify = self._classifier()
        groups: dict[str, list[str]] = {g: [] for g in self.GROUPS}
        for name, _ in self.named_parameters():
            group = classify(name)
            if group is not None:
                groups[group].append(name)
        return groups

    def freeze(self) -> None:
        """requires_grad True exactly on the trainable groups, False everywhere else."""
        trainable = set(self.trainable_parameter_names())
        for name, param in self.named_parameters():
            param.requires_grad_(name in trainable)

    def trainable_parameter_names(self) -> list[str]:
        """Exactly what trains (see `trainable_groups`)."""
        return [n for names in self.trainable_groups().values() for n in names]

    def trainable_state_keys(self) -> list[str]:
        """`trainable_parameter_names()` as `state_dict()` keys (where the base's own names are kept)."""
        keys = state_keys(self)
        return [keys[n] for n in self.trainable_parameter_names()]

    def trainable_counts(self) -> dict[str, int]:
        """Number of trainable scalars per group (and `total`)."""
        params = dict(self.named_parameters())
        counts = {g: sum(params[n].numel() for n in names) for g, names in self.trainable_groups().items()}
        counts["total"] = sum(counts.values())
        return counts

    # -- streaming -----------------------------------------------------------------------
    def stream(
        self, max_cache_tokens: int | None = None, evict: Evict = "error", pre_image=None, post_image=None
    ) -> StreamSession:
        """A streaming session (a batch of one); see `fusion.stream` and `StreamLimits` for the bound.
        pre_image / post_image: framing token ids put around each image (`Processor.framing_ids()`)."""
        return self.stream_batch(max_cache_tokens, evict, pre_image, post_image).open()

    def stream_batch(
        self, max_cache_tokens: int | None = None, evict: Evict = "error", pre_image=None, post_image=None
    ) -> StreamBatch:
        """Many streaming sessions decoded together (`batch.open()` each); every session gets these limits and
        this framing (token ids before / after each `put_image`)."""
        return StreamBatch(self, StreamLimits(max_cache_tokens, evict), pre_image, post_image)

    # -- inputs --------------------------------------------------------------------------
    def encode_images(self, images: ImagesArg) -> list[torch.Tensor | None]:
        """Per sample: images (n, 3, H, W) or a list of (3, H, W) -> projected tokens (n, N', D_llm)."""
        per_row = [_as_batch(x) for x in (images or [])]
        counts = [0 if x is None else x.shape[0] for x in per_row]
        if sum(counts) == 0:
            return [None] * len(per_row)
        pixels = torch.cat([x for x in per_row if x is not None and x.shape[0] > 0]).to(self.device)  # (n, 3, H, W)
        self.vision.check_pixels(pixels)
        tokens = self.vision(pixels).to(self.llm.dtype)  # (n, N', D)
        out, start = [], 0
        for n in counts:
            out.append(tokens[start : start + n] if n else None)
            start += n
        return out

    def _row_features(self, input_ids: torch.Tensor, images: ImagesArg) -> list[torch.Tensor | None]:
        """Projected image tokens per row of `input_ids` (None for a row without images)."""
        features = self.encode_images(images)
        if len(features) not in (0, input_ids.shape[0]):
            raise ValueError(f"images has {len(features)} entries but the batch has {input_ids.shape[0]} rows")
        return features or [None] * input_ids.shape[0]

    # -- adapters ------------------------------------------------------------------------
    def merge_lora(self) -> int:
        """Fold LoRA into the LLM's weights for inference; returns how many layers were merged."""
        merged = merge_lora(self.llm)
        self.lora_targets = []
        return merged

    def save_pretrained(
        self, directory: str, merged: bool = False, tokenizer=None, processor=None, training: dict | None = None
    ):
        """A Hugging Face-style folder that `transformers.AutoModelForImageTextToText.from_pretrained` loads
        (after `import casa_adapter`): the adapter form (default; the base is loaded from where it is
        recorded) or `merged=True` (self-contained). Give `tokenizer` (or `processor`) for
        `AutoProcessor.from_pretrained`; `training` facts go into the model card. See docs/export.md."""
        return save_pretrained(self, directory, merged, tokenizer, processor, training)

    def save_adapter(self, directory: str) -> None:
        """Write the trainable weights (safetensors) and a JSON manifest to `directory`, atomically."""
        save_adapter(self, directory)


def _as_batch(x) -> torch.Tensor | None:
    """One sample's images -> (n, 3, H, W) or None."""
    if x is None:
        return None
    if isinstance(x, (list, tuple)):
        return torch.stack(list(x)) if len(x) else None
    if x.dim() == 3:
        return x.unsqueeze(0)
    if x.dim() != 4:
        raise ValueError(
            f"an images entry must be (n, 3, H, W), (3, H, W) or a list of them; got shape {tuple(x.shape)}"
        )
    return x


__all__ = ["FusionModel", "ImagesArg"]
