"""Attach CASA layers to a loaded LLM (and take them off again).

Each takes the LLM's `FamilySpec`, found once before the LLM is changed (a structural guess made
after wrapping would see `CasaAttention` where the family's attention was).

- `pinned_placement`: the settings with the default placement written out as `layers`, so what is saved
  records where the layers are, whatever a later version's default;
- `casa_blocks`: which decoder blocks get a CASA layer, with every check that can fail (family,
  block list, attention layout, head geometry), before anything is changed;
- `attach_casa`: open the LLM's `CasaChannel`, set a `CasaAttention` (self-attention + CASA layer)
  in each chosen block and the `MarkerEmbedding` in place of the token embedding, then probe with
  one tiny forward that every CASA layer receives the call's `casa_inputs` and runs. With
  `CasaSettings.mixers="all"` a hybrid's block without self-attention gets the same wrapper around its
  non-attention mixer, with a CASA layer of fresh projections (`backbone/mixers.py`);
- `detach_casa`: put the original attention modules and embedding back and close the channel (used
  to roll a failed `wrap()` back, so the user's LLM is left as it was).

`casa_adapter.fusion.build` calls these around the steps both fusions share (freeze, LoRA, vision).
"""

from __future__ import annotations

import dataclasses

import torch
from torch import nn

from casa_adapter.backbone.access import AttentionAccess
from casa_adapter.backbone.families import (
    FamilySpec,
    UnsupportedModelError,
    attention_blocks,
    decoder_blocks,
    get_path,
    set_path,
    text_config,
)
from casa_adapter.backbone.mixers import MIXER_NAMES, MixerAccess, mixer_path, model_rotary
from casa_adapter.backbone.rotary import OwnRotary
from casa_adapter.casa.channel import CasaChannel
from casa_adapter.casa.ffn import ImageFFN, block_ffn
from casa_adapter.casa.marker import MarkerEmbedding
from casa_adapter.casa.parallel import CasaAttention
from casa_adapter.casa.variants import build_layer
from casa_adapter.casa.windows import CasaInputs
from casa_adapter.config import DEFAULT_TOP_BLOCKS, CasaSettings


def layer_indices(n_blocks: int, every: int | None = None, layers: list[int] | None = None) -> list[int]:
    """Blocks that get a CASA layer. `layers` (negatives count from the end) overrides `every`;
    `every=N` takes every N-th block counted down from the last one, so the last block always has one;
    neither: the last `DEFAULT_TOP_BLOCKS` blocks (all of a shallower stack)."""
    if layers is not None:
        out = sorted({i + n_blocks if i < 0 else i for i in layers})
        bad = [i for i in out if not 0 <= i < n_blocks]
        if bad or not out:
            raise ValueError(
                f"layers={layers}: indices must be within [-{n_blocks}, {n_blocks}) (attention blocks) and non-empty"
            )
        return out
    if every is None:
        return list(range(max(0, n_blocks - DEFAULT_TOP_BLOCKS), n_blocks))
    return sorted(range(n_blocks - 1, -1, -every))


def counted_blocks(llm: nn.Module, spec: FamilySpec, settings: CasaSettings) -> list[int]:
    """The decoder-block indices `every` and `layers` count: the attention blocks, or every block with
    `mixers="all"`."""
    return list(range(len(decoder_blocks(llm, spec)))) if settings.mixers == "all" else attention_blocks(llm, spec)


def pinned_placement(llm: nn.Module, spec: FamilySpec, settings: CasaSettings) -> CasaSettings:
    """`settings`, with `layers` written out when neither `every` nor `layers` is set: the last
    `DEFAULT_TOP_BLOCKS` counted blocks as negative indices (all of them in a shallower stack)."""
    if settings.every is not None or settings.layers is not None:
        return settings
    n = len(counted_blocks(llm, spec, settings))
    return dataclasses.replace(settings, layers=list(range(-min(DEFAULT_TOP_BLOCKS, n), 0)))


def casa_blocks(llm: nn.Module, spec: FamilySpec, settings: CasaSettings) -> list[int]:
    """The block indices `settings` place CASA layers in; raises UnsupportedModelError / ValueError
    for what cannot be wrapped, without changing `llm`.

    `every` and `layers` count the attention blocks (in a hybrid stack, the blocks with self-attention), or
    with `mixers="all"` every decoder block."""
    model_type = llm.config.model_type
    if settings.variant == "shared" and spec.layout == "own":
        raise UnsupportedModelError(
            f"model_type {model_type!r}: variant 'shared' calls the block's own q/k/v projections, and this "
            f"attention's ({spec.layout!r} layout) cannot serve as CASA's; use variant='casa' or 'ca'"
        )
    blocks, attending = decoder_blocks(llm, spec), attention_blocks(llm, spec)
    counted = counted_blocks(llm, spec, settings)
    indices = [counted[j] for j in layer_indices(len(counted), settings.every, settings.layers)]
    beside_mixers = [i for i in indices if i not in attending]
    if beside_mixers:
        _check_mixer_settings(model_type, settings, beside_mixers)
    for i in indices:
        if i in beside_mixers:
            mixer_path(blocks[i], spec, model_type)
        else:
            AttentionAccess(get_path(blocks[i], spec.attention), spec, llm.config, model_type)
        if settings.image_ffn != "none":
            block_ffn(blocks[i], model_type)
    return indices


