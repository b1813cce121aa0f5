"""`CasaModel`: a wrapped LLM, its vision encoder, and the CASA layers between them.

`FusionModel` is what both fusions share: the LLM (modified in place: optional LoRA), the vision
encoder (tower + projector), the settings that built them, the trainable set, image encoding and
adapter saving. `CasaModel` adds CASA layers beside chosen blocks' self-attention and a marker
embedding; `casa_adapter.insertion.InsertionModel` is the token-insertion baseline. Images reach
the CASA layers through one channel: the `CasaInputs` built here and passed down the HF forward
as `casa_inputs`.

Example:
    >>> import torch, casa_adapter
    >>> from transformers import LlamaConfig, LlamaForCausalLM
    >>> llm = LlamaForCausalLM(LlamaConfig(hidden_size=64, intermediate_size=128, num_hidden_layers=2,
    ...     num_attention_heads=4, num_key_value_heads=2, vocab_size=128))
    >>> class Tower(torch.nn.Module):
    ...     embed_dim = 3
    ...     def forward(self, x): return x.flatten(2).transpose(1, 2)[:, :4]  # (B, 4, 3)
    >>> model = casa_adapter.wrap(llm, vision=Tower())
    >>> ids = torch.tensor([[5, model.image_token_id, 7, 8]])
    >>> out = model(ids, images=[torch.rand(1, 3, 2, 2)], labels=ids.masked_fill(ids == model.image_token_id, -100))
    >>> out.logits.shape
    torch.Size([1, 4, 128])
"""

from __future__ import annotations

import inspect
from typing import Any, Callable

import torch
from torch import nn

from casa_adapter.config import CasaSettings, LoraSettings
from casa_adapter.layer import CasaLayer
from casa_adapter.lora import merge_lora
from casa_adapter.windowed import packed_llm_kwargs
from casa_adapter.windows import CasaCache, CasaInputs, build_inputs

ImagesArg = list[Any] | None


class FusionModel(nn.Module):
    """What CASA and token insertion share: LLM + vision encoder, trainable set, image encoding, adapters.

    Subclasses define `image_token_id`, `forward`, `generate` and `stream`, and may add trainable
    groups (`GROUPS`, `_classifier`)."""

    GROUPS: tuple[str, ...] = ("lora", "projector", "vision")
    """Trainable groups, in order; `trainable_groups()` returns exactly these keys."""

    def __init__(self, llm: nn.Module, vision: nn.Module, settings: CasaSettings, layer_indices: list[int],
                 lora: LoraSettings | None, base_fingerprint: str, lora_targets: list[str] | None = None,
                 kernel: str = "auto"):
        super().__init__()
        self.llm, self.vision = llm, vision
        self.settings, self.lora = settings, lora
        self.layer_indices = list(layer_indices)
        self.base_fingerprint = base_fingerprint
        self.lora_targets = lora_targets or []
        self.kernel = kernel
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

    def trainable_counts(self) -> dict[str, int]:
        """Number of trainable scalars per group (and `total`)."""
        params = dict(self.named_parameters())
        counts = {g: sum(params[n].numel() for n in names) for g, names in self.trainable_groups().items()}
        counts["total"] = sum(counts.values())
        return counts

    # -- inputs --------------------------------------------------------------------------
    def encode_images(self, images: ImagesArg) -> list[torch.Tensor | None]:
        """Per sample: images (n, 3, H, W) or a list of (3, H, W) -> projected tokens (n, N', D_llm)."""
        per_row = [_as_batch(x) for x in (images or [])]
        counts = [0 if x is None else x.shape[0] for x in per_row]
        if sum(counts) == 0:
            return [None] * len(per_row)
        pixels = torch.cat([x for x in per_row if x is not None and x.shape[0] > 0]).to(self.device)  # (n, 3, H, W)
        tokens = self.vision(pixels).to(self.llm.dtype)  # (n, N', D)
        out, start = [], 0
        for n in counts:
            out.append(tokens[start:start + n] if n else None)
            start += n
        return out

    def _row_features(self, input_ids: torch.Tensor, images: ImagesArg) -> list[torch.Tensor | None]:
        """Projected image tokens per row of `input_ids` (None for a row without images)."""
        features = self.encode_images(images)
        if len(features) not in (0, input_ids.shape[0]):
            raise ValueError(f"images has {len(features)} entries but the batch has {input_ids.shape[0]} rows")
        return features or [None] * input_ids.shape[0]

    # -- streaming ------------------------------------------------------------------------
    def stream(self):
        """A streaming session (batch 1): `add_image`, `add_text`, `generate`, `state_bytes`.
        See `casa_adapter.stream` and docs/streaming.md."""
        raise NotImplementedError

    # -- adapters ------------------------------------------------------------------------
    def merge_lora(self) -> int:
        """Fold LoRA into the LLM's weights for inference; returns how many layers were merged."""
        merged = merge_lora(self.llm)
        self.lora_targets = []
        return merged

    def save_adapter(self, directory: str) -> None:
        """Write the trainable weights (safetensors) and a JSON manifest to `directory`, atomically."""
        from casa_adapter.checkpoint import save_adapter

        save_adapter(self, directory)


