"""wrap() on every family: exact text-only logits, window causality, variants, inits, trainable set."""

import dataclasses

import pytest
import torch

import casa_adapter
from casa_adapter.casa.parallel import CasaAttention

from conftest import randomize_new_params, tiny_llm, tiny_tower


def two_window_batch(model, T=14):
    """Row 0: text, image A at 3, text, image B at 8, text. Row 1: two images at one point (4, 5)."""
    torch.manual_seed(5)
    ids = torch.randint(1, 90, (2, T))
    ids[0, 3] = ids[0, 8] = model.image_token_id
    ids[1, 4] = ids[1, 5] = model.image_token_id
    images = [torch.rand(2, 3, 16, 16), torch.rand(2, 3, 16, 16)]
    return ids, images


def test_text_only_logits_equal_base_exactly(family):
    llm = tiny_llm(family)
    ids = torch.randint(1, 90, (2, 12))
    mask = torch.ones_like(ids)
    mask[1, -3:] = 0
    base = llm(ids, attention_mask=mask).logits
    for init in ("zero", "copy"):
        llm = tiny_llm(family)
        model = casa_adapter.wrap(llm, vision=tiny_tower(), init=init, lora=casa_adapter.LoraSettings(rank=4))
        assert torch.equal(model(ids, attention_mask=mask).logits, base)


def test_zero_init_starts_at_base_with_images(family):
    llm = tiny_llm(family)
    model = casa_adapter.wrap(llm, vision=tiny_tower())
    ids, images = two_window_batch(model)
    with_images = model(ids, images=images).logits
    blank = model(ids, images=[torch.zeros_like(x) for x in images]).logits
    assert torch.equal(with_images, blank)  # CASA output is exactly zero at the start
    copy_model = casa_adapter.wrap(tiny_llm(family), vision=tiny_tower(), init="copy")
    changed = copy_model(ids, images=images).logits
    assert not torch.allclose(changed[:, 4:], with_images[:, 4:], atol=1e-4)  # paper init: images matter at once


@pytest.mark.parametrize("variant", ["casa", "ca", "shared"])
def test_window_causality(family, variant):
    model = casa_adapter.wrap(tiny_llm(family), vision=tiny_tower(), variant=variant, init="copy")
    randomize_new_params(model)
    ids, images = two_window_batch(model)
    ref = model(ids, images=images).logits
    other_b = [images[0].clone(), images[1]]
    other_b[0][1] = torch.rand(3, 16, 16)  # change image B of row 0 (window 2)
    got = model(ids, images=other_b).logits
    assert torch.equal(got[0, :8], ref[0, :8])  # before image B: unchanged
    assert not torch.allclose(got[0, 8:], ref[0, 8:], atol=1e-5)  # window 2 sees image B
    assert torch.equal(got[1], ref[1])  # the other row is untouched
    other_a = [images[0].clone(), images[1]]
    other_a[0][0] = torch.rand(3, 16, 16)  # change image A
    got = model(ids, images=other_a).logits
    assert torch.equal(got[0, :3], ref[0, :3])  # text before the first image: unchanged


def test_last_block_only_window_independence(family):
    model = casa_adapter.wrap(tiny_llm(family), vision=tiny_tower(), layers=[-1], init="copy")
    randomize_new_params(model)
    ids, images = two_window_batch(model)
    ref = model(ids, images=images).logits
    other = [images[0].clone(), images[1]]
    other[0][0] = torch.rand(3, 16, 16)  # image A (window 1)
    got = model(ids, images=other).logits
    assert not torch.allclose(got[0, 3:8], ref[0, 3:8], atol=1e-5)
    assert torch.equal(got[0, 8:], ref[0, 8:])  # window 2 does not depend on image 1


def test_several_images_at_one_point_open_one_window():
    model = casa_adapter.wrap(tiny_llm("llama"), vision=tiny_tower(), init="copy")
    randomize_new_params(model)
    ids, images = two_window_batch(model)
    inputs = model.casa_inputs(ids, images=images)
    assert inputs.text_windows[1].tolist() == [0] * 4 + [1] * 10  # markers 4, 5 -> one window
    assert set(inputs.image_windows[1].tolist()) == {1}  # both images in window 1
    assert inputs.text_windows[0].tolist() == [0] * 3 + [1] * 5 + [2] * 6
    ref = model(ids, images=images).logits
    for k in range(2):  # both images of the window matter
        other = [images[0], images[1].clone()]
        other[1][k] = torch.rand(3, 16, 16)
        assert not torch.allclose(model(ids, images=other).logits[1, 4:], ref[1, 4:], atol=1e-6)
    # image keys share the window-start position, so their order inside one window does not matter
    swapped = [images[0], images[1].flip(0)]
    assert torch.allclose(model(ids, images=swapped).logits, ref, atol=1e-5)


def test_marker_image_count_mismatch_is_clear():
    model = casa_adapter.wrap(tiny_llm("llama"), vision=tiny_tower())
    ids, images = two_window_batch(model)
    with pytest.raises(ValueError, match="2 image markers but 1 images"):
        model(ids, images=[images[0][:1], images[1]])


