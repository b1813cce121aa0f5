"""Shared set-up of the eval tests: a tiny demo set and a saved random adapter (module-scoped fixtures),
and the readers of its outputs."""

from __future__ import annotations

import json
import tarfile
from pathlib import Path

import pytest

import casa_adapter
from casa_adapter.backbone.base_models import load_base
from casa_adapter.data.make_demo import DemoSettings, make_demo

from conftest import randomize_new_params

QTYPES = ("color", "count", "compare", "video_color")
N_VAL = 24
KEYS = ["id", "question", "answers", "prediction", "qtype", "source"]
TOKENS = 6
ROOT = Path(__file__).resolve().parents[2]


def read_tar(path: Path) -> dict[str, dict[str, bytes]]:
    """{key: {ext: bytes}} of a WebDataset tar, in order."""
    samples: dict[str, dict[str, bytes]] = {}
    with tarfile.open(path) as tf:
        for info in tf:
            key, ext = info.name.split(".", 1)
            samples.setdefault(key, {})[ext] = tf.extractfile(info).read()
    return samples


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


@pytest.fixture(scope="module")
def demo(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("eval") / "demo"
    make_demo(DemoSettings(out=str(out), train=8, val=N_VAL, image_size=32, qtypes=QTYPES), show_progress=False)
    return out


@pytest.fixture(scope="module")
def adapter(demo):
    """(adapter dir, the wrapped model, its tokenizer)."""
    llm, tokenizer = load_base("tiny")
    model = casa_adapter.wrap(
        llm, vision=casa_adapter.VisionSettings("siglip-tiny", pretrained=False, image_size=32), every=2
    )
    randomize_new_params(model, scale=0.5)
    model.save_adapter(str(demo.parent / "adapter"))
    return demo.parent / "adapter", model.eval(), tokenizer
