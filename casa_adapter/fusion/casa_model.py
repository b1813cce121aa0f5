"""`CasaModel`: a wrapped LLM, its vision encoder, and the CASA layers between them.

CASA layers sit beside chosen blocks' self-attention (`casa_adapter.casa.parallel`) and a marker
embedding marks each image's place in `input_ids`. Images reach the CASA layers through one
channel: the `CasaInputs` built here and passed down the HF forward as `casa_inputs`.

Example (a tiny random Llama and the random `siglip-tiny` tower: 64 px, 64 tokens an image):
    >>> import torch, casa_adapter
    >>> from casa_adapter.backbone.base_models import tiny_llm
    >>> model = casa_adapter.wrap(tiny_llm(), vision="siglip-tiny", pretrained=False, every=2)
    >>> M = model.image_token_id                           # 384: one past the tiny vocabulary
    >>> ids = torch.tensor([[5, M, 7, 8, M, M, 9]])        # image A, then B and C at one point
    >>> out = model(ids, images=[torch.rand(3, 3, 64, 64)], labels=ids.masked_fill(ids == M, -100))
    >>> out.logits.shape, out.loss.ndim
    (torch.Size([1, 7, 384]), 0)
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from casa_adapter.backbone.compat import cache_kwarg, packed_llm_kwargs
from casa_adapter.casa.cache import CasaCache
from casa_adapter.casa.layer import CasaLayer
from casa_adapter.casa.windows import CasaInputs, build_inputs
from casa_adapter.fusion.base import FusionModel, ImagesArg
from casa_adapter.fusion.stream.chunks import CasaChunks


class CasaModel(FusionModel):
    """An HF causal LM with CASA layers and a vision encoder. Build it with `casa_adapter.wrap`."""

    GROUPS = ("casa", "marker", "lora", "projector", "vision")
    stream_chunks = CasaChunks

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

    def casa_inputs(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        images: ImagesArg = None,
        sample_ids: torch.Tensor | None = None,
    ) -> CasaInputs | None:
        """The window layout and image tokens for one call; None for text-only input without markers."""
        has_markers = bool((input_ids == self.image_token_id).any())
        if not images and not has_markers:
            return None
        if sample_ids is not None and self.settings.history == "gist" and int(sample_ids.max()) > 1:
            raise ValueError(
                f"history='gist' does not support packed rows (sample_ids up to {int(sample_ids.max())} in a row): "
                "a window's history would cross into the previous sample; train with packing off"
            )
        features = self._row_features(input_ids, images)
        return build_inputs(input_ids, self.image_token_id, features, attention_mask, sample_ids)

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        images: ImagesArg = None,
        labels: torch.Tensor | None = None,
        **kwargs,
    ):
        """HF-style causal-LM output with `.loss` (when labels are given) and `.logits` (B, T, V).

        Packed rows (`sample_ids`, see casa_adapter.data.packing): windows and self-attention stay inside
        each sample (`compat.packed_llm_kwargs`: no 2D mask, no cache, positions restarting per sample)."""
        sample_ids = kwargs.pop("sample_ids", None)
        inputs = self.casa_inputs(input_ids, attention_mask, images, sample_ids)
        if inputs is not None:
            kwargs["casa_inputs"] = inputs
        if sample_ids is not None:
            kwargs.update(packed_llm_kwargs(sample_ids, kwargs.get("position_ids")))
            attention_mask = kwargs.pop("attention_mask")
        return self.llm(input_ids=input_ids, attention_mask=attention_mask, labels=labels, **kwargs)

    @torch.no_grad()
    def generate(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        images: ImagesArg = None,
        **generate_kwargs,
    ) -> torch.Tensor:
        """`transformers` generate with images. Image tokens never enter the text KV cache: each CASA
        layer keeps only the current window's image and text keys (in a `CasaCache`)."""
        inputs = self.casa_inputs(input_ids, attention_mask, images)
        expand = generate_kwargs.get("num_beams", 1) * generate_kwargs.get("num_return_sequences", 1)
        if inputs is not None and expand > 1:
            inputs = inputs.expand(expand)
        cache = CasaCache(config=self.llm.config, pending=inputs)
        generate_kwargs[cache_kwarg(self.llm)] = cache
        if generate_kwargs.get("use_cache") is False:
            raise ValueError("generate(use_cache=False): CASA's window state travels in the cache; decoding is cached")
        generate_kwargs["use_cache"] = True  # where the config says False (MPT), generate re-feeds the whole prefix
        return self.llm.generate(input_ids=input_ids, attention_mask=attention_mask, **generate_kwargs)


__all__ = ["CasaModel"]
