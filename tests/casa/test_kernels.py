"""The windowed, flash-varlen and auto CASA kernels against the dense reference: forward and backward
over random window layouts, the plan's padding bounds, auto's dispatch, and a wrapped model end to end."""

import pytest
import torch

import casa_adapter
import casa_adapter.casa.kernels as kernels
import casa_adapter.casa.kernels.flash as flash
import casa_adapter.casa.kernels.plan as plan
import casa_adapter.casa.kernels.windowed as windowed
from casa_adapter.bench.kernel import make_layout
from casa_adapter.casa.kernels import KERNELS, KeyLayout, reference_casa_attention

from conftest import randomize_new_params, tiny_llm, tiny_tower


def random_rows(B: int, seed: int, text_keys: bool = True, decode: bool = False):
    """Random packed rows. Per row: optional text before any image (window 0), then 0-4 windows, each opened by
    0-2 images of 1-7 tokens (0 = text without image keys) and holding 0-40 text tokens (0 = images without
    queries); rows are padded. Keys are [image tokens ; text tokens] (text keys only when `text_keys`).
    `decode`: each row's query is its last token, the keys stay (a generate step: cached keys + the new token)."""
    g = torch.Generator().manual_seed(seed)
    pick = lambda options: options[int(torch.randint(len(options), (1,), generator=g))]
    rows = []
    for _ in range(B):
        t, texts, images = 0, [(0, i) for i in range(pick([0, 0, 2]))], []
        t = len(texts)
        for w in range(1, pick([0, 1, 2, 4]) + 1):
            images += [(w, t)] * sum(pick([1, 3, 7]) for _ in range(pick([0, 1, 1, 2])))
            texts += [(w, t + i) for i in range(pick([0, 1, 2, 5, 40]))]
            t = len(texts)
        rows.append((texts or [(0, 0)], images))
    if decode:
        rows = [([texts[-1]], images + (texts if text_keys else [])) for texts, images in rows]
    return _pad(rows, text_keys and not decode)


def _pad(rows, text_keys: bool):
    """Rows of (queries, image keys) as (window, index) lists -> a KeyLayout of padded (B, Tq) and (B, K) tensors."""
    Tq = max(len(q) for q, _ in rows)
    I = max(len(i) for _, i in rows)
    qw, qi = torch.zeros(len(rows), Tq, dtype=torch.long), torch.zeros(len(rows), Tq, dtype=torch.long)
    kw, ki = torch.zeros(len(rows), I, dtype=torch.long), torch.zeros(len(rows), I, dtype=torch.long)
    for b, (queries, images) in enumerate(rows):
        for j, (w, i) in enumerate(queries):
            qw[b, j], qi[b, j] = w, i
        for j, (w, i) in enumerate(images):
            kw[b, I - len(images) + j], ki[b, I - len(images) + j] = w, i  # left-padded, like a cache
    if text_keys:
        kw, ki = torch.cat([kw, qw], 1), torch.cat([ki, qi], 1)
    return KeyLayout(qw, qi, kw, ki)


def run(kernel, layout, H=4, Hkv=2, hd=8, dtype=torch.float32, seed=0):
    """Output and (q, k, v) gradients of one kernel on random tensors for `layout`."""
    torch.manual_seed(seed)
    (B, Tq), K = layout.q_window.shape, layout.k_window.shape[1]
    q = torch.randn(B, H, Tq, hd, dtype=dtype, requires_grad=True)
    k, v = (torch.randn(B, Hkv, K, hd, dtype=dtype, requires_grad=True) for _ in range(2))
    out = kernel(q, k, v, layout, 0.3)
    loss = (out * torch.randn(out.shape, dtype=dtype)).sum()
    grads = torch.autograd.grad(loss, (q, k, v), allow_unused=True, materialize_grads=True)
    return out, grads


