"""The census over every causal-LM type transformers ships: run it, summarise it, write the table.

`run_census()` checks every `model_type` of `MODEL_FOR_CAUSAL_LM_MAPPING_NAMES` (`checks.check_type`);
`summary` counts the outcomes; `table` renders them as Markdown; `write_families_doc` puts the table
into `docs/families.md` between two marker lines. `casa-adapter families --census` runs all three.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import transformers

from casa_adapter.census.checks import Outcome, check_type

BEGIN, END = "<!-- census:begin -->", "<!-- census:end -->"
"""The lines between which `write_families_doc` replaces the table."""


def causal_lm_types() -> list[str]:
    """Every `model_type` the installed transformers maps to a causal-LM class."""
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

    return list(MODEL_FOR_CAUSAL_LM_MAPPING_NAMES)


def run_census(types: list[str] | None = None, progress=None) -> list[Outcome]:
    """The census outcomes for `types` (default: all causal-LM types), in order."""
    outcomes = []
    for model_type in types or causal_lm_types():
        outcomes.append(check_type(model_type))
        if progress is not None:
            progress(outcomes[-1])
    return outcomes


def summary(outcomes: list[Outcome]) -> dict:
    """Counts by status, and the pass rate over the types whose tiny base builds (pass + refused + fail + crash)."""
    counts = Counter(o.status for o in outcomes)
    built = sum(counts[s] for s in ("pass", "refused", "fail", "crash"))
    return {
        "types": len(outcomes),
        "built": built,
        **{s: counts[s] for s in ("pass", "refused", "fail", "crash", "no-base", "out-of-scope")},
        "pass_rate": counts["pass"] / built if built else 0.0,
    }


def table(outcomes: list[Outcome]) -> str:
    """Markdown: the summary line, then one row per type (status, the deciding check, the reason)."""
    s = summary(outcomes)
    lines = [
        f"{s['types']} causal-LM types (transformers {transformers.__version__}); tiny base builds for {s['built']}: "
        f"{s['pass']} pass "
        f"({100 * s['pass_rate']:.1f}%), {s['refused']} refused, {s['fail']} fail, {s['crash']} crash; "
        f"{s['no-base']} without a tiny base, {s['out-of-scope']} out of scope.",
        "",
        "| model_type | status | check | reason |",
        "|---|---|---|---|",
    ]
    for o in outcomes:
        reason = o.detail.replace("|", "\\|").replace("\n", " ")[:240]
        lines.append(f"| `{o.model_type}` | {o.status} | {o.check} | {reason} |")
    return "\n".join(lines)


def write_families_doc(outcomes: list[Outcome], path: Path) -> None:
    """Replace the table between `BEGIN` and `END` in `path` (the markers are added at the end if missing)."""
    text = path.read_text() if path.is_file() else ""
    block = f"{BEGIN}\n{table(outcomes)}\n{END}"
    if BEGIN in text and END in text:
        head, rest = text.split(BEGIN, 1)
        text = head + block + rest.split(END, 1)[1]
    else:
        text = text.rstrip("\n") + ("\n\n" if text else "") + block + "\n"
    path.write_text(text)


__all__ = ["BEGIN", "END", "causal_lm_types", "run_census", "summary", "table", "write_families_doc"]
