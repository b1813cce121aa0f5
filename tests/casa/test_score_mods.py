"""The family's score modifiers inside CASA (ALiBi, logit softcapping, sliding windows).

Kernels with modifiers against the reference on random layouts; the modifiers each family's CASA layers
read (Bloom, MPT, Falcon with alibi=True, Gemma 2, Mistral and Qwen2 with a small sliding window); every
CPU kernel against a per-query loop written from the rule and the family's own ALiBi/cap/window, on the
q/k/v a wrapped model hands its kernel, with CASA weights moved off zero; that the modifiers change the
output; streaming and cached generate equal full forwards with them."""

import pytest
import torch
from test_kernels import random_rows, run

import casa_adapter.casa.kernels.flash as flash
from casa_adapter.casa.kernels import KERNELS, reference_casa_attention
from casa_adapter.casa.kernels.flex import flex_available, has_key
from casa_adapter.casa.kernels.mods import ScoreMods, window_allowed

SLOPES = (0.5, 0.25, 0.125, 0.0625)
MODS = {
    "alibi": ScoreMods(alibi=SLOPES),
    "softcap": ScoreMods(softcap=0.8),
    "window": ScoreMods(sliding_window=3),
    "alibi+window": ScoreMods(alibi=SLOPES, sliding_window=4),
    "all": ScoreMods(alibi=SLOPES, softcap=0.8, sliding_window=2),
    "sinks": ScoreMods(sinks=(0.5, -1.0, 2.0, 0.0)),
    "sinks+alibi+window": ScoreMods(alibi=SLOPES, sliding_window=3, sinks=(1.0, 0.0, -2.0, 0.5)),
}


