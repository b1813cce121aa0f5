"""The sample format: json forms -> chats, video frame sampling, streams, labels, the length policy."""

from __future__ import annotations

import pytest
import torch

from casa_adapter.data.chat import SampleError, dumps, parse_json, read_chat, select_frames
from casa_adapter.data.check import to_tensor
from casa_adapter.data.decode import DecodeSettings, decode_image, encode, truncate, validate
from casa_adapter.data.fixtures import image_bytes
from casa_adapter.data.shards import SampleRef, split_name
from casa_adapter.processor import IGNORE_INDEX, Processor

from tiny_tokenizers import tiny_chat_tokenizer


@pytest.fixture(scope="module")
def processor() -> Processor:
    tok = tiny_chat_tokenizer()
    return Processor(tok, image_token_id=len(tok), image_transform=to_tensor)


def chat_of(obj: dict, exts: list[str], fps: float = 2.0, max_frames: int = 16):
    return read_chat(obj, exts, fps, max_frames)


def test_key_and_extension_follow_webdataset() -> None:
    assert split_name("dir/abc.0.jpg") == ("dir/abc", "0.jpg")
    assert split_name("abc.JSON") == ("abc", "json")
    assert split_name("noext") is None


def test_llava_and_messages_forms_give_the_same_chat() -> None:
    llava = {"conversations": [{"from": "human", "value": "<image>\nQ?"}, {"from": "gpt", "value": "A"}]}
    msgs = {"messages": [{"role": "user", "content": "<image>\nQ?"}, {"role": "assistant", "content": "A"}]}
    a, b = chat_of(llava, ["json", "jpg"]), chat_of(msgs, ["json", "jpg"])
    assert a.messages == b.messages and a.image_exts == b.image_exts == ["jpg"]


def test_numbered_images_are_ordered_numerically() -> None:
    chat = chat_of(
        {"messages": [{"role": "user", "content": "<image>" * 11}, {"role": "assistant", "content": "x"}]},
        ["json"] + [f"{k}.png" for k in (10, 2, 0, 1, 3, 4, 5, 6, 7, 8, 9)],
    )
    assert chat.image_exts == [f"{k}.png" for k in range(11)]


def test_video_frames_are_sampled_at_the_chosen_fps() -> None:
    times = [i * 0.25 for i in range(9)]  # 4 fps, 2 s
    assert select_frames(times, fps=1.0, max_frames=16) == [0, 4, 8]
    assert select_frames(times, fps=4.0, max_frames=3) == [0, 4, 8]
    obj = {
        "video": {"timestamps": times},
        "messages": [{"role": "user", "content": "<video>\nWhat moves?"}, {"role": "assistant", "content": "a ball"}],
    }
    chat = chat_of(obj, ["json"] + [f"{i}.jpg" for i in range(9)], fps=1.0)
    assert chat.image_exts == ["0.jpg", "4.jpg", "8.jpg"]
    assert chat.messages[0]["content"] == "[0.0s]<image>[1.0s]<image>[2.0s]<image>\nWhat moves?"


def test_stream_pairs_each_frame_with_the_text_after_it() -> None:
    obj = {
        "prompt": "Commentary:",
        "stream": [{"t": 0, "text": "kick off"}, {"t": 1, "text": ""}, {"t": 2, "text": "goal"}, {"t": 3, "text": ""}],
    }
    chat = chat_of(obj, ["json", "0.jpg", "1.jpg", "2.jpg", "3.jpg"])
    assert [m["content"] for m in chat.messages] == ["Commentary:\n<image>", "kick off", "<image><image>", "goal"]
    assert chat.image_exts == ["0.jpg", "1.jpg", "2.jpg"]  # the silent last frame is dropped


@pytest.mark.parametrize(
    "raw, reason",
    [
        (None, "missing_json"),
        (b"  ", "empty_json"),
        (b"{}", "empty_json"),
        (b"{", "invalid_json"),
        (b"\xff{}", "not_utf8"),
        (b"[1]", "invalid_chat"),
    ],
)
def test_parse_json_reasons(raw, reason) -> None:
    with pytest.raises(SampleError) as err:
        parse_json(raw)
    assert err.value.reason == reason


