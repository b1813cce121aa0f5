"""Base-compatible state dicts: a wrapped LLM lists every base key under its own name with the same tensor,
new tensors under their own names; the base's checkpoint loads into it, with LoRA and for both fusions."""

import pytest
import torch
from torch import nn

import casa_adapter
from casa_adapter.backbone.state_keys import keep_base_keys, state_keys

from conftest import randomize_new_params, tiny_llm, tiny_tower

NEW = (".casa.", ".marker", ".lora_")
"""What every key the base does not have must contain."""


def wrapped(family: str, fusion: str = "casa", lora: bool = True, seed: int = 0):
    llm = tiny_llm(family, seed=seed)
    base = {k: v.clone() for k, v in llm.state_dict().items()}
    model = casa_adapter.wrap(
        llm, vision=tiny_tower(), every=2, fusion=fusion, lora=casa_adapter.LoraSettings(rank=4) if lora else None
    )
    return model, base


@pytest.mark.parametrize("lora", [False, True], ids=["plain", "lora"])
@pytest.mark.parametrize("fusion", ["casa", "insertion"])
def test_every_base_key_keeps_its_name_and_tensor(family, fusion, lora):
    model, base = wrapped(family, fusion, lora)
    state = model.llm.state_dict()
    missing = sorted(set(base) - set(state))
    assert not missing, missing[:5]
    for key, value in base.items():
        assert torch.equal(state[key], value), key
    extra = sorted(set(state) - set(base))
    assert all(any(part in k for part in NEW) for k in extra), [k for k in extra if not any(p in k for p in NEW)]
    assert not [k for k in state if ".sa." in k or ".base_layer." in k or "embed_tokens.base." in k]
    if fusion == "casa":
        assert any(".casa." in k for k in extra) and any(k.endswith(".marker") for k in extra)
    assert any(".lora_A." in k for k in extra) == lora


@pytest.mark.parametrize("fusion", ["casa", "insertion"])
def test_the_base_checkpoint_of_another_seed_loads_into_a_wrapped_model(family, fusion):
    """Loading base B's state dict into a model wrapped around A: no unexpected key, and text-only logits are B's."""
    model, _ = wrapped(family, fusion, lora=True)
    randomize_new_params(model)  # LoRA B != 0: text-only logits move off the base
    other = tiny_llm(family, seed=5)
    result = model.llm.load_state_dict(other.state_dict(), strict=False)
    assert result.unexpected_keys == []
    assert all(any(part in k for part in NEW) for k in result.missing_keys), result.missing_keys[:5]
    model.merge_lora()  # fold the (random) LoRA into B's weights: undo it by loading B again
    model.llm.load_state_dict(other.state_dict(), strict=False)
    ids = torch.randint(1, 90, (2, 9))
    with torch.no_grad():
        assert torch.allclose(model(ids).logits, other(ids).logits, atol=1e-5)


def test_full_round_trip_is_strict_and_new_tensors_travel(tmp_path):
    model, _ = wrapped("llama", lora=True)
    randomize_new_params(model)
    saved = {k: v.clone() for k, v in model.state_dict().items()}
    fresh, _ = wrapped("llama", lora=True, seed=3)
    fresh.load_state_dict(saved, strict=True)
    ids = torch.randint(1, 90, (1, 8))
    ids[0, 3] = model.image_token_id
    images = [torch.rand(1, 3, 16, 16)]
    with torch.no_grad():
        assert torch.equal(fresh(ids, images=images).logits, model(ids, images=images).logits)


def test_old_wrapped_names_still_load():
    """Checkpoints written before the hooks (`self_attn.sa.*`, `embed_tokens.base.*`) still load, strictly."""
    model, _ = wrapped("llama", lora=True)
    randomize_new_params(model)
    by_path = dict(model.named_parameters()) | dict(model.named_buffers())
    old_style = {name: t.detach().clone() for name, t in by_path.items() if name in state_keys(model)}
    assert any(".sa." in n for n in old_style) and any("embed_tokens.base." in n for n in old_style)
    fresh, _ = wrapped("llama", lora=True, seed=3)
    result = fresh.load_state_dict(old_style, strict=False)
    assert result.unexpected_keys == []
    for name, t in fresh.named_parameters():
        assert torch.equal(t, by_path[name]), name


def test_state_keys_maps_parameter_paths():
    model, _ = wrapped("llama", lora=True)
    keys = state_keys(model)
    assert (
        keys["llm.model.layers.2.self_attn.sa.q_proj.base_layer.weight"] == "llm.model.layers.2.self_attn.q_proj.weight"
    )
    assert keys["llm.model.layers.2.self_attn.casa.q_proj.weight"] == "llm.model.layers.2.self_attn.casa.q_proj.weight"
    assert keys["llm.model.embed_tokens.base.weight"] == "llm.model.embed_tokens.weight"
    assert model.trainable_state_keys() == [keys[n] for n in model.trainable_parameter_names()]


def test_keep_base_keys_on_a_plain_wrapper():
    class Wrapper(nn.Module):
        def __init__(self):
            super().__init__()
            self.inner, self.extra = nn.Linear(2, 3), nn.Linear(3, 3)
            keep_base_keys(self, "inner")

    outer = nn.Sequential(Wrapper())
    assert list(outer.state_dict()) == ["0.weight", "0.bias", "0.extra.weight", "0.extra.bias"]
    source = nn.Sequential(nn.Linear(2, 3))
    result = outer.load_state_dict(source.state_dict(), strict=False)
    assert result.unexpected_keys == [] and sorted(result.missing_keys) == ["0.extra.bias", "0.extra.weight"]
    assert torch.equal(outer[0].inner.weight, source[0].weight)


def test_every_state_key_is_an_attribute_path():
    """torch.distributed.checkpoint (FSDP2 state dicts) walks each key with getattr: every key must resolve to
    the very tensor the state dict holds."""
    model, _ = wrapped("llama", lora=True)
    for key, tensor in model.state_dict(keep_vars=True).items():
        obj = model
        for part in key.split("."):
            obj = getattr(obj, part)
        assert obj is tensor, key