class CasaModel(FusionModel):
    """An HF causal LM with CASA layers and a vision encoder. Build it with `casa_adapter.wrap`."""

    GROUPS = ("casa", "marker", "lora", "projector", "vision")

    @property
    def image_token_id(self) -> int:
        """The id that marks each image insertion point in `input_ids` (one past the embedding table)."""
        return self.llm.get_input_embeddings().marker_id

    def _classifier(self) -> Callable[[str], str | None]:
        casa_prefixes = tuple(f"{n}." for n, m in self.named_modules() if isinstance(m, CasaLayer))
        shared = super()._classifier()

        def classify(name: str) -> str | None:
            if name.startswith(casa_prefixes):
                return "casa"
            if name.endswith(".marker") and name.startswith("llm."):
                return "marker" if self.settings.train_marker else None
            return shared(name)

        return classify

    def casa_inputs(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
                    images: ImagesArg = None, sample_ids: torch.Tensor | None = None) -> CasaInputs | None:
        """The window layout and image tokens for one call; None for text-only input without markers."""
        has_markers = bool((input_ids == self.image_token_id).any())
        if not images and not has_markers:
            return None
        features = self._row_features(input_ids, images)
        return build_inputs(input_ids, self.image_token_id, features, attention_mask, sample_ids)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None, images: ImagesArg = None,
                labels: torch.Tensor | None = None, **kwargs):
        """HF-style causal-LM output with `.loss` (when labels are given) and `.logits` (B, T, V).

        Packed rows (`sample_ids`, see casa_adapter.data.packing): windows and self-attention stay inside
        each sample (`windowed.packed_llm_kwargs`: no 2D mask, no cache, positions restarting per sample)."""
        sample_ids = kwargs.pop("sample_ids", None)
        inputs = self.casa_inputs(input_ids, attention_mask, images, sample_ids)
        if inputs is not None:
            kwargs["casa_inputs"] = inputs
        if sample_ids is not None:
            kwargs.update(packed_llm_kwargs(sample_ids, kwargs.get("position_ids")))
            attention_mask = kwargs.pop("attention_mask")
        return self.llm(input_ids=input_ids, attention_mask=attention_mask, labels=labels, **kwargs)

    @torch.no_grad()
    def generate(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
                 images: ImagesArg = None, **generate_kwargs) -> torch.Tensor:
        """`transformers` generate with images. Image tokens never enter the text KV cache: each CASA
        layer keeps only the current window's image and text keys (in a `CasaCache`)."""
        inputs = self.casa_inputs(input_ids, attention_mask, images)
        expand = generate_kwargs.get("num_beams", 1) * generate_kwargs.get("num_return_sequences", 1)
        if inputs is not None and expand > 1:
            inputs = inputs.expand(expand)
        cache = CasaCache(config=self.llm.config, pending=inputs)
        generate_kwargs[cache_kwarg(self.llm)] = cache
        return self.llm.generate(input_ids=input_ids, attention_mask=attention_mask, **generate_kwargs)

    def stream(self):
        """A streaming session: each `add_image` opens a window; state bounded by the window + text seen."""
        from casa_adapter.stream import CasaStream

        return CasaStream(self)


def cache_kwarg(llm: nn.Module) -> str:
    """transformers renamed `past_key_values` to `cache` (5.2x); use whichever this version's forward names."""
    return "cache" if "cache" in inspect.signature(llm.forward).parameters else "past_key_values"


def _as_batch(x) -> torch.Tensor | None:
    """One sample's images -> (n, 3, H, W) or None."""
    if x is None:
        return None
    if isinstance(x, (list, tuple)):
        return torch.stack(list(x)) if len(x) else None
    if x.dim() == 3:
        return x.unsqueeze(0)
    if x.dim() != 4:
        raise ValueError(f"an images entry must be (n, 3, H, W), (3, H, W) or a list of them; "
                         f"got shape {tuple(x.shape)}")
    return x
