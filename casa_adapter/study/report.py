"""Writes the study's report: a Markdown page with the accuracy and cost tables, the issue's
targets checked against the numbers, and matplotlib PNG plots (validation curves, per-type bars).
"""

from __future__ import annotations

import json
import math
import os
import platform
import time
from pathlib import Path
from typing import Any

import torch
import yaml


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


def plot(summaries: list[dict], folder: Path) -> list[Path]:
    """val_accuracy.png, val_loss.png and qtype_accuracy.png in `folder`."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for key, name, ylabel in (
        ("accuracy", "val_accuracy.png", "validation answer accuracy"),
        ("loss", "val_loss.png", "validation loss (answer tokens)"),
    ):
        fig, ax = plt.subplots(figsize=(6.4, 4.0))
        for s in summaries:
            ax.plot([p["step"] for p in s["val"]], [p[key] for p in s["val"]], marker="o", label=s["label"])
        ax.set_xlabel("optimizer step")
        ax.set_ylabel(ylabel)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
        fig.tight_layout()
        fig.savefig(folder / name, dpi=110)
        plt.close(fig)
        paths.append(folder / name)
    qtypes = sorted({q for s in summaries for q in s["eval"]["qtypes"]})
    fig, ax = plt.subplots(figsize=(6.4, 4.0))
    width = 0.8 / max(1, len(summaries))
    for i, s in enumerate(summaries):
        ax.bar(
            [j + i * width for j in range(len(qtypes))],
            [s["eval"]["qtypes"].get(q, 0) for q in qtypes],
            width,
            label=s["label"],
        )
    ax.set_xticks([j + 0.4 - width / 2 for j in range(len(qtypes))], qtypes)
    ax.set_ylabel("greedy exact match")
    ax.set_ylim(0, 1)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(folder / "qtype_accuracy.png", dpi=110)
    plt.close(fig)
    return [*paths, folder / "qtype_accuracy.png"]


def _pct(x: float | None) -> str:
    return "-" if x is None else f"{100 * x:.1f}"


def accuracy_table(summaries: list[dict], chance: dict[str, float] | None) -> list[str]:
    qtypes = sorted({q for s in summaries for q in s["eval"]["qtypes"]})
    lines = ["| arm | overall | " + " | ".join(qtypes) + " |", "|---" * (len(qtypes) + 2) + "|"]
    for s in summaries:
        lines.append(
            f"| {s['label']} | **{_pct(s['eval']['overall'])}** | "
            + " | ".join(_pct(s["eval"]["qtypes"].get(q)) for q in qtypes)
            + " |"
        )
    if chance:
        lines.append(
            f"| chance | {_pct(chance['overall'])} | " + " | ".join(_pct(chance.get(q)) for q in qtypes) + " |"
        )
    return lines


def cost_table(summaries: list[dict]) -> list[str]:
    lines = [
        "| arm | trainable params | run wall (min) | s/step | text tokens/s | samples/s | peak RSS (MiB) |",
        "|---|---|---|---|---|---|---|",
    ]
    for s in summaries:
        rate = "-" if s["tokens_per_s"] is None else f"{s['tokens_per_s']:.0f}"
        step = "-" if s["step_seconds"] is None else f"{s['step_seconds']:.2f}"
        samples = "-" if s["samples_per_s"] is None else f"{s['samples_per_s']:.1f}"
        lines.append(
            f"| {s['label']} | {s['trainable']:,} | {s['train_seconds'] / 60:.1f} | "
            f"{step} | {rate} | {samples} | {s['peak_rss_mb']:,.0f} |"
        )
    return lines


def target_checks(summaries: list[dict], chance: dict[str, float] | None) -> list[str]:
    """The issue's targets, each stated with the numbers that decide it (only for arms that ran)."""
    acc = {s["arm"]: s["eval"]["overall"] for s in summaries}
    out = []
    if "casa" in acc:
        casa = next(s for s in summaries if s["arm"] == "casa")
        verdict = "met" if acc["casa"] >= 0.95 and casa["train_seconds"] <= 15 * 60 else "not met"
        out.append(
            f"- CASA >= 95% within 15 minutes of training: {verdict} ({_pct(acc['casa'])}% after "
            f"{casa['train_seconds'] / 60:.1f} min)."
        )
    if {"casa", "insertion", "ca"} <= acc.keys():
        order = acc["insertion"] >= acc["casa"] > acc["ca"]
        out.append(
            f"- insertion >= CASA > cross-attention: {'holds' if order else 'does not hold'} "
            f"({_pct(acc['insertion'])} / {_pct(acc['casa'])} / {_pct(acc['ca'])})."
        )
        gap = 100 * (acc["insertion"] - acc["casa"])
        out.append(
            f"- CASA at most 3 points below insertion: {'yes' if gap <= 3 else 'no'} "
            f"(insertion - CASA = {gap:+.1f} points)."
        )
    n = max((s["eval"]["count"] for s in summaries), default=0)
    if n:
        worst = max(math.sqrt(a * (1 - a) / n) for a in acc.values())
        out.append(
            f"- Noise: with {n} evaluation samples the binomial standard error of these accuracies is at "
            f"most {100 * worst:.1f} points; differences below about twice that are not resolved."
        )
    if "text_only" in acc and chance:
        diff = 100 * (acc["text_only"] - chance["overall"])
        out.append(
            f"- text-only control at chance: {_pct(acc['text_only'])}% vs {_pct(chance['overall'])}% "
            f"chance ({diff:+.1f} points)."
        )
    return out


