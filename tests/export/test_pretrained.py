"""`save_pretrained` / `AutoModelForImageTextToText.from_pretrained` in both forms, in a fresh process: the same
logits and the same greedy `generate` as the model in memory; `AutoProcessor`; registration; clear errors."""

import json
import subprocess
import sys
import textwrap

import pytest
import torch
import transformers

import casa_adapter
from casa_adapter.backbone.base_models import tiny_chat_tokenizer
from casa_adapter.backbone.base_models import tiny_llm as tiny_base
from casa_adapter.export.hf_config import MODEL_TYPE

from conftest import randomize_new_params, tiny_llm

FRESH = textwrap.dedent("""
    import sys, torch, transformers
    import casa_adapter  # registers the Auto classes
    folder, inputs, out = sys.argv[1:4]
    x = torch.load(inputs)
    model = transformers.AutoModelForImageTextToText.from_pretrained(folder)
    with torch.no_grad():
        logits = model(x["ids"], images=x["images"]).logits
    generated = model.generate(x["ids"], images=x["images"], max_new_tokens=6, do_sample=False)
    torch.save({"logits": logits, "generated": generated, "class": type(model).__name__}, out)
""")


def trained(tmp_path, family: str, lora: bool = True):
    """A wrapped model on a base saved to `tmp_path/base` (so the adapter form finds it offline), trained a bit."""
    tiny_llm(family).save_pretrained(tmp_path / "base")
    llm = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "base")
    model = casa_adapter.wrap(
        llm,
        vision="siglip-tiny",
        pretrained=False,
        every=2,
        unfreeze_last=1,
        train_marker=True,  # a marker row the merged and adapter forms must carry
        lora=casa_adapter.LoraSettings(rank=4) if lora else None,
    )
    randomize_new_params(model)
    return model.eval()


def inputs(model):
    torch.manual_seed(4)
    ids = torch.randint(4, 90, (2, 11))
    ids[0, 2] = ids[1, 4] = ids[1, 5] = model.image_token_id
    return {"ids": ids, "images": [torch.rand(1, 3, 64, 64), torch.rand(2, 3, 64, 64)]}


def in_fresh_process(tmp_path, folder, x) -> dict:
    torch.save(x, tmp_path / "inputs.pt")
    # the same thread count as here: CPU matmuls split their sums by thread, which moves logits by ~1e-5
    env = {"HF_HUB_OFFLINE": "1", "PATH": "/usr/bin:/bin", "OMP_NUM_THREADS": str(torch.get_num_threads())}
    done = subprocess.run(
        [sys.executable, "-c", FRESH, str(folder), str(tmp_path / "inputs.pt"), str(tmp_path / "out.pt")],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return torch.load(tmp_path / "out.pt")


@pytest.mark.parametrize("merged", [False, True], ids=["adapter", "merged"])
@pytest.mark.parametrize("family", ["llama", "qwen2", "gpt2"])
def test_round_trip_in_a_fresh_process(tmp_path, family, merged):
    """Adapter form: the model itself. Merged form: the model with its LoRA folded into the base weights, which
    `merge_lora` in memory gives too (folding changes float rounding: up to ~2e-5 here against the unmerged model,
    whose random LoRA is far larger than a trained one)."""
    model = trained(tmp_path, family)
    x = inputs(model)
    model.save_pretrained(tmp_path / "out", merged=merged)
    if merged:
        with torch.no_grad():
            unmerged = model(x["ids"], images=x["images"]).logits
        model.merge_lora()
    with torch.no_grad():
        want = model(x["ids"], images=x["images"]).logits
    generated = model.generate(x["ids"], images=x["images"], max_new_tokens=6, do_sample=False)
    got = in_fresh_process(tmp_path, tmp_path / "out", x)
    assert got["class"] == "CasaModel"
    assert torch.allclose(got["logits"], want, atol=1e-5), (got["logits"] - want).abs().max()
    assert torch.equal(got["generated"], generated)
    if merged:
        assert torch.allclose(got["logits"], unmerged, atol=1e-4), (got["logits"] - unmerged).abs().max()


def test_merged_folder_needs_no_base_and_adapter_folder_names_its_base(tmp_path):
    model = trained(tmp_path, "llama")
    model.save_pretrained(tmp_path / "merged", merged=True)
    model.save_pretrained(tmp_path / "adapter")
    (tmp_path / "base" / "model.safetensors").unlink()  # the base is gone
    x = inputs(model)
    loaded = transformers.AutoModelForImageTextToText.from_pretrained(tmp_path / "merged")
    with torch.no_grad():  # merged weights against the unmerged model: float rounding of W + BA (1.3e-5 seen)
        assert torch.allclose(
            loaded(x["ids"], images=x["images"]).logits, model(x["ids"], images=x["images"]).logits, atol=1e-4
        )
    with pytest.raises(FileNotFoundError, match=r"base model .*base.* cannot be loaded here.*pass base="):
        transformers.AutoModelForImageTextToText.from_pretrained(tmp_path / "adapter")


def test_config_has_no_auto_map_and_a_namespaced_type(tmp_path):
    model = trained(tmp_path, "llama", lora=False)
    model.save_pretrained(tmp_path / "out", merged=True)
    config = json.loads((tmp_path / "out" / "config.json").read_text())
    assert config["model_type"] == MODEL_TYPE and "auto_map" not in config
    assert MODEL_TYPE not in transformers.models.auto.configuration_auto.CONFIG_MAPPING_NAMES  # not a built-in
    card = (tmp_path / "out" / "README.md").read_text()
    assert card.startswith("---\nlibrary_name: casa-adapter") and "| LoRA | none |" in card


def test_registration_is_idempotent():
    import importlib

    from casa_adapter.export.auto import register

    register()
    register()
    importlib.reload(casa_adapter)
    assert transformers.AutoConfig.for_model(MODEL_TYPE).model_type == MODEL_TYPE


def test_auto_processor_gives_inputs_that_generate_takes(tmp_path):
    model = casa_adapter.wrap(tiny_base(), vision="siglip-tiny", pretrained=False)  # sized for the tiny tokenizer
    tokenizer = tiny_chat_tokenizer()
    model.save_pretrained(tmp_path / "out", tokenizer=tokenizer)
    processor = transformers.AutoProcessor.from_pretrained(tmp_path / "out")
    assert isinstance(processor, casa_adapter.Processor) and processor.image_token_id == model.image_token_id
    chat = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "What is it?"}]}]
    image = torch.rand(3, 80, 70)
    batch = processor.collate([processor(chat, [image], add_generation_prompt=True)], padding_side="left")
    want = casa_adapter.Processor.from_model(model, tokenizer)(chat, [image], add_generation_prompt=True)
    assert torch.equal(batch["input_ids"][0], want["input_ids"]) and torch.equal(batch["images"][0], want["images"])
    ready = processor(chat, [image], add_generation_prompt=True, return_tensors="pt")
    assert "labels" not in ready and torch.equal(ready["input_ids"][0], want["input_ids"])
    out = model.generate(**ready, max_new_tokens=3, do_sample=False)  # no casa_adapter-specific call
    assert out.shape == (1, ready["input_ids"].shape[1] + 3)
    text = processor("<image>\nWhat is it?", [image], add_generation_prompt=True, return_tensors="pt")
    assert torch.equal(text["input_ids"], ready["input_ids"])  # a plain string is one user message


