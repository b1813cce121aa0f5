"""Streaming with the design options: gist history equals the full forward with a state bounded by
`history_size`, and framing tokens around each image (`pre_image` / `post_image`) in sessions."""

import pytest
import torch

import casa_adapter

from conftest import randomize_new_params, tiny_llm, tiny_tower

GIST = {"history": "gist", "history_size": 2}
ALL = {**GIST, "replace": True, "init": "copy", "image_ffn": "new"}


def trained(**kw):
    model = casa_adapter.wrap(tiny_llm("llama"), vision=tiny_tower(), every=1, **kw)
    randomize_new_params(model)
    return model


def frames(n, seed=0):
    gen = torch.Generator().manual_seed(seed)
    return [torch.rand(3, 16, 16, generator=gen) for _ in range(n)], [
        torch.randint(1, 90, (2 + i % 3,), generator=gen) for i in range(n + 1)
    ]


def full_ids(model, images, text, pre=(), post=()):
    """Interleaved ids (1, T): text[0], then per frame: pre, marker, post, text[i + 1]."""
    parts = [text[0]]
    for piece in text[1:]:
        parts += [torch.tensor([*pre, model.image_token_id, *post]), piece]
    return torch.cat(parts)[None]


@pytest.mark.parametrize("options", [GIST, ALL], ids=["gist", "gist+replace+ffn"])
def test_gist_session_equals_the_full_forward(options):
    model = trained(**options)
    images, text = frames(5)
    full = model(full_ids(model, images, text), images=[torch.stack(images)]).logits[0]
    session = model.stream()
    got = [session.add_text(text[0])]
    for image, piece in zip(images, text[1:]):
        session.add_image(image)
        got.append(session.add_text(piece))
    assert torch.allclose(
        torch.cat(got, 1)[0], full[full_ids(model, images, text)[0] != model.image_token_id], atol=1e-5
    )


def test_gist_sessions_in_one_batch_equal_each_alone_and_generate_continues_the_forward():
    model = trained(**GIST)
    (images, text), (images_b, text_b) = frames(4), frames(3, seed=1)
    alone = model.stream()
    for image, piece in zip(images, text[1:]):
        alone.add_image(image)
        alone.add_text(piece)
    want = alone.generate(max_new_tokens=3)
    streams = model.stream_batch()
    a, b = streams.open(), streams.open()
    for i in range(4):
        a.put_image(images[i])
        a.put_text(text[i + 1])
        if i < 3:
            b.put_image(images_b[i])
            b.put_text(text_b[i + 1])
        streams.step()
    assert torch.equal(streams.generate([a, b], max_new_tokens=3)[a], want)
    ids = full_ids(model, images, [torch.zeros(0, dtype=torch.long), *text[1:]])
    for _ in range(3):
        ids = torch.cat([ids, model(ids, images=[torch.stack(images)]).logits[:, -1:].argmax(-1)], 1)
    assert torch.equal(want[0], ids[0, -3:])


def test_gist_state_is_bounded_by_history_size_not_by_frames():
    model = trained(**GIST)
    images, _ = frames(10)
    session = model.stream()
    casa_bytes = []
    for image in images:
        session.add_image(image)
        session.add_text([5, 6])
        casa_bytes.append(session.cache.casa_nbytes())
    layer = next(iter(session.cache.casa_layers.values()))
    assert layer.gist_keys.shape[2] == 2  # the latest history_size markers
    assert casa_bytes[3] == casa_bytes[-1]  # flat once history_size frames have passed


def test_framing_tokens_go_around_each_image_and_equal_the_framed_full_forward():
    model = trained()
    images, text = frames(3)
    pre, post = [11, 12], [13]
    full = model(full_ids(model, images, text, pre, post), images=[torch.stack(images)]).logits[0]
    session = model.stream(pre_image=pre, post_image=post)
    session.add_text(text[0])
    got = []
    for image, piece in zip(images, text[1:]):
        session.add_image(image)
        got.append(session.add_text(piece))
    n0, step = len(text[0]), len(pre) + 1 + len(post)
    at, want = n0, []
    for piece in text[1:]:
        at += step
        want.append(full[at : at + len(piece)])
        at += len(piece)
    assert all(torch.allclose(g[0], w, atol=1e-5) for g, w in zip(got, want))
    assert session.cached_tokens() == full.shape[0]


def test_framing_is_refused_whole_when_the_cache_limit_is_reached():
    model = trained()
    session = model.stream(max_cache_tokens=4, pre_image=[11, 12], post_image=[13])
    session.add_text([5, 6])
    with pytest.raises(casa_adapter.fusion.stream.CacheLimitError):
        session.add_image(torch.rand(3, 16, 16))
    assert session.queue == []
