"""CASA beside a hybrid stack's non-attention mixers (`CasaSettings.mixers="all"`): mamba (Bamba, Jamba, Nemotron-H),
gated delta-net linear attention (Qwen3-Next), short convolution (LFM2-MoE), and Nemotron-H's MoE block, whose
mixer is handed no cache (the channel carries it)."""

import pytest
import torch

import casa_adapter
from casa_adapter.backbone.rotary import OwnRotary
from casa_adapter.casa.parallel import CasaAttention
from casa_adapter.census.checks import CensusTower, check_type
from casa_adapter.census.tiny import tiny_base

from conftest import randomize_new_params


@pytest.mark.parametrize(
    "model_type, layers",
    [("bamba", [0]), ("jamba", [0]), ("qwen3_next", [0]), ("lfm2_moe", [0]), ("nemotron_h", [0, 1]), ("bamba", None)],
    ids=["bamba-mamba", "jamba-mamba", "qwen3_next-deltanet", "lfm2_moe-conv", "nemotron_h-mamba+moe", "bamba-all"],
)
def test_census_checks_hold_beside_mixers(model_type, layers):
    """With CASA only beside mixers (or in every block): text-only logits equal the base at zero init, logits
    before the image do not depend on it and after it do, cached generate equals greedy full forwards, and one
    AdamW step moves CASA and leaves every frozen weight bit-identical (`casa_adapter.census.checks`)."""
    outcome = check_type(model_type, mixers="all", layers=layers)
    assert outcome.status == "pass", (outcome.check, outcome.detail)


def _wrap(model_type: str, **options):
    llm = tiny_base(model_type)
    return llm, casa_adapter.wrap(llm, vision=CensusTower(), mixers="all", **options)


def _prompt(model):
    ids = torch.randint(1, 90, (1, 9), generator=torch.Generator().manual_seed(0))
    ids[0, 3] = model.image_token_id
    return ids, [torch.rand(1, 3, 16, 16, generator=torch.Generator().manual_seed(1))]


@pytest.mark.parametrize("model_type", ["bamba", "jamba"])
def test_layers_beside_mixers_are_fresh_zero_started_and_keep_the_base_keys(model_type):
    base_keys = set(tiny_base(model_type).state_dict())
    llm, model = _wrap(model_type)
    assert model.layer_indices == [0, 1, 2, 3]  # every block, not only the attention blocks 1 and 3
    wrapper = llm.model.layers[0].mamba
    assert isinstance(wrapper, CasaAttention) and type(wrapper.sa).__name__.endswith("Mixer")
    layer, cfg = wrapper.casa, llm.config
    head_dim = cfg.hidden_size // cfg.num_attention_heads
    assert layer.q_proj.weight.shape == (cfg.num_attention_heads * head_dim, cfg.hidden_size)
    assert layer.k_proj.weight.shape == (cfg.num_key_value_heads * head_dim, cfg.hidden_size)
    assert not layer.o_proj.weight.any() and layer.q_norm is None
    if model_type == "bamba":  # RoPE from the model's rotary module, at the call's sequence positions
        assert wrapper.rotary == OwnRotary(llm.model.rotary_emb, from_kwargs=False) and layer.rope_fn is not None
    else:  # Jamba uses no RoPE anywhere
        assert wrapper.rotary is None and layer.rope_fn is None
    keys = set(llm.state_dict())
    assert {k for k in keys if ".casa." not in k and not k.endswith(".marker")} == base_keys
    assert "model.layers.0.mamba.casa.q_proj.weight" in keys


def test_the_block_sees_mixer_plus_casa():
    llm, model = _wrap("qwen3_next", layers=[0])
    randomize_new_params(model)
    wrapper, seen = llm.model.layers[0].linear_attn, {}
    for name, module in (("mixer", wrapper.sa), ("casa", wrapper.casa), ("both", wrapper)):
        module.register_forward_hook(lambda m, args, out, name=name: seen.__setitem__(name, out))
    ids, images = _prompt(model)
    with torch.no_grad():
        model(ids, images=images)
    assert seen["casa"].abs().max() > 1e-3
    assert torch.equal(seen["both"], seen["mixer"] + seen["casa"])


def test_rotary_beside_a_mixer_is_the_attention_blocks_rotary():
    """Qwen3-Next: the (cos, sin) tables the CASA layer beside the delta-net gets are those the model passes its
    attention block (its positions are the call's sequence index, here 0..T-1)."""
    llm, model = _wrap("qwen3_next", layers=[0, 3])
    tables = {}
    for i in (0, 3):
        casa = llm.model.layers[i].linear_attn.casa if i == 0 else llm.model.layers[i].self_attn.casa
        casa.register_forward_pre_hook(lambda m, args, i=i: tables.__setitem__(i, args[2]))
    ids, images = _prompt(model)
    with torch.no_grad():
        model(ids, images=images)
    assert all(torch.equal(a, b) for a, b in zip(tables[0], tables[3]))


def test_save_load_round_trip_gives_identical_logits(tmp_path):
    model = _wrap("bamba")[1]
    randomize_new_params(model)
    ids, images = _prompt(model)
    with torch.no_grad():
        want = model(ids, images=images).logits
    model.save_adapter(tmp_path / "adapter")
    loaded = casa_adapter.load_adapter(tmp_path / "adapter", tiny_base("bamba"), vision=CensusTower())
    assert loaded.settings.mixers == "all" and loaded.layer_indices == model.layer_indices
    with torch.no_grad():
        assert torch.equal(loaded(ids, images=images).logits, want)


def test_session_logits_equal_the_full_forward():
    model = _wrap("bamba", layers=[0])[1]
    randomize_new_params(model)
    ids, images = _prompt(model)
    with torch.no_grad():
        full = model(ids, images=images).logits[0]  # (T, V)
        session = model.stream()
        first = session.add_text(ids[0, :3])
        session.add_image(images[0][0])
        rest = session.add_text(ids[0, 4:])
    assert torch.allclose(first[0], full[:3], atol=1e-5) and torch.allclose(rest[0], full[4:], atol=1e-5)


def test_an_old_manifest_loads_with_casa_in_attention_blocks_only():
    from casa_adapter.adapters.manifest import casa_settings

    assert casa_settings({"casa": {"every": 2, "variant": "ca"}}).mixers == "attention"


@pytest.mark.parametrize(
    "options, match",
    [
        (dict(variant="shared"), r"'bamba': blocks \[0, 2\] have no self-attention.*no q/k/v projections to share"),
        (dict(replace=True, init="copy"), r"'bamba': blocks \[0, 2\] have no self-attention.*replace=True"),
    ],
    ids=["shared", "replace"],
)
def test_what_a_mixer_block_cannot_take_is_refused(options, match):
    llm = tiny_base("bamba")
    with pytest.raises(ValueError, match=match):
        casa_adapter.wrap(llm, vision=CensusTower(), mixers="all", **options)
    assert not any(isinstance(m, CasaAttention) for m in llm.modules())  # refused before touching it
    casa_adapter.wrap(llm, vision=CensusTower(), mixers="attention", **options)  # the attention blocks take it


def test_mixers_is_validated_and_changes_nothing_without_a_hybrid():
    with pytest.raises(ValueError, match="CasaSettings.mixers must be one of"):
        casa_adapter.CasaSettings(mixers="ssm")
    assert _wrap("llama")[1].layer_indices == [0, 1, 2, 3]
