"""Streaming sessions: logits equal one full forward, generate continues it, and the state each fusion keeps."""

import itertools

import numpy as np
import pytest
import torch
from PIL import Image

import casa_adapter

from conftest import randomize_new_params, tiny_llm, tiny_tower

FUSIONS = ["casa", "insertion"]


def trained(family, fusion, **kw):
    model = casa_adapter.wrap(
        tiny_llm(family),
        vision=tiny_tower(),
        fusion=fusion,
        init="copy",
        train_marker=True,  # randomized below like the other new parameters
        lora=casa_adapter.LoraSettings(rank=4),
        **kw,
    )
    randomize_new_params(model)
    return model


def script(seed=0):
    """Text, frame A, text, frames B+C at one point, text, frame D, text."""
    gen = torch.Generator().manual_seed(seed)
    text = [torch.randint(1, 90, (n,), generator=gen) for n in (3, 4, 2, 5)]
    frames = [torch.rand(3, 16, 16, generator=gen) for _ in range(4)]
    return text, [frames[:1], frames[1:3], frames[3:]]


def full_sequence(model, text, frames):
    """The interleaved ids (1, T), images, and the positions of each text piece."""
    ids, spans, pos = [text[0]], [range(0, len(text[0]))], len(text[0])
    for piece, group in zip(text[1:], frames):
        ids.append(torch.full((len(group),), model.image_token_id))
        pos += len(group)
        ids.append(piece)
        spans.append(range(pos, pos + len(piece)))
        pos += len(piece)
    return torch.cat(ids)[None], [torch.stack([f for g in frames for f in g])], spans


@pytest.mark.parametrize("fusion", FUSIONS)
@pytest.mark.parametrize("family", ["llama", "qwen3", "gemma2", "gpt2"])
def test_session_logits_equal_full_forward(family, fusion):
    model = trained(family, fusion)
    text, frames = script()
    ids, images, spans = full_sequence(model, text, frames)
    full = model(ids, images=images).logits[0]  # (T, V)
    session = model.stream()
    got = [session.add_text(text[0])]
    for piece, group in zip(text[1:], frames):
        session.add_image(group if len(group) > 1 else group[0])
        got.append(session.add_text(piece))
    for logits, span in zip(got, spans):
        assert logits.shape == (1, len(span), model.config.vocab_size)
        assert torch.allclose(logits[0], full[list(span)], atol=1e-5)


@pytest.mark.parametrize("fusion", FUSIONS)
def test_session_generate_equals_greedy_full_forward(fusion):
    model = trained("llama", fusion)
    text, frames = script(1)
    ids, images, _ = full_sequence(model, text, frames)
    session = model.stream()
    session.add_text(text[0])
    for piece, group in zip(text[1:], frames):
        session.add_image(group)
        session.add_text(piece)
    new = session.generate(max_new_tokens=4)
    for _ in range(4):
        ids = torch.cat([ids, model(ids, images=images).logits[:, -1:].argmax(-1)], 1)
    assert torch.equal(new[0], ids[0, -4:])
    session.add_image(frames[0])  # generate right after a frame: the first token sees it
    assert session.generate(max_new_tokens=2, eos_token_id=int(session.next_token())).shape == (1, 1)


def per_token_kv_bytes(model) -> int:
    cfg = model.config
    head_dim = cfg.hidden_size // cfg.num_attention_heads
    return cfg.num_hidden_layers * 2 * cfg.num_key_value_heads * head_dim * 4  # keys + values, fp32


