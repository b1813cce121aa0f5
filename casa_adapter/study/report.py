"""Writes the study's report: a Markdown page with, per budget (equal steps, equal wall time), the
accuracy per arm and question type as mean ± standard error over seeds, the cost, which differences
the noise resolves (`stats.py`), and matplotlib PNG plots (validation curves, per-type and per-arm bars).
"""

from __future__ import annotations

import json
import os
import platform
import statistics
import time
from pathlib import Path
from typing import Any

import torch
import yaml

from casa_adapter.data.settings import DataSettings
from casa_adapter.study.cost import read_costs, round_medians
from casa_adapter.study.stats import aggregate, difference_table, orderings


def chance_levels(recipe: dict) -> dict[str, float] | None:
    """Per question type and overall chance accuracy from the demo set's meta.json (None for other data)."""
    demo = (recipe.get("data", {}).get("init_args") or {}).get("demo")
    meta_path = Path((demo or {}).get("out", "")) / "meta.json"
    if not demo or not meta_path.exists():
        return None
    qtypes = json.loads(meta_path.read_text())["qtypes"]
    total = sum(q["val"] for q in qtypes.values())
    out = {name: q["chance"] for name, q in qtypes.items()}
    out["overall"] = sum(q["chance"] * q["val"] for q in qtypes.values()) / max(1, total)
    return out


def _curves(summaries: list[dict], key: str) -> dict[str, tuple[str, list[int], list[float]]]:
    """Per arm of the equal-steps runs: (label, steps, mean over seeds of `key` at each validation point)."""
    out: dict[str, tuple[str, dict[int, list[float]]]] = {}
    for s in summaries:
        if s.get("budget", "steps") == "steps":
            points = out.setdefault(s["arm"], (s["label"], {}))[1]
            for p in s["val"]:
                points.setdefault(p["step"], []).append(p[key])
    return {a: (label, sorted(pts), [statistics.fmean(pts[k]) for k in sorted(pts)]) for a, (label, pts) in out.items()}


def plot(summaries: list[dict], folder: Path) -> list[Path]:
    """val_accuracy.png, val_loss.png (mean curves), qtype_accuracy.png and arm_accuracy.png (mean ± SE bars)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for key, name, ylabel in (
        ("accuracy", "val_accuracy.png", "validation answer accuracy (mean over seeds)"),
        ("loss", "val_loss.png", "validation loss (answer tokens, mean over seeds)"),
    ):
        fig, ax = plt.subplots(figsize=(7.0, 4.2))
        for label, steps, values in _curves(summaries, key).values():
            ax.plot(steps, values, marker="o", label=label)
        ax.set_xlabel("optimizer step")
        ax.set_ylabel(ylabel)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=6)
        fig.tight_layout()
        fig.savefig(folder / name, dpi=110)
        plt.close(fig)
        paths.append(folder / name)
    rows = aggregate(summaries, "steps")
    qtypes = sorted({q for r in rows for q in r["qtypes"]})
    fig, ax = plt.subplots(figsize=(7.0, 4.2))
    width = 0.8 / max(1, len(rows))
    for i, r in enumerate(rows):
        stats = [r["qtypes"].get(q) for q in qtypes]
        ax.bar(
            [j + i * width for j in range(len(qtypes))],
            [0 if st is None else st.mean for st in stats],
            width,
            yerr=[0 if st is None else st.se for st in stats],
            label=r["label"],
        )
    ax.set_xticks([j + 0.4 - width / 2 for j in range(len(qtypes))], qtypes)
    ax.set_ylabel("greedy exact match (equal steps)")
    ax.set_ylim(0, 1)
    ax.legend(fontsize=6)
    fig.tight_layout()
    fig.savefig(folder / "qtype_accuracy.png", dpi=110)
    plt.close(fig)
    paths.append(folder / "qtype_accuracy.png")
    fig, ax = plt.subplots(figsize=(7.0, 4.2))
    budgets = [b for b in ("steps", "time") if aggregate(summaries, b)]
    for budget in budgets:
        rows = aggregate(summaries, budget)
        ax.errorbar(
            [r["arm"] for r in rows],
            [r["overall"].mean for r in rows],
            yerr=[2 * r["overall"].se for r in rows],
            fmt="o",
            capsize=3,
            label=f"equal {'steps' if budget == 'steps' else 'wall time'} (± 2 SE)",
        )
    ax.set_ylabel("greedy exact match")
    ax.tick_params(axis="x", labelrotation=60, labelsize=7)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(folder / "arm_accuracy.png", dpi=110)
    plt.close(fig)
    return [*paths, folder / "arm_accuracy.png"]


def accuracy_table(rows: list[dict], chance: dict[str, float] | None, budget: str, costs: dict | None) -> list[str]:
    """Mean ± SE per arm, overall and per question type; beside it the steps an equal-time run trained, or an
    equal-steps arm's step cost measured side by side (`costs`, what the equal-time budget was counted with)."""
    qtypes = sorted({q for r in rows for q in r["qtypes"]})
    extra = "steps" if budget == "time" else "s/step"
    lines = [f"| arm | seeds | {extra} | overall | " + " | ".join(qtypes) + " |", "|---" * (len(qtypes) + 4) + "|"]
    for r in rows:
        cost = f"{r['steps_done']:.0f}" if budget == "time" else _num(_cost(costs, r["arm"]))
        lines.append(
            f"| {r['label']} | {len(r['seeds'])} | {cost} | **{r['overall'].show()}** | "
            + " | ".join(r["qtypes"][q].show() if q in r["qtypes"] else "-" for q in qtypes)
            + " |"
        )
    if chance:
        lines.append(
            f"| chance | | | {100 * chance['overall']:.1f} | "
            + " | ".join("-" if q not in chance else f"{100 * chance[q]:.1f}" for q in qtypes)
            + " |"
        )
    return lines