def test_corrupt_image_is_a_sample_error() -> None:
    assert decode_image(image_bytes("red"), "png").size == (16, 16)
    with pytest.raises(SampleError, match="corrupt_image"):
        decode_image(image_bytes("red", fmt="JPEG")[:200], "jpg")


def test_labels_cover_assistant_turns_only(processor: Processor) -> None:
    obj = {
        "messages": [
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": "<image>\nColour?"},
            {"role": "assistant", "content": "red"},
            {"role": "user", "content": "Sure?"},
            {"role": "assistant", "content": "yes"},
        ]
    }
    ref = SampleRef("mem", "k", ())
    chat, images = validate(ref, {"json": dumps(obj), "png": image_bytes("red")}, DecodeSettings(image_tokens=4))
    sample = encode(processor, chat, images, DecodeSettings(image_tokens=4), "src", "k")
    tok = processor.tokenizer
    assert sample.images.shape == (1, 3, 16, 16) and int((sample.input_ids == processor.image_token_id).sum()) == 1
    trained = sample.labels != IGNORE_INDEX
    assert torch.equal(sample.labels[trained], sample.input_ids[trained])
    assert tok.decode(sample.input_ids[trained]) == "red<|im_end|>\nyes<|im_end|>\n"


def _long_sample(processor: Processor, n_images: int = 3):
    question = "".join(f"<image> picture {k} of the set." for k in range(n_images)) + " Which colour?"
    chat = read_chat(
        {"messages": [{"role": "user", "content": question}, {"role": "assistant", "content": "red " * 30}]},
        ["json"] + [f"{k}.png" for k in range(n_images)],
        2.0,
        16,
    )
    images = [decode_image(image_bytes("red"), "png") for _ in range(n_images)]
    return chat, images


def test_truncation_keeps_whole_images_and_fits_the_budget(processor: Processor) -> None:
    chat, images = _long_sample(processor)
    full = encode(processor, chat, images, DecodeSettings(image_tokens=10, max_tokens=10_000), "s", "k")
    budget = full.cost(10) - 15
    cut = encode(processor, chat, images, DecodeSettings(image_tokens=10, max_tokens=budget), "s", "k")
    assert cut.truncated and cut.cost(10) <= budget
    assert torch.equal(cut.input_ids, full.input_ids[: len(cut.input_ids)])
    assert cut.n_images == int((cut.input_ids == processor.image_token_id).sum()) == 3
    assert torch.equal(cut.images, full.images[: cut.n_images])


def test_truncation_drops_images_past_the_cut_and_a_trailing_marker(processor: Processor) -> None:
    chat, images = _long_sample(processor)
    full = encode(processor, chat, images, DecodeSettings(image_tokens=1, max_tokens=10_000), "s", "k")
    marker = processor.image_token_id
    last_marker = int((full.input_ids == marker).nonzero()[-1])
    full.labels[: last_marker + 2] = 5  # pretend text before the last image is trained, so a cut there keeps labels
    cut = truncate(full, marker, DecodeSettings(image_tokens=1, max_tokens=last_marker + 2 + 2))  # cut at the marker
    assert cut.n_images == 2 and int(cut.input_ids[-1]) != marker
    assert int((cut.input_ids == marker).sum()) == 2


def test_overlength_drop_and_nothing_left_are_too_long(processor: Processor) -> None:
    chat, images = _long_sample(processor)
    with pytest.raises(SampleError, match="too_long"):
        encode(processor, chat, images, DecodeSettings(image_tokens=10, max_tokens=60, overlength="drop"), "s", "k")
    with pytest.raises(SampleError, match="too_long"):  # the answer comes after the budget
        encode(processor, chat, images, DecodeSettings(image_tokens=10, max_tokens=40), "s", "k")
