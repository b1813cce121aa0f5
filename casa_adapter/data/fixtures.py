"""Tiny synthetic shards for tests and examples: good samples, and a corrupt set with every bad reason.

counts = write_corrupt_set("/tmp/bad")      # {"good": 3, "corrupt_image": 2, ...}
$ casa-adapter data check /tmp/bad          # reports the same counts (too_long needs --tokenizer)
"""

from __future__ import annotations

import io
import os

from PIL import Image

from casa_adapter.data.chat import dumps
from casa_adapter.data.demo_render import COLORS
from casa_adapter.data.shards import index_tar
from casa_adapter.data.writer import ShardSink

COLOR_NAMES = tuple(COLORS)


def image_bytes(color: str, size: int = 16, fmt: str = "PNG") -> bytes:
    out = io.BytesIO()
    Image.new("RGB", (size, size), COLORS[color]).save(out, format=fmt)
    return out.getvalue()


def qa_json(question: str, answer: str, **extra) -> bytes:
    return dumps(
        {"messages": [{"role": "user", "content": question}, {"role": "assistant", "content": answer}], **extra}
    )


def colour_sample(i: int, size: int = 16, n_images: int = 1) -> dict[str, bytes]:
    """Sample i of a toy colour QA with 1 or more images (answer: the last image's colour)."""
    colors = [COLOR_NAMES[(i + k) % len(COLOR_NAMES)] for k in range(n_images)]
    question = "<image>" * n_images + f"\nWhat colour is image {n_images}? (sample {i})"
    members = {"json": qa_json(question, colors[-1] * (1 + i % 3), id=f"s{i}")}
    if n_images == 1:
        return {**members, "png": image_bytes(colors[0], size)}
    return {**members, **{f"{k}.png": image_bytes(c, size) for k, c in enumerate(colors)}}


def write_good_shards(out: str, n: int, maxcount: int = 10, size: int = 16, prefix: str = "s") -> list[str]:
    """n toy samples (1-3 images each, keys PREFIX000000...) in shards of `maxcount`; returns the keys."""
    keys = []
    with ShardSink(out, maxcount) as sink:
        for i in range(n):
            keys.append(f"{prefix}{i:06d}")
            sink.write(keys[-1], colour_sample(i, size, n_images=1 + i % 3))
    return keys


def _bad_samples(size: int) -> list[tuple[str, str, dict[str, bytes]]]:
    """(reason, key, members) for one bad sample per reason that lives inside a complete tar."""
    png = image_bytes("red", size)
    jpeg = image_bytes("blue", size, "JPEG")
    good_q = "<image>\nWhat colour is it?"
    return [
        ("corrupt_image", "corrupt_png", {"json": qa_json(good_q, "red"), "png": png[:20] + b"\0" * 40 + png[60:]}),
        ("corrupt_image", "truncated_jpeg", {"json": qa_json(good_q, "blue"), "jpg": jpeg[: len(jpeg) // 2]}),
        ("missing_image", "no_image", {"json": qa_json(good_q, "red")}),
        (
            "missing_image",
            "gap_in_numbers",
            {"json": qa_json("<image><image>\nWhich?", "red"), "0.png": png, "2.png": png},
        ),
        (
            "image_count_mismatch",
            "two_images_one_placeholder",
            {"json": qa_json(good_q, "red"), "0.png": png, "1.png": png},
        ),
        ("missing_json", "image_only", {"png": png}),
        ("empty_json", "empty", {"json": b"", "png": png}),
        ("invalid_json", "broken", {"json": b'{"messages": [', "png": png}),
        ("not_utf8", "latin1_bytes", {"json": '{"messages": "caf\u00e9"}'.encode("latin-1"), "png": png}),
        (
            "not_utf8",
            "lone_surrogate",
            {
                "json": b'{"messages": [{"role": "user", "content": "<image>\\ud800"},'
                b' {"role": "assistant", "content": "x"}]}',
                "png": png,
            },
        ),
        ("invalid_chat", "no_chat", {"json": b'{"caption": "a red square"}', "png": png}),
        (
            "no_assistant_turn",
            "user_only",
            {"json": dumps({"messages": [{"role": "user", "content": good_q}]}), "png": png},
        ),
        ("too_long", "long_question", {"json": qa_json(good_q + " please" * 400, "red"), "png": png}),
    ]


def write_corrupt_set(out: str, size: int = 16, n_good: int = 3) -> dict[str, int]:
    """A folder with `bad-000000.tar` (good samples mixed with one bad sample per reason) and a
    truncated `cut-000000.tar`. Returns the expected counts by reason, and `good`.

    `too_long` (a 400-word question) is only bad with a tokenizer and a budget under ~1000 tokens."""
    counts: dict[str, int] = {"good": 0}
    os.makedirs(out, exist_ok=True)
    with ShardSink(out, maxcount=10_000, prefix="bad") as sink:
        for i, (reason, key, members) in enumerate(_bad_samples(size)):
            if i < n_good:
                sink.write(f"good{i}", colour_sample(i, size))
                counts["good"] += 1
            sink.write(key, members)
            counts[reason] = counts.get(reason, 0) + 1
    cut = os.path.join(out, "cut-000000.tar")
    with ShardSink(out, maxcount=10_000, prefix="cut") as sink:
        for i in range(4):
            sink.write(f"cut{i}", colour_sample(i, size))
    _, offset, length = index_tar(cut)[2].members[-1]
    with open(cut, "r+b") as f:
        f.truncate(offset + length // 2)  # the stream ends inside the third sample; the fourth is lost
    counts["good"] += 2
    counts["truncated_tar"] = 1
    return counts
