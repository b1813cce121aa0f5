"""`CasaSettings.image_norm` and `train_marker`: what they add or freeze, and what they change in compute."""

import json

import torch

import casa_adapter
from casa_adapter.casa.layer import CasaLayer

from conftest import randomize_new_params, tiny_llm, tiny_tower


def _batch(model):
    torch.manual_seed(3)
    ids = torch.randint(1, 90, (2, 12))
    ids[:, 2] = model.image_token_id
    return ids, [torch.rand(1, 3, 16, 16), torch.rand(1, 3, 16, 16)]


def test_image_norm_makes_casa_blind_to_the_image_token_scale():
    model = casa_adapter.wrap(tiny_llm("llama"), vision=tiny_tower(), every=1)
    layers = [m for m in model.modules() if isinstance(m, CasaLayer)]
    assert layers and all(isinstance(m.image_norm, torch.nn.RMSNorm) for m in layers)
    assert all(torch.equal(m.image_norm.weight, torch.ones_like(m.image_norm.weight)) for m in layers)
    randomize_new_params(model)
    ids, images = _batch(model)
    base = model(ids, images=images).logits
    with torch.no_grad():  # scale the projector's output by 7: RMS-normed image tokens do not change
        last = model.vision.projector[-1]
        last.weight.mul_(7.0)
        last.bias.mul_(7.0)
    assert torch.allclose(model(ids, images=images).logits, base, atol=1e-4)


def test_without_image_norm_the_scale_reaches_the_keys():
    model = casa_adapter.wrap(tiny_llm("llama"), vision=tiny_tower(), every=1, image_norm=False)
    randomize_new_params(model)
    assert all(m.image_norm is None for m in model.modules() if isinstance(m, CasaLayer))
    normed = casa_adapter.wrap(tiny_llm("llama"), vision=tiny_tower(), every=1)
    per_layer = normed.config.hidden_size
    assert normed.trainable_counts()["casa"] - model.trainable_counts()["casa"] == per_layer * len(normed.layer_indices)
    ids, images = _batch(model)
    base = model(ids, images=images).logits
    with torch.no_grad():
        model.vision.projector[-1].weight.mul_(7.0)
        model.vision.projector[-1].bias.mul_(7.0)
    assert not torch.allclose(model(ids, images=images).logits, base, atol=1e-3)


def test_frozen_marker_is_not_trained_and_backward_stops_at_the_lowest_casa_block():
    llm = tiny_llm("llama")
    model = casa_adapter.wrap(llm, vision=tiny_tower(), layers=[-1])  # the default: train_marker=False
    randomize_new_params(model)
    assert model.settings.train_marker is False and model.trainable_counts()["marker"] == 0
    assert not model.llm.get_input_embeddings().marker.requires_grad
    seen = []  # which blocks' inputs take part in autograd
    for i, block in enumerate(model.llm.model.layers):
        block.register_forward_pre_hook(
            lambda mod, args, kwargs, i=i: seen.append((i, args[0].requires_grad)), with_kwargs=True
        )
    ids, images = _batch(model)
    model(ids, images=images, labels=ids.masked_fill(ids == model.image_token_id, -100)).loss.backward()
    assert all(not grad for _, grad in seen)  # the last block's CASA is where the graph starts
    assert model.llm.get_input_embeddings().marker.grad is None
    assert model.trainable_counts()["casa"] > 0 and all(
        dict(model.named_parameters())[n].grad is not None for n in model.trainable_groups()["casa"]
    )


def test_options_survive_save_and_load(tmp_path):
    model = casa_adapter.wrap(tiny_llm("llama"), vision=tiny_tower(), every=2, image_norm=False, train_marker=False)
    randomize_new_params(model)
    ids, images = _batch(model)
    want = model(ids, images=images).logits
    model.save_adapter(tmp_path / "a")
    manifest = json.loads((tmp_path / "a" / "manifest.json").read_text())
    assert manifest["casa"]["image_norm"] is False and manifest["casa"]["train_marker"] is False
    loaded = casa_adapter.load_adapter(tmp_path / "a", tiny_llm("llama"), vision=tiny_tower())
    assert loaded.settings.image_norm is False and loaded.settings.train_marker is False
    assert torch.equal(loaded(ids, images=images).logits, want)


def test_manifest_from_before_image_norm_loads_without_it(tmp_path):
    model = casa_adapter.wrap(tiny_llm("llama"), vision=tiny_tower(), every=2, image_norm=False, train_marker=True)
    randomize_new_params(model)  # an adapter of then: a trained marker, no image norm
    ids, images = _batch(model)
    want = model(ids, images=images).logits
    model.save_adapter(tmp_path / "a")
    path = tmp_path / "a" / "manifest.json"
    manifest = json.loads(path.read_text())
    del manifest["casa"]["image_norm"], manifest["casa"]["train_marker"]
    path.write_text(json.dumps(manifest))
    loaded = casa_adapter.load_adapter(tmp_path / "a", tiny_llm("llama"), vision=tiny_tower())
    assert loaded.settings.image_norm is False and loaded.settings.train_marker is True
    assert torch.equal(loaded(ids, images=images).logits, want)
