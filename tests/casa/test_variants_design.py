"""The paper's design space as `CasaSettings` options: `replace`, `image_ffn`, `history="gist"`.

Each is checked against a dense reference written here with explicit loops over queries and keys
(independent of `KeyLayout` and the kernels), for causality, and for what it adds to the trainable set.
"""

import pytest
import torch

import casa_adapter
from casa_adapter.casa.layer import CasaLayer
from casa_adapter.casa.windows import build_inputs
from casa_adapter.config import CasaSettings

from conftest import randomize_new_params, tiny_llm, tiny_tower

OPTIONS = {
    "parallel": {},
    "replace": {"replace": True, "init": "copy"},
    "ffn_frozen": {"image_ffn": "frozen"},
    "ffn_new": {"image_ffn": "new"},
    "gist": {"history": "gist", "history_size": 2},
    "gist_shared": {"history": "gist", "history_size": 3, "variant": "shared"},
    "all": {"replace": True, "init": "copy", "image_ffn": "new", "history": "gist", "history_size": 2},
}


def model_with(family="llama", **kw):
    model = casa_adapter.wrap(tiny_llm(family), vision=tiny_tower(), every=1, **kw)
    randomize_new_params(model)
    return model


def video(model, seed=0):
    """Text, then 5 frames each followed by text (one frame a window), plus a run of two images at one point."""
    gen = torch.Generator().manual_seed(seed)
    M, parts = model.image_token_id, [torch.randint(1, 90, (3,), generator=gen)]
    for n_img, n_text in ((1, 2), (1, 3), (2, 2), (1, 1), (1, 4)):
        parts += [torch.full((n_img,), M), torch.randint(1, 90, (n_text,), generator=gen)]
    ids = torch.cat(parts)[None]  # (1, T)
    return ids, [torch.rand(int((ids == M).sum()), 3, 16, 16, generator=gen)]


def reference_layer(layer: CasaLayer, x, inputs, position_embeddings):
    """A CASA layer's output by explicit loops: query t of window w attends to w's images, the latest
    `history_size` markers of earlier windows (with history) and w's text up to t."""
    cos, sin = layer._rotary(position_embeddings)
    q, k, v = layer.project_text(x)
    q = layer._heads(q, layer.num_heads, layer.qk_norms()[0])  # (1, H, T, hd)
    if k is not None:
        k, v = layer._heads(k, layer.num_kv_heads, layer.qk_norms()[1]), layer._heads(v, layer.num_kv_heads, None)
    if layer.rope_fn is not None:
        q, k = layer._rope(q, k, cos, sin) if k is not None else (layer._rope(q, q, cos, sin)[0], None)
    ik, iv = layer._image_kv(inputs, cos, sin)  # (1, Hkv, I, hd)
    win, gist, img_win = inputs.text_windows[0], inputs.text_gist[0], inputs.image_windows[0]
    rep = layer.num_heads // layer.num_kv_heads
    out = torch.zeros_like(q)
    for t in range(x.shape[1]):
        w = int(win[t])
        if w == 0:
            continue
        ks = [ik[0, :, j] for j in range(ik.shape[2]) if int(img_win[j]) == w]
        if layer.history_size is not None:
            past = [s for s in range(t) if gist[s] and 0 < int(win[s]) < w][-layer.history_size :]
            ks_h = [(k[0, :, s], v[0, :, s]) for s in past]
        else:
            ks_h = []
        vs = [iv[0, :, j] for j in range(ik.shape[2]) if int(img_win[j]) == w]
        ks, vs = ks + [a for a, _ in ks_h], vs + [b for _, b in ks_h]
        if k is not None:
            ks += [k[0, :, s] for s in range(t + 1) if int(win[s]) == w]
            vs += [v[0, :, s] for s in range(t + 1) if int(win[s]) == w]
        K = torch.stack(ks, 1).repeat_interleave(rep, 0)  # (H, n, hd)
        V = torch.stack(vs, 1).repeat_interleave(rep, 0)
        p = torch.softmax((q[0, :, t, None] * K).sum(-1) * layer.scaling, -1)  # (H, n)
        out[0, :, t] = (p.unsqueeze(-1) * V).sum(1)
    y = out.transpose(1, 2).reshape(1, x.shape[1], -1)
    return layer.project_out(y) * (win > 0)[None, :, None].to(x.dtype)


