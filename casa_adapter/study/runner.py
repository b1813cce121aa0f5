"""Runs the study: per arm, seed and budget, train from the shared recipe in a child process, then
`casa-adapter eval`.

Budgets: `steps` (every arm the same number of optimizer steps) and, with `StudySettings.minutes`,
`time` (every arm the same training time, whatever steps that buys; the learning-rate schedule is the
equal-steps one, decaying over `steps` and held at its floor after that). The time budget is turned
into steps per arm, `round(minutes * 60 / cost)`, where `cost` is the arm's quiet-machine seconds per
step: the smallest of its equal-steps runs' median step times (one per seed). A wall clock would let
whatever else the machine runs meanwhile decide an arm's budget; this way a shared machine slows the
study down but does not change its result. Each run gets
`WORK/ARM/BUDGET-seedN/`: `recipe.yaml` (the recipe it ran), `logs/metrics.csv` (Lightning's CSV
log: validation curves, throughput), `adapter/final`, `eval.json` + `preds.jsonl` (greedy answers on
the validation shards, per question type) and `summary.json` (what the report reads). Training runs
in a child process so that each arm's peak resident memory is its own (`os.wait4` rusage).
"""

from __future__ import annotations

import contextlib
import copy
import json
import os
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from casa_adapter.atomic import atomic_file
from casa_adapter.study.arms import ARMS, Arm, select
from casa_adapter.study.curves import read_curves


@dataclass
class StudySettings:
    """What the study trains and where it writes."""

    recipe: str = "recipes/demo.yaml"
    """The shared recipe (data, seed, optimiser, tower, base model); every arm starts from it."""
    arms: list[str] = field(default_factory=lambda: list(ARMS))
    """Arm names (`casa_adapter.study.arms.ARMS`), in table order."""
    steps: int = 200
    """Optimizer steps per arm of the equal-steps runs (the recipe's `max_time` is lifted there)."""
    seeds: list[int] = field(default_factory=lambda: [0, 1, 2])
    """Training seeds (`seed_everything`: initialisation and data order); every arm runs each."""
    minutes: float | None = None
    """Also run every arm and seed for this many minutes of training (the equal-wall-time table), counted in
    steps at the arm's measured seconds per step (`time_budget_steps`); None: no."""
    val_every: int = 50
    """Validation (loss and answer accuracy) every this many steps: the points of the curves."""
    base: str | None = None
    """Base LLM instead of the recipe's (e.g. `tiny` for a quick check)."""
    overrides: dict[str, Any] = field(default_factory=dict)
    """More dotted recipe paths -> values, applied to every arm (e.g. `data.init_args.settings.batch_size`)."""
    work: str = "runs/study"
    """Folder of the per-arm runs."""
    out: str = "docs/results.md"
    """The report; its plots go to a `results/` folder beside it."""
    quiet: bool = False
    """Send the children's output (progress bars) to `WORK/ARM/train.log` and `eval.log` instead of the terminal."""
    threads: int | None = None
    """CPU threads of every run (`OMP_NUM_THREADS` of the children); None: torch's default (all cores). On a machine
    shared with other work, 1 avoids oversubscription: two 2-thread jobs on 2 cores can run a step 10x slower."""

    def __post_init__(self) -> None:
        if self.steps < 1 or not 1 <= self.val_every <= self.steps:
            raise ValueError(f"steps must be >= 1 and val_every within [1, steps]: {self.steps}, {self.val_every}")
        if not self.seeds or len(set(self.seeds)) != len(self.seeds):
            raise ValueError(f"seeds must be a non-empty list of distinct integers, got {self.seeds}")
        if self.threads is not None and self.threads < 1:
            raise ValueError(f"threads must be >= 1 or None, got {self.threads}")
        if self.minutes is not None and self.minutes <= 0:
            raise ValueError(f"minutes must be > 0 or None, got {self.minutes}")

    def budgets(self) -> list[str]:
        """`steps`, and `time` when `minutes` is set."""
        return ["steps"] + (["time"] if self.minutes is not None else [])


def set_path(config: dict, path: str, value: Any) -> None:
    """config["a"]["b"]["c"] = value for path "a.b.c", creating missing levels."""
    node = config
    *parents, last = path.split(".")
    for key in parents:
        node = node.setdefault(key, {})
        if not isinstance(node, dict):
            raise ValueError(f"recipe path {path!r}: {key!r} is not a mapping")
    node[last] = value


