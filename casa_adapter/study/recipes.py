"""The recipe of one study run: the shared recipe with the run's seed, budget, output folders and the arm's
changes (`arm_recipe`), set by dotted paths (`set_path`)."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

from casa_adapter.study.arms import Arm
from casa_adapter.study.settings import StudySettings


def set_path(config: dict, path: str, value: Any) -> None:
    """config["a"]["b"]["c"] = value for path "a.b.c", creating missing levels."""
    node = config
    *parents, last = path.split(".")
    for key in parents:
        node = node.setdefault(key, {})
        if not isinstance(node, dict):
            raise ValueError(f"recipe path {path!r}: {key!r} is not a mapping")
    node[last] = value


def resume_callbacks(arm_dir: Path, every: int) -> list[dict]:
    """The ModelCheckpoint a study run resumes from (`arm_dir/ckpt/last.ckpt` only, rewritten every `every` steps)
    and a Lightning `Timer` without a limit, whose training seconds so far go into that checkpoint and carry on
    from there when the run resumes (what `runner.py` counts: a file's write time changes when it is copied)."""
    checkpoint = {
        "class_path": "lightning.pytorch.callbacks.ModelCheckpoint",
        "init_args": {
            "dirpath": str(arm_dir / "ckpt"),
            "every_n_train_steps": every,
            "save_last": True,
            "save_top_k": 0,
        },
    }
    timer = {  # interval given as text: jsonargparse cannot write the default (an enum) into the run's config
        "class_path": "lightning.pytorch.callbacks.Timer",
        "init_args": {"interval": "step", "verbose": False},
    }
    return [checkpoint, timer]


def arm_recipe(
    base: dict,
    arm: Arm,
    settings: StudySettings,
    arm_dir: Path,
    seed: int = 0,
    budget: str = "steps",
    time_steps: int | None = None,
    snapshots: list[int] | None = None,
) -> dict:
    """The recipe one run does: the shared one, its seed, budget and output folders, then the arm's changes.
    `time_steps`: the steps of a `time` run (`time_budget_steps`). `snapshots`: the steps at which a `steps` run
    writes the adapters its `time` runs will read, when their budget is known (None: every `snapshot_every` steps)."""
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
        enable_checkpointing=bool(settings.resume_every),
        logger={
            "class_path": "lightning.pytorch.loggers.CSVLogger",
            "init_args": {  # flushed at each resume checkpoint: a resumed run's curve has no gap
                "save_dir": str(arm_dir),
                "name": "logs",
                "version": "",
                "flush_logs_every_n_steps": settings.resume_every or 100,
            },
        },
        callbacks=resume_callbacks(arm_dir, settings.resume_every) if settings.resume_every else [],
    )
    config["adapter"] = {"dirpath": str(arm_dir / "adapter")}
    if budget == "steps" and settings.minutes is not None and settings.snapshot_every:  # for the time runs
        if snapshots is None:
            grid = settings.snapshot_every
            config["adapter"].update(every_n_steps=grid, keep_last=settings.steps // grid)
        elif snapshots:
            config["adapter"]["at_steps"] = snapshots
    if timed:  # the equal-steps runs' schedule (decay over `steps`), held at its floor after that
        set_path(config, "model.init_args.optim.total_steps", settings.steps)
    changes = dict(settings.overrides)
    if settings.base is not None:
        changes["model.init_args.model.base"] = settings.base
    for path, value in {**changes, **arm.recipe}.items():
        set_path(config, path, value)
    return config


__all__ = ["arm_recipe", "resume_callbacks", "set_path"]
