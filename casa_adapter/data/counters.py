"""Bad-sample accounting: the reasons a sample is skipped, the counter the trainer logs, the threshold.

A bad sample is never fatal and never silent: it is skipped, counted under one reason and
logged once (reason, shard, key). Counting happens where batches are *consumed* (the main
process), from the events the loader workers attach to each batch, so counts survive worker
processes and are exactly restored on resume.
"""

from __future__ import annotations

import logging
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

log = logging.getLogger("casa_adapter.data")

REASONS: dict[str, str] = {
    "truncated_tar": "the shard's tar stream ends inside this sample (the sample is incomplete)",
    "missing_shard": "a streamed shard that does not exist (HTTP 404, no such object); counted once per visit",
    "shard_read_error": "a streamed shard broke off and the retries ran out: the rest of the shard, counted once",
    "missing_json": "no KEY.json member",
    "empty_json": "KEY.json is empty (or an empty object)",
    "invalid_json": "KEY.json does not parse as JSON",
    "not_utf8": "KEY.json or a text in it is not valid UTF-8",
    "invalid_chat": "the json has no chat in a known form (conversations / messages / video / stream)",
    "no_assistant_turn": "the chat has no non-empty assistant turn, so nothing to learn",
    "missing_image": "an image the chat needs is absent (no image member, or a gap in KEY.0, KEY.1, ...)",
    "image_count_mismatch": "the number of <image> placeholders differs from the number of images",
    "corrupt_image": "an image that PIL cannot decode (corrupt or truncated jpeg/png/webp)",
    "too_long": "longer than the token budget and dropped (policy `drop`, or nothing left to learn after truncation)",
    "processor_error": "the processor rejected the sample (its message is logged)",
}
"""Every reason a sample can be skipped for, with what it means."""


@dataclass(frozen=True)
class BadEvent:
    """One skipped sample: why, where, and the error text."""

    reason: str
    shard: str
    key: str
    detail: str = ""

    def __post_init__(self) -> None:
        if self.reason not in REASONS:
            raise ValueError(f"unknown bad-sample reason {self.reason!r}; known: {sorted(REASONS)}")


class BadDataError(RuntimeError):
    """Raised when the fraction of bad samples passes the configured threshold."""


@dataclass
class BadSampleCounter:
    """Good / bad / truncated counts by reason, and per source; logs each bad sample once."""

    good: int = 0
    """Samples that reached a batch."""

    truncated: int = 0
    """Good samples whose text was cut to fit the token budget (whole images kept)."""

    bad: Counter = field(default_factory=Counter)
    """Skipped samples by reason (keys of `REASONS`)."""

    sources: Counter = field(default_factory=Counter)
    """Good samples by source name (to watch a mixture's proportions)."""

    _logged: set = field(default_factory=set, repr=False)

    @property
    def n_bad(self) -> int:
        return sum(self.bad.values())

    @property
    def bad_fraction(self) -> float:
        seen = self.good + self.n_bad
        return self.n_bad / seen if seen else 0.0

    def add_bad(self, event: BadEvent) -> None:
        """Count one skipped sample, logging it the first time this (reason, shard, key) is seen."""
        self.bad[event.reason] += 1
        ident = (event.reason, event.shard, event.key)
        if ident not in self._logged:
            self._logged.add(ident)
            log.warning("skipped sample %r in %s: %s (%s)", event.key, event.shard, event.reason, event.detail)

    def add_batch_meta(self, meta: dict[str, Any]) -> None:
        """Account for one consumed batch's meta (`good`, `truncated`, `sources`, `bad` events)."""
        self.good += meta["good"]
        self.truncated += meta["truncated"]
        self.sources.update(meta["sources"])
        for event in meta["bad"]:
            self.add_bad(event)

    def check(self, max_bad_fraction: float | None, min_seen: int) -> None:
        """Raise `BadDataError` once at least `min_seen` samples were seen and too many were bad."""
        seen = self.good + self.n_bad
        if max_bad_fraction is None or seen < min_seen or self.bad_fraction <= max_bad_fraction:
            return
        raise BadDataError(
            f"{self.n_bad} of {seen} samples were bad ({self.bad_fraction:.1%} > the allowed "
            f"{max_bad_fraction:.1%}); by reason: {dict(self.bad)}"
        )

    def as_dict(self) -> dict[str, float]:
        """Flat numbers for a logger: good, bad, truncated, bad_fraction, bad/<reason>, source/<name>."""
        out: dict[str, float] = {
            "good": self.good,
            "bad": self.n_bad,
            "truncated": self.truncated,
            "bad_fraction": self.bad_fraction,
        }
        out.update({f"bad/{reason}": n for reason, n in sorted(self.bad.items())})
        out.update({f"source/{name}": n for name, n in sorted(self.sources.items())})
        return out

    def state_dict(self) -> dict[str, Any]:
        return {"good": self.good, "truncated": self.truncated, "bad": dict(self.bad), "sources": dict(self.sources)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.good, self.truncated = state["good"], state["truncated"]
        self.bad, self.sources = Counter(state["bad"]), Counter(state["sources"])