def test_placement_every_and_layers():
    llm = tiny_llm("llama", num_hidden_layers=6)
    model = casa_adapter.wrap(llm, vision=tiny_tower(), every=4)
    assert model.layer_indices == [1, 5]
    wrapped = [i for i, b in enumerate(llm.model.layers) if isinstance(b.self_attn, CasaAttention)]
    assert wrapped == [1, 5]
    model = casa_adapter.wrap(tiny_llm("llama", num_hidden_layers=6), vision=tiny_tower(), layers=[0, -1])
    assert model.layer_indices == [0, 5]
    with pytest.raises(ValueError, match="within"):
        casa_adapter.wrap(tiny_llm("llama"), vision=tiny_tower(), layers=[7])
    # neither set: the last DEFAULT_TOP_BLOCKS (4) blocks, all of a shallower stack; every=1: all blocks
    assert casa_adapter.wrap(tiny_llm("llama", num_hidden_layers=6), vision=tiny_tower()).layer_indices == [2, 3, 4, 5]
    shallow = casa_adapter.wrap(tiny_llm("llama"), vision=tiny_tower())
    assert (shallow.layer_indices, shallow.settings.layers) == ([0, 1, 2], [-3, -2, -1])
    every = casa_adapter.wrap(tiny_llm("llama", num_hidden_layers=6), vision=tiny_tower(), every=1)
    assert every.layer_indices == [0, 1, 2, 3, 4, 5]


def test_wrapping_twice_is_refused():
    llm = tiny_llm("llama")
    casa_adapter.wrap(llm, vision=tiny_tower())
    with pytest.raises(ValueError, match="already holds CASA"):
        casa_adapter.wrap(llm, vision=tiny_tower())


def test_settings_object_and_options_build_the_same_model():
    settings = casa_adapter.CasaSettings(every=2, variant="ca", init="copy", kernel="windowed", train_marker=False)
    whole = casa_adapter.wrap(tiny_llm("llama"), vision=tiny_tower(), casa=settings)
    spread = casa_adapter.wrap(
        tiny_llm("llama"),
        vision=tiny_tower(),
        every=2,
        variant="ca",
        init="copy",
        kernel="windowed",
        train_marker=False,
    )
    assert whole.settings == spread.settings == settings
    assert whole.layer_indices == spread.layer_indices == [0, 2]
    ids, images = two_window_batch(whole)
    assert torch.equal(whole(ids, images=images).logits, spread(ids, images=images).logits)
    overridden = casa_adapter.wrap(tiny_llm("llama"), vision=tiny_tower(), casa=settings, every=1)
    assert overridden.settings.every == 1 and overridden.settings.variant == "ca" and settings.every == 2


def test_unknown_option_names_the_valid_ones():
    with pytest.raises(TypeError, match="unknown option.*'evry'.*CasaSettings fields.*every.*vision options"):
        casa_adapter.wrap(tiny_llm("llama"), vision=tiny_tower(), evry=2)
    with pytest.raises(ValueError, match="variant"):
        casa_adapter.wrap(tiny_llm("llama"), vision=tiny_tower(), variant="nope")


@pytest.mark.parametrize("where", ["vision", "after_attach"])
@pytest.mark.parametrize("fusion", ["casa", "insertion"])
def test_a_failed_build_leaves_the_llm_as_it_was(fusion, where, monkeypatch):
    """The vision encoder fails (before the LLM is touched), or a failure comes after LoRA and the fusion were
    attached: the LLM is as it was either way, and can be wrapped afterwards."""
    from casa_adapter.fusion import build

    llm = tiny_llm("llama")
    llm.lm_head.weight.requires_grad_(False)  # a non-default flag must come back too
    before = {k: v.clone() for k, v in llm.state_dict().items()}
    grads = {n: p.requires_grad for n, p in llm.named_parameters()}
    modules = [type(m).__name__ for m in llm.modules()]
    options = {"unfreeze_last": 1} if where == "vision" else {}  # the conv tower has no `blocks`: refused
    if where == "after_attach":
        attach = build.FUSIONS[fusion].attach

        def attach_then_fail(*args):
            attach(*args)
            raise ValueError("unfreeze_last (a failure injected after attach)")

        monkeypatch.setitem(build.FUSIONS, fusion, dataclasses.replace(build.FUSIONS[fusion], attach=attach_then_fail))
    with pytest.raises(ValueError, match="unfreeze_last"):
        casa_adapter.wrap(llm, vision=tiny_tower(), fusion=fusion, lora=casa_adapter.LoraSettings(rank=2), **options)
    assert [type(m).__name__ for m in llm.modules()] == modules
    assert {n: p.requires_grad for n, p in llm.named_parameters()} == grads
    assert all(torch.equal(v, before[k]) for k, v in llm.state_dict().items()) and set(llm.state_dict()) == set(before)
    monkeypatch.undo()
    casa_adapter.wrap(llm, vision=tiny_tower(), fusion=fusion)  # and it can be wrapped afterwards


def test_a_seed_gives_the_same_vision_init_whatever_the_options():
    """The vision encoder is built before anything else draws random numbers, so arms of an A/B comparison with
    the same seed start from the same tower and projector."""

    def vision_after(**options):
        llm = tiny_llm("llama", num_hidden_layers=6)
        torch.manual_seed(0)
        model = casa_adapter.wrap(llm, vision="siglip-tiny", pretrained=False, **options)
        return {n: p.detach().clone() for n, p in model.vision.named_parameters()}

    want = vision_after()
    for options in (
        {"every": 1},
        {"variant": "shared"},
        {"variant": "ca", "init": "copy"},
        {"fusion": "insertion"},
        {"lora": casa_adapter.LoraSettings(rank=4)},
        {"image_ffn": "new"},
    ):
        got = vision_after(**options)
        assert all(torch.equal(got[n], want[n]) for n in want), options
