"""Evaluation protocols: the prompt suffix, the answer clean-up and the metric of each benchmark, by name.

`casa-adapter eval --protocol kyutai --task docvqa` evaluates as the CASA paper (Kyutai) does with
lmms-eval: every question gets the suffix "Answer the question using a single word or phrase." on a
new line, a trailing "." is cut from each answer, and the benchmark decides the metric (relaxed
accuracy for ChartQA, ANLS for DocVQA / InfoVQA, VQA accuracy for TextVQA / VQAv2, exact match
otherwise), each computed as lmms-eval's task computes it (`lmms_scores`).

>>> KYUTAI.metric_for("docvqa_val"), KYUTAI.metric_for("mme"), KYUTAI.clean(" Paris. ")
('anls', 'exact_match', 'Paris')
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from torchmetrics import Metric, MetricCollection

from casa_adapter.eval.protocol.lmms_scores import LmmsANLS, LmmsRelaxedAccuracy, TextVQAAccuracy
from casa_adapter.metrics import ExactMatch, VQAAccuracy

PROTOCOL_METRICS: dict[str, type[Metric]] = {
    "relaxed_accuracy": LmmsRelaxedAccuracy,
    "anls": LmmsANLS,
    "textvqa_accuracy": TextVQAAccuracy,
    "vqa_accuracy": VQAAccuracy,
    "exact_match": ExactMatch,
}
"""The metrics a protocol names, with lmms-eval's definitions (`lmms_scores`; VQAv2 and exact match are
`casa_adapter.metrics`' own, which equal lmms-eval's)."""


@dataclass(frozen=True)
class Protocol:
    """How questions are asked, answers cleaned and each benchmark scored."""

    name: str
    """The name `--protocol` takes."""
    prompt_suffix: str
    """Appended to the last user message of every prompt, on a new line ("" for none)."""
    strip_period: bool
    """Cut one trailing "." from each (whitespace-stripped) answer before it is written and scored."""
    task_metrics: dict[str, str] = field(default_factory=dict)
    """Benchmark -> metric name of `PROTOCOL_METRICS`; a task matches its key or `KEY_...` (`docvqa_val`)."""
    default_metric: str = "exact_match"
    """The metric of every task `task_metrics` does not name."""

    def metric_for(self, task: str | None) -> str:
        """The metric name for a benchmark (`default_metric` when None or not listed)."""
        task = (task or "").strip().lower()
        for key, metric in self.task_metrics.items():
            if task == key or task.startswith(key + "_"):
                return metric
        return self.default_metric

    def question(self, text: str) -> str:
        """The user message with the protocol's suffix."""
        return f"{text}\n{self.prompt_suffix}" if self.prompt_suffix else text

    def clean(self, answer: str) -> str:
        """A generated answer as the protocol scores it."""
        answer = answer.strip()
        return answer.removesuffix(".") if self.strip_period else answer


def protocol_metrics(names: Sequence[str]) -> MetricCollection:
    """A `MetricCollection` of `PROTOCOL_METRICS`, keyed by name (compute groups off, as `build_metrics`)."""
    unknown = sorted(set(names) - set(PROTOCOL_METRICS))
    if unknown:
        raise ValueError(f"unknown protocol metric(s) {unknown}; known: {sorted(PROTOCOL_METRICS)}")
    return MetricCollection({name: PROTOCOL_METRICS[name]() for name in names}, compute_groups=False)


KYUTAI = Protocol(
    name="kyutai",
    prompt_suffix="Answer the question using a single word or phrase.",
    strip_period=True,
    task_metrics={
        "chartqa": "relaxed_accuracy",
        "docvqa": "anls",
        "infovqa": "anls",
        "textvqa": "textvqa_accuracy",
        "vqav2": "vqa_accuracy",
    },
)
"""The CASA paper's protocol (Kyutai's evaluation loop over lmms-eval's scoring functions)."""

PROTOCOLS: dict[str, Protocol] = {KYUTAI.name: KYUTAI}


def get_protocol(name: str) -> Protocol:
    """The protocol called `name`; a clear error listing the known ones otherwise."""
    if name not in PROTOCOLS:
        raise ValueError(f"unknown protocol {name!r}; known protocols: {sorted(PROTOCOLS)}")
    return PROTOCOLS[name]


__all__ = ["KYUTAI", "PROTOCOLS", "PROTOCOL_METRICS", "Protocol", "get_protocol", "protocol_metrics"]