@pytest.mark.parametrize("name", list(OPTIONS))
def test_each_layer_equals_the_loop_reference(name):
    model = model_with(**OPTIONS[name])
    ids, images = video(model)
    inputs = build_inputs(ids, model.image_token_id, model.encode_images(images))
    seen = {}

    def grab(module, args, kwargs, output):
        seen[module.layer_idx] = (args[0], args[2], output)  # (x, inputs, position_embeddings, cache)

    layers = [m for m in model.modules() if isinstance(m, CasaLayer)]
    hooks = [m.register_forward_hook(grab, with_kwargs=True) for m in layers]
    model(ids, images=images)
    for h in hooks:
        h.remove()
    assert len(seen) == len(layers) == len(model.layer_indices)
    for layer in layers:
        x, pe, got = seen[layer.layer_idx]
        assert torch.allclose(got, reference_layer(layer, x, inputs, pe), atol=1e-5), name


@pytest.mark.parametrize("name", list(OPTIONS))
def test_causal_in_text_and_images(name):
    model = model_with(**OPTIONS[name])
    ids, images = video(model)
    base = model(ids, images=images).logits
    cut = 12  # inside the 4th window: change a later text token and the last image
    later = ids.clone()
    text = torch.arange(ids.shape[1]) > cut
    text &= ids[0] != model.image_token_id
    later[0, text] = (ids[0, text] + 7) % 90 + 1
    moved = [images[0].clone()]
    moved[0][-1] = torch.rand(3, 16, 16)
    out = model(later, images=moved).logits
    assert torch.allclose(out[0, : cut + 1], base[0, : cut + 1], atol=1e-6)
    assert not torch.allclose(out[0, cut + 1 :], base[0, cut + 1 :], atol=1e-4)


def test_replace_keeps_the_base_llm_before_the_first_image_and_only_casa_inside_windows():
    llm = tiny_llm("llama")
    ids = video(casa_adapter.wrap(tiny_llm("llama"), vision=tiny_tower()))[0]
    base = llm(ids.masked_fill(ids >= llm.config.vocab_size, 1)).logits  # prefix positions: no marker yet
    model = model_with(replace=True, init="copy", layers=[0])
    ids, images = video(model)
    assert torch.equal(model(ids, images=images).logits[0, :3], base[0, :3])  # window 0: the base model's path
    attn = model.llm.model.layers[0].self_attn
    got = {}
    h1 = attn.register_forward_hook(lambda m, a, k, o: got.__setitem__("attn", o[0]), with_kwargs=True)
    h2 = attn.casa.register_forward_hook(lambda m, a, k, o: got.__setitem__("casa", o), with_kwargs=True)
    model(ids, images=images)
    windowed = build_inputs(ids, model.image_token_id, model.encode_images(images)).text_windows[0] > 0
    assert torch.equal(got["attn"][0, windowed], got["casa"][0, windowed])
    before = got["attn"].clone()
    changed = ids.clone()
    changed[0, 4:6] = torch.tensor([7, 8])  # the text of window 1, which a replaced block's window 2 does not see
    model(changed, images=images)
    h1.remove(), h2.remove()
    later = build_inputs(ids, model.image_token_id, model.encode_images(images)).text_windows[0] >= 2
    assert torch.allclose(got["attn"][0, later], before[0, later], atol=1e-6)
    assert not torch.allclose(got["attn"][0, 4:6], before[0, 4:6], atol=1e-4)


def test_replace_needs_copy_init_and_gist_needs_text_keys():
    with pytest.raises(ValueError, match="replace=True needs init='copy'"):
        CasaSettings(replace=True)
    with pytest.raises(ValueError, match="variant 'ca' has no text keys"):
        CasaSettings(history="gist", variant="ca")
    with pytest.raises(ValueError, match="image_ffn must be one of"):
        CasaSettings(image_ffn="big")


