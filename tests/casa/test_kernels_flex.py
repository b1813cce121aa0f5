"""The flex_attention CASA kernel: its mask_mod and block mask against the layout's dense rule (CPU), its
forward against the reference (CPU, eager flex), auto's choice of it on CUDA, and forward + backward
against the reference on CUDA in fp32 and bf16 (skipped without a GPU: flex has no CPU backward)."""

from types import SimpleNamespace

import pytest
import torch
from test_kernels import random_rows, run

import casa_adapter.casa.kernels as kernels
from casa_adapter.bench.kernel import make_layout
from casa_adapter.casa.kernels import KeyLayout, reference_casa_attention
from casa_adapter.casa.kernels.flex import (
    BLOCK,
    flex_available,
    flex_casa_attention,
    flex_plan,
    has_key,
    layout_mask_mod,
)

pytestmark = pytest.mark.skipif(not flex_available(), reason="this torch has no torch.nn.attention.flex_attention")
needs_cuda = pytest.mark.skipif(
    not torch.cuda.is_available(),
    reason="flex_attention's backward (and its compiled kernel) needs CUDA; no GPU on this machine",
)


def layouts():
    """Random packed rows (text keys and image keys only, decode steps) and a long multi-block case."""
    rows = [random_rows(B=4, seed=s, text_keys=t) for s in range(4) for t in (True, False)]
    return [*rows, random_rows(B=3, seed=9, decode=True), make_layout(rows=2, windows=5, image=40, text=60, seed=2)]


def on(layout: KeyLayout, device) -> KeyLayout:
    return KeyLayout(*(t.to(device) for t in (layout.q_window, layout.q_index, layout.k_window, layout.k_index)))


@pytest.mark.parametrize("i", range(len(layouts())))
def test_mask_mod_evaluated_densely_is_the_layouts_rule(i):
    from torch.nn.attention.flex_attention import create_mask

    layout = layouts()[i]
    (B, Tq), K = layout.q_window.shape, layout.k_window.shape[1]
    dense = create_mask(layout_mask_mod(layout), B, 1, Tq, K, device="cpu")  # (B, 1, Tq, K)
    assert torch.equal(dense[:, 0], layout.mask())
    assert torch.equal(has_key(layout), layout.mask().any(-1))


def test_block_mask_keeps_exactly_the_blocks_with_an_allowed_pair():
    layout = make_layout(rows=2, windows=6, image=64, text=90, seed=1)  # several 128-blocks each way
    Tq, K = layout.q_window.shape[1], layout.k_window.shape[1]
    plan = flex_plan(layout)
    mask = torch.nn.functional.pad(layout.mask(), (0, -K % BLOCK, 0, -Tq % BLOCK))  # (B, Tq', K')
    want = mask.unflatten(1, (-1, BLOCK)).unflatten(3, (-1, BLOCK)).any(4).any(2)  # (B, Tq'/128, K'/128)
    got = plan.block_mask.to_dense()[:, 0].bool()  # (B, nq, nk)
    assert torch.equal(got, want)
    assert not want.all()  # the case is sparse: whole blocks are skipped


@pytest.mark.parametrize("i", range(len(layouts())))
def test_cpu_forward_matches_reference_and_zeros_keyless_queries(i):
    layout = layouts()[i]
    with torch.no_grad():
        torch.manual_seed(0)
        (B, Tq), K = layout.q_window.shape, layout.k_window.shape[1]
        q, k, v = torch.randn(B, 4, Tq, 16), torch.randn(B, 2, K, 16), torch.randn(B, 2, K, 16)
        got = flex_casa_attention(q, k, v, layout, 0.3)
        want = reference_casa_attention(q, k, v, layout, 0.3)
    assert torch.allclose(got, want, atol=1e-5), (got - want).abs().max()
    no_key = ~layout.mask().any(-1)  # (B, Tq)
    assert torch.equal(got.transpose(1, 2)[no_key], torch.zeros_like(got.transpose(1, 2)[no_key]))


def test_empty_layout_gives_zeros_without_a_block_mask():
    B, Tq, K = 2, 5, 6
    nothing = KeyLayout(
        torch.zeros(B, Tq, dtype=torch.long),
        torch.arange(Tq).expand(B, Tq),
        torch.ones(B, K, dtype=torch.long),
        torch.arange(K).expand(B, K),
    )  # keys in window 1, no query in any window
    q, k = torch.randn(B, 4, Tq, 8), torch.randn(B, 2, K, 8)
    with torch.no_grad():
        assert torch.equal(flex_casa_attention(q, k, k, nothing, 0.3), torch.zeros_like(q))
    assert flex_plan(nothing).block_mask is None


def test_cpu_backward_is_refused_with_a_clear_error():
    layout = random_rows(B=2, seed=0)
    with pytest.raises(RuntimeError, match="no backward on CPU.*windowed"):
        run(flex_casa_attention, layout)


def test_auto_takes_flex_on_cuda_without_flash_and_flash_when_installed(monkeypatch):
    calls = []
    for name in ("flash_casa_attention", "flex_casa_attention", "sdpa_casa_attention", "windowed_casa_attention"):
        monkeypatch.setattr(kernels, name, lambda *a, name=name: calls.append(name))
    layout = random_rows(B=2, seed=0)
    cuda_q = SimpleNamespace(shape=(2, 4, layout.q_window.shape[1], 8), is_cuda=True, dtype=torch.bfloat16)
    monkeypatch.setattr(kernels, "use_flash", lambda q: False)  # flash-attn absent
    kernels.auto_casa_attention(cuda_q, None, None, layout, 1.0)
    kernels.auto_casa_attention(torch.zeros(2, 4, layout.q_window.shape[1], 8), None, None, layout, 1.0)  # CPU
    monkeypatch.setattr(kernels, "use_flash", lambda q: True)
    kernels.auto_casa_attention(cuda_q, None, None, layout, 1.0)
    assert calls == ["flex_casa_attention", "windowed_casa_attention", "flash_casa_attention"]


@needs_cuda
@pytest.mark.parametrize("dtype, atol", [(torch.float32, 2e-4), (torch.bfloat16, 3e-2)], ids=["fp32", "bf16"])
@pytest.mark.parametrize("i", range(len(layouts())))
def test_cuda_forward_and_backward_match_reference(i, dtype, atol):
    layout = on(layouts()[i], "cuda")
    torch.manual_seed(0)
    (B, Tq), K = layout.q_window.shape, layout.k_window.shape[1]
    make = lambda n, T: torch.randn(B, n, T, 16, device="cuda", dtype=dtype, requires_grad=True)
    q, k, v = make(4, Tq), make(2, K), make(2, K)
    grad = torch.randn(B, 4, Tq, 16, device="cuda", dtype=dtype)
    results = []
    for kernel, cast in ((flex_casa_attention, dtype), (reference_casa_attention, torch.float32)):
        xs = [x.detach().to(cast).requires_grad_() for x in (q, k, v)]
        out = kernel(*xs, layout, 0.3)
        results.append((out.float(), [g.float() for g in torch.autograd.grad(out, xs, grad.to(cast))]))
    (out, grads), (want, want_grads) = results
    assert torch.allclose(out, want, atol=atol), (out - want).abs().max()
    for got, ref in zip(grads, want_grads):
        assert torch.allclose(got, ref, atol=atol * 4), (got - ref).abs().max()