def assert_matches_reference(kernel, layout, atol=1e-5, **kw):
    out, grads = run(kernel, layout, **kw)
    want, want_grads = run(reference_casa_attention, layout, **kw)
    assert torch.allclose(out, want, atol=atol), (out - want).abs().max()
    for got, ref in zip(grads, want_grads):
        assert torch.allclose(got, ref, atol=atol), (got - ref).abs().max()
    return out, grads


@pytest.mark.parametrize("seed", range(8))
@pytest.mark.parametrize("text_keys", [True, False], ids=["casa", "image-keys-only"])
@pytest.mark.parametrize("name", ["windowed", "auto"])
def test_forward_and_backward_match_reference(name, text_keys, seed):
    layout = random_rows(B=4, seed=seed, text_keys=text_keys)
    out, (gq, _, _) = assert_matches_reference(KERNELS[name], layout)
    no_key = layout.mask().any(-1).logical_not()  # (B, Tq)
    assert no_key.any()  # every layout has queries without any key (window 0, padding, no image keys)
    assert torch.equal(out.transpose(1, 2)[no_key], torch.zeros_like(out.transpose(1, 2)[no_key]))
    assert torch.equal(gq.transpose(1, 2)[no_key], torch.zeros_like(gq.transpose(1, 2)[no_key]))


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("name", ["windowed", "auto"])
def test_decode_step_matches_reference(name, seed):
    """One query per row against left-padded cached keys, as in `generate`."""
    assert_matches_reference(KERNELS[name], random_rows(B=5, seed=seed, decode=True))


@pytest.mark.parametrize("chunk, slack", [(1, 1.0), (3, 1.0), (5, 1.25), (10_000, 100.0)])
def test_chunking_and_bucketing_do_not_change_results(monkeypatch, chunk, slack):
    monkeypatch.setattr(plan, "CHUNK", chunk)
    monkeypatch.setattr(plan, "SLACK", slack)
    for seed in range(3):
        assert_matches_reference(windowed.windowed_casa_attention, random_rows(B=3, seed=seed))


def test_windows_of_very_different_lengths_and_heads_without_gqa():
    layout = make_layout(rows=2, windows=3, image=5, text=150, seed=1)  # text 75..225 a window: several chunks
    layout.q_window[0, :1] = 0  # one query outside any window
    assert_matches_reference(windowed.windowed_casa_attention, layout, H=3, Hkv=3)
    one = random_rows(B=1, seed=0)
    assert_matches_reference(windowed.windowed_casa_attention, one, H=2, Hkv=1)


def test_empty_layouts_give_zeros():
    B, Tq, K = 2, 5, 6
    nothing = KeyLayout(
        torch.zeros(B, Tq, dtype=torch.long),
        torch.arange(Tq).expand(B, Tq),
        torch.zeros(B, K, dtype=torch.long),
        torch.arange(K).expand(B, K),
    )
    images_only = KeyLayout(
        nothing.q_window, nothing.q_index, torch.ones(B, K, dtype=torch.long), nothing.k_index
    )  # keys, no queries
    q, k = torch.randn(B, 4, Tq, 8), torch.randn(B, 2, K, 8)
    for layout in (nothing, images_only):
        out = windowed.windowed_casa_attention(q, k, k, layout, 0.3)
        assert torch.equal(out, torch.zeros_like(q))


@pytest.mark.parametrize("name", ["windowed", "auto"])
def test_bf16_close_to_fp32_reference(name):
    layout = random_rows(B=3, seed=4)
    got, _ = run(KERNELS[name], layout, dtype=torch.bfloat16)
    want, _ = run(reference_casa_attention, layout)
    assert got.dtype == torch.bfloat16
    assert torch.allclose(got.float(), want, atol=3e-2), (got.float() - want).abs().max()


