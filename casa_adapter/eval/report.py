"""Scores overall and per question type, the printed table, and the JSON written by `--json`.

The results dict (what `--json` writes and `evaluate` returns):

    {"overall": {"count": n, "exact_match": 0.25, ...},
     "qtypes": {"color": {"count": k, "exact_match": ...}, ...},    # samples that have a `qtype`
     "samples": {"good": n, "bad": b, "bad_fraction": ..., "reasons": {reason: count},
                 "sources": {source: good count}},
     "predictions": "preds.jsonl",
     "protocol": {"name": "kyutai", "task": "docvqa", "metric": "anls"}}   # only with --protocol

Scores are the metrics' means in [0, 1]; the table shows them as percentages.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Sequence

from rich.console import Console
from rich.table import Table
from torchmetrics import MetricCollection

from casa_adapter.data.counters import BadSampleCounter
from casa_adapter.metrics import build_metrics


class Scoreboard:
    """Metric collections, one overall and one per question type, with counts. `build` makes a collection
    from the names (`casa_adapter.metrics.build_metrics`, or a protocol's `protocol_metrics`)."""

    def __init__(
        self, names: Sequence[str], build: Callable[[Sequence[str]], MetricCollection] = build_metrics
    ) -> None:
        self.build = build
        self.names = list(names)
        """Canonical metric names, in the order given (the table's and the JSON's order)."""
        self.overall = build(self.names)
        self.by_qtype: dict[str, MetricCollection] = {}
        self.count = 0
        """Items scored."""
        self.qtype_counts: Counter = Counter()
        """Items scored per question type."""

    def update(self, predictions: list[str], answers: list[list[str]], qtypes: list[str | None]) -> None:
        """Score one batch: predictions, their reference lists and question types (None: no type)."""
        self.overall.update(predictions, answers)
        self.count += len(predictions)
        for prediction, refs, qtype in zip(predictions, answers, qtypes):
            if qtype is None:
                continue
            if qtype not in self.by_qtype:
                self.by_qtype[qtype] = self.build(self.names)
            self.by_qtype[qtype].update([prediction], [refs])
            self.qtype_counts[qtype] += 1

    def results(self) -> dict:
        """`{"overall": {...}, "qtypes": {qtype: {...}}}`, each with `count` and one float per metric."""
        return {
            "overall": self._row(self.count, self.overall),
            "qtypes": {q: self._row(self.qtype_counts[q], m) for q, m in sorted(self.by_qtype.items())},
        }

    def _row(self, count: int, metrics: MetricCollection) -> dict:
        """Count and scores (in the order the metrics were named; 0 before any item)."""
        values = metrics.compute() if count else {}
        return {"count": count, **{name: round(float(values.get(name, 0.0)), 6) for name in self.names}}


def results_table(results: dict, title: str = "casa-adapter eval") -> Table:
    """A rich table: one row per question type, then the overall row; scores in percent."""
    overall = results["overall"]
    names = [k for k in overall if k != "count"]
    table = Table(title=title)
    table.add_column("qtype")
    table.add_column("n", justify="right")
    for name in names:
        table.add_column(name, justify="right")
    for qtype, row in results["qtypes"].items():
        table.add_row(qtype, str(row["count"]), *(f"{100 * row[n]:.1f}" for n in names))
    if results["qtypes"]:
        table.add_section()
    table.add_row("overall", str(overall["count"]), *(f"{100 * overall[n]:.1f}" for n in names), style="bold")
    return table


def print_results(results: dict, console: Console | None = None) -> None:
    """The table, then one line of sample counts (and the bad ones by reason)."""
    console = console or Console()
    console.print(results_table(results))
    s = results["samples"]
    reasons = ", ".join(f"{reason}: {n}" for reason, n in s["reasons"].items())
    console.print(f"samples: {s['good']} evaluated, {s['bad']} bad" + (f" ({reasons})" if reasons else ""))
    if results.get("predictions"):
        console.print(f"predictions: {results['predictions']}")


def sample_counts(counter: BadSampleCounter) -> dict:
    """The `samples` entry of the results: good / bad counts, bad ones by reason, good ones by source."""
    return {
        "good": counter.good,
        "bad": counter.n_bad,
        "bad_fraction": round(counter.bad_fraction, 6),
        "reasons": dict(sorted(counter.bad.items())),
        "sources": dict(counter.sources),
    }
