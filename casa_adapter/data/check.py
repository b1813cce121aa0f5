"""`casa-adapter data check`: read every sample of some shards once, count good and bad by reason.

Without a tokenizer the check covers everything but the token budget (json, chat form,
assistant turn, image count, image decoding, tar truncation); with one (`--tokenizer DIR`, a
local Hugging Face tokenizer folder with a chat template) samples also go through the
`Processor` and the length policy, exactly as in training.

Remote shards (URLs, `pipe:`) are fetched as in training (`fetch.py`, with retries and
prefetch) and their problems counted the same way (`missing_shard`, `shard_read_error`); the
progress bar shows samples/s, so a slow source is visible.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from PIL import Image

from casa_adapter.data.chat import SampleError
from casa_adapter.data.counters import REASONS, BadEvent, BadSampleCounter
from casa_adapter.data.decode import DecodeSettings, encode, validate
from casa_adapter.data.fetch import StreamSettings, is_remote, require_backends
from casa_adapter.data.prefetch import ShardPrefetcher
from casa_adapter.data.shards import SampleRef, ShardReader, index_shard, read_members
from casa_adapter.data.sources import expand_shards
from casa_adapter.data.streaming import fetched_refs
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
    specs: list[str],
    settings: DecodeSettings,
    processor: Any = None,
    show_progress: bool = True,
    stream: StreamSettings | None = None,
) -> CheckReport:
    """Check every sample of the shards `specs` expand to (see `sources.expand_shards`);
    remote ones are fetched with `stream` (default `StreamSettings()`)."""
    report, reader = CheckReport(), ShardReader()
    paths = [path for spec in specs for path in expand_shards(spec)]
    report.shards = len(paths)
    require_backends(paths)
    prefetcher = ShardPrefetcher([(path, path) for path in paths if is_remote(path)], stream or StreamSettings())
    with progress_bar("check", len(paths), show_progress, unit="samples") as advance:
        try:
            for path in paths:
                for ref, members in _shard_samples(path, prefetcher, reader):
                    _check_sample(report, ref, members, settings, processor)
                    advance(0, items=1)
                advance()
        finally:
            prefetcher.close()
    return report


def _shard_samples(
    path: str, prefetcher: ShardPrefetcher, reader: ShardReader
) -> Iterator[tuple[SampleRef, dict[str, bytes]]]:
    """(ref, member bytes) of one shard's samples: a local one indexed, a remote one as fetched."""
    if not is_remote(path):
        for ref in index_shard(path):
            yield ref, reader.read(ref)
        return
    _, fetched = prefetcher.next()
    try:
        with open(fetched.path, "rb") as f:
            for ref in fetched_refs(fetched):
                yield ref, {} if ref.problem else read_members(f, ref)
    finally:
        prefetcher.release(fetched)


def _check_sample(
    report: CheckReport, ref: SampleRef, members: dict[str, bytes], settings: DecodeSettings, processor: Any
) -> None:
    """Count one sample as good or bad (by reason, with an example `shard:key`)."""
    try:
        chat, images = validate(ref, members, settings)
        if processor is not None:
            report.counter.truncated += encode(processor, chat, images, settings, "", ref.key).truncated
    except SampleError as e:
        report.counter.add_bad(BadEvent(e.reason, ref.shard, ref.key, e.detail))
        if len(report.examples[e.reason]) < MAX_EXAMPLES:
            report.examples[e.reason].append(f"{ref.shard}:{ref.key}")
        return
    report.counter.good += 1


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
