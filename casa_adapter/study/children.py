"""The study's child processes and their outputs: `casa-adapter run` / `eval` in a subprocess with its own
thread count and peak-memory measurement (`child`), one adapter's evaluation (`evaluate`) and a run's
summary record (`write_summary`, atomic)."""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import time
from pathlib import Path

from casa_adapter.atomic import atomic_file
from casa_adapter.study.arms import Arm
from casa_adapter.study.settings import StudySettings


def child(
    args: list[str], log: Path | None, threads: int | None = None, append: bool = False
) -> tuple[int, float, float]:
    """Run `python -m casa_adapter.cli ARGS` (output to `log`, or the terminal when None; `append`: after what `log`
    holds; `threads`: its OMP_NUM_THREADS): (exit status, wall seconds, peak RSS in MiB)."""
    start = time.perf_counter()
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)} if threads else None
    with open(log, "a" if append else "w") if log else contextlib.nullcontext() as sink:
        proc = subprocess.Popen(
            [sys.executable, "-m", "casa_adapter.cli", *args],
            stdout=sink,
            stderr=subprocess.STDOUT if sink else None,
            env=env,
        )
        _, status, usage = os.wait4(proc.pid, 0)
    return os.waitstatus_to_exitcode(status), time.perf_counter() - start, usage.ru_maxrss / 1024


def evaluate(arm: Arm, recipe_path: Path, adapter: Path, arm_dir: Path, settings: StudySettings) -> dict:
    """`casa-adapter eval` of `adapter` in a child process, output in `arm_dir`: overall, count and per-type
    accuracy, and the evaluation's wall seconds."""
    args = ["eval", "--recipe", str(recipe_path), "--adapter", str(adapter)]
    args += ["--metrics", "em", "--out", str(arm_dir / "preds.jsonl"), "--json", str(arm_dir / "eval.json"), "--quiet"]
    args += ["--blank-images"] if arm.blank_images else []
    code, seconds, _ = child(args, arm_dir / "eval.log" if settings.quiet else None, settings.threads)
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
        "seconds": seconds,
    }


def write_summary(path: Path, summary: dict) -> None:
    """Write a run's summary to its record `path` (`settings.record_path`), atomically."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_file(path, "w") as f:
        f.write(json.dumps(summary, indent=2) + "\n")


__all__ = ["child", "evaluate", "write_summary"]