def time_budget_steps(settings: StudySettings, arm: Arm) -> tuple[int, float]:
    """(steps, seconds per step) of `arm`'s equal-wall-time runs: `settings.minutes` at the smallest median
    step time of its finished equal-steps runs (the least loaded measurement of what a step costs)."""
    costs = []
    for seed in settings.seeds:
        path = run_dir(settings, arm, seed, "steps") / "summary.json"
        if path.exists() and (cost := json.loads(path.read_text()).get("step_seconds")):
            costs.append(cost)
    if not costs:
        raise RuntimeError(
            f"study arm {arm.name!r}: the equal-wall-time budget needs a finished equal-steps run that logged "
            f"step times ({run_dir(settings, arm, settings.seeds[0], 'steps')}); run the equal-steps budget first"
        )
    cost = min(costs)
    return max(1, round(settings.minutes * 60 / cost)), cost


def arm_recipe(
    base: dict,
    arm: Arm,
    settings: StudySettings,
    arm_dir: Path,
    seed: int = 0,
    budget: str = "steps",
    time_steps: int | None = None,
) -> dict:
    """The recipe one run does: the shared one, its seed, budget and output folders, then the arm's changes.
    `time_steps`: the steps of a `time` run (`time_budget_steps`)."""
    config = copy.deepcopy(base)
    config["seed_everything"] = seed
    trainer = config.setdefault("trainer", {})
    timed = budget == "time"
    if timed and time_steps is None:
        raise ValueError("a time-budget recipe needs its steps (time_budget_steps)")
    trainer.update(
        max_steps=time_steps if timed else settings.steps,
        max_time=None,
        val_check_interval=settings.val_every,
        check_val_every_n_epoch=None,
        default_root_dir=str(arm_dir),
        enable_checkpointing=False,
        logger={
            "class_path": "lightning.pytorch.loggers.CSVLogger",
            "init_args": {"save_dir": str(arm_dir), "name": "logs", "version": ""},
        },
        callbacks=[],
    )
    config["adapter"] = {"dirpath": str(arm_dir / "adapter")}
    if timed:  # the equal-steps runs' schedule (decay over `steps`), held at its floor after that
        set_path(config, "model.init_args.optim.total_steps", settings.steps)
    changes = dict(settings.overrides)
    if settings.base is not None:
        changes["model.init_args.model.base"] = settings.base
    for path, value in {**changes, **arm.recipe}.items():
        set_path(config, path, value)
    return config


def _child(args: list[str], log: Path | None, threads: int | None = None) -> tuple[int, float, float]:
    """Run `python -m casa_adapter.cli ARGS` (output to `log`, or the terminal when None; `threads`: its
    OMP_NUM_THREADS): (exit status, wall seconds, peak RSS in MiB)."""
    start = time.perf_counter()
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)} if threads else None
    with open(log, "w") if log else contextlib.nullcontext() as sink:
        proc = subprocess.Popen(
            [sys.executable, "-m", "casa_adapter.cli", *args],
            stdout=sink,
            stderr=subprocess.STDOUT if sink else None,
            env=env,
        )
        _, status, usage = os.wait4(proc.pid, 0)
    return os.waitstatus_to_exitcode(status), time.perf_counter() - start, usage.ru_maxrss / 1024


def run_dir(settings: StudySettings, arm: Arm, seed: int, budget: str) -> Path:
    return Path(settings.work) / arm.name / f"{budget}-seed{seed}"


