"""`clip_qkv` (MPT, OLMo, OLMoE): CASA clamps its q, k and v as the family's attention does, so with init='copy'
over a text-only window it equals that attention, and without the clamp it does not."""

import pytest
import torch

import casa_adapter

from conftest import assert_equal_and_needed, causal_bias, text_window_inputs

CLIP = 0.05  # small enough that the tiny random projections' outputs are clamped


def _wrapped_block(model_type: str):
    from casa_adapter.census.checks import CensusTower
    from casa_adapter.census.tiny import tiny_base

    llm = tiny_base(model_type)
    if model_type == "mpt":
        for block in llm.transformer.blocks:
            block.attn.clip_qkv = CLIP
        blocks = llm.transformer.blocks
    else:
        llm.config.clip_qkv = CLIP  # OLMo and OLMoE read it off the config at every forward
        blocks = llm.model.layers
    casa_adapter.wrap(llm, vision=CensusTower(), init="copy", layers=[0])
    return llm, blocks[0]


def _sa(model_type: str, llm, block, x: torch.Tensor) -> torch.Tensor:
    """Block 0's own self-attention over x (1, T, D), causal."""
    T = x.shape[1]
    if model_type == "mpt":
        from transformers.models.mpt.modeling_mpt import build_mpt_alibi_tensor

        masked = ~torch.tril(torch.ones(T, T, dtype=torch.bool))[None, None]  # MPT's mask: True = masked
        alibi = build_mpt_alibi_tensor(llm.config.n_heads, T)  # (H, 1, T)
        return block.attn.sa(x, position_bias=alibi, attention_mask=masked)[0]
    rotary = llm.model.rotary_emb(x, torch.arange(T)[None])
    return block.self_attn.sa(x, attention_mask=causal_bias(T), position_embeddings=rotary)[0]


@pytest.mark.parametrize("model_type", ["mpt", "olmo", "olmoe"])
def test_casa_clamps_qkv_as_its_family_does(model_type):
    torch.manual_seed(0)
    llm, block = _wrapped_block(model_type)
    wrapper = block.attn if model_type == "mpt" else block.self_attn
    assert wrapper.casa.qkv_clip == CLIP
    T = 8
    x = torch.randn(1, T, llm.config.hidden_size) * 4  # large inputs: many q/k/v entries beyond the clip
    inputs = text_window_inputs(T, x.shape[-1])
    rotary = None if model_type == "mpt" else llm.model.rotary_emb(x, torch.arange(T)[None])
    with torch.no_grad():
        sa_out = _sa(model_type, llm, block, x)
        casa_out = wrapper.casa(x, inputs, rotary)
        wrapper.casa.qkv_clip = None
        unclipped = wrapper.casa(x, inputs, rotary)
    assert_equal_and_needed(casa_out, unclipped, sa_out)


def test_no_clip_where_the_attention_never_applies_it():
    """A family whose attention's forward never mentions clip_qkv gets none, whatever its config holds."""
    from casa_adapter.census.checks import CensusTower
    from casa_adapter.census.tiny import tiny_base

    llm = tiny_base("llama")
    llm.config.clip_qkv = CLIP
    casa_adapter.wrap(llm, vision=CensusTower(), init="copy", layers=[0])
    assert llm.model.layers[0].self_attn.casa.qkv_clip is None