def _num(x: float | None) -> str:
    return "-" if x is None else f"{x:.2f}"


def _cost(costs: dict | None, arm: str) -> float | None:
    return None if costs is None or arm not in costs["arms"] else costs["arms"][arm]["median"]


def _spread(costs: dict | None, arm: str) -> str:
    """The lowest and highest of `arm`'s round medians, `4.1-4.6`."""
    if costs is None or arm not in costs["arms"]:
        return "-"
    medians = round_medians(costs, arm)
    return f"{min(medians):.2f}-{max(medians):.2f}"


def cost_table(rows: list[dict], costs: dict | None) -> list[str]:
    """Per arm: trainable parameters, mean training wall time, the step cost measured side by side (median and the
    range of its round medians) and each seed's median s/step in its own training run."""
    lines = [
        "| arm | trainable params | train wall (min, mean) | s/step (side by side) | its round medians | "
        "s/step in training, per seed (threads) |",
        "|---|---|---|---|---|---|",
    ]
    for r in rows:
        seeds = ", ".join(
            f"{s['step_seconds']:.2f} ({s.get('threads') or '?'})" for s in r["runs"] if s.get("step_seconds")
        )
        lines.append(
            f"| {r['label']} | {r['trainable']:,} | {r['train_seconds'] / 60:.1f} | "
            f"{_num(_cost(costs, r['arm']))} | {_spread(costs, r['arm'])} | {seeds or '-'} |"
        )
    return lines


def compute_line(summaries: list[dict]) -> str:
    """What the study cost: runs trained (their summed training wall time), runs read off snapshots, the summed
    evaluation time and the thread counts the runs had."""
    trained = [s for s in summaries if "snapshot" not in s]
    timed = [s["eval"]["seconds"] for s in summaries if s["eval"].get("seconds")]
    threads = sorted({str(s.get("threads") or "torch's default") for s in summaries})
    return (
        f"Compute: {len(summaries)} runs; {len(trained)} trained ({sum(s['train_seconds'] for s in trained) / 3600:.1f}"
        f" h of training wall time, summed over runs), {len(summaries) - len(trained)} read off an equal-steps run's "
        f"snapshot; evaluation {sum(timed) / 3600:.1f} h ({len(timed)} of {len(summaries)} evaluations timed). CPU "
        f"threads a run: {', '.join(threads)}."
    )