def test_image_ffn_frozen_adds_nothing_new_copies_the_block_ffn():
    plain = model_with()
    frozen = model_with(image_ffn="frozen")
    new = model_with(image_ffn="new")
    assert frozen.trainable_counts()["casa"] == plain.trainable_counts()["casa"]
    block = new.llm.model.layers[0]
    per_block = sum(p.numel() for p in (*block.mlp.parameters(), *block.post_attention_layernorm.parameters()))
    extra = new.trainable_counts()["casa"] - plain.trainable_counts()["casa"]
    assert extra == per_block * len(new.layer_indices)
    ids, images = video(frozen)
    frozen(ids, images=images, labels=ids.masked_fill(ids == frozen.image_token_id, -100)).loss.backward()
    assert all(p.grad is None for p in frozen.llm.model.layers[0].mlp.parameters())  # the block's FFN stays frozen


@pytest.mark.parametrize(
    "model_type, norm, ffn",
    [
        ("bamba", "pre_ff_layernorm", "feed_forward"),
        ("apertus", "feedforward_layernorm", "mlp"),
        ("mpt", "norm_2", "ffn"),
        ("gemma2", "pre_feedforward_layernorm", "mlp"),
    ],
)
def test_image_ffn_finds_each_familys_norm_and_feed_forward(model_type, norm, ffn):
    """The frozen image FFN calls the block's own norm-before-FFN and FFN (by the family's names), so image
    tokens become x + FFN(norm(x)) with those very modules."""
    from casa_adapter.census.tiny import tiny_base

    model = casa_adapter.wrap(tiny_base(model_type), vision=tiny_tower(), image_ffn="frozen")
    layers = [m for m in model.modules() if isinstance(m, CasaLayer)]
    assert len(layers) == len(model.layer_indices) > 0
    for index, layer in zip(model.layer_indices, layers):
        block = model.decoder_blocks()[index]
        live_norm, live_ffn, post = layer.image_ffn._live
        assert live_norm is getattr(block, norm) and live_ffn is getattr(block, ffn)
        assert post is getattr(block, "post_feedforward_layernorm", None) or isinstance(post, torch.nn.Identity)
        x = torch.randn(1, 3, model.llm.config.hidden_size)
        expected = live_ffn(live_norm(x), x) if model_type == "mpt" else x + post(live_ffn(live_norm(x)))  # MPT adds
        assert torch.equal(layer.image_ffn(x), expected)


def test_image_ffn_refuses_a_block_without_a_feed_forward():
    llm = tiny_llm("llama")
    for block in llm.model.layers:
        block.dense_ffn = block.mlp
        del block.mlp
    with pytest.raises(casa_adapter.UnsupportedModelError, match="image_ffn needs the decoder block's feed-forward"):
        casa_adapter.wrap(llm, vision=tiny_tower(), image_ffn="frozen")


def test_gist_history_refuses_packed_rows_and_takes_one_sample_rows():
    """The collate gives every batch sample_ids (1 = the row's one sample, 0 = padding when unpacked): gist takes a
    row of one sample as without them, and refuses a row packing two."""
    model = model_with(history="gist")
    ids, images = video(model)
    one = torch.ones_like(ids)
    assert torch.equal(model(ids, images=images, sample_ids=one).logits, model(ids, images=images).logits)
    two = one.clone()
    two[:, ids.shape[1] // 2 :] = 2
    with pytest.raises(ValueError, match="does not support packed rows .sample_ids up to 2"):
        model(ids, images=images, sample_ids=two)


def test_options_survive_save_and_load(tmp_path):
    kw = OPTIONS["all"]
    model = model_with(**kw)
    ids, images = video(model)
    want = model(ids, images=images).logits
    model.save_adapter(tmp_path / "a")
    loaded = casa_adapter.load_adapter(tmp_path / "a", tiny_llm("llama"), vision=tiny_tower())
    assert all(getattr(loaded.settings, k) == v for k, v in kw.items())
    assert torch.equal(loaded(ids, images=images).logits, want)
