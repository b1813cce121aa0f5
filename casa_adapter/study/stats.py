"""The study's numbers across seeds: mean and standard error per arm and question type, and which
differences between arms the noise resolves.

The standard error of an arm's mean is the spread across its seeds, `std(seeds) / sqrt(n)` (sample
std); an arm with one seed falls back to the binomial error of its one evaluation,
`sqrt(p (1 - p) / count)`, and says so (`se_kind`). Two arms' difference is called resolved by
Welch's t-test at 5% (two-sided): |difference| > t(0.975, df) x its standard error `sqrt(se_a^2 + se_b^2)`,
with the Welch-Satterthwaite degrees of freedom (a one-seed arm's binomial error counts as known). With
3 seeds an arm, df is 2-4 and t is 2.8-4.3: "2 standard errors" would call far too many differences real.
"""

from __future__ import annotations

import itertools
import math
import statistics
from dataclasses import dataclass


@dataclass
class Stat:
    """A mean over seeds with its standard error."""

    mean: float
    se: float

    def show(self) -> str:
        """`66.1 ± 1.2` in percent."""
        return f"{100 * self.mean:.1f} ± {100 * self.se:.1f}"


def _stat(values: list[float], count: int) -> Stat:
    mean = statistics.fmean(values)
    if len(values) > 1:
        return Stat(mean, statistics.stdev(values) / math.sqrt(len(values)))
    return Stat(mean, math.sqrt(mean * (1 - mean) / max(1, count)))


def aggregate(summaries: list[dict], budget: str) -> list[dict]:
    """Per arm (in first-seen order) over its seeds of one budget: label, seeds, `overall` and `qtypes` as `Stat`,
    mean steps done, training seconds, s/step and trainable parameters."""
    arms: dict[str, list[dict]] = {}
    for s in summaries:
        if s.get("budget", "steps") == budget:
            arms.setdefault(s["arm"], []).append(s)
    out = []
    for name, runs in arms.items():
        count = runs[0]["eval"]["count"]
        qtypes = sorted({q for r in runs for q in r["eval"]["qtypes"]})
        per_type_count = max(1, count // max(1, len(qtypes)))
        step_s = [r["step_seconds"] for r in runs if r.get("step_seconds")]
        out.append(
            {
                "arm": name,
                "label": runs[0]["label"],
                "seeds": [r.get("seed", 0) for r in runs],
                "se_kind": "seeds" if len(runs) > 1 else "binomial",
                "count": count,
                "overall": _stat([r["eval"]["overall"] for r in runs], count),
                "qtypes": {
                    q: _stat([r["eval"]["qtypes"][q] for r in runs if q in r["eval"]["qtypes"]], per_type_count)
                    for q in qtypes
                },
                "steps_done": statistics.fmean(r.get("steps_done", r["steps"]) for r in runs),
                "train_seconds": statistics.fmean(r["train_seconds"] for r in runs),
                "step_seconds": statistics.fmean(step_s) if step_s else None,
                "trainable": runs[0]["trainable"],
            }
        )
    return out


def welch_dof(a: dict, b: dict) -> float:
    """Welch-Satterthwaite degrees of freedom of `a - b` on overall accuracy (inf when both errors are binomial)."""
    terms = [r["overall"].se ** 4 / (len(r["seeds"]) - 1) for r in (a, b) if r["se_kind"] == "seeds"]
    total = (a["overall"].se ** 2 + b["overall"].se ** 2) ** 2
    return total / sum(terms) if terms and sum(terms) > 0 else math.inf


def compare(a: dict, b: dict) -> tuple[float, float, float, bool]:
    """(a - b, the difference's standard error, the t critical value it must beat, whether it is resolved) on
    overall accuracy (Welch's t-test, 5% two-sided)."""
    from scipy.stats import t as student_t

    diff = a["overall"].mean - b["overall"].mean
    se = math.hypot(a["overall"].se, b["overall"].se)
    critical = float(student_t.ppf(0.975, welch_dof(a, b)))
    return diff, se, critical, abs(diff) > critical * se


def orderings(rows: list[dict]) -> list[str]:
    """Markdown bullets: the ranking's neighbours and every arm against `casa`, each resolved or not."""
    ranked = sorted(rows, key=lambda r: -r["overall"].mean)
    pairs = list(itertools.pairwise(ranked))
    casa = next((r for r in rows if r["arm"] == "casa"), None)
    if casa is not None:
        pairs += [(r, casa) for r in rows if r is not casa and (r, casa) not in pairs and (casa, r) not in pairs]
    out = []
    for a, b in pairs:
        diff, se, critical, resolved = compare(a, b)
        verdict = "resolved" if resolved else "within the noise"
        out.append(
            f"- {a['arm']} - {b['arm']}: {100 * diff:+.1f} ± {100 * se:.1f} points (needs > {critical:.2f} x "
            f"{100 * se:.1f} = {100 * critical * se:.1f}), {verdict}"
        )
    return out


__all__ = ["Stat", "aggregate", "compare", "orderings", "welch_dof"]
