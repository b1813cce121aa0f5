"""`save_text_llm`: the text LLM with LoRA merged, as a plain HF folder that `AutoModelForCausalLM`
loads in a fresh process (no casa_adapter) with the wrapped model's text-only logits; the wrapped
model is left as it was."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from peft.tuners.lora import LoraLayer
from safetensors import safe_open

import casa_adapter
from casa_adapter.casa.parallel import CasaAttention
from casa_adapter.export import save_text_llm

from conftest import randomize_new_params, tiny_llm, tiny_tower
from tiny_tokenizers import tiny_chat_tokenizer

IDS = torch.tensor([[1, 5, 9, 20, 3, 7, 11, 2]])
FAMILIES = ["llama", "qwen2", "gpt2"]  # plain, tied embeddings, Conv1D

LOADER = """
import sys, torch
from transformers import AutoModelForCausalLM
ids = torch.tensor({ids})
out = {{}}
for name, folder in {folders!r}.items():
    model = AutoModelForCausalLM.from_pretrained(folder).eval()
    with torch.no_grad():
        out[name] = (type(model).__name__, model(ids).logits)
assert not [m for m in sys.modules if m.startswith("casa_adapter")], "casa_adapter was imported"
torch.save(out, {target!r})
"""


def wrapped(family: str, **options):
    lora = casa_adapter.LoraSettings(rank=4, alpha=8.0, dropout=0.0)
    model = casa_adapter.wrap(tiny_llm(family), vision=tiny_tower(), lora=lora, every=2, **options)
    randomize_new_params(model)
    return model


def logits(model) -> torch.Tensor:
    with torch.no_grad():
        return model(IDS).logits


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """family -> (wrapped model, its logits, folder, (class name, logits) loaded in a fresh process)."""
    root = tmp_path_factory.mktemp("text_llm")
    models = {f: wrapped(f) for f in FAMILIES}
    want = {f: logits(m) for f, m in models.items()}
    folders = {f: str(save_text_llm(m, root / f)) for f, m in models.items()}
    script = LOADER.format(ids=IDS.tolist(), folders=folders, target=str(root / "logits.pt"))
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    run = subprocess.run([sys.executable, "-c", script], cwd=root, env=env, capture_output=True, text=True)
    assert run.returncode == 0, run.stderr[-3000:]
    loaded = torch.load(root / "logits.pt")
    return {f: (models[f], want[f], folders[f], loaded[f]) for f in FAMILIES}


@pytest.mark.parametrize("family", FAMILIES)
def test_a_fresh_process_loads_it_with_the_same_logits(exported, family):
    model, want, _, (class_name, got) = exported[family]
    assert class_name == type(model.llm).__name__
    assert not torch.allclose(want, logits(tiny_llm(family)), atol=1e-4)  # LoRA matters
    torch.testing.assert_close(got, want, atol=1e-5, rtol=0)


@pytest.mark.parametrize("family", FAMILIES)
def test_the_wrapped_model_keeps_lora_casa_and_logits(exported, family):
    model, want, _, _ = exported[family]
    assert any(isinstance(m, LoraLayer) for m in model.llm.modules())
    assert any(isinstance(m, CasaAttention) for m in model.llm.modules())
    assert model.lora_targets
    assert torch.equal(logits(model), want)


@pytest.mark.parametrize("family", FAMILIES)
def test_the_folder_is_the_base_architecture_alone(exported, family, tmp_path):
    _, _, folder, _ = exported[family]
    with safe_open(os.path.join(folder, "model.safetensors"), "pt") as f:
        keys = set(f.keys())
    plain = tiny_llm(family)
    plain.save_pretrained(tmp_path / "plain")  # what transformers writes for the base (tied keys left out)
    with safe_open(str(tmp_path / "plain" / "model.safetensors"), "pt") as f:
        assert keys == set(f.keys())
    config = json.loads(Path(folder, "config.json").read_text())
    assert config["architectures"] == [type(plain).__name__]
    assert config["model_type"] == plain.config.model_type
    assert "casa" not in json.dumps(config).lower()


def test_the_state_before_export_is_bit_identical(tmp_path):
    model = wrapped("qwen2")
    before = {k: v.clone() for k, v in model.state_dict().items()}
    save_text_llm(model, tmp_path / "text")
    after = model.state_dict()
    assert list(after) == list(before)
    assert all(torch.equal(after[k], v) for k, v in before.items())


def test_tokenizer_insertion_merged_and_no_lora(tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = tiny_chat_tokenizer()
    insertion = wrapped("llama", fusion="insertion")
    out = save_text_llm(insertion, tmp_path / "insertion", tokenizer=tokenizer)
    assert AutoTokenizer.from_pretrained(out).get_vocab() == tokenizer.get_vocab()
    torch.testing.assert_close(logits(AutoModelForCausalLM.from_pretrained(out)), logits(insertion), atol=1e-5, rtol=0)

    merged = wrapped("gpt2")
    merged.merge_lora()  # LoRA already in the base weights: the export carries them
    out = save_text_llm(merged, tmp_path / "merged")
    torch.testing.assert_close(logits(AutoModelForCausalLM.from_pretrained(out)), logits(merged), atol=1e-5, rtol=0)

    no_lora = casa_adapter.wrap(tiny_llm("qwen2"), vision=tiny_tower(), every=2)
    out = save_text_llm(no_lora, tmp_path / "no_lora")
    assert torch.equal(logits(AutoModelForCausalLM.from_pretrained(out)), logits(tiny_llm("qwen2")))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["insertion", "merged", "no_lora"]


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("family", FAMILIES)
def test_merge_lora_gives_the_exported_weights_bit_for_bit(family, dtype):
    """`merge_lora()` in memory and the merged exports fold LoRA with one rule (`backbone.lora.merged_weight`),
    so a merged folder holds exactly the weights of the model after `merge_lora()` (peft's own merge rounds bf16
    weights differently)."""
    from casa_adapter.export.text_llm import merged_state_dict

    model = casa_adapter.wrap(tiny_llm(family).to(dtype), vision=tiny_tower(), lora=casa_adapter.LoraSettings(rank=4))
    randomize_new_params(model)
    exported = {k: v for k, v in merged_state_dict(model.llm).items() if "lora_" not in k}
    assert model.merge_lora() > 0
    live = model.llm.state_dict()
    assert exported.keys() == live.keys()
    assert all(torch.equal(exported[k], live[k]) for k in live)
