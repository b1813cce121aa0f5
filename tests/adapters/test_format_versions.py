"""Adapter format versions: a version-1 adapter written by the code before the package layout (state-dict
keys then renamed the base's modules) still loads, with the logits it had when it was saved."""

import json
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file
from transformers import AutoModelForCausalLM

import casa_adapter
from casa_adapter.adapters.io import file_sha256
from casa_adapter.adapters.manifest import read_manifest

FIXTURE = Path(__file__).resolve().parents[1] / "fixtures" / "adapter_v1_llama"
"""Written by casa_adapter at commit 74f1f80: a tiny Llama base (hidden 32, 2 blocks, vocab 64) saved with
save_pretrained, a conv tower, `wrap(every=1, lora=LoraSettings(rank=2, alpha=4.0))` with every trainable
tensor moved off its start, `save_adapter`, and the logits of one two-window prompt."""


class ConvTower(torch.nn.Module):
    """The fixture's custom tower: (B, 3, 16, 16) -> (B, 16, 16)."""

    embed_dim, image_size = 16, 16

    def __init__(self):
        super().__init__()
        self.patch = torch.nn.Conv2d(3, 16, kernel_size=4, stride=4)

    def forward(self, x):
        return self.patch(x).flatten(2).transpose(1, 2)  # (B, 16, 16)


def fixture_tower() -> ConvTower:
    tower = ConvTower()
    tower.load_state_dict(load_file(str(FIXTURE / "tower.safetensors")))
    return tower


def fixture_base():
    return AutoModelForCausalLM.from_pretrained(FIXTURE / "base").eval()


def test_fixture_is_version_1_with_old_names():
    manifest = read_manifest(FIXTURE / "adapter_v1")
    assert manifest["format_version"] == 1
    names = manifest["tensors"]["names"]
    assert any(".self_attn.sa.q_proj.lora_A." in n for n in names)  # the old parameter-path names


def test_version_1_adapter_loads_with_its_saved_logits():
    expected = load_file(str(FIXTURE / "expected.safetensors"))
    model = casa_adapter.load_adapter(FIXTURE / "adapter_v1", fixture_base(), vision=fixture_tower()).eval()
    with torch.no_grad():
        logits = model(expected["input_ids"], images=[expected["pixels"]]).logits
    # not bitwise: the fixture was saved at torch's default thread count, and another one (OMP_NUM_THREADS=1)
    # sums the matmuls in another order; a wrongly loaded tensor moves the logits by far more than 1e-5
    torch.testing.assert_close(logits, expected["logits"], rtol=0, atol=1e-5)
    assert model.lora is not None and model.trainable_counts()["lora"] > 0


def test_version_1_resaved_is_version_2_and_loads_the_same(tmp_path):
    expected = load_file(str(FIXTURE / "expected.safetensors"))
    model = casa_adapter.load_adapter(FIXTURE / "adapter_v1", fixture_base(), vision=fixture_tower())
    model.save_adapter(tmp_path / "v2")
    manifest = read_manifest(tmp_path / "v2")
    assert manifest["format_version"] == 2
    assert not [n for n in manifest["tensors"]["names"] if ".sa." in n or ".base_layer." in n]
    again = casa_adapter.load_adapter(tmp_path / "v2", fixture_base(), vision=fixture_tower()).eval()
    with torch.no_grad():
        logits = again(expected["input_ids"], images=[expected["pixels"]]).logits
        torch.testing.assert_close(logits, expected["logits"], rtol=0, atol=1e-5)


def test_version_1_with_a_name_the_model_lacks_is_refused(tmp_path):
    shutil.copytree(FIXTURE / "adapter_v1", tmp_path / "a")
    tensors = load_file(str(tmp_path / "a" / "adapter.safetensors"))
    tensors["llm.model.layers.0.self_attn.sa.nothing.weight"] = torch.zeros(1)
    save_file(tensors, str(tmp_path / "a" / "adapter.safetensors"))
    manifest = json.loads((tmp_path / "a" / "manifest.json").read_text())
    manifest["tensors"]["sha256"] = file_sha256(tmp_path / "a" / "adapter.safetensors")
    (tmp_path / "a" / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(casa_adapter.AdapterError, match="do not exist in the rebuilt model"):
        casa_adapter.load_adapter(tmp_path / "a", fixture_base(), vision=fixture_tower())
