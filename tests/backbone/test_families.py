"""The family table, its structural fallback, and the error for what cannot be wrapped."""

import pytest
import torch
import transformers as tf

import casa_adapter
from casa_adapter.backbone.families import FAMILIES, family_spec

from conftest import (
    FAMILY_CONFIGS,
    TINY,
    assert_equal_and_needed,
    causal_bias,
    text_window_inputs,
    tiny_llm,
    tiny_tower,
)


def test_every_tested_family_is_in_the_table():
    assert set(FAMILY_CONFIGS) <= set(FAMILIES)
    assert len(FAMILY_CONFIGS) >= 8


def test_copy_init_reproduces_self_attention(family):
    """init='copy': CASA q/k/v/o (and norms) equal SA's, so over a text-only window CASA output equals SA's."""
    model = casa_adapter.wrap(tiny_llm(family), vision=tiny_tower(), init="copy", layers=[0])
    spec = family_spec(model.llm)
    wrapper = getattr(model.llm.get_submodule(spec.blocks)[0], spec.attention)
    T, x = 6, torch.randn(1, 6, 64)
    inputs = text_window_inputs(T, 64)
    kwargs = {}
    if spec.rope:
        rotary = model.llm.get_submodule(spec.blocks.rsplit(".", 1)[0]).rotary_emb
        extra = {"layer_type": model.config.layer_types[0]} if family == "gemma3_text" else {}
        kwargs["position_embeddings"] = rotary(x, torch.arange(T).unsqueeze(0), **extra)
    casa_out = wrapper.casa(x, inputs, kwargs.get("position_embeddings"))
    sa_out = wrapper.sa(x, attention_mask=causal_bias(T), **kwargs)[0]
    assert torch.allclose(casa_out, sa_out, atol=1e-5), (casa_out - sa_out).abs().max()


def test_moshi_copy_init_reproduces_its_self_attention():
    """Moshi: q/k/v/o copied from the `.linear` inside each `MoshiLinear`, RoPE from the attention's own `rotary_emb`
    at the position ids it gets (offset here): over a text-only window CASA output equals Moshi's attention."""
    from casa_adapter.census.checks import CensusTower
    from casa_adapter.census.tiny import tiny_base

    llm = tiny_base("moshi")
    casa_adapter.wrap(llm, vision=CensusTower(), init="copy", layers=[0])
    wrapper, T = llm.model.layers[0].self_attn, 6
    x, positions = torch.randn(1, T, llm.config.hidden_size), torch.arange(T).unsqueeze(0) + 5
    inputs = text_window_inputs(T, x.shape[-1], positions)
    with torch.no_grad():
        casa_out = wrapper.casa(x, inputs, wrapper.rotary(x, {"position_ids": positions}, inputs))
        sa_out = wrapper.sa(x, attention_mask=causal_bias(T), position_ids=positions)[0]
    assert torch.allclose(casa_out, sa_out, atol=1e-5), (casa_out - sa_out).abs().max()


def test_llama4_nope_block_tempers_queries_as_its_self_attention_does():
    """Llama 4's NoPE blocks scale each query by log1p(floor((i + 1) / floor_scale)) * attn_scale + 1: with
    init='copy' over a text-only window CASA equals that attention, and differs from it without the scale."""
    from casa_adapter.census.checks import CensusTower
    from casa_adapter.census.tiny import tiny_base

    llm = tiny_base("llama4_text")
    nope = next(i for i, layer in enumerate(llm.model.layers) if not layer.self_attn.use_rope)
    attn = llm.model.layers[nope].self_attn
    attn.floor_scale, attn.attn_scale = 2, 0.5  # the defaults (8192, 0.1) leave short sequences unscaled
    casa_adapter.wrap(llm, vision=CensusTower(), init="copy", layers=[nope])
    wrapper, T = llm.model.layers[nope].self_attn, 8
    assert wrapper.casa.query_temperature == (2.0, 0.5)
    x = torch.randn(1, T, llm.config.hidden_size)
    inputs = text_window_inputs(T, x.shape[-1])
    with torch.no_grad():
        sa_out = wrapper.sa(x, position_embeddings=None, attention_mask=causal_bias(T))[0]
        casa_out = wrapper.casa(x, inputs, None)
        wrapper.casa.query_temperature = None
        untempered = wrapper.casa(x, inputs, None)
    assert_equal_and_needed(casa_out, untempered, sa_out)