def test_plan_is_made_once_per_layout_and_shared_by_its_calls(monkeypatch):
    """The CASA layers of one forward share their KeyLayout, so the windowed plan is made once, not per layer."""
    made = []
    monkeypatch.setattr(windowed, "plan_windows", lambda layout: made.append(layout) or plan.plan_windows(layout))
    layout = random_rows(B=3, seed=1)
    q, k = torch.randn(3, 4, layout.q_window.shape[1], 8), torch.randn(3, 2, layout.k_window.shape[1], 8)
    first = windowed.windowed_casa_attention(q, k, k, layout, 0.3)
    again = windowed.windowed_casa_attention(q, k, k, layout, 0.3)
    assert len(made) == 1 and torch.equal(first, again)
    windowed.windowed_casa_attention(
        q, k, k, KeyLayout(layout.q_window, layout.q_index, layout.k_window, layout.k_index), 0.3
    )
    assert len(made) == 2  # another layout object: planned afresh, no state outside it


def test_plan_never_builds_the_dense_mask_and_bounds_padding():
    layout = make_layout(rows=2, windows=16, image=64, text=32)
    (B, Tq), K = layout.q_window.shape, layout.k_window.shape[1]
    made = plan.plan_windows(layout)
    mask_elements = sum(m.numel() for m in made.masks if m is not None)
    assert mask_elements < B * Tq * K / 8
    chunks = plan.chunk_windows(layout, plan.CHUNK)
    blocks = int((chunks.lq * chunks.lk).sum())  # each chunk's own block: allowed pairs + its causal corner
    assert blocks <= 1.25 * int(layout.mask().sum())
    assert sum(n * lq * lk for n, lq, lk in made.shapes) <= plan.SLACK * blocks  # bucket padding


def fake_flash_varlen(q, k, v, cu_q, cu_k, max_q, max_k, softmax_scale, causal):
    """`flash_attn_varlen_func` semantics in plain torch: per sequence, causal aligned bottom-right."""
    out = torch.zeros_like(q)
    for s in range(cu_q.numel() - 1):
        qs = q[cu_q[s] : cu_q[s + 1]].transpose(0, 1)  # (H, lq, hd)
        rep = q.shape[1] // k.shape[1]
        ks, vs = (x[cu_k[s] : cu_k[s + 1]].transpose(0, 1).repeat_interleave(rep, 0) for x in (k, v))  # (H, lk, hd)
        scores = qs @ ks.transpose(-1, -2) * softmax_scale  # (H, lq, lk)
        lq, lk = scores.shape[-2:]
        if causal:
            allowed = torch.arange(lk) <= torch.arange(lq).unsqueeze(-1) + lk - lq  # (lq, lk)
            scores = scores.masked_fill(~allowed, float("-inf"))
        out[cu_q[s] : cu_q[s + 1]] = (scores.softmax(-1).nan_to_num(0.0) @ vs).transpose(0, 1)
    return out


@pytest.mark.parametrize("text_keys, decode, causal", [(True, False, True), (False, False, False), (True, True, True)])
def test_flash_varlen_layout_matches_reference(monkeypatch, text_keys, decode, causal):
    monkeypatch.setattr(flash, "_varlen", lambda: fake_flash_varlen)
    for seed in range(4):
        layout = random_rows(B=4, seed=seed, text_keys=text_keys, decode=decode)
        assert flash.varlen_layout(layout)[-1] is causal
        assert_matches_reference(flash.flash_casa_attention, layout)


def test_flash_falls_back_to_windowed_on_other_layouts(monkeypatch):
    monkeypatch.setattr(flash, "_varlen", lambda: pytest.fail("the varlen kernel cannot express this layout"))
    rows = random_rows(B=3, seed=2)
    layout = KeyLayout(rows.q_window, rows.q_index, rows.k_window, rows.k_index.flip(-1))  # indices no longer line up
    assert flash.varlen_layout(layout) is None
    assert_matches_reference(flash.flash_casa_attention, layout)