def test_newer_folder_version_and_foreign_config_are_refused(tmp_path):
    model = trained(tmp_path, "llama", lora=False)
    model.save_pretrained(tmp_path / "out")
    path = tmp_path / "out" / "config.json"
    config = json.loads(path.read_text())
    path.write_text(json.dumps({**config, "folder_format_version": 99}))
    with pytest.raises(casa_adapter.AdapterError, match="newer than this casa_adapter reads"):
        transformers.AutoModelForImageTextToText.from_pretrained(tmp_path / "out")
    from casa_adapter.export.load import load_pretrained

    path.write_text(json.dumps({**config, "model_type": "llama"}))
    with pytest.raises(casa_adapter.AdapterError, match="is not 'casa_adapter_vlm'"):
        load_pretrained(tmp_path / "out")


def test_dtype_and_device_map_are_honoured(tmp_path):
    model = trained(tmp_path, "llama")
    model.save_pretrained(tmp_path / "out", merged=True)
    loaded = transformers.AutoModelForImageTextToText.from_pretrained(
        tmp_path / "out", dtype=torch.bfloat16, device_map="cpu"
    )
    assert {p.dtype for p in loaded.parameters()} == {torch.bfloat16} and loaded.device.type == "cpu"
    with pytest.raises(ValueError, match="one device"):
        transformers.AutoModelForImageTextToText.from_pretrained(tmp_path / "out", device_map={"a": "cpu", "b": 0})


def test_wrong_base_and_damaged_files_are_named(tmp_path):
    model = trained(tmp_path, "llama")
    model.save_pretrained(tmp_path / "adapter")
    model.save_pretrained(tmp_path / "merged", merged=True)
    tiny_llm("llama", seed=9).save_pretrained(tmp_path / "base")  # other weights where the base was
    with pytest.raises(casa_adapter.AdapterError) as err:
        transformers.AutoModelForImageTextToText.from_pretrained(tmp_path / "adapter")
    assert model.base_fingerprint in str(err.value) and "has fingerprint sampled-v1:" in str(err.value)
    weights = tmp_path / "merged" / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    with pytest.raises(casa_adapter.AdapterError, match="cannot read safetensors"):
        transformers.AutoModelForImageTextToText.from_pretrained(tmp_path / "merged")
    adapter_weights = tmp_path / "adapter" / "adapter.safetensors"
    adapter_weights.write_bytes(adapter_weights.read_bytes()[:100])
    with pytest.raises(casa_adapter.AdapterError, match="truncated or was modified"):
        transformers.AutoModelForImageTextToText.from_pretrained(tmp_path / "adapter", base=str(tmp_path / "base"))