def test_structural_fallback_wraps_an_unlisted_family():
    cfg = tf.Starcoder2Config(**{**TINY, "sliding_window": None})
    assert cfg.model_type not in FAMILIES
    torch.manual_seed(0)
    llm = tf.Starcoder2ForCausalLM(cfg).eval()
    ids = torch.randint(1, 90, (1, 10))
    base = llm(ids).logits
    model = casa_adapter.wrap(llm, vision=tiny_tower(), init="copy")
    assert torch.equal(model(ids).logits, base)
    ids[0, 4] = model.image_token_id
    out = model.generate(ids, images=[torch.rand(1, 3, 16, 16)], max_new_tokens=3, do_sample=False)
    assert out.shape == (1, 13)


def test_unsupported_model_names_type_and_what_is_missing():
    cfg = tf.MambaConfig(vocab_size=96, hidden_size=32, num_hidden_layers=2, state_size=4)
    llm = tf.MambaForCausalLM(cfg)
    with pytest.raises(casa_adapter.UnsupportedModelError, match="'mamba'.*no decoder block has a self-attention"):
        casa_adapter.wrap(llm, vision=tiny_tower())


def test_gpt2_has_no_rope_and_ca_variant_has_no_positions():
    model = casa_adapter.wrap(tiny_llm("gpt2"), vision=tiny_tower())
    assert model.llm.transformer.h[0].attn.casa.rope_fn is None
    model = casa_adapter.wrap(tiny_llm("llama"), vision=tiny_tower(), variant="ca")
    assert model.llm.model.layers[0].self_attn.casa.rope_fn is None
    model = casa_adapter.wrap(tiny_llm("llama"), vision=tiny_tower(), variant="casa")
    assert model.llm.model.layers[0].self_attn.casa.rope_fn is not None


def _stablelm():
    cfg = tf.StableLmConfig(
        vocab_size=96,
        hidden_size=64,
        intermediate_size=96,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
    )
    torch.manual_seed(0)
    return tf.StableLmForCausalLM(cfg).eval()


def test_images_reach_blocks_that_drop_kwargs():
    """StableLM's decoder layer does not pass **kwargs to its attention; the channel does not need it."""
    model = casa_adapter.wrap(_stablelm(), vision=tiny_tower(), init="copy")
    ids = torch.randint(4, 90, (1, 8))
    ids[0, 3] = model.image_token_id
    a = model(ids, images=[torch.rand(1, 3, 16, 16)]).logits
    b = model(ids, images=[torch.rand(1, 3, 16, 16)]).logits
    assert torch.equal(a[0, :3], b[0, :3]) and not torch.allclose(a[0, 3:], b[0, 3:])
    assert model.llm.model.layers[0].self_attn.channel.inputs is None  # held for one call only


def test_a_failing_probe_is_refused_and_left_untouched(monkeypatch):
    llm = _stablelm()
    state = {k: v.clone() for k, v in llm.state_dict().items()}
    grads = {n: p.requires_grad for n, p in llm.named_parameters()}
    hooks = len(llm._forward_pre_hooks), len(llm._forward_hooks)

    def fail(*args, **kwargs):
        raise RuntimeError("broken layer")

    monkeypatch.setattr(casa_adapter.casa.layer.CasaLayer, "forward", fail)
    with pytest.raises(casa_adapter.UnsupportedModelError, match="'stablelm'.*failed .RuntimeError: broken layer"):
        casa_adapter.wrap(llm, vision=tiny_tower(), lora=casa_adapter.LoraSettings(rank=2))
    after = llm.state_dict()
    assert set(after) == set(state) and all(torch.equal(state[k], after[k]) for k in state)  # LoRA and CASA removed
    assert grads == {n: p.requires_grad for n, p in llm.named_parameters()}
    assert (len(llm._forward_pre_hooks), len(llm._forward_hooks)) == hooks  # the channel is closed


def test_fallback_without_rope_wraps_opt():
    cfg = tf.OPTConfig(
        vocab_size=96, hidden_size=64, ffn_dim=96, num_hidden_layers=2, num_attention_heads=4, word_embed_proj_dim=64
    )
    llm = tf.OPTForCausalLM(cfg).eval()
    model = casa_adapter.wrap(llm, vision=tiny_tower(), init="copy")
    assert model.llm.model.decoder.layers[0].self_attn.casa.rope_fn is None
    ids = torch.randint(4, 90, (1, 8))
    ids[0, 3] = model.image_token_id
    a = model(ids, images=[torch.rand(1, 3, 16, 16)]).logits
    b = model(ids, images=[torch.rand(1, 3, 16, 16)]).logits
    assert torch.equal(a[0, :3], b[0, :3]) and not torch.allclose(a[0, 3:], b[0, 3:])


def test_not_a_causal_lm_is_a_clear_error():
    with pytest.raises(casa_adapter.UnsupportedModelError, match="no `config.model_type`"):
        casa_adapter.wrap(torch.nn.Linear(2, 2), vision=tiny_tower())