def test_auto_dispatch(monkeypatch):
    calls = []
    for name in ("flash_casa_attention", "sdpa_casa_attention", "windowed_casa_attention"):
        monkeypatch.setattr(kernels, name, lambda *a, name=name: calls.append(name))
    layout = random_rows(B=2, seed=0)
    q = torch.zeros(2, 4, layout.q_window.shape[1], 8)
    assert not flash.use_flash(q)  # CPU tensors never take the flash path
    kernels.auto_casa_attention(q, q, q, layout, 1.0)
    one = KeyLayout(layout.q_window[:, :1], layout.q_index[:, :1], layout.k_window, layout.k_index)
    kernels.auto_casa_attention(q[:, :, :1], q, q, one, 1.0)
    monkeypatch.setattr(kernels, "use_flash", lambda q: True)
    kernels.auto_casa_attention(q, q, q, layout, 1.0)
    assert calls == ["windowed_casa_attention", "sdpa_casa_attention", "flash_casa_attention"]


def batch(model):
    """Three rows: two windows, two images at one point, no image at all; padding on the right."""
    torch.manual_seed(3)
    ids = torch.randint(1, 90, (3, 16))
    ids[0, 2] = ids[0, 9] = model.image_token_id
    ids[1, 4] = ids[1, 5] = model.image_token_id
    mask = torch.ones_like(ids)
    mask[1, -4:] = 0
    images = [torch.rand(2, 3, 16, 16), torch.rand(2, 3, 16, 16), None]
    return ids, mask, images


@pytest.mark.parametrize("family", ["llama", "gpt2"])
@pytest.mark.parametrize("name", ["windowed", "auto"])
def test_wrapped_model_same_logits_and_gradients(family, name):
    results = []
    for kernel in ("reference", name):
        model = casa_adapter.wrap(tiny_llm(family), vision=tiny_tower(), init="copy", kernel=kernel)
        randomize_new_params(model)
        ids, mask, images = batch(model)
        labels = ids.masked_fill((mask == 0) | (ids == model.image_token_id), -100)
        out = model(ids, attention_mask=mask, images=images, labels=labels)
        out.loss.backward()
        named = dict(model.named_parameters())
        results.append((out.logits, {n: named[n].grad for n in model.trainable_parameter_names()}))
    (ref_logits, ref_grads), (logits, grads) = results
    assert torch.allclose(logits, ref_logits, atol=1e-5), (logits - ref_logits).abs().max()
    assert ref_grads.keys() == grads.keys()
    for n, g in grads.items():
        assert torch.allclose(g, ref_grads[n], atol=1e-5), (n, (g - ref_grads[n]).abs().max())


def test_generate_with_auto_equals_full_forward():
    model = casa_adapter.wrap(tiny_llm("llama"), vision=tiny_tower(), init="copy", kernel="auto")
    randomize_new_params(model)
    ids, _, images = batch(model)
    ids, images = ids[:2, :10], images[:2]
    out = model.generate(ids, attention_mask=torch.ones_like(ids), images=images, max_new_tokens=4, do_sample=False)
    for _ in range(4):
        logits = model(ids, images=images).logits[:, -1]  # (B, V)
        ids = torch.cat([ids, logits.argmax(-1, keepdim=True)], 1)
    assert torch.equal(out, ids)


def test_one_plan_per_forward_for_all_casa_layers(monkeypatch):
    """Three CASA layers, one forward: the windowed plan is made once (the layers share the call's KeyLayout)."""
    model = casa_adapter.wrap(tiny_llm("llama"), vision=tiny_tower(), every=1, kernel="windowed")
    assert len(model.layer_indices) == 3
    made = []
    monkeypatch.setattr(windowed, "plan_windows", lambda layout: made.append(layout) or plan.plan_windows(layout))
    ids, mask, images = batch(model)
    model(ids, attention_mask=mask, images=images)
    assert len(made) == 1
    model(ids, attention_mask=mask, images=images)
    assert len(made) == 2  # a new call, a new layout: nothing is carried over between forwards


def test_kernel_setting_names_exactly_the_registered_kernels():
    from typing import get_args

    from casa_adapter.config import Kernel

    assert set(get_args(Kernel)) == set(KERNELS)
    with pytest.raises(ValueError, match="kernel must be one of"):
        casa_adapter.CasaSettings(kernel="flash")