def _check_mixer_settings(model_type: str, settings: CasaSettings, beside_mixers: list[int]) -> None:
    """Settings a CASA layer beside a non-attention mixer cannot take (blocks `beside_mixers`)."""
    where = f"model_type {model_type!r}: blocks {beside_mixers} have no self-attention (mixers='all' puts CASA"
    if settings.variant == "shared":
        raise ValueError(
            f"{where} beside their mixer), so variant 'shared' has no q/k/v projections to share there; use"
            " variant='casa' or 'ca', or mixers='attention'"
        )
    if settings.replace:
        raise ValueError(
            f"{where} beside their mixer), and replace=True would put a freshly initialised CASA layer in place of"
            " the mixer's output; use replace=False, or mixers='attention'"
        )


def attach_casa(llm: nn.Module, spec: FamilySpec, settings: CasaSettings, indices: list[int]) -> None:
    """CASA layers beside blocks `indices` (after `casa_blocks`) and the marker embedding, then the probe."""
    blocks, model_type = decoder_blocks(llm, spec), llm.config.model_type
    attending = set(attention_blocks(llm, spec))
    channel = CasaChannel(llm)
    for i in indices:
        ffn = None if settings.image_ffn == "none" else ImageFFN(blocks[i], model_type, settings.image_ffn)
        if i in attending:
            path = spec.attention
            attn = get_path(blocks[i], path)
            access = AttentionAccess(attn, spec, llm.config, model_type)
            own = spec.rope_source == "position_ids" and access.rope_fn is not None
            rotary = OwnRotary(attn.rotary_emb, from_kwargs=True) if own else None  # Moshi: rotary from position_ids
        else:  # beside a non-attention mixer (mixers="all")
            path = mixer_path(blocks[i], spec, model_type)
            attn, shared = get_path(blocks[i], path), model_rotary(llm, spec)
            access = MixerAccess(attn, spec, llm.config, model_type, shared)
            rotary = None if shared is None else OwnRotary(shared, from_kwargs=False)  # at the call's positions
        layer = build_layer(access, i, settings, ffn)
        set_path(blocks[i], path, CasaAttention(attn, layer, channel, rotary))
    llm.set_input_embeddings(MarkerEmbedding(llm.get_input_embeddings()))
    probe_casa(llm, channel, indices)


def detach_casa(llm: nn.Module, spec: FamilySpec) -> None:
    """Put back every attention module and the token embedding that `attach_casa` wrapped; close the channel."""
    for block in decoder_blocks(llm, spec):
        for path in (spec.attention, *MIXER_NAMES):
            wrapped = get_path(block, path)
            if isinstance(wrapped, CasaAttention):
                wrapped.channel.close()
                set_path(block, path, wrapped.sa)
    embedding = llm.get_input_embeddings()
    if isinstance(embedding, MarkerEmbedding):
        llm.set_input_embeddings(embedding.base)


def probe_casa(llm: nn.Module, channel: CasaChannel, indices: list[int]) -> None:
    """One 2-token forward with an image: every CASA layer must receive the call's `casa_inputs` and run."""
    ref = next(llm.parameters())
    marker = llm.get_input_embeddings().marker_id
    ids = torch.tensor([[0, marker]], device=ref.device)
    one = torch.ones(1, 1, dtype=torch.long, device=ref.device)
    inputs = CasaInputs(
        torch.tensor([[0, 1]], device=ref.device),
        torch.tensor([[0, 1]], device=ref.device),
        torch.zeros(1, 1, text_config(llm.config).hidden_size, device=ref.device, dtype=ref.dtype),
        one,
        one,
    )
    try:
        with torch.no_grad():
            llm(input_ids=ids, casa_inputs=inputs, use_cache=False)
    except Exception as e:
        raise UnsupportedModelError(
            f"model_type {llm.config.model_type!r}: a forward through the CASA layers failed "
            f"({type(e).__name__}: {e}); add a FamilySpec (docs/adding-a-family.md)"
        ) from e
    missed = sorted(set(indices) - channel.readers)
    if missed:
        raise UnsupportedModelError(
            f"model_type {llm.config.model_type!r}: the CASA layers of decoder blocks {missed} were not called "
            f"during a forward, so images cannot reach them; add a FamilySpec (docs/adding-a-family.md)"
        )


__all__ = [
    "attach_casa",
    "casa_blocks",
    "counted_blocks",
    "detach_casa",
    "layer_indices",
    "pinned_placement",
    "probe_casa",
]
