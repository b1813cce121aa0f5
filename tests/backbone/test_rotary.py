"""Rotary styles and layouts CASA reads as the family does: GPT-J/CodeGen pairs, Llama 4's complex freqs_cis,
CodeGen's sharded [q; v; k], per-layer head counts and blocks that get no positions."""

import torch
from transformers.models.gptj import modeling_gptj
from transformers.models.llama import modeling_llama
from transformers.models.llama4 import modeling_llama4
from transformers.models.moshi import modeling_moshi

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


def test_moshi_rotary_comes_from_its_position_ids_and_turns_as_moshi_does():
    """Moshi's attention computes (cos, sin) itself from `position_ids`: CASA calls the same `rotary_emb` with the
    position ids the attention got (an offset here), and rotates as Moshi's own apply_rotary_pos_emb."""
    import casa_adapter
    from casa_adapter.census.checks import CensusTower

    llm = tiny_base("moshi")
    model = casa_adapter.wrap(llm, vision=CensusTower(), layers=[-1])
    attention = llm.model.layers[-1].self_attn
    layer = attention.casa
    assert layer.rope_fn is modeling_moshi.apply_rotary_pos_emb and attention.rotary.from_kwargs
    calls = []
    attention.sa.rotary_emb.register_forward_hook(lambda m, args, out: calls.append((args[1], out)))
    ids = torch.tensor([[5, model.image_token_id, 7, 8, 9]])
    positions = torch.arange(5).unsqueeze(0) + 7
    with torch.no_grad():
        model(ids, images=[torch.rand(1, 3, 16, 16)], position_ids=positions)
    (sa_ids, (sa_cos, sa_sin)), (casa_ids, (cos, sin)) = calls  # self-attention's call, then CASA's
    assert torch.equal(sa_ids, positions) and torch.equal(casa_ids, positions)
    assert torch.equal(cos, sa_cos) and torch.equal(sin, sa_sin)
    q, k = torch.randn(1, layer.num_heads, 5, layer.head_dim), torch.randn(1, layer.num_kv_heads, 5, layer.head_dim)
    got_q, got_k = layer._rope(q, k, cos, sin)
    want_q, want_k = modeling_moshi.apply_rotary_pos_emb(q, k, sa_cos, sa_sin)
    assert torch.equal(got_q, want_q) and torch.equal(got_k, want_k)
    assert not torch.allclose(got_q, q)  # the rotation is not the identity at these positions