def run_arm(
    arm: Arm, base_recipe: dict, settings: StudySettings, index: int, total: int, seed: int = 0, budget: str = "steps"
) -> dict:
    """Train and evaluate one arm with one seed and budget; returns (and writes) its summary."""
    arm_dir = run_dir(settings, arm, seed, budget)
    arm_dir.mkdir(parents=True, exist_ok=True)
    recipe_path = arm_dir / "recipe.yaml"
    time_steps, step_cost = time_budget_steps(settings, arm) if budget == "time" else (None, None)
    recipe = arm_recipe(base_recipe, arm, settings, arm_dir, seed, budget, time_steps)
    recipe_path.write_text(yaml.safe_dump(recipe, sort_keys=False))
    amount = f"{settings.steps} steps"
    if budget == "time":
        amount = f"{settings.minutes} min = {time_steps} steps at {step_cost:.2f} s/step"
    print(f"[study {index}/{total}] {arm.name} seed {seed}: {arm.label}, {amount} ({recipe_path})", flush=True)
    log = arm_dir / "train.log" if settings.quiet else None
    code, seconds, peak = _child(["run", str(recipe_path)], log, settings.threads)
    if code != 0:
        raise RuntimeError(
            f"study arm {arm.name!r}: training exited with status {code} (recipe {recipe_path}"
            f"{', log ' + str(log) if log else ''})"
        )
    print(f"[study {index}/{total}] {arm.name}: evaluating {arm_dir / 'adapter' / 'final'}", flush=True)
    results = _evaluate_arm(arm, recipe_path, arm_dir, settings)
    manifest = json.loads((arm_dir / "adapter" / "final" / "manifest.json").read_text())
    summary = {
        "arm": arm.name,
        "label": arm.label,
        "seed": seed,
        "budget": budget,
        "steps": settings.steps,
        "minutes": settings.minutes,
        "budget_steps": time_steps or settings.steps,
        "threads": settings.threads,
        "step_cost": step_cost,
        "train_seconds": seconds,
        "peak_rss_mb": peak,
        "trainable": manifest["trainable"]["counts"]["total"],
        **read_curves(arm_dir / "logs" / "metrics.csv"),
        "eval": results,
    }
    with atomic_file(arm_dir / "summary.json", "w") as f:
        f.write(json.dumps(summary, indent=2) + "\n")
    print(
        f"[study {index}/{total}] {arm.name}: accuracy {summary['eval']['overall']:.1%}, "
        f"{seconds / 60:.1f} min, peak RSS {peak:,.0f} MiB",
        flush=True,
    )
    return summary


def _evaluate_arm(arm: Arm, recipe_path: Path, arm_dir: Path, settings: StudySettings) -> dict:
    """`casa-adapter eval` of the arm's final adapter in a child process: overall, count and per-type accuracy."""
    args = ["eval", "--recipe", str(recipe_path), "--adapter", str(arm_dir / "adapter" / "final")]
    args += ["--metrics", "em", "--out", str(arm_dir / "preds.jsonl"), "--json", str(arm_dir / "eval.json"), "--quiet"]
    args += ["--blank-images"] if arm.blank_images else []
    code, _, _ = _child(args, arm_dir / "eval.log" if settings.quiet else None, settings.threads)
    if code != 0:
        raise RuntimeError(f"study arm {arm.name!r}: `casa-adapter {' '.join(args)}` exited with status {code}")
    results = json.loads((arm_dir / "eval.json").read_text())
    bad = results["samples"]["bad"]
    if bad:  # arms must be compared on the same samples
        raise RuntimeError(
            f"study arm {arm.name!r}: the evaluation skipped {bad} validation sample(s) "
            f"({results['samples']['reasons']}; {arm_dir / 'eval.json'}); every arm must be scored on every sample"
        )
    return {
        "overall": results["overall"]["exact_match"],
        "count": results["overall"]["count"],
        "qtypes": {q: row["exact_match"] for q, row in results["qtypes"].items()},
    }


def _runs(settings: StudySettings) -> list[tuple[Arm, int, str]]:
    """(arm, seed, budget) of every run, seeds innermost, the equal-time runs after the equal-steps ones."""
    arms = select(settings.arms)
    return [(arm, seed, budget) for budget in settings.budgets() for arm in arms for seed in settings.seeds]


def run_study(settings: StudySettings) -> list[dict]:
    """Every run in order (a finished one, with its summary.json, is read back, not run again); the summaries."""
    base_recipe = yaml.safe_load(Path(settings.recipe).read_text())
    runs, out = _runs(settings), []
    for i, (arm, seed, budget) in enumerate(runs, 1):
        done = run_dir(settings, arm, seed, budget) / "summary.json"
        if done.exists():
            out.append(json.loads(done.read_text()))
            continue
        out.append(run_arm(arm, base_recipe, settings, i, len(runs), seed, budget))
    return out


def read_summaries(settings: StudySettings) -> list[dict]:
    """The summaries a previous run wrote, for the runs asked for (a missing one is an error naming it)."""
    out = []
    for arm, seed, budget in _runs(settings):
        path = run_dir(settings, arm, seed, budget) / "summary.json"
        if not path.exists():
            raise FileNotFoundError(
                f"{path}: no finished {budget} run of study arm {arm.name!r} seed {seed}; run the study without "
                "--report-only"
            )
        out.append(json.loads(path.read_text()))
    return out
