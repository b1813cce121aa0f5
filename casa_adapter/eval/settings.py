"""`EvalSettings`: what `casa-adapter eval` evaluates and how, as one documented dataclass."""

from __future__ import annotations

from dataclasses import dataclass, field

from casa_adapter.eval.protocol import get_protocol
from casa_adapter.metrics.collection import canonical_name

DEFAULT_METRICS = ("exact_match", "vqa_accuracy", "anls", "relaxed_accuracy")
"""Metrics computed when none are named (canonical names of `casa_adapter.metrics.build_metrics`)."""


@dataclass
class EvalSettings:
    """How samples are read, generated and scored, and where the results go. (The prompt's system
    message belongs to the `Processor`: `Processor.from_model(model, tokenizer, system_prompt="")`.)"""

    shards: list[str] = field(default_factory=list)
    """Shard specs (paths, brace patterns, globs, folders; see docs/data.md), read in order, each once."""

    out: str | None = "preds.jsonl"
    """Predictions JSONL, one line per evaluated sample; None: not written."""

    json_path: str | None = None
    """Also write the metrics (overall, per question type, bad-sample counts) as JSON here."""

    metrics: tuple[str, ...] = DEFAULT_METRICS
    """Metric names (aliases accepted: `em`, `vqa`, `relaxed`, ...; kept as canonical names)."""

    max_new_tokens: int = 16
    """Most tokens generated per answer (greedy decoding; stops at the end-of-turn token)."""

    batch_size: int = 8
    """Samples per `generate` call (left-padded)."""

    limit: int | None = None
    """Evaluate at most this many (good) samples; None: all of them."""

    video_fps: float = 2.0
    """Frames per second kept from a video sample (as `DataSettings.video_fps` in training)."""

    max_frames: int = 16
    """Most frames kept from one video (as `DataSettings.max_frames` in training)."""

    blank_images: bool = False
    """Replace every image by a uniform grey one (as `DataSettings.blank_images`): the text-only control."""

    show_progress: bool = True
    """Draw a progress bar over the samples (on stderr)."""

    protocol: str | None = None
    """A named protocol of `casa_adapter.eval.protocol` ("kyutai"): its prompt suffix, its answer clean-up
    and the metric it gives `task`, in place of `metrics`. None: the chat as it is, the `metrics`."""

    task: str | None = None
    """The benchmark the shards hold (`chartqa`, `docvqa`, `docvqa_val`, ...): picks the protocol's metric."""

    def __post_init__(self) -> None:
        if isinstance(self.shards, str):
            self.shards = [self.shards]
        self.metrics = tuple(canonical_name(name) for name in self.metrics)
        if self.max_new_tokens < 1 or self.batch_size < 1 or (self.limit is not None and self.limit < 0):
            raise ValueError(f"max_new_tokens and batch_size must be >= 1 and limit >= 0: {self}")
        if self.video_fps <= 0 or self.max_frames < 1:
            raise ValueError(f"video_fps must be > 0 and max_frames >= 1: {self}")
        if self.protocol is not None:
            get_protocol(self.protocol)  # ValueError naming the known protocols
        if self.task is not None and self.protocol is None:
            raise ValueError(f"task={self.task!r} picks a protocol's metric; give a protocol too")
