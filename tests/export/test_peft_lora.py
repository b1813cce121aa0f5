"""`save_peft_lora`: a wrapped model's LoRA as a standard peft adapter that `PeftModel.from_pretrained`
loads onto a fresh base with no missing or unexpected key and the wrapped model's text-only logits."""

from __future__ import annotations

import json
import warnings

import pytest
import torch
from peft import PeftModel, get_peft_model_state_dict
from safetensors.torch import load_file

import casa_adapter
from casa_adapter.export import save_peft_lora

from conftest import randomize_new_params, tiny_llm, tiny_tower

IDS = torch.tensor([[1, 5, 9, 20, 3, 7, 11, 2]])
CASES = [
    ("llama", None),
    ("llama", ["q_proj", "v_proj"]),
    ("qwen2", None),  # tied embeddings
    ("qwen2", ["q_proj", "v_proj"]),
    ("gpt2", None),  # Conv1D: fan_in_fan_out
    ("gpt2", ["c_attn"]),  # GPT-2 has no q_proj / v_proj: its fused qkv
]


def wrapped(family: str, targets=None, name: str = "", **options):
    llm = tiny_llm(family)
    llm.config._name_or_path = name  # a hub id here would make peft look the base up online when loading
    lora = casa_adapter.LoraSettings(rank=4, alpha=8.0, dropout=0.0, targets=targets)
    model = casa_adapter.wrap(llm, vision=tiny_tower(), lora=lora, every=2, **options)
    randomize_new_params(model)  # LoRA B (and CASA o_proj, which text-only input never reaches)
    return model


def load_peft(family: str, directory) -> PeftModel:
    """PeftModel.from_pretrained on a fresh base, failing on peft's missing-keys warning."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        peft_model = PeftModel.from_pretrained(tiny_llm(family), directory)
    assert not [w for w in caught if "missing adapter keys" in str(w.message)]
    return peft_model.eval()


@pytest.mark.parametrize(("family", "targets"), CASES)
def test_peft_loads_it_with_no_missing_or_unexpected_key_and_same_logits(family, targets, tmp_path):
    model = wrapped(family, targets)
    with torch.no_grad():
        want = model(IDS).logits
        assert not torch.allclose(want, tiny_llm(family)(IDS).logits, atol=1e-4)  # LoRA matters
    out = save_peft_lora(model, tmp_path / "peft")
    assert sorted(p.name for p in out.iterdir()) == ["adapter_config.json", "adapter_model.safetensors"]

    peft_model = load_peft(family, out)
    saved = load_file(out / "adapter_model.safetensors")
    assert set(saved) == set(get_peft_model_state_dict(peft_model))  # what PeftModel.save_pretrained writes
    result = peft_model.load_adapter(out, adapter_name="again")  # the load result, with peft's own filtering
    assert result.missing_keys == [] and result.unexpected_keys == []
    with torch.no_grad():
        got = peft_model(IDS).logits
    torch.testing.assert_close(got, want, atol=1e-6, rtol=0)


@pytest.mark.parametrize(("family", "targets"), [("llama", ["q_proj", "v_proj"]), ("gpt2", None)])
def test_names_and_config_are_the_base_models(family, targets, tmp_path):
    model = wrapped(family, targets, name=f"tiny/{family}")
    out = save_peft_lora(model, tmp_path / "peft")
    keys = list(load_file(out / "adapter_model.safetensors"))
    assert all(k.startswith("base_model.model.") for k in keys)
    assert not [k for k in keys if ".sa." in k or ".default." in k or ".casa." in k]
    assert len(keys) == 2 * len(model.lora_targets)

    config = json.loads((out / "adapter_config.json").read_text())
    assert sorted(config["target_modules"]) == sorted(model.lora_targets)
    assert not [t for t in config["target_modules"] if ".sa." in t]
    base_modules = {n for n, _ in tiny_llm(family).named_modules()}
    assert set(config["target_modules"]) <= base_modules
    assert (config["r"], config["lora_alpha"], config["lora_dropout"]) == (4, 8.0, 0.0)
    assert config["fan_in_fan_out"] is (family == "gpt2")
    assert (config["bias"], config["task_type"], config["peft_type"]) == ("none", "CAUSAL_LM", "LORA")
    assert config["base_model_name_or_path"] == f"tiny/{family}"


def test_insertion_fusion_with_lora(tmp_path):
    model = wrapped("llama", None, fusion="insertion")
    with torch.no_grad():
        want = model(IDS).logits
    peft_model = load_peft("llama", save_peft_lora(model, tmp_path / "peft"))
    with torch.no_grad():
        torch.testing.assert_close(peft_model(IDS).logits, want, atol=1e-6, rtol=0)


def test_the_wrapped_model_is_unchanged(tmp_path):
    model = wrapped("qwen2", None)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    save_peft_lora(model, tmp_path / "peft")
    after = model.state_dict()
    assert list(after) == list(before)
    assert all(torch.equal(after[k], v) for k, v in before.items())


def test_refuses_a_model_without_lora_or_with_merged_lora(tmp_path):
    plain = casa_adapter.wrap(tiny_llm("llama"), vision=tiny_tower(), every=2)
    with pytest.raises(casa_adapter.AdapterError, match="has no LoRA"):
        save_peft_lora(plain, tmp_path / "a")
    merged = wrapped("llama", ["q_proj"])
    merged.merge_lora()
    with pytest.raises(casa_adapter.AdapterError, match="merged into the base weights"):
        save_peft_lora(merged, tmp_path / "b")
    assert list(tmp_path.iterdir()) == []  # nothing written, no temporary folder left


def test_writes_atomically_over_an_existing_directory(tmp_path):
    target = tmp_path / "peft"
    target.mkdir()
    (target / "stale.txt").write_text("old")
    save_peft_lora(wrapped("llama", ["q_proj"]), target)
    assert sorted(p.name for p in target.iterdir()) == ["adapter_config.json", "adapter_model.safetensors"]
    assert [p.name for p in tmp_path.iterdir()] == ["peft"]  # no .peft.tmp-* / .peft.old-* left