@pytest.mark.parametrize("fusion", FUSIONS)
def test_state_growth_per_turn(fusion):
    """CASA grows by the turn's text tokens only (marker + text); insertion by image + text tokens."""
    model = trained("llama", fusion)
    session, text_len, N = model.stream(), 5, 16
    sizes = []
    for _ in range(12):
        session.add_image(torch.rand(3, 16, 16))
        session.add_text(torch.randint(1, 90, (text_len,)))
        sizes.append(session.state_bytes())
    grown = {b - a for a, b in itertools.pairwise(sizes)}
    tokens = 1 + text_len if fusion == "casa" else N + text_len
    assert grown == {tokens * per_token_kv_bytes(model)}
    if fusion == "casa":  # the CASA layers hold one window: the image and the window's text, every turn
        assert (
            session.cache.casa_nbytes()
            == len(model.layer_indices)
            * (N + 1 + text_len)
            * per_token_kv_bytes(model)
            // model.config.num_hidden_layers
        )


@pytest.mark.parametrize("fusion", FUSIONS)
def test_add_image_transforms_pil_and_arrays(fusion):
    model = trained("llama", fusion)
    picture = Image.fromarray((np.random.default_rng(0).random((20, 30, 3)) * 255).astype("uint8"))
    logits = []
    for image in (picture, np.asarray(picture), model.vision.transform(picture)):
        session = model.stream()
        session.add_image(image)
        logits.append(session.add_text([5, 6]))
    assert torch.equal(logits[0], logits[1]) and torch.equal(logits[0], logits[2])


def test_generate_needs_something_to_continue():
    session = trained("llama", "casa").stream()
    with pytest.raises(RuntimeError, match="nothing to continue"):
        session.generate(max_new_tokens=2)


@pytest.mark.parametrize("fusion", FUSIONS)
def test_back_to_back_images_open_one_window_like_adjacent_markers(fusion):
    """add_image(b) right after add_image(a) is the same as add_image([a, b]): one window, as in one forward."""
    model = trained("llama", fusion)
    text, frames = script(2)
    ids, images, spans = full_sequence(model, text, frames)
    full = model(ids, images=images).logits[0]  # (T, V)
    session = model.stream()
    got = [session.add_text(text[0])]
    for piece, group in zip(text[1:], frames):
        for frame in group:
            session.add_image(frame)
        got.append(session.add_text(piece))
    for logits, span in zip(got, spans):  # float32 rounding: up to 1.04e-5 on logits of ~0.5, as for add_image([a, b])
        assert torch.allclose(logits[0], full[list(span)], atol=3e-5)
    session.add_image(frames[0][0])
    session.add_image(frames[1][0])
    token = session.next_token()  # generate right after two frames: both markers are fed, one window
    both = torch.cat([ids, torch.full((1, 2), model.image_token_id)], 1)
    want = model(both, images=[torch.cat([images[0], frames[0][0][None], frames[1][0][None]])]).logits[0, -1]
    assert int(token) == int(want.argmax())


@pytest.mark.parametrize("fusion", FUSIONS)
def test_tensors_are_pixels_in_both_paths(fusion):
    """One rule for forward(images=) and add_image: a tensor is taken as it is; a size the tower cannot take is
    a clear error in both, PIL images and arrays are transformed."""
    from casa_adapter.backbone.base_models import tiny_llm as tiny_base

    model = casa_adapter.wrap(tiny_base(), vision="siglip-tiny", pretrained=False, fusion=fusion)
    wrong = torch.rand(3, 32, 32)
    with pytest.raises(ValueError, match=r"takes \(3, 64, 64\) pixels, got \(3, 32, 32\).*PIL image"):
        model(torch.tensor([[5, model.image_token_id, 6]]), images=[wrong[None]])
    with pytest.raises(ValueError, match=r"takes \(3, 64, 64\) pixels"):
        model.stream().add_image(wrong)
    picture = Image.fromarray((np.random.default_rng(1).random((40, 50, 3)) * 255).astype("uint8"))
    session = model.stream()
    session.add_image(picture)  # transformed to (3, 64, 64)
    ready = model.vision.transform(picture)
    direct = model.stream()
    direct.add_image(ready)  # taken as it is
    assert torch.equal(session.add_text([5, 6]), direct.add_text([5, 6]))