def loop_reference(q, k, v, layout, scaling, bias=None, softcap=None, window=None, sinks=None):
    """The rule, one query at a time: a query of window w > 0 sees the keys of w with index(k) <= index(q) and
    (with a sliding window) index(q) - index(k) < window; scores q.k * scaling, capped, plus bias(h, k_index,
    q_index); softmax (with sinks[h] as one more zero-value entry). q (B, H, Tq, hd); k, v (B, Hkv, K, hd) ->
    (B, H, Tq, hd)."""
    (B, H, Tq, _), rep = q.shape, q.shape[1] // k.shape[1]
    out = torch.zeros_like(q)
    for b in range(B):
        for t in range(Tq):
            w, i = int(layout.q_window[b, t]), int(layout.q_index[b, t])
            seen = [
                j
                for j in range(k.shape[2])
                if w > 0
                and int(layout.k_window[b, j]) == w
                and int(layout.k_index[b, j]) <= i
                and (window is None or i - int(layout.k_index[b, j]) < window)
            ]
            for h in range(H if seen else 0):
                s = k[b, h // rep, seen] @ q[b, h, t] * scaling  # (n,)
                if softcap is not None:
                    s = softcap * torch.tanh(s / softcap)
                if bias is not None:
                    s = s + torch.tensor([float(bias(h, int(layout.k_index[b, j]), i)) for j in seen])
                p = s.softmax(-1) if sinks is None else torch.cat([s, torch.tensor([sinks[h]])]).softmax(-1)[:-1]
                out[b, h, t] = p @ v[b, h // rep, seen]
    return out


def qkv(layout, H=4, Hkv=2, hd=8, seed=0):
    """Random q (B, H, Tq, hd), k, v (B, Hkv, K, hd) for `layout`, without gradients."""
    torch.manual_seed(seed)
    (B, Tq), K = layout.q_window.shape, layout.k_window.shape[1]
    return torch.randn(B, H, Tq, hd), torch.randn(B, Hkv, K, hd), torch.randn(B, Hkv, K, hd)


def _rule(mods: ScoreMods):
    bias = None if mods.alibi is None else (lambda h, kj, qi: mods.alibi[h] * (kj - qi))
    return dict(bias=bias, softcap=mods.softcap, window=mods.sliding_window, sinks=mods.sinks)


# -- kernels on random layouts ---------------------------------------------------------------------
@pytest.mark.parametrize("mods", list(MODS), ids=list(MODS))
@pytest.mark.parametrize("text_keys", [True, False], ids=["casa", "image-keys-only"])
def test_reference_with_mods_is_the_rule(mods, text_keys):
    layout = random_rows(B=3, seed=1, text_keys=text_keys)
    q, k, v = qkv(layout)
    got = reference_casa_attention(q, k, v, layout, 0.3, MODS[mods])
    assert torch.allclose(got, loop_reference(q, k, v, layout, 0.3, **_rule(MODS[mods])), atol=1e-5)
    change = (got - reference_casa_attention(q, k, v, layout, 0.3)).abs().max()
    if mods == "alibi" and not text_keys:  # all keys of a window sit at its start: ALiBi shifts a row by a constant
        assert change < 1e-5
    else:
        assert change > 1e-2  # the modifier matters


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("mods", list(MODS), ids=list(MODS))
@pytest.mark.parametrize("text_keys", [True, False], ids=["casa", "image-keys-only"])
@pytest.mark.parametrize("name", ["windowed", "sdpa", "auto"])
def test_kernels_with_mods_match_reference(name, text_keys, mods, seed):
    layout = random_rows(B=4, seed=seed, text_keys=text_keys)
    m = MODS[mods]
    out, grads = run(lambda *a: KERNELS[name](*a, m), layout)
    want, want_grads = run(lambda *a: reference_casa_attention(*a, m), layout)
    assert torch.allclose(out, want, atol=1e-5), (out - want).abs().max()
    for got, ref in zip(grads, want_grads):
        assert torch.isfinite(got).all() and torch.allclose(got, ref, atol=1e-5), (got - ref).abs().max()


@pytest.mark.parametrize("mods", list(MODS), ids=list(MODS))
def test_decode_steps_with_mods(mods):
    """One query per row over cached keys (what generate and streaming run), through auto (sdpa) and windowed."""
    layout = random_rows(B=4, seed=3, decode=True)
    for name in ("auto", "windowed"):
        out, _ = run(lambda *a, kernel=KERNELS[name]: kernel(*a, MODS[mods]), layout)
        want, _ = run(lambda *a: reference_casa_attention(*a, MODS[mods]), layout)
        assert torch.allclose(out, want, atol=1e-5)


@pytest.mark.skipif(not flex_available(), reason="this torch has no flex_attention")
@pytest.mark.parametrize("mods", list(MODS), ids=list(MODS))
def test_flex_forward_with_mods_matches_reference(mods):
    """flex's score_mod and sliding mask_mod, eager on CPU (forward only: flex has no CPU backward)."""
    for seed, text_keys in ((0, True), (1, False), (2, True)):
        layout = random_rows(B=4, seed=seed, text_keys=text_keys)
        q, k, v = qkv(layout)
        out = KERNELS["flex"](q, k, v, layout, 0.3, MODS[mods])
        want = reference_casa_attention(q, k, v, layout, 0.3, MODS[mods])
        assert torch.allclose(out, want, atol=1e-5), (out - want).abs().max()
        allowed = layout.mask()
        window = window_allowed(MODS[mods], layout.q_index, layout.k_index)
        allowed = allowed if window is None else allowed & window
        assert torch.equal(has_key(layout, MODS[mods].sliding_window), allowed.any(-1))


def fake_flash_softcap(q, k, v, cu_q, cu_k, max_q, max_k, softmax_scale, causal, softcap=0.0):
    """`fake_flash_varlen` with flash-attn's softcap (tanh on the scaled scores), through a scaled-down q."""
    assert softcap > 0
    capped = lambda s: softcap * torch.tanh(s / softcap)
    out = torch.zeros_like(q)
    for s in range(cu_q.numel() - 1):
        qs = q[cu_q[s] : cu_q[s + 1]].transpose(0, 1)
        rep = q.shape[1] // k.shape[1]
        ks, vs = (x[cu_k[s] : cu_k[s + 1]].transpose(0, 1).repeat_interleave(rep, 0) for x in (k, v))
        scores = capped(qs @ ks.transpose(-1, -2) * softmax_scale)
        lq, lk = scores.shape[-2:]
        if causal:
            scores = scores.masked_fill(torch.arange(lk) > torch.arange(lq).unsqueeze(-1) + lk - lq, float("-inf"))
        out[cu_q[s] : cu_q[s + 1]] = (scores.softmax(-1).nan_to_num(0.0) @ vs).transpose(0, 1)
    return out


def test_flash_takes_softcap_and_hands_alibi_and_windows_to_windowed(monkeypatch):
    monkeypatch.setattr(flash, "_varlen", lambda: fake_flash_softcap)
    layout = random_rows(B=4, seed=0)
    out, _ = run(lambda *a: flash.flash_casa_attention(*a, MODS["softcap"]), layout)
    want, _ = run(lambda *a: reference_casa_attention(*a, MODS["softcap"]), layout)
    assert torch.allclose(out, want, atol=1e-5)
    monkeypatch.setattr(flash, "_varlen", lambda: pytest.fail("flash cannot place image keys for ALiBi/windows"))
    for name in ("alibi", "window", "sinks"):
        assert not flash.flash_fits(MODS[name])
        out, _ = run(lambda *a, m=MODS[name]: flash.flash_casa_attention(*a, m), layout)
        want, _ = run(lambda *a, m=MODS[name]: reference_casa_attention(*a, m), layout)
        assert torch.allclose(out, want, atol=1e-5)