def write_report(summaries: list[dict], settings: Any, command: str) -> Path:
    """Write `settings.out` (Markdown) and its plots; returns the Markdown path."""
    out = Path(settings.out)
    recipe = yaml.safe_load(Path(settings.recipe).read_text())
    chance = chance_levels(recipe)
    figures = plot(summaries, out.parent / "results")
    model = recipe["model"]["init_args"]["model"]
    data = recipe["data"]["init_args"]
    n_eval = summaries[0]["eval"]["count"] if summaries else 0
    lines = [
        "# Fidelity study: CASA vs cross-attention vs token insertion",
        "",
        f"Generated by `{command}` on {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}.",
        f"Machine: {platform.machine()}, {os.cpu_count()} CPU cores, torch {torch.__version__}"
        f"{', CUDA ' + torch.cuda.get_device_name(0) if torch.cuda.is_available() else ', no GPU'}.",
        "",
        f"Every arm ran the recipe `{settings.recipe}` for {settings.steps} optimizer steps with the same data, "
        f"seed and optimiser (base `{settings.base or model.get('base')}`, "
        f"vision `{model.get('vision', {}).get('name')}`, "
        f"batch {data.get('settings', {}).get('batch_size')}); arms differ only in the recipe keys named in "
        "`casa_adapter/study/arms.py`. Accuracy is greedy-decoding exact match (`casa-adapter eval`) on the "
        f"{n_eval} validation samples; the curves are the teacher-forced answer accuracy logged during training "
        "(every answer token right = greedy decoding reproduces the answer).",
        "",
        "## Accuracy (%)",
        "",
        *accuracy_table(summaries, chance),
        "",
        "## Targets",
        "",
        *target_checks(summaries, chance),
        "",
        "## Training cost",
        "",
        "Run wall is the whole training process (model loading and validation included); s/step, text tokens/s "
        "and samples/s are medians over the logged optimizer steps; peak RSS is the training process's peak "
        "resident memory (loaded model included).",
        "",
        *cost_table(summaries),
        "",
        "## Validation curves",
        "",
        *[f"![{p.stem}]({p.parent.name}/{p.name})" for p in figures],
        "",
    ]
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text("\n".join(lines))
    return out
