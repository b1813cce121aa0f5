"""Adapter checkpoints: save -> load gives identical logits; wrong base, tampering and truncation fail clearly."""

import json

import pytest
import torch

import casa_adapter
from casa_adapter.adapters.fingerprint import fingerprint
from casa_adapter.adapters.manifest import MANIFEST, WEIGHTS

from conftest import randomize_new_params, tiny_llm, tiny_tower


def batch(model):
    torch.manual_seed(3)
    ids = torch.randint(1, 90, (2, 12))
    ids[:, 2] = model.image_token_id
    ids[0, 7] = model.image_token_id
    return ids, [torch.rand(2, 3, 16, 16), torch.rand(1, 3, 16, 16)]


def trained(family="llama", vision=None, **kw):
    model = casa_adapter.wrap(
        tiny_llm(family), vision=vision or tiny_tower(), every=2, lora=casa_adapter.LoraSettings(rank=4), **kw
    )
    randomize_new_params(model)
    return model


@pytest.mark.parametrize("family", ["llama", "qwen2", "phi3", "gpt2"])
def test_save_load_identical_logits(tmp_path, family):
    model = trained(family, variant="casa")
    ids, images = batch(model)
    want = model(ids, images=images).logits
    model.save_adapter(tmp_path / "adapter")
    loaded = casa_adapter.load_adapter(tmp_path / "adapter", tiny_llm(family), vision=tiny_tower())
    assert torch.equal(loaded(ids, images=images).logits, want)
    assert loaded.layer_indices == model.layer_indices
    assert loaded.trainable_parameter_names() == model.trainable_parameter_names()


def test_default_placement_is_recorded_as_layers(tmp_path, monkeypatch):
    """An adapter built with the default placement loads into the same blocks after the default changes."""
    model = casa_adapter.wrap(tiny_llm("llama", num_hidden_layers=6), vision=tiny_tower())
    assert (model.settings.every, model.settings.layers, model.layer_indices) == (None, [-4, -3, -2, -1], [2, 3, 4, 5])
    model.save_adapter(tmp_path / "a")
    monkeypatch.setattr("casa_adapter.casa.attach.DEFAULT_TOP_BLOCKS", 2)
    assert casa_adapter.wrap(tiny_llm("llama", num_hidden_layers=6), vision=tiny_tower()).layer_indices == [4, 5]
    loaded = casa_adapter.load_adapter(tmp_path / "a", tiny_llm("llama", num_hidden_layers=6), vision=tiny_tower())
    assert loaded.layer_indices == [2, 3, 4, 5]


def test_spec_named_random_tower_is_saved_whole(tmp_path):
    model = trained(vision="siglip-tiny", pretrained=False)
    ids, _ = batch(model)
    images = [torch.rand(2, 3, 64, 64), torch.rand(1, 3, 64, 64)]
    want = model(ids, images=images).logits
    model.save_adapter(tmp_path / "a")
    torch.manual_seed(123)  # a different random tower would be built without the saved weights
    loaded = casa_adapter.load_adapter(tmp_path / "a", tiny_llm())
    assert torch.equal(loaded(ids, images=images).logits, want)


def test_manifest_contents(tmp_path):
    model = trained(variant="shared")
    model.save_adapter(tmp_path / "a")
    manifest = json.loads((tmp_path / "a" / MANIFEST).read_text())
    assert manifest["format_version"] == 2
    names = manifest["tensors"]["names"]
    assert names == manifest["trainable"]["names"]  # a custom tower: only what trains is carried
    assert any(".self_attn.q_proj.lora_A." in n for n in names)  # base-compatible keys, LoRA included
    assert not [n for n in names if ".sa." in n or ".base_layer." in n or ".base." in n]
    assert manifest["base_model"]["fingerprint"] == fingerprint(tiny_llm())
    assert manifest["casa"]["layer_indices"] == model.layer_indices and manifest["casa"]["variant"] == "shared"
    assert manifest["lora"]["rank"] == 4
    assert manifest["trainable"]["counts"] == model.trainable_counts()
    assert manifest["vision"]["kind"] == "custom"
    assert sorted(p.name for p in (tmp_path / "a").iterdir()) == [WEIGHTS, MANIFEST]
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temp dirs left behind
    raw = (tmp_path / "a" / WEIGHTS).read_bytes()  # safetensors (8-byte header length, JSON header), not a pickle
    header = json.loads(raw[8 : 8 + int.from_bytes(raw[:8], "little")])
    assert set(header) - {"__metadata__"} == set(manifest["tensors"]["names"])


