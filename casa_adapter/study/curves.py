"""What a study run's Lightning CSV logs say (every attempt of a resumed run): its validation curve, throughput and
the steps it did."""

from __future__ import annotations

import csv
import statistics
from pathlib import Path
from typing import Any

EARLIER = "metrics.attempt-*.csv"
"""What a resumed run's earlier attempts logged (`keep_earlier_log`), beside Lightning's `metrics.csv`."""


def keep_earlier_log(logs: Path) -> None:
    """Before a run resumes: move its `metrics.csv` aside (`metrics.attempt-N.csv`), since Lightning's CSVLogger
    (2.6) deletes the log files it finds when it saves its first rows."""
    current = logs / "metrics.csv"
    if current.exists():
        current.rename(logs / EARLIER.replace("*", str(len(list(logs.glob(EARLIER))) + 1)))


def _log_files(logs: Path) -> list[Path]:
    """The run's CSV logs, oldest attempt first."""
    earlier = sorted(logs.glob(EARLIER), key=lambda p: int(p.name.split("-")[1].split(".")[0]))
    return [*earlier, *([logs / "metrics.csv"] if (logs / "metrics.csv").exists() else [])]


def read_curves(logs: Path) -> dict[str, Any]:
    """Validation points and throughput from the Lightning CSV logs in `logs` (every attempt of a resumed run);
    `steps_done` is one past the last logged step (the run's step count when every step is logged, up to
    `log_every_n_steps - 1` short of it otherwise)."""
    val, perf, last = {}, {}, 0  # by step: a resumed run logs again the steps after its checkpoint (kept: the later)
    for path in _log_files(logs):
        with path.open() as f:
            for row in csv.DictReader(f):
                last = max(last, int(row["step"]) + 1 if row.get("step") else 0)
                if row.get("val/accuracy"):  # logged at the 0-based index of the batch it follows
                    step = int(row["step"]) + 1
                    val[step] = {"step": step, "accuracy": float(row["val/accuracy"]), "loss": float(row["val/loss"])}
                if row.get("perf/tokens_per_s"):
                    perf[int(row["step"])] = tuple(
                        float(row[f"perf/{k}"]) for k in ("tokens_per_s", "samples_per_s", "step_seconds")
                    )
    val = [val[k] for k in sorted(val)]
    tokens, samples, seconds = (list(x) for x in zip(*(perf[k] for k in sorted(perf)))) if perf else ([], [], [])
    steady = slice(1, None) if len(tokens) > 2 else slice(None)  # the first step pays for warm-up
    return {
        "val": val,
        "tokens_per_s": statistics.median(tokens[steady]) if tokens else None,
        "samples_per_s": statistics.median(samples[steady]) if samples else None,
        "step_seconds": statistics.median(seconds[steady]) if seconds else None,
        "steps_done": last,
    }


__all__ = ["EARLIER", "keep_earlier_log", "read_curves"]
