"""Equal-wall-time runs read off the equal-steps runs' adapter snapshots instead of training again.

A `time` run of N steps trains the arm's recipe with `max_steps=N` and the learning-rate schedule of
the `steps` runs (decay over `steps`). For N <= steps that is the same computation as the first N steps
of the arm's `steps` run with the same seed (same initialisation, data order and schedule), so its
model is that run's adapter at step N. With `StudySettings.snapshot_every` > 0 a `time` run of N <= steps
steps is evaluated on the `steps` run's adapter at the step nearest to N on the `snapshot_every` grid
(`AdapterCheckpoint`, `adapter/step-NNNNNN`): a `steps` run that starts after the costs are measured
saves just that step (`AdapterCheckpoint.at_steps`), one that starts before saves the whole grid, and
the snapshots the `time` run does not use are deleted after it. A `time` run of more steps than `steps`
(an arm cheaper than the budget assumes) still trains. tests/study/test_study.py checks that a trained
N-step run's adapter equals the snapshot.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from casa_adapter.study.arms import Arm
from casa_adapter.study.children import evaluate, write_summary
from casa_adapter.study.settings import StudySettings, record_path, run_dir


def snapshot_step(steps: int, every: int, wanted: int) -> int | None:
    """The saved step nearest to `wanted` among `every, 2 * every, ...` and `steps` (the final adapter; ties go to
    the later step); None when `wanted > steps` (that run must train) or snapshots are off (`every == 0`)."""
    if every <= 0 or wanted > steps:
        return None
    return min([*range(every, steps, every), steps], key=lambda s: (abs(s - wanted), -s))


def snapshot_dir(steps_run: Path, step: int, steps: int) -> Path:
    """The adapter folder of `steps_run` at `step` (`final` at the run's last step)."""
    return steps_run / "adapter" / ("final" if step == steps else f"step-{step:06d}")


def prune_snapshots(steps_run: Path, keep: Path) -> None:
    """Delete `steps_run`'s `adapter/step-*` folders except `keep`."""
    for folder in (steps_run / "adapter").glob("step-*"):
        if folder != keep:
            shutil.rmtree(folder, ignore_errors=True)


def find_snapshot(settings: StudySettings, arm: Arm, seed: int, wanted: int) -> tuple[int, Path] | None:
    """(step, adapter folder) of the equal-steps run's snapshot that stands for a `wanted`-step time run, or None
    when that run must train (more steps than `steps`, snapshots off, or the snapshot is not there)."""
    step = snapshot_step(settings.steps, settings.snapshot_every, wanted)
    if step is None:
        return None
    adapter = snapshot_dir(run_dir(settings, arm, seed, "steps"), step, settings.steps)
    return (step, adapter) if (adapter / "manifest.json").exists() else None


def snapshot_run(
    arm: Arm, settings: StudySettings, tag: str, seed: int, budget: tuple[int, float], snapshot: tuple[int, Path]
) -> dict:
    """A time run read off the equal-steps run's adapter at `snapshot` = (step, folder): evaluated, summarised (the
    equal-steps run's curves and throughput up to that step) and the run's other snapshots deleted."""
    (wanted, cost), (step, adapter) = budget, snapshot
    steps_run, arm_dir = run_dir(settings, arm, seed, "steps"), run_dir(settings, arm, seed, "time")
    print(
        f"{tag} {arm.name} seed {seed}: {settings.minutes} min = {wanted} steps at {cost:.2f} s/step; evaluating the "
        f"equal-steps run's adapter at step {step} ({adapter})",
        flush=True,
    )
    results = evaluate(arm, steps_run / "recipe.yaml", adapter, arm_dir, settings)
    base = json.loads(record_path(settings, arm, seed, "steps").read_text())
    summary = {
        **base,
        "budget": "time",
        "minutes": settings.minutes,
        "budget_steps": step,
        "requested_steps": wanted,
        "step_cost": cost,
        "train_seconds": base["train_seconds"] * step / settings.steps,  # its share of the equal-steps run
        "val": [p for p in base["val"] if p["step"] <= step],
        "steps_done": step,
        "snapshot": str(adapter),
        "eval": results,
    }
    write_summary(record_path(settings, arm, seed, "time"), summary)
    prune_snapshots(steps_run, keep=adapter)
    print(f"{tag} {arm.name}: accuracy {results['overall']:.1%} at step {step}", flush=True)
    return summary


__all__ = ["find_snapshot", "prune_snapshots", "snapshot_dir", "snapshot_run", "snapshot_step"]
