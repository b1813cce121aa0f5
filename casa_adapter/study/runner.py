"""Runs the study: per arm, seed and budget, train from the shared recipe in a child process, then `casa-adapter
eval`.

Budgets: `steps` (every arm the same number of optimizer steps) and, with `StudySettings.minutes`, `time`
(every arm the same training time, whatever steps that buys; the learning-rate schedule is the equal-steps
one, decaying over `steps` and held at its floor after that). The time budget is turned into steps per arm,
`round(minutes * 60 / cost)`, where `cost` is the arm's seconds per step measured side by side with every
other arm before any time run (`cost.py`, `RECORDS/costs.json`). A wall clock, or the arm's own training runs'
step times, would let whatever else the machine runs meanwhile decide an arm's budget; this way a shared
machine slows the study down but does not change its result. A time run whose budget no longer matches the
measured costs (they were measured again) is run again. A `time` run of no more steps than the `steps` runs is
read off their adapter snapshots instead of training again (`snapshots.py`). Runs go arm by arm (its `steps`
seeds, then its `time` seeds), so a study stopped half way has whole arms. Each run gets
`WORK/ARM/BUDGET-seedN/`: `recipe.yaml` (the recipe it ran), `logs/metrics.csv` (Lightning's CSV log: validation curves,
throughput), `adapter/final`, `eval.json` + `preds.jsonl` (greedy answers on the validation shards, per
question type), and a record `RECORDS/ARM/BUDGET-seedN.json` (its summary: what the report reads, and what
marks the run finished; `StudySettings.records`, small enough to commit with the report). Training runs in a child
process so that each arm's peak resident memory is its own (`os.wait4` rusage). A run stopped before its record (the
study was killed) continues from `ckpt/last.ckpt` when the study is started again (`StudySettings.resume_every`;
Lightning restores the weights, optimizer, schedule and data position); its training seconds are the checkpoint's
`Timer` state (the attempts' training time up to it) plus the last attempt's. A stopped run without a checkpoint
starts over in a cleared folder; a finished run's resume checkpoint is deleted. A `steps` run keeps, besides its
final adapter, only the snapshot its `time` runs will read once the costs are measured (before that, the whole
`snapshot_every` grid).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import torch
import yaml

from casa_adapter.study.arms import Arm, select
from casa_adapter.study.children import child, evaluate, write_summary
from casa_adapter.study.cost import ensure_costs, time_budget_steps
from casa_adapter.study.curves import keep_earlier_log, read_curves
from casa_adapter.study.recipes import arm_recipe
from casa_adapter.study.settings import StudySettings, record_path, records_dir, run_dir
from casa_adapter.study.snapshots import find_snapshot, snapshot_run, snapshot_step


def run_arm(
    arm: Arm, base_recipe: dict, settings: StudySettings, index: int, total: int, seed: int = 0, budget: str = "steps"
) -> dict:
    """Train and evaluate one arm with one seed and budget; returns (and writes) its summary."""
    arm_dir = run_dir(settings, arm, seed, budget)
    arm_dir.mkdir(parents=True, exist_ok=True)
    recipe_path = arm_dir / "recipe.yaml"
    time_steps, step_cost = None, None
    if budget == "time":
        ensure_costs(settings, base_recipe, select(settings.arms))
        time_steps, step_cost = time_budget_steps(settings, arm)
    if budget == "time" and (snapshot := find_snapshot(settings, arm, seed, time_steps)) is not None:
        return snapshot_run(arm, settings, f"[study {index}/{total}]", seed, (time_steps, step_cost), snapshot)
    snapshots = _snapshots_for_time_runs(settings, arm) if budget == "steps" else None
    recipe = arm_recipe(base_recipe, arm, settings, arm_dir, seed, budget, time_steps, snapshots)
    recipe_path.write_text(yaml.safe_dump(recipe, sort_keys=False))
    amount = f"{settings.steps} steps"
    if budget == "time":
        amount = f"{settings.minutes} min = {time_steps} steps at {step_cost:.2f} s/step"
    print(f"[study {index}/{total}] {arm.name} seed {seed}: {arm.label}, {amount} ({recipe_path})", flush=True)
    log = arm_dir / "train.log" if settings.quiet else None
    before = _attempt(arm_dir, f"[study {index}/{total}] {arm.name} seed {seed}")
    resumed = before is not None
    args = ["run", str(recipe_path), *(["--ckpt_path=last"] if resumed else [])]
    code, seconds, peak = child(args, log, settings.threads, append=resumed)
    seconds += before or 0.0
    if code != 0:
        raise RuntimeError(
            f"study arm {arm.name!r}: training exited with status {code} (recipe {recipe_path}"
            f"{', log ' + str(log) if log else ''})"
        )
    print(f"[study {index}/{total}] {arm.name}: evaluating {arm_dir / 'adapter' / 'final'}", flush=True)
    results = evaluate(arm, recipe_path, arm_dir / "adapter" / "final", arm_dir, settings)
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
        "resumed": resumed,
        "peak_rss_mb": peak,
        "trainable": manifest["trainable"]["counts"]["total"],
        **read_curves(arm_dir / "logs"),
        "eval": results,
    }
    write_summary(record_path(settings, arm, seed, budget), summary)
    print(
        f"[study {index}/{total}] {arm.name}: accuracy {summary['eval']['overall']:.1%}, "
        f"{seconds / 60:.1f} min, peak RSS {peak:,.0f} MiB",
        flush=True,
    )
    return summary


def _snapshots_for_time_runs(settings: StudySettings, arm: Arm) -> list[int] | None:
    """The snapshot steps `arm`'s time runs will read, once the costs are measured (one step on the
    `snapshot_every` grid, none when they read the final adapter or train), else None (the whole grid is kept)."""
    if not settings.minutes:
        return None
    try:
        wanted, _ = time_budget_steps(settings, arm)
    except (FileNotFoundError, ValueError):  # no costs yet, or none of this arm at these threads
        return None
    step = snapshot_step(settings.steps, settings.snapshot_every, wanted)
    return [] if step is None or step == settings.steps else [step]


def _attempt(arm_dir: Path, tag: str) -> float | None:
    """Start a training attempt in `arm_dir`: None when it starts from scratch (what a stopped attempt without a
    checkpoint left is cleared), else the training seconds of the earlier attempts up to the checkpoint it resumes
    from."""
    ckpt = arm_dir / "ckpt" / "last.ckpt"
    if ckpt.exists():
        before = checkpoint_train_seconds(ckpt)
        print(f"{tag}: resuming from {ckpt} ({before / 60:.1f} min trained before)", flush=True)
        keep_earlier_log(arm_dir / "logs")
        return before
    for stale in ("ckpt", "logs", "adapter", "train.log"):
        path = arm_dir / stale
        if path.is_dir():
            shutil.rmtree(path)
        else:
            path.unlink(missing_ok=True)
    return None


def checkpoint_train_seconds(ckpt: Path) -> float:
    """The training seconds a resume checkpoint was written at, over all attempts: the state of its `Timer`
    (`recipes.resume_callbacks`), which Lightning restores on resume, so it goes on counting from there."""
    state = torch.load(ckpt, map_location="cpu", mmap=True, weights_only=False)  # mmap: tensors not read
    try:
        return float(state["callbacks"]["Timer"]["time_elapsed"]["train"])
    except KeyError:
        raise RuntimeError(
            f"resume checkpoint {ckpt} holds no Timer state, so its training time is unknown; delete "
            f"{ckpt.parent} to train that run again from the start"
        ) from None


def _runs(settings: StudySettings) -> list[tuple[Arm, int, str]]:
    """(arm, seed, budget) of every run: arm by arm, its equal-steps seeds, then its equal-time ones."""
    arms = select(settings.arms)
    return [(arm, seed, budget) for arm in arms for budget in settings.budgets() for seed in settings.seeds]


def run_study(settings: StudySettings) -> list[dict]:
    """Every run in order (a finished one, with its record, is read back, not run again, unless it is a
    time run whose budget changed); the summaries. With `minutes` and no `costs.json` yet, the step costs of
    `settings.arms` are measured before the first time run (`cost.ensure_costs`)."""
    base_recipe = yaml.safe_load(Path(settings.recipe).read_text())
    runs, out = _runs(settings), []
    for i, (arm, seed, budget) in enumerate(runs, 1):
        done = record_path(settings, arm, seed, budget)
        if done.exists():
            summary = json.loads(done.read_text())
            if budget == "steps" or _budget_holds(settings, arm, summary, f"[study {i}/{len(runs)}]"):
                out.append(summary)
                continue
        out.append(run_arm(arm, base_recipe, settings, i, len(runs), seed, budget))
        shutil.rmtree(run_dir(settings, arm, seed, budget) / "ckpt", ignore_errors=True)  # finished: no resuming
    return out


def _budget_holds(settings: StudySettings, arm: Arm, summary: dict, tag: str) -> bool:
    """Whether a finished time run was given the steps the measured costs give now; if not, its folder is
    cleared for the run to be done again."""
    wanted, _ = time_budget_steps(settings, arm)
    had = summary.get("requested_steps", summary.get("budget_steps"))
    if had == wanted:
        return True
    print(f"{tag} {arm.name} seed {summary.get('seed')}: time budget now {wanted} steps (was {had}); again", flush=True)
    shutil.rmtree(run_dir(settings, arm, summary.get("seed", 0), "time"))
    return False


def read_summaries(settings: StudySettings, partial: bool = False) -> list[dict]:
    """The records a previous run wrote, for the runs asked for (a missing one is an error naming it; with
    `partial`, skipped: `missing_runs` names them)."""
    out = []
    for arm, seed, budget in _runs(settings):
        path = record_path(settings, arm, seed, budget)
        if partial and not path.exists():
            continue
        if not path.exists():
            raise FileNotFoundError(
                f"{path}: no finished {budget} run of study arm {arm.name!r} seed {seed}; run the study without "
                "--report-only"
            )
        out.append(json.loads(path.read_text()))
    if not out:
        raise FileNotFoundError(f"{records_dir(settings)}: no finished run of the study arms asked for yet")
    return out


def missing_runs(settings: StudySettings) -> list[str]:
    """The runs asked for without a record yet: `ca (every run)` for an arm without any, else per budget,
    `insertion steps seeds 1, 2`."""
    missing: dict[str, dict[str, list[str]]] = {}
    for arm, seed, budget in _runs(settings):
        if not record_path(settings, arm, seed, budget).exists():
            missing.setdefault(arm.name, {}).setdefault(budget, []).append(str(seed))
    every = len(settings.seeds) * len(settings.budgets())
    out = []
    for arm, budgets in missing.items():
        if sum(map(len, budgets.values())) == every:
            out.append(f"{arm} (every run)")
        else:
            out += [f"{arm} {budget} seed{'s' * (len(s) > 1)} {', '.join(s)}" for budget, s in budgets.items()]
    return out
