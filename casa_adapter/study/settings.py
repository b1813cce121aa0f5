"""The study's settings and where its runs live: `StudySettings`, `run_dir` (work) and `record_path` (records)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from casa_adapter.study.arms import STUDY, Arm


@dataclass
class StudySettings:
    """What the study trains and where it writes."""

    recipe: str = "recipes/demo.yaml"
    """The shared recipe (data, seed, optimiser, tower, base model); every arm starts from it."""
    arms: list[str] = field(default_factory=lambda: list(STUDY))
    """Arm names (`casa_adapter.study.arms.ARMS`), in table order; default: the reported study (`arms.STUDY`)."""
    steps: int = 200
    """Optimizer steps per arm of the equal-steps runs (the recipe's `max_time` is lifted there)."""
    seeds: list[int] = field(default_factory=lambda: [0, 1, 2])
    """Training seeds (`seed_everything`: the random initialisation; the data order is the recipe's
    `data.settings.seed` in every run); every arm runs each."""
    minutes: float | None = None
    """Also run every arm and seed for this many minutes of training (the equal-wall-time table), counted in
    steps at the arm's seconds per step measured side by side with the others (`cost.py`); None: no."""
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
    records: str | None = None
    """Folder of the study's records, what the report is made from: one summary per finished run
    (`ARM/BUDGET-seedN.json`) and the step costs (`costs.json`). Small, and kept apart from `work` (adapters,
    checkpoints, logs) so that they can be committed beside the report: a study whose work folder is lost keeps
    every run it finished. None: `results/records` beside `out`."""
    quiet: bool = False
    """Send the children's output (progress bars) to `WORK/ARM/train.log` and `eval.log` instead of the terminal."""
    threads: int | None = None
    """CPU threads of every run (`OMP_NUM_THREADS` of the children); None: torch's default (all cores). On a machine
    shared with other work, 1 avoids oversubscription: two 2-thread jobs on 2 cores can run a step 10x slower."""

    snapshot_every: int = 5
    """With `minutes`: the equal-steps runs save their adapter every this many steps, and an equal-wall-time run
    of N <= `steps` steps is evaluated on the snapshot nearest to N instead of training again (the same model:
    same seed, data order and schedule; `casa_adapter.study.snapshots`). 0: every time run trains."""

    resume_every: int = 10
    """A training run writes a resume checkpoint (`WORK/ARM/RUN/ckpt/last.ckpt`: trainable weights, optimizer,
    schedule, data position) every this many steps; a run stopped before its summary continues from there when
    the study is started again, on the same data order. 0: no checkpoints, a stopped run starts over."""

    cost_rounds: int = 3
    """Rounds of the side-by-side step-cost measurement (`cost.py`): each times every arm in turn."""

    cost_steps: int = 3
    """Timed training steps per arm and round of the cost measurement (after one untimed warm-up step)."""

    def __post_init__(self) -> None:
        if self.cost_rounds < 1 or self.cost_steps < 1:
            raise ValueError(f"cost_rounds and cost_steps must be >= 1, got {self.cost_rounds}, {self.cost_steps}")
        if self.snapshot_every < 0 or self.resume_every < 0:
            raise ValueError(
                f"snapshot_every and resume_every must be >= 0: {self.snapshot_every}, {self.resume_every}"
            )
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


def run_dir(settings: StudySettings, arm: Arm, seed: int, budget: str) -> Path:
    """The work folder of one run: its recipe, logs, adapters and resume checkpoint."""
    return Path(settings.work) / arm.name / f"{budget}-seed{seed}"


def records_dir(settings: StudySettings) -> Path:
    """`settings.records`, or `results/records` beside the report."""
    return Path(settings.records) if settings.records else Path(settings.out).parent / "results" / "records"


def record_path(settings: StudySettings, arm: Arm, seed: int, budget: str) -> Path:
    """The summary of one finished run (what the report reads; its existence marks the run done)."""
    return records_dir(settings) / arm.name / f"{budget}-seed{seed}.json"


__all__ = ["StudySettings", "record_path", "records_dir", "run_dir"]
