"""The CASA attention kernels against a definition-level loop, over random window layouts."""

import pytest
import torch

from casa_adapter.casa.kernels import KERNELS, KeyLayout


def random_layout(B=3, T=14, n_img_windows=3, img_per_window=5, seed=0):
    """Random windows: some rows without images, empty/one-token windows, several images per window, padding."""
    g = torch.Generator().manual_seed(seed)
    q_window = torch.zeros(B, T, dtype=torch.long)
    for b in range(1, B):  # row 0: no image at all
        starts = sorted(torch.randperm(T, generator=g)[:n_img_windows].tolist())
        for w, s in enumerate(starts, 1):
            q_window[b, s:] = w
    q_window[-1, -3:] = 0  # padding at the end of the last row
    k_img_window = torch.arange(1, n_img_windows + 1).repeat_interleave(img_per_window).expand(B, -1).clone()
    k_img_window[0] = 0  # row 0 has no images (all padding)
    return q_window, k_img_window


def loop_casa(q, k_text, v_text, k_img, v_img, q_window, img_window, scaling):
    """Definition: for each query t in window w>0, keys = images of w + text of w at positions <= t."""
    B, H, T, _ = q.shape
    rep = H // k_text.shape[1]
    out = torch.zeros_like(q)
    for b in range(B):
        for t in range(T):
            w = int(q_window[b, t])
            if w == 0:
                continue
            img = (img_window[b] == w).nonzero().squeeze(-1)
            txt = ((q_window[b] == w) & (torch.arange(T) <= t)).nonzero().squeeze(-1)
            keys = torch.cat([k_img[b][:, img], k_text[b][:, txt]], 1).repeat_interleave(rep, 0)  # (H, n, hd)
            vals = torch.cat([v_img[b][:, img], v_text[b][:, txt]], 1).repeat_interleave(rep, 0)
            probs = torch.softmax(q[b, :, t : t + 1] @ keys.transpose(-1, -2) * scaling, -1)  # (H, 1, n)
            out[b, :, t] = (probs @ vals)[:, 0]
    return out


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("kernel", sorted(KERNELS))
def test_kernels_match_definition(kernel, seed):
    torch.manual_seed(seed)
    B, H, Hkv, T, hd = 3, 4, 2, 14, 8
    q_window, img_window = random_layout(B, T, seed=seed)
    I = img_window.shape[1]
    q = torch.randn(B, H, T, hd, dtype=torch.float64)
    kt, vt = torch.randn(B, Hkv, T, hd, dtype=torch.float64), torch.randn(B, Hkv, T, hd, dtype=torch.float64)
    ki, vi = torch.randn(B, Hkv, I, hd, dtype=torch.float64), torch.randn(B, Hkv, I, hd, dtype=torch.float64)
    index = torch.arange(T).expand(B, T)
    # image keys sit at their window's start index
    first = torch.stack(
        [
            torch.where(q_window[b].unsqueeze(0) == img_window[b].unsqueeze(1), torch.arange(T), T).min(1).values
            for b in range(B)
        ]
    )  # (B, I)
    k = torch.cat([ki, kt], 2)
    v = torch.cat([vi, vt], 2)
    k_window = torch.cat([img_window, q_window], 1)
    k_index = torch.cat([first, index], 1)
    got = KERNELS[kernel](q, k, v, KeyLayout(q_window, index, k_window, k_index), 0.3)
    want = loop_casa(q, kt, vt, ki, vi, q_window, img_window, 0.3)
    assert torch.allclose(got, want, atol=1e-10), (got - want).abs().max()
    outside = got.transpose(1, 2)[q_window == 0]  # (n, H, hd) queries in no window
    assert outside.numel() > 0 and torch.equal(outside, torch.zeros_like(outside))


def test_sdpa_matches_reference_fp32_forward_and_backward():
    torch.manual_seed(0)
    B, H, T, K, hd = 2, 4, 10, 16, 8
    q_window, img_window = random_layout(B, T, n_img_windows=2, img_per_window=3, seed=3)
    k_window = torch.cat([img_window, q_window], 1)
    index = torch.arange(T).expand(B, T)
    k_index = torch.cat([torch.zeros_like(img_window), index], 1)
    q = torch.randn(B, H, T, hd, requires_grad=True)
    k = torch.randn(B, 2, K, hd, requires_grad=True)
    v = torch.randn(B, 2, K, hd, requires_grad=True)
    outs = []
    for name in ("reference", "sdpa"):
        out = KERNELS[name](q, k, v, KeyLayout(q_window, index, k_window, k_index), 0.25)
        grads = torch.autograd.grad(out.square().sum(), (q, k, v))
        outs.append((out, grads))
    (o1, g1), (o2, g2) = outs
    assert torch.allclose(o1, o2, atol=1e-5)
    for a, b in zip(g1, g2):
        assert torch.allclose(a, b, atol=1e-5)


def test_mask_never_crosses_windows_and_is_causal():
    q_window = torch.tensor([[0, 1, 1, 2, 2]])
    index = torch.arange(5).unsqueeze(0)
    mask = KeyLayout(q_window, index, q_window, index).mask()[0]
    assert not mask[0].any()  # before the first image: nothing
    assert mask[2, 1] and mask[2, 2] and not mask[2, 3]  # causal within window 1
    assert not mask[3, 1] and not mask[4, 2]  # window 2 never sees window 1
