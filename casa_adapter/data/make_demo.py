"""`make-demo`: the embedded default dataset, generated deterministically from a seed.

A fine-grained visual QA task (see `demo_tasks.py`) written as WebDataset shards:

    OUT/train/shard-000000.tar ...   `--train` samples
    OUT/val/shard-000000.tar ...     `--val` samples
    OUT/meta.json                    settings, per-type answers / chance / counts, text-only baseline

Sample i of a split has type `qtypes[i mod n]`; answers are balanced exactly within each
block of `len(answers)` samples of a type (a seeded permutation per block). A sample is
`KEY.json` (`id`, `qtype`, `messages`, `answers`, and `video.timestamps` for frame
sequences) plus `KEY.png` or numbered `KEY.0.png, KEY.1.png, ...`.
"""

from __future__ import annotations

import json
import os
import random
from collections import Counter, defaultdict
from dataclasses import asdict, dataclass

from casa_adapter.data.chat import dumps
from casa_adapter.data.demo_render import png_bytes
from casa_adapter.data.demo_tasks import TASKS
from casa_adapter.data.writer import ShardSink
from casa_adapter.progress import progress_bar

FORMAT = "casa-demo/1"


@dataclass
class DemoSettings:
    """What `make-demo` generates."""

    out: str
    """Output folder (gets `train/`, `val/` and `meta.json`)."""

    seed: int = 0
    """Same seed, same settings: byte-identical shards."""

    train: int = 20000
    """Training samples."""

    val: int = 1000
    """Validation samples (drawn with other seeds than training)."""

    image_size: int = 64
    """Side of the square images in pixels."""

    qtypes: tuple[str, ...] = tuple(TASKS)
    """Question types to include (keys of `demo_tasks.TASKS`), in equal shares."""

    maxcount: int = 1000
    """Samples per shard."""

    def __post_init__(self) -> None:
        unknown = sorted(set(self.qtypes) - set(TASKS))
        if unknown or not self.qtypes:
            raise ValueError(f"unknown or no question types {unknown or list(self.qtypes)}; known: {sorted(TASKS)}")
        if self.image_size < 16 or self.train < 0 or self.val < 0:
            raise ValueError(f"image_size must be >= 16 and sample counts >= 0: {self}")


def balanced_answer(settings: DemoSettings, split: str, qtype: str, j: int) -> str:
    """Answer of the j-th sample of `qtype`: each block of len(answers) samples has every answer once."""
    answers = TASKS[qtype].answers
    block, within = divmod(j, len(answers))
    perm = list(range(len(answers)))
    random.Random(f"{settings.seed}/{split}/{qtype}/{block}").shuffle(perm)
    return answers[perm[within]]


def demo_sample(settings: DemoSettings, split: str, i: int) -> tuple[str, dict[str, bytes], dict]:
    """(key, members, json record) of sample i of `split`."""
    qtype = settings.qtypes[i % len(settings.qtypes)]
    answer = balanced_answer(settings, split, qtype, i // len(settings.qtypes))
    item = TASKS[qtype].make(random.Random(f"{settings.seed}/{split}/{i}"), answer, settings.image_size)
    key = f"{split}-{i:06d}"
    record: dict = {
        "id": key,
        "qtype": qtype,
        "messages": [{"role": "user", "content": item.question}, {"role": "assistant", "content": answer}],
        "answers": [answer, *item.aliases],
    }
    if item.timestamps is not None:
        record["video"] = {"timestamps": item.timestamps}
    if len(item.images) == 1 and item.timestamps is None:
        members = {"png": png_bytes(item.images[0])}
    else:
        members = {f"{k}.png": png_bytes(image) for k, image in enumerate(item.images)}
    return key, {"json": dumps(record), **members}, record


def _write_split(settings: DemoSettings, split: str, n: int, show: bool) -> list[dict]:
    records = []
    with (
        ShardSink(os.path.join(settings.out, split), settings.maxcount) as sink,
        progress_bar(f"make-demo {split}", n, show) as advance,
    ):
        for i in range(n):
            key, members, record = demo_sample(settings, split, i)
            sink.write(key, members)
            records.append(record)
            advance()
    return records


def text_only_accuracy(train: list[dict], val: list[dict]) -> dict[str, float]:
    """Per type: val accuracy of the best text-only rule (majority train answer of each question text)."""
    votes: dict[str, Counter] = defaultdict(Counter)
    for r in train:
        votes[r["messages"][0]["content"]][r["answers"][0]] += 1
    hits: dict[str, list[bool]] = defaultdict(list)
    for r in val:
        guess = votes[r["messages"][0]["content"]].most_common(1)
        hits[r["qtype"]].append(bool(guess) and guess[0][0] == r["answers"][0])
    return {q: round(sum(h) / len(h), 4) for q, h in sorted(hits.items())}


def make_demo(settings: DemoSettings, show_progress: bool = True) -> dict:
    """Write the demo dataset; returns (and writes) its `meta.json` content."""
    train = _write_split(settings, "train", settings.train, show_progress)
    val = _write_split(settings, "val", settings.val, show_progress)
    meta = {
        "format": FORMAT,
        "settings": {**{k: v for k, v in asdict(settings).items() if k != "out"}, "qtypes": list(settings.qtypes)},
        "qtypes": {
            q: {
                "answers": list(TASKS[q].answers),
                "chance": round(TASKS[q].chance, 4),
                "train": sum(r["qtype"] == q for r in train),
                "val": sum(r["qtype"] == q for r in val),
            }
            for q in settings.qtypes
        },
        "chance": round(sum(TASKS[q].chance for q in settings.qtypes) / len(settings.qtypes), 4),
        "text_only_val_accuracy": text_only_accuracy(train, val),
    }
    with open(os.path.join(settings.out, "meta.json"), "w") as f:
        json.dump(meta, f, indent=2)
    return meta


def ensure_demo(settings: DemoSettings) -> dict:
    """The demo set at `settings.out`: generated when missing, checked against `settings` when present."""
    meta_path = os.path.join(settings.out, "meta.json")
    if not os.path.exists(meta_path):
        print(f"generating the demo dataset in {settings.out} (first use) ...")
        return make_demo(settings)
    with open(meta_path) as f:
        meta = json.load(f)
    wanted = json.loads(json.dumps({k: v for k, v in asdict(settings).items() if k != "out"}))
    found = {k: v for k, v in meta.get("settings", {}).items() if k != "out"}
    if found != wanted:
        raise ValueError(
            f"{settings.out} holds a demo set made with other settings ({found}) than asked "
            f"({wanted}); delete the folder or choose another `out`"
        )
    return meta
