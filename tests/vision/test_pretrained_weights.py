"""casa_adapter.vision's pretrained weights: the offline and unreachable-hub errors are fast and name the
model and tag, cached hub weights and local checkpoints load. Nothing is downloaded."""

from __future__ import annotations

import time

import open_clip
import pytest
import torch
from safetensors.torch import save_file

from casa_adapter.config import VisionSettings
from casa_adapter.vision.build import build_vision

H = 48  # LLM hidden size used throughout


def _assert_weights_error(err: RuntimeError, model: str, tag: str) -> None:
    msg = str(err)
    assert model in msg and repr(tag) in msg
    assert "could not be found locally or downloaded" in msg
    assert 'VisionSettings(pretrained="/path/to/open_clip_model.safetensors")' in msg
    assert "pretrained=False" in msg


def test_offline_pretrained_error_is_fast_and_clear(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    start = time.monotonic()
    with pytest.raises(RuntimeError) as err:
        build_vision(VisionSettings(name="siglip", cache_dir=str(tmp_path)), H)
    assert time.monotonic() - start < 5
    _assert_weights_error(err.value, "ViT-B-16-SigLIP", "webli")


def test_unreachable_hub_error_is_fast(monkeypatch, tmp_path):
    for var in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")  # nothing listens on the discard port
    start = time.monotonic()
    with pytest.raises(RuntimeError) as err:
        build_vision(VisionSettings(name="siglip-so400m", cache_dir=str(tmp_path)), H, pretrained=True)
    assert time.monotonic() - start < 10
    _assert_weights_error(err.value, "ViT-SO400M-14-SigLIP-384", "webli")


def test_cached_hub_weights_are_used_offline(monkeypatch, tmp_path):
    """A checkpoint already in the HF cache is found without network (here a wrong one, so the
    loader reports that it does not fit the tower, naming the cached file)."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    repo = open_clip.get_pretrained_cfg("ViT-B-32", "openai")["hf_hub"].rstrip("/")
    cached = tmp_path / f"models--{repo.replace('/', '--')}"
    (cached / "snapshots" / "abc").mkdir(parents=True)
    (cached / "refs").mkdir()
    (cached / "refs" / "main").write_text("abc")
    snapshot = cached / "snapshots" / "abc"
    save_file({"visual.unrelated": torch.zeros(2)}, str(snapshot / "open_clip_model.safetensors"))
    with pytest.raises(RuntimeError, match=r"open_clip_model\.safetensors does not fit"):
        build_vision(VisionSettings(name="ViT-B-32", pretrained="openai", cache_dir=str(tmp_path)), H)


def test_local_checkpoint_path_loads_weights(tmp_path):
    src = build_vision("ViT-S-32", H, pretrained=False)
    state = {f"visual.{k}": v.contiguous() for k, v in src.tower.visual.state_dict().items()}
    state["text.ignored"] = torch.zeros(1)  # a full open_clip checkpoint also holds the text tower
    path = str(tmp_path / "open_clip_model.safetensors")
    save_file(state, path)
    dst = build_vision("ViT-S-32", H, pretrained=path)
    x = torch.randn(1, 3, 224, 224)
    assert torch.equal(src.tower(x), dst.tower(x))
    resized = build_vision(VisionSettings(name="ViT-S-32", pretrained=path, image_size=160), H)
    assert resized.num_tokens() == 25 and resized(torch.randn(1, 3, 160, 160)).shape == (1, 25, H)


def test_unknown_tag_and_unknown_name():
    with pytest.raises(ValueError, match="neither an existing file nor an open_clip tag"):
        build_vision("siglip", H, pretrained="no-such-tag")
    with pytest.raises(ValueError, match="unknown vision tower"):
        build_vision("not-a-model", H, pretrained=False)
