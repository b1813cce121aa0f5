"""What a study run's Lightning CSV log says: its validation curve, throughput and the steps it did."""

from __future__ import annotations

import csv
import statistics
from pathlib import Path
from typing import Any


def read_curves(metrics_csv: Path) -> dict[str, Any]:
    """Validation points and throughput from Lightning's CSV log; `steps_done` is one past the last logged step (the
    run's step count when every step is logged, up to `log_every_n_steps - 1` short of it otherwise)."""
    val, tokens, samples, seconds, last = [], [], [], [], 0
    with open(metrics_csv) as f:
        for row in csv.DictReader(f):
            last = max(last, int(row["step"]) + 1 if row.get("step") else 0)
            if row.get("val/accuracy"):  # logged at the 0-based index of the batch it follows
                val.append(
                    {
                        "step": int(row["step"]) + 1,
                        "accuracy": float(row["val/accuracy"]),
                        "loss": float(row["val/loss"]),
                    }
                )
            if row.get("perf/tokens_per_s"):
                tokens.append(float(row["perf/tokens_per_s"]))
                samples.append(float(row["perf/samples_per_s"]))
                seconds.append(float(row["perf/step_seconds"]))
    steady = slice(1, None) if len(tokens) > 2 else slice(None)  # the first step pays for warm-up
    return {
        "val": val,
        "tokens_per_s": statistics.median(tokens[steady]) if tokens else None,
        "samples_per_s": statistics.median(samples[steady]) if samples else None,
        "step_seconds": statistics.median(seconds[steady]) if seconds else None,
        "steps_done": last,
    }


__all__ = ["read_curves"]
