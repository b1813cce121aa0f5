"""`casa-adapter export` from every source a training run leaves: periodic adapters, the final one, and the
Lightning resume checkpoint; every form loads back with the logits of the model it came from."""

import subprocess
import sys

import pytest
import torch
import transformers

import casa_adapter
from casa_adapter.backbone.base_models import load_base
from casa_adapter.export.command import main

from recipe_runs import make_demo_data, run_cli, tiny_recipe, write_recipe


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """A 4-step tiny training run with adapters every 2 steps and resume checkpoints every 2 steps."""
    root = tmp_path_factory.mktemp("export-run")
    data = make_demo_data(root, train=40, val=8)
    recipe = tiny_recipe(root / "run", data, max_steps=4)
    recipe["adapter"]["every_n_steps"] = 2
    recipe["adapter"]["keep_last"] = 5
    run_cli(["run", str(write_recipe(root / "r.yaml", recipe))])
    return root / "run"


def probe(model):
    torch.manual_seed(0)
    ids = torch.randint(4, 300, (1, 9))
    ids[0, 2] = model.image_token_id
    with torch.no_grad():
        return model(ids, images=[torch.rand(1, 3, 32, 32)]).logits, ids


def test_every_periodic_adapter_and_the_checkpoint_export_and_load(run, tmp_path, capsys):
    adapters = [*sorted((run / "adapter").glob("step-*")), run / "adapter" / "final"]
    assert [a.name for a in adapters] == ["step-000002", "step-000004", "final"]
    for adapter in adapters:
        assert main([str(adapter), "--out", str(tmp_path / adapter.name)]) == 0
        llm, _ = load_base("tiny")
        want, _ = probe(casa_adapter.load_adapter(adapter, llm).eval())
        got, _ = probe(transformers.AutoModelForImageTextToText.from_pretrained(tmp_path / adapter.name))
        assert torch.allclose(got, want, atol=1e-5)
    assert main([str(run / "ckpt" / "last.ckpt"), "--out", str(tmp_path / "from-ckpt"), "--merged"]) == 0
    from_ckpt, _ = probe(transformers.AutoModelForImageTextToText.from_pretrained(tmp_path / "from-ckpt"))
    final, _ = probe(transformers.AutoModelForImageTextToText.from_pretrained(tmp_path / "final"))
    assert torch.allclose(from_ckpt, final, atol=1e-5)  # the last checkpoint holds the final weights
    processor = transformers.AutoProcessor.from_pretrained(tmp_path / "from-ckpt")  # the recipe's tokenizer
    assert processor.image_token_id == 384
    assert "wrote" in capsys.readouterr().out


FRESH_PEFT = """
import sys, torch, transformers
from peft import PeftModel
base, peft_dir, text_dir, ids, out = sys.argv[1:6]
ids = torch.load(ids)
with torch.no_grad():
    plain = transformers.AutoModelForCausalLM.from_pretrained(base)
    peft_logits = PeftModel.from_pretrained(plain, peft_dir)(ids).logits
    text_logits = transformers.AutoModelForCausalLM.from_pretrained(text_dir)(ids).logits
assert "casa_adapter" not in sys.modules
torch.save({"peft": peft_logits, "text": text_logits}, out)
"""


def test_peft_and_text_llm_forms_load_without_casa_adapter(run, tmp_path):
    final = run / "adapter" / "final"
    assert main([str(final), "--out", str(tmp_path / "peft"), "--peft"]) == 0
    assert main([str(final), "--out", str(tmp_path / "text"), "--text-llm"]) == 0
    load_base("tiny")[0].save_pretrained(tmp_path / "base")  # the base as a plain folder
    model = casa_adapter.load_adapter(final, load_base("tiny")[0]).eval()
    ids = torch.randint(4, 300, (1, 12))
    torch.save(ids, tmp_path / "ids.pt")
    with torch.no_grad():
        want = model(ids).logits  # text only
    args = [str(tmp_path / x) for x in ("base", "peft", "text", "ids.pt", "out.pt")]
    done = subprocess.run(
        [sys.executable, "-c", FRESH_PEFT, *args],
        capture_output=True,
        text=True,
        timeout=300,
        env={"HF_HUB_OFFLINE": "1", "PATH": "/usr/bin:/bin"},
    )
    assert done.returncode == 0, done.stderr[-3000:]
    got = torch.load(tmp_path / "out.pt")
    assert torch.allclose(got["peft"], want, atol=1e-5) and torch.allclose(got["text"], want, atol=1e-5)


def test_clear_errors(tmp_path, capsys):
    assert main([str(tmp_path / "nothing"), "--out", str(tmp_path / "o")]) == 2
    assert "neither an adapter directory" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main([str(tmp_path), "--out", str(tmp_path / "o"), "--merged", "--peft"])
