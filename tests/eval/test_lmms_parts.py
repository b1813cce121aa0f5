"""The lmms-eval plugin's parts that need no lmms-eval: request prompts, batched log-likelihoods, settings,
and that `import casa_adapter` (and `casa_adapter.eval`) never imports lmms-eval."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch
from PIL import Image

import casa_adapter
from casa_adapter.backbone.base_models import load_base
from casa_adapter.eval.lmms.likelihood import continuation_logprobs
from casa_adapter.eval.lmms.prompts import flatten, user_message
from casa_adapter.eval.lmms.settings import LmmsSettings

from conftest import randomize_new_params

RED, BLUE = Image.new("RGB", (8, 8), "red"), Image.new("RGB", (8, 8), "blue")


def test_user_message_prepends_placeholders():
    text, images = user_message("What is it?", [RED, BLUE], fps=2.0, max_frames=4)
    assert text == "<image><image>\nWhat is it?" and len(images) == 2
    assert user_message("No image", [], 2.0, 4) == ("No image", [])
    assert flatten([[RED], (BLUE, None)]) == [RED, BLUE]


def test_user_message_fills_placeholders_in_order(tmp_path):
    path = tmp_path / "blue.png"
    BLUE.save(path)
    text, images = user_message("A: <image> B: <image> same?", [RED, str(path)], 2.0, 4)
    assert text == "A: <image> B: <image> same?"
    assert [im.getpixel((0, 0)) for im in images] == [(255, 0, 0), (0, 0, 255)]
    with pytest.raises(ValueError, match="do not match"):
        user_message("only <image>", [RED, BLUE], 2.0, 4)
    with pytest.raises(ValueError, match="unsupported visual of type dict"):
        user_message("audio", [{"array": [0.0]}], 2.0, 4)


def test_settings_errors():
    with pytest.raises(ValueError, match="unknown model_args \\['pretrained'\\]"):
        LmmsSettings.from_args({"adapter": "a", "pretrained": "x"})
    with pytest.raises(ValueError, match="give --model_args adapter=DIR"):
        LmmsSettings.from_args({"base": "tiny"})
    with pytest.raises(ValueError, match="not 'auto'"):
        LmmsSettings(adapter="a", batch_size="auto")
    with pytest.raises(ValueError, match="unknown protocol"):
        LmmsSettings(adapter="a", protocol="paper")
    assert LmmsSettings(adapter=7, batch_size="4").batch_size == 4  # lmms-eval's parsed "4" and "7"


def test_continuation_logprobs_batched_equal_one_forward_each():
    """Two prompts with images of different counts and continuations of different lengths, right-padded
    into one batch: each score equals the sum of log-probs of one unpadded forward."""
    llm, tokenizer = load_base("tiny")
    model = casa_adapter.wrap(llm, vision=casa_adapter.VisionSettings("siglip-tiny", pretrained=False, image_size=32))
    randomize_new_params(model, scale=0.5)
    model.eval()
    processor = casa_adapter.Processor.from_model(model, tokenizer)
    prompts = [
        processor("<image>\nColour?", [RED], add_generation_prompt=True),
        processor("<image><image>\nSame colour?", [RED, BLUE], add_generation_prompt=True),
    ]
    continuations = [tokenizer.encode(" red", add_special_tokens=False), tokenizer.encode(" no they differ")]
    assert len(continuations[0]) != len(continuations[1])
    scores = continuation_logprobs(model, processor, prompts, continuations)
    for (total, greedy), prompt, cont in zip(scores, prompts, continuations):
        ids = torch.cat([prompt["input_ids"], torch.tensor(cont)])[None]  # (1, P + C)
        with torch.no_grad():
            logprobs = torch.log_softmax(model(ids, images=[prompt["images"]]).logits[0].float(), -1)  # (P + C, V)
        start = len(prompt["input_ids"])
        rows = logprobs[start - 1 : start - 1 + len(cont)]  # (C, V): the rows that predict the continuation
        assert total == pytest.approx(float(rows[torch.arange(len(cont)), cont].sum()), abs=1e-4)
        assert greedy == bool((rows.argmax(-1) == torch.tensor(cont)).all())
    with pytest.raises(ValueError, match="no tokens"):
        continuation_logprobs(model, processor, prompts[:1], [[]])


def test_importing_casa_adapter_does_not_import_lmms_eval():
    code = "import sys, casa_adapter, casa_adapter.eval, casa_adapter.eval.lmms; print('lmms_eval' in sys.modules)"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "False"
