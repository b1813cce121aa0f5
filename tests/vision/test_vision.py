"""Tests for casa_adapter.vision: towers, pooling, projector, transform, freezing and specs (the pretrained
weights: test_pretrained_weights.py). Everything is random-initialised; nothing is downloaded."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from casa_adapter.config import VisionSettings
from casa_adapter.vision.build import build_vision
from casa_adapter.vision.encoder import VisionEncoder
from casa_adapter.vision.projector import PatchPool

H = 48  # LLM hidden size used throughout


class TinyTower(nn.Module):
    """A custom tower following the contract: int `embed_dim`, (B, 3, H, W) -> (B, N, D)."""

    def __init__(self, dim: int = 32, patch: int = 8, image_size: int = 32, depth: int = 3, **attrs):
        super().__init__()
        self.embed_dim, self.image_size = dim, image_size
        self.patch = nn.Conv2d(3, dim, patch, patch)
        self.blocks = nn.ModuleList(nn.Linear(dim, dim) for _ in range(depth))
        self.norm = nn.LayerNorm(dim)
        for key, value in attrs.items():
            setattr(self, key, value)

    def forward(self, x):
        x = self.patch(x).flatten(2).transpose(1, 2)  # (B, N, D)
        for block in self.blocks:
            x = x + block(x)
        return self.norm(x)


class NoBlocksTower(nn.Module):
    embed_dim = 16

    def __init__(self):
        super().__init__()
        self.proj = nn.Conv2d(3, 16, 8, 8)

    def forward(self, x):
        return self.proj(x).flatten(2).transpose(1, 2)


class FlatTower(NoBlocksTower):
    """Returns 17 tokens (a class token plus a 4x4 grid): not a square grid."""

    def forward(self, x):
        x = super().forward(x)  # (B, 16, D)
        return torch.cat([x[:, :1], x], dim=1)  # (B, 17, D)


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


# ---- shapes ---------------------------------------------------------------------------------


@pytest.mark.parametrize("pool, tokens", [(None, 16), (2, 4), (3, 4)])
def test_custom_tower_shapes(pool, tokens):
    enc = build_vision(TinyTower(), H, pool=pool)
    out = enc(torch.randn(2, 3, 32, 32))
    assert out.shape == (2, tokens, H)
    assert enc.num_tokens() == tokens
    assert enc.image_size == 32 and enc.mean == (0.5, 0.5, 0.5) and enc.std == (0.5, 0.5, 0.5)


@pytest.mark.parametrize("pool, tokens", [(None, 64), (2, 16), (3, 9)])
def test_siglip_tiny_shapes(pool, tokens):
    enc = build_vision("siglip-tiny", H, pretrained=False, pool=pool)
    assert enc.image_size == 64 and enc.mean == (0.5, 0.5, 0.5)
    assert enc.tower(torch.randn(1, 3, 64, 64)).shape == (1, 64, 128)  # 8x8 patches, width 128
    assert enc(torch.randn(3, 3, 64, 64)).shape == (3, tokens, H)
    assert enc.num_tokens() == tokens


def test_siglip_is_vit_b16_siglip_vision_only():
    enc = build_vision("siglip", H, pretrained=False)
    assert enc.settings.name == "siglip" and enc.embed_dim == 768 and enc.image_size == 224
    assert enc.num_tokens() == 196 and enc.mean == (0.5, 0.5, 0.5) and enc.std == (0.5, 0.5, 0.5)
    assert sum(p.numel() for p in enc.tower.parameters()) < 90e6  # no text tower, no MAP head
    assert not any("attn_pool" in n for n, _ in enc.named_parameters())


def test_projector_kinds_and_output_dtype():
    lin = build_vision("siglip-tiny", H, pretrained=False, projector="linear")
    assert isinstance(lin.projector, nn.Linear) and lin.projector.in_features == 128
    mlp = build_vision("siglip-tiny", H, pretrained=False)
    assert [type(m) for m in mlp.projector] == [nn.Linear, nn.GELU, nn.Linear]
    mlp.projector.to(torch.bfloat16)
    assert mlp(torch.randn(1, 3, 64, 64)).dtype == torch.bfloat16


def test_pool_ceil_mode_averages_partial_windows():
    grid = torch.arange(9.0).view(1, 9, 1)  # a 3x3 grid, D = 1
    out = PatchPool(2)(grid)[0, :, 0]
    assert out.tolist() == [(0 + 1 + 3 + 4) / 4, (2 + 5) / 2, (6 + 7) / 2, 8.0]


def test_pool_needs_square_grid():
    enc = build_vision(FlatTower(), H, pool=2)
    with pytest.raises(ValueError, match="perfect square"):
        enc(torch.randn(1, 3, 32, 32))
    assert build_vision(FlatTower(), H)(torch.randn(1, 3, 32, 32)).shape == (1, 17, H)


# ---- transform ------------------------------------------------------------------------------


def test_transform_pil_resizes_crops_and_normalises():
    enc = build_vision("siglip-tiny", H, pretrained=False)
    white = Image.fromarray(np.full((90, 160), 255, dtype=np.uint8), mode="L")  # grayscale, wide
    x = enc.transform(white)
    assert x.shape == (3, 64, 64) and x.dtype == torch.float32
    assert torch.allclose(x, torch.ones_like(x), atol=1e-5)  # (1 - 0.5) / 0.5
    rgba = np.zeros((128, 128, 4), dtype=np.uint8)
    assert torch.allclose(enc.transform(Image.fromarray(rgba, mode="RGBA")), torch.full((3, 64, 64), -1.0))


def test_transform_center_crops_the_middle():
    enc = build_vision("siglip-tiny", H, pretrained=False)
    img = np.zeros((64, 128, 3), dtype=np.uint8)
    img[:, 64:] = 255  # left half black, right half white; the crop keeps columns 32..95
    x = enc.transform(img)
    assert x.shape == (3, 64, 64)
    assert (x[:, :, :32] == -1).all() and (x[:, :, 32:] == 1).all()
    assert x.min() >= -1 and x.max() <= 1
    assert torch.equal(enc.transform(torch.from_numpy(img).permute(2, 0, 1)), x)  # (C, H, W) uint8 tensor


def test_transform_uses_tower_mean_std():
    tower = TinyTower(mean=(0.25, 0.5, 0.75), std=(0.25, 0.5, 0.25))
    enc = build_vision(tower, H)
    x = enc.transform(np.full((40, 40, 3), 255, dtype=np.uint8))  # value 1.0 everywhere
    assert x.shape == (3, 32, 32)
    assert torch.allclose(x[:, 0, 0], torch.tensor([3.0, 1.0, 1.0]))


# ---- freezing -------------------------------------------------------------------------------


def _trainable(enc: VisionEncoder) -> set[str]:
    return {n for n, p in enc.named_parameters() if p.requires_grad}


def test_unfreeze_last_zero_freezes_the_whole_tower():
    enc = build_vision("siglip-tiny", H, pretrained=False, unfreeze_last=0)
    assert enc.trainable_tower_prefixes() == []
    assert _trainable(enc) == {n for n, _ in enc.named_parameters() if n.startswith("projector.")}
    enc.train()
    assert enc.training and not enc.tower.training  # a fully frozen tower stays in eval mode
    enc(torch.randn(1, 3, 64, 64)).sum().backward()
    assert all(p.grad is None for p in enc.tower.parameters())
    assert all(p.grad is not None for p in enc.projector.parameters())


def test_unfreeze_last_one_trains_last_block_and_norm():
    enc = build_vision("siglip-tiny", H, pretrained=False, unfreeze_last=1)
    assert enc.trainable_tower_prefixes() == ["tower.trunk.blocks.1.", "tower.trunk.norm."]
    tower_trainable = {n for n in _trainable(enc) if n.startswith("tower.")}
    assert tower_trainable and all(
        n.startswith(("tower.trunk.blocks.1.", "tower.trunk.norm.")) for n in tower_trainable
    )
    assert "tower.trunk.norm.weight" in tower_trainable
    assert not any(n.startswith("tower.trunk.blocks.0.") for n in tower_trainable)
    enc.train()
    assert enc.tower.training
    enc(torch.randn(1, 3, 64, 64)).sum().backward()
    assert enc.tower.trunk.blocks[1].attn.qkv.weight.grad is not None
    assert enc.tower.trunk.blocks[0].attn.qkv.weight.grad is None


def test_unfreeze_last_on_custom_and_native_towers():
    enc = build_vision(TinyTower(), H, unfreeze_last=1)
    assert enc.trainable_tower_prefixes() == ["tower.blocks.2.", "tower.norm."]
    assert {n for n in _trainable(enc) if n.startswith("tower.")} == {
        "tower.blocks.2.weight",
        "tower.blocks.2.bias",
        "tower.norm.weight",
        "tower.norm.bias",
    }
    native = build_vision("ViT-S-32", H, pretrained=False, unfreeze_last=1)
    assert native.trainable_tower_prefixes() == ["tower.visual.transformer.resblocks.11.", "tower.visual.ln_post."]


def test_unfreeze_last_errors():
    with pytest.raises(ValueError, match="blocks"):
        build_vision(NoBlocksTower(), H, unfreeze_last=1)
    with pytest.raises(ValueError, match="only 3 blocks"):
        build_vision(TinyTower(), H, unfreeze_last=4)


# ---- custom module contract -----------------------------------------------------------------


def test_module_without_embed_dim_is_a_type_error():
    class NoDim(nn.Module):
        def forward(self, x):
            return x

    with pytest.raises(TypeError, match=r"NoDim.*embed_dim"):
        build_vision(NoDim(), H)
    with pytest.raises(TypeError, match=r"TinyTower.*embed_dim"):
        build_vision(TinyTower(embed_dim="32"), H)


# ---- specs ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "vision, kwargs",
    [
        ("siglip-tiny", dict(pretrained=False, pool=2, projector="linear", unfreeze_last=1)),
        (VisionSettings(name="ViT-S-32", pretrained=False, image_size=160), dict(pool=2)),
    ],
)
def test_spec_round_trips(vision, kwargs):
    enc = build_vision(vision, H, **kwargs)
    spec = json.loads(json.dumps(enc.spec()))
    assert spec["kind"] == "open_clip" and spec["settings"]["pool"] == 2
    again = build_vision(spec, H)
    assert again.spec() == spec
    assert (again.image_size, again.mean, again.std, again.num_tokens()) == (
        enc.image_size,
        enc.mean,
        enc.std,
        enc.num_tokens(),
    )
    assert again.trainable_tower_prefixes() == enc.trainable_tower_prefixes()
    x = torch.randn(2, 3, enc.image_size, enc.image_size)
    assert again(x).shape == enc(x).shape == (2, enc.num_tokens(), H)
    assert {n: p.shape for n, p in again.state_dict().items()} == {n: p.shape for n, p in enc.state_dict().items()}


def test_custom_spec_names_the_class_and_is_not_rebuildable():
    enc = build_vision(TinyTower(), H, pool=2, unfreeze_last=1)
    spec = json.loads(json.dumps(enc.spec()))
    assert spec["kind"] == "custom" and spec["class"].endswith("TinyTower")
    assert (spec["embed_dim"], spec["pool"], spec["projector"], spec["unfreeze_last"]) == (32, 2, "mlp", 1)
    with pytest.raises(ValueError, match="pass the module again"):
        build_vision(spec, H)


def test_siglip_tiny_is_random_and_its_spec_says_so(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    enc = build_vision("siglip-tiny", H)  # pretrained=True by default: there are no weights to fetch
    assert enc.spec()["settings"]["pretrained"] is False  # so adapters save the random tower


def test_keyword_overrides_apply_on_settings():
    settings = VisionSettings(name="siglip-tiny", pretrained=False, pool=1, unfreeze_last=0)
    enc = build_vision(settings, H, pool=2, unfreeze_last=2)
    assert enc.num_tokens() == 16 and enc.settings.pool == 2 and enc.settings.unfreeze_last == 2
    assert settings.pool == 1  # the caller's settings are not mutated
    assert len(enc.trainable_tower_prefixes()) == 3  # two blocks + the final norm