def test_wrong_base_names_both_fingerprints(tmp_path):
    model = trained()
    model.save_adapter(tmp_path / "a")
    other = tiny_llm(seed=7)
    with pytest.raises(casa_adapter.AdapterError) as err:
        casa_adapter.load_adapter(tmp_path / "a", other, vision=tiny_tower())
    msg = str(err.value)
    assert model.base_fingerprint in msg and fingerprint(tiny_llm(seed=7)) in msg
    assert not any("Casa" in type(m).__name__ for m in other.modules())  # refused before touching the model


def test_tampered_and_truncated_files(tmp_path):
    model = trained()
    model.save_adapter(tmp_path / "a")
    weights = tmp_path / "a" / WEIGHTS
    data = bytearray(weights.read_bytes())
    data[-5] ^= 0xFF
    weights.write_bytes(bytes(data))
    with pytest.raises(casa_adapter.AdapterError, match="sha256"):
        casa_adapter.load_adapter(tmp_path / "a", tiny_llm(), vision=tiny_tower())
    weights.write_bytes(bytes(data[: len(data) // 2]))
    with pytest.raises(casa_adapter.AdapterError, match="truncated"):
        casa_adapter.load_adapter(tmp_path / "a", tiny_llm(), vision=tiny_tower())
    (tmp_path / "a" / MANIFEST).write_text('{"format": "casa-adapter", "format_')
    with pytest.raises(casa_adapter.AdapterError, match="not valid JSON"):
        casa_adapter.load_adapter(tmp_path / "a", tiny_llm(), vision=tiny_tower())
    with pytest.raises(casa_adapter.AdapterError, match="no manifest.json"):
        casa_adapter.load_adapter(tmp_path / "missing", tiny_llm())


def test_custom_tower_must_be_passed_again(tmp_path):
    model = trained()
    model.save_adapter(tmp_path / "a")
    with pytest.raises(casa_adapter.AdapterError, match="pass it again"):
        casa_adapter.load_adapter(tmp_path / "a", tiny_llm())


def test_overwrite_is_atomic_and_complete(tmp_path):
    model = trained()
    model.save_adapter(tmp_path / "a")
    randomize_new_params(model, seed=9)
    model.save_adapter(tmp_path / "a")  # replaces the old adapter whole
    ids, images = batch(model)
    loaded = casa_adapter.load_adapter(tmp_path / "a", tiny_llm(), vision=tiny_tower())
    assert torch.equal(loaded(ids, images=images).logits, model(ids, images=images).logits)
    assert [p.name for p in tmp_path.iterdir()] == ["a"]


def test_saving_after_merge_is_refused(tmp_path):
    model = trained()
    model.merge_lora()
    with pytest.raises(casa_adapter.AdapterError, match="before merging"):
        model.save_adapter(tmp_path / "a")


def test_custom_tower_with_other_weights_is_refused(tmp_path):
    model = trained()
    model.save_adapter(tmp_path / "a")
    with pytest.raises(casa_adapter.AdapterError, match="vision tower passed has fingerprint"):
        casa_adapter.load_adapter(tmp_path / "a", tiny_llm(), vision=tiny_tower(seed=99))


def test_dtype_is_named_when_the_base_differs_only_in_dtype(tmp_path):
    model = trained()
    model.save_adapter(tmp_path / "a")
    with pytest.raises(casa_adapter.AdapterError, match="float32.*bfloat16"):
        casa_adapter.load_adapter(tmp_path / "a", tiny_llm().to(torch.bfloat16), vision=tiny_tower())