def _budget_section(summaries: list[dict], chance, budget: str, settings: Any) -> list[str]:
    rows = aggregate(summaries, budget)
    if not rows:
        return []
    costs = read_costs(settings)
    title = (
        f"Equal steps ({settings.steps} steps)" if budget == "steps" else f"Equal wall time ({settings.minutes} min)"
    )
    out = [f"## {title}", "", "Accuracy (%), mean ± standard error over seeds:", ""]
    out += accuracy_table(rows, chance, budget, costs)
    out += [
        "",
        "Which differences the noise resolves (Welch's t-test, 5% two-sided: |difference| > t(0.975, df) x the "
        "standard error of the difference, df by Welch-Satterthwaite):",
        "",
    ]
    out += orderings(rows)
    table = difference_table(rows)
    if len(rows) > 1 and table:
        out += ["", "Every arm minus `casa`, overall and per question type (points; `*`: resolved as above):", ""]
        out += table
    if budget == "steps":
        how = (
            ""
            if costs is None
            else f" ({costs['method']}, {costs['threads'] or 'default'} thread(s), {costs['device']})"
        )
        out += [
            "",
            "Cost (train wall: the whole training process, model load and validation passes included, mean over "
            f"seeds; s/step side by side: every arm's training step timed in one process{how}, the cost the "
            "equal-time budget was counted with; its round medians: the lowest and highest median of one round, "
            "how far the measurement moved with the load beside it; per seed: the median step time of each training "
            "run, which depends on what else the machine ran then):",
            "",
            *cost_table(rows, costs),
        ]
    return [*out, ""]


def _partial_lines(summaries: list[dict], missing: list[str]) -> list[str]:
    return [
        f"**Interim report**: {len(summaries)} runs finished so far; not finished yet: {'; '.join(missing)}. Arms "
        "with fewer seeds than the others have wider errors (one seed: binomial).",
        "",
    ]


def write_report(summaries: list[dict], settings: Any, command: str, missing: list[str] | None = None) -> Path:
    """Write `settings.out` (Markdown) and its plots; returns the Markdown path. `missing`: the runs not finished
    yet, for an interim report (`--partial`), named at its top."""
    out = Path(settings.out)
    recipe = yaml.safe_load(Path(settings.recipe).read_text())
    chance = chance_levels(recipe)
    figures = plot(summaries, out.parent / "results")
    model = recipe["model"]["init_args"]["model"]
    data = recipe["data"]["init_args"]
    n_eval = summaries[0]["eval"]["count"] if summaries else 0
    recipe_seed = data.get("settings", {}).get("seed", DataSettings.seed)
    data_seed = settings.overrides.get("data.init_args.settings.seed", recipe_seed)
    seeds = [len(r["seeds"]) for r in aggregate(summaries, "steps")]
    se_note = (
        "over seeds"
        if all(n > 1 for n in seeds)
        else "binomial (one seed)"
        if all(n == 1 for n in seeds)
        else "over seeds, binomial for an arm with one seed"
    )
    lines = [
        "# Design study: CASA variants, placements, LoRA and token insertion",
        "",
        f"Generated by `{command}` on {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}.",
        f"Machine: {platform.machine()}, {os.cpu_count()} CPU cores, torch {torch.__version__}"
        f"{', CUDA ' + torch.cuda.get_device_name(0) if torch.cuda.is_available() else ', no GPU'}.",
        "",
        f"Every arm ran the recipe `{settings.recipe}` (base `{settings.base or model.get('base')}`, vision "
        f"`{model.get('vision', {}).get('name')}`, batch {data.get('settings', {}).get('batch_size')}) with seeds "
        f"{settings.seeds}, for {settings.steps} optimizer steps"
        + (
            f" and, separately, for {settings.minutes} minutes of training, counted in steps at the arm's cost "
            "measured side by side with every other arm (each arm's training step timed round-robin in one "
            "process, `casa_adapter/study/cost.py`), so the load of a shared machine does not decide an arm's "
            "budget; such a run of no more steps than the "
            "equal-steps ones is the equal-steps run's adapter at the nearest snapshot (every "
            f"{settings.snapshot_every} steps; the same model a shorter run with that schedule trains), one of more "
            "steps trains"
            if settings.minutes
            else ""
        )
        + "; arms differ only in the recipe keys named in `casa_adapter/study/arms.py`. Accuracy is greedy-decoding "
        f"exact match (`casa-adapter eval`) on the {n_eval} validation samples; standard errors are {se_note}. "
        "A seed (`seed_everything`) sets the random initialisation (vision tower, projector, new layers); the "
        f"training data order is the recipe's (`data.settings.seed`, {data_seed} in every run), so the errors "
        "measure initialisation noise, not data-order noise. "
        "The curves are the teacher-forced answer accuracy logged during training.",
        "",
        *(_partial_lines(summaries, missing) if missing else []),
        compute_line(summaries),
        "",
        *_budget_section(summaries, chance, "steps", settings),
        *_budget_section(summaries, chance, "time", settings),
        "## Plots",
        "",
        *[f"![{p.stem}]({p.parent.name}/{p.name})" for p in figures],
        "",
    ]
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text("\n".join(lines))
    return out
