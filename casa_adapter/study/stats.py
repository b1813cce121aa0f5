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
    mean steps done, mean training seconds, trainable parameters and the runs' summaries (`runs`)."""
    arms: dict[str, list[dict]] = {}
    for s in summaries:
        if s.get("budget", "steps") == budget:
            arms.setdefault(s["arm"], []).append(s)
    out = []
    for name, runs in arms.items():
        count = runs[0]["eval"]["count"]
        qtypes = sorted({q for r in runs for q in r["eval"]["qtypes"]})
        per_type_count = max(1, count // max(1, len(qtypes)))
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
                # the steps each run trained: its budget (the CSV log's last row can be a few steps short of it)
                "steps_done": statistics.fmean(r.get("budget_steps") or r.get("steps_done", r["steps"]) for r in runs),
                "train_seconds": statistics.fmean(r["train_seconds"] for r in runs),
                "trainable": runs[0]["trainable"],
                "runs": runs,
            }
        )
    return out


def _stat_of(row: dict, qtype: str | None) -> Stat:
    return row["overall"] if qtype is None else row["qtypes"][qtype]


def welch_dof(a: dict, b: dict, qtype: str | None = None) -> float:
    """Welch-Satterthwaite degrees of freedom of `a - b` on overall accuracy, or on `qtype`'s (inf when both errors
    are binomial)."""
    sa, sb = _stat_of(a, qtype), _stat_of(b, qtype)
    terms = [s.se**4 / (len(r["seeds"]) - 1) for r, s in ((a, sa), (b, sb)) if r["se_kind"] == "seeds"]
    total = (sa.se**2 + sb.se**2) ** 2
    return total / sum(terms) if terms and sum(terms) > 0 else math.inf


def compare(a: dict, b: dict, qtype: str | None = None) -> tuple[float, float, float, bool]:
    """(a - b, the difference's standard error, the t critical value it must beat, whether it is resolved) on
    overall accuracy, or on `qtype`'s (Welch's t-test, 5% two-sided)."""
    from scipy.stats import t as student_t

    sa, sb = _stat_of(a, qtype), _stat_of(b, qtype)
    diff, se = sa.mean - sb.mean, math.hypot(sa.se, sb.se)
    critical = float(student_t.ppf(0.975, welch_dof(a, b, qtype)))
    return diff, se, critical, abs(diff) > critical * se


def difference_table(rows: list[dict], reference: str = "casa") -> list[str]:
    """Markdown table: every arm minus `reference`, overall and per question type, in points; `*` where Welch's
    test resolves the difference. Empty without the reference arm."""
    ref = next((r for r in rows if r["arm"] == reference), None)
    if ref is None:
        return []
    qtypes = sorted(ref["qtypes"])
    lines = [f"| arm - {reference} | overall | " + " | ".join(qtypes) + " |", "|---" * (len(qtypes) + 2) + "|"]
    for row in rows:
        if row is ref:
            continue
        cells = []
        for q in (None, *qtypes):
            if q is not None and q not in row["qtypes"]:
                cells.append("-")
                continue
            diff, _, _, resolved = compare(row, ref, q)
            cells.append(f"{100 * diff:+.1f}{' *' if resolved else ''}")
        lines.append(f"| {row['arm']} | " + " | ".join(cells) + " |")
    return lines


def orderings(rows: list[dict]) -> list[str]:
    """Markdown bullets: the ranking's neighbours, every arm against `casa` and every `X_lora` twin against `X`, each
    resolved or not."""
    ranked = sorted(rows, key=lambda r: -r["overall"].mean)
    pairs = list(itertools.pairwise(ranked))
    by_name = {r["arm"]: r for r in rows}
    wanted = [(r, by_name["casa"]) for r in rows if "casa" in by_name and r["arm"] != "casa"]
    wanted += [(r, by_name[r["arm"][:-5]]) for r in rows if r["arm"].endswith("_lora") and r["arm"][:-5] in by_name]
    seen = {frozenset((a["arm"], b["arm"])) for a, b in pairs}
    for a, b in wanted:  # `casa_lora` is both an arm against `casa` and `casa`'s LoRA twin: listed once
        if (key := frozenset((a["arm"], b["arm"]))) not in seen:
            seen.add(key)
            pairs.append((a, b))
    out = []
    for a, b in pairs:
        diff, se, critical, resolved = compare(a, b)
        verdict = "resolved" if resolved else "within the noise"
        out.append(
            f"- {a['arm']} - {b['arm']}: {100 * diff:+.1f} ± {100 * se:.1f} points (needs > {critical:.2f} x "
            f"{100 * se:.1f} = {100 * critical * se:.1f}), {verdict}"
        )
    return out


__all__ = ["Stat", "aggregate", "compare", "difference_table", "orderings", "welch_dof"]
