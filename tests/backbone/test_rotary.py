"""Rotary styles and layouts CASA reads as the family does: GPT-J/CodeGen pairs, Llama 4's complex freqs_cis,
CodeGen's sharded [q; v; k], per-layer head counts and blocks that get no positions."""

import torch
from transformers.models.gptj import modeling_gptj
from transformers.models.llama import modeling_llama
from transformers.models.llama4 import modeling_llama4

from casa_adapter.backbone.access import AttentionAccess
from casa_adapter.backbone.families import family_spec
from casa_adapter.backbone.rotary import rope_tables, rotate_pairs
from casa_adapter.census.tiny import tiny_base

B, H, T, RD = 2, 3, 5, 8


def _qk():
    g = torch.Generator().manual_seed(0)
    return torch.randn(B, H, T, RD, generator=g), torch.randn(B, 1, T, RD, generator=g)


def test_pairs_sin_cos_match_gptj():
    q, k = _qk()
    sin, cos = torch.rand(B, T, RD // 2), torch.rand(B, T, RD // 2)
    got_q, got_k = rotate_pairs(q, k, *rope_tables("pairs_sin_cos", (sin, cos)))
    want = lambda x: modeling_gptj.apply_rotary_pos_emb(x.transpose(1, 2), sin, cos).transpose(1, 2)  # (B, h, T, rd)
    assert torch.allclose(got_q, want(q), atol=1e-6) and torch.allclose(got_k, want(k), atol=1e-6)


def test_pairs_complex_match_llama4():
    q, k = _qk()
    freqs = torch.polar(torch.ones(B, T, RD // 2), torch.rand(B, T, RD // 2) * 6)  # (B, T, rd/2) complex
    got_q, got_k = rotate_pairs(q, k, *rope_tables("pairs_complex", freqs))
    want_q, want_k = modeling_llama4.apply_rotary_emb(q.transpose(1, 2), k.transpose(1, 2), freqs)  # (B, T, h, rd)
    assert torch.allclose(got_q, want_q.transpose(1, 2), atol=1e-6)
    assert torch.allclose(got_k, want_k.transpose(1, 2), atol=1e-6)


def test_pairs_differ_from_rotate_half():
    """The styles are not interchangeable: rotate-half with the same angles gives other queries."""
    q, k = _qk()
    cos, sin = torch.rand(B, T, RD // 2), torch.rand(B, T, RD // 2)
    half = modeling_llama.apply_rotary_pos_emb(q, k, torch.cat([cos, cos], -1), torch.cat([sin, sin], -1))[0]
    assert not torch.allclose(rotate_pairs(q, k, cos, sin)[0], half, atol=1e-3)


def test_codegen_copies_split_as_codegen_does():
    llm = tiny_base("codegen")
    attn = llm.transformer.h[0].attn
    access = AttentionAccess(attn, family_spec(llm), llm.config, "codegen")
    x = torch.randn(1, T, llm.config.hidden_size)
    local = attn.embed_dim // attn.mp_num
    q, v, k = attn.qkv_proj(x).view(1, T, -1, 3 * local).split(local, dim=-1)  # CodeGen's own split
    cq, ck, cv, _ = access.copies()
    for copy, want in ((cq, q), (ck, k), (cv, v)):
        assert torch.allclose(copy(x), want.reshape(1, T, -1), atol=1e-6)
    assert access.rotary_dims == attn.rotary_dim < access.head_dim  # partial: the first rotary_dim dims


def test_laguna_heads_come_from_the_per_layer_count():
    llm = tiny_base("laguna")
    attn = llm.model.layers[0].self_attn
    access = AttentionAccess(attn, family_spec(llm), llm.config, "laguna")
    assert access.num_heads == llm.config.num_attention_heads_per_layer[0] != llm.config.num_attention_heads


def test_optional_positions_are_found_and_used_only_where_given():
    spec = family_spec(tiny_base("lara_mini"))
    assert spec.rope and spec.rope_optional
    assert not family_spec(tiny_base("llama")).rope_optional
