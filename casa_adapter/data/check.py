"""`casa-adapter data check`: read every sample of some shards once, count good and bad by reason.

Without a tokenizer the check covers everything but the token budget (json, chat form,
assistant turn, image count, image decoding, tar truncation); with one (`--tokenizer DIR`, a
local Hugging Face tokenizer folder with a chat template) samples also go through the
`Processor` and the length policy, exactly as in training.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from PIL import Image

from casa_adapter.data.chat import SampleError
from casa_adapter.data.counters import REASONS, BadEvent, BadSampleCounter
from casa_adapter.data.decode import DecodeSettings, encode, validate
from casa_adapter.data.shards import ShardReader, index_shard
from casa_adapter.data.sources import expand_shards
from casa_adapter.progress import progress_bar

MAX_EXAMPLES = 5


@dataclass
class CheckReport:
    """What a check found."""

    shards: int = 0
    counter: BadSampleCounter = field(default_factory=BadSampleCounter)
    examples: dict[str, list[str]] = field(default_factory=lambda: defaultdict(list))
    """Up to 5 `shard:key` per reason."""

    def as_dict(self) -> dict[str, Any]:
        c = self.counter
        return {
            "shards": self.shards,
            "samples": c.good + c.n_bad,
            "good": c.good,
            "bad": c.n_bad,
            "truncated": c.truncated,
            "bad_fraction": round(c.bad_fraction, 6),
            "reasons": dict(sorted(c.bad.items())),
            "examples": dict(sorted(self.examples.items())),
        }


def to_tensor(image: Image.Image) -> torch.Tensor:
    """PIL RGB -> (3, H, W) float in [0, 1]: the check's stand-in for a tower's transform."""
    return torch.from_numpy(np.asarray(image, dtype=np.float32) / 255.0).permute(2, 0, 1)


def check_shards(
    specs: list[str], settings: DecodeSettings, processor: Any = None, show_progress: bool = True
) -> CheckReport:
    """Check every sample of the shards `specs` expand to (see `sources.expand_shards`)."""
    report, reader = CheckReport(), ShardReader()
    paths = [path for spec in specs for path in expand_shards(spec)]
    report.shards = len(paths)
    with progress_bar("check", len(paths), show_progress) as advance:
        for path in paths:
            for ref in index_shard(path):
                try:
                    chat, images = validate(ref, reader.read(ref), settings)
                    if processor is not None:
                        report.counter.truncated += encode(processor, chat, images, settings, "", ref.key).truncated
                except SampleError as e:
                    report.counter.add_bad(BadEvent(e.reason, ref.shard, ref.key, e.detail))
                    if len(report.examples[e.reason]) < MAX_EXAMPLES:
                        report.examples[e.reason].append(f"{ref.shard}:{ref.key}")
                    continue
                report.counter.good += 1
            advance()
    return report


def format_report(report: CheckReport) -> str:
    """A plain-text table: totals, then count and meaning per reason."""
    d = report.as_dict()
    lines = [
        f"shards: {d['shards']}  samples: {d['samples']}  good: {d['good']}  bad: {d['bad']} "
        f"({d['bad_fraction']:.2%})  truncated: {d['truncated']}"
    ]
    for reason, n in d["reasons"].items():
        lines.append(f"  {reason:<22}{n:>8}  {REASONS[reason]}")
        lines += [f"  {'':<22}{'':>8}  e.g. {example}" for example in d["examples"][reason][:2]]
    return "\n".join(lines)
