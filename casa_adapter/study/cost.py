"""The equal-wall-time budget's step costs, measured side by side.

An arm's equal-time run trains `round(minutes * 60 / cost)` steps. `cost` is not read off the arm's own
training runs: those run hours apart on a machine whose load changes, so two arms with the same
computation got budgets 13% apart, and one run beside a test suite lost a fifth of its steps. Here every
arm's training step is timed in one process, round-robin: each round builds every arm in turn (its
equal-steps recipe, the base loaded once and copied), runs one untimed warm-up step and `cost_steps`
timed ones on the same first batches of the arm's own data pipeline; `cost_rounds` rounds, the median of
all timed steps is the arm's cost. Arms then differ in cost by what they compute, and a load that comes and
goes falls on all of them. A step is what `CasaModule.training_step` does (answer logits only, fp32 loss)
plus backward and AdamW, on the recipe's device.

The costs go to `RECORDS/costs.json` (with how they were measured) and are reused: a study over arms it lacks,
or at another thread count, is refused until it is measured again (`--costs-only`), so every arm's budget
comes from one side-by-side measurement. A study measures them when its first time run needs them
(`ensure_costs`), so its equal-steps runs start at once; while one process measures, `RECORDS/costs.measuring`
holds its pid, and another study process that needs the costs waits for them instead of measuring again.
"""

from __future__ import annotations

import copy
import json
import os
import statistics
import tempfile
import time
from pathlib import Path

import torch

from casa_adapter.atomic import atomic_file
from casa_adapter.backbone.base_models import load_base
from casa_adapter.bench.common import sync
from casa_adapter.data import CasaDataModule
from casa_adapter.data.make_demo import DemoSettings
from casa_adapter.data.settings import DataSettings
from casa_adapter.eval.loading import model_settings
from casa_adapter.fusion.build import wrap
from casa_adapter.processor import Processor
from casa_adapter.study.arms import Arm
from casa_adapter.study.recipes import arm_recipe
from casa_adapter.study.settings import StudySettings, records_dir
from casa_adapter.training.module import answer_loss, forward_answers
from casa_adapter.training.optim import OptimSettings, build_optimizer

COSTS = "costs.json"
"""The side-by-side step costs, in the study's records folder."""

MEASURING = "costs.measuring"
"""Beside `COSTS` while a process measures them: its pid."""

WAIT_SECONDS = 30.0
"""How often a study process waiting for another one's cost measurement looks again."""


def costs_path(settings: StudySettings) -> Path:
    return records_dir(settings) / COSTS


def read_costs(settings: StudySettings) -> dict | None:
    """The measured costs (`costs.json`), or None when there are none."""
    path = costs_path(settings)
    return json.loads(path.read_text()) if path.exists() else None


def arm_cost(settings: StudySettings, arm: Arm) -> float:
    """`arm`'s measured seconds per step; refuses a measurement that lacks the arm or ran at other threads."""
    costs = read_costs(settings)
    how = (
        f"casa-adapter study --costs-only --recipe {settings.recipe} --threads {settings.threads} --records "
        f"{records_dir(settings)} --arms {','.join(settings.arms)} (every arm of the study, also another process's)"
    )
    if costs is None:
        raise FileNotFoundError(f"no step costs in {costs_path(settings)}; measure every arm side by side first: {how}")
    if costs["threads"] != settings.threads:
        raise ValueError(
            f"{costs_path(settings)} was measured at threads={costs['threads']}, this study runs at "
            f"threads={settings.threads}; measure again: {how}"
        )
    if arm.name not in costs["arms"]:
        raise ValueError(
            f"{costs_path(settings)} has no cost of arm {arm.name!r} (measured: {', '.join(costs['arms'])}); every "
            f"arm's budget must come from one side-by-side measurement: {how}"
        )
    return costs["arms"][arm.name]["median"]


def ensure_costs(settings: StudySettings, base_recipe: dict, arms: list[Arm]) -> dict:
    """The measured costs: read, waited for while another live process measures them (`MEASURING`), or measured
    now over `arms`."""
    marker, waiting = records_dir(settings) / MEASURING, False
    while (costs := read_costs(settings)) is None:
        other = _measuring_pid(marker)
        if other is None:
            return measure_costs(settings, base_recipe, arms)
        if not waiting:
            print(f"[study costs] waiting for process {other}, which is measuring them ({marker})", flush=True)
            waiting = True
        time.sleep(WAIT_SECONDS)
    return costs


def _measuring_pid(marker: Path) -> int | None:
    """The pid in `marker` if that process still runs; None without a marker or when it is stale (its process
    died: a killed measurement)."""
    try:
        pid = int(marker.read_text().strip())
        os.kill(pid, 0)
    except (FileNotFoundError, ValueError, ProcessLookupError):
        return None
    except PermissionError:  # alive, another user's
        pass
    return pid


def round_medians(costs: dict, arm: str) -> list[float]:
    """`arm`'s median step time in each round of the measurement (how much it moved between rounds)."""
    seconds = costs["arms"][arm]["seconds"]
    rounds = costs.get("rounds") or 1
    per = len(seconds) // rounds
    return [statistics.median(seconds[i * per : (i + 1) * per]) for i in range(rounds)]


def time_budget_steps(settings: StudySettings, arm: Arm) -> tuple[int, float]:
    """(steps, seconds per step) of `arm`'s equal-wall-time runs: `settings.minutes` at its measured cost."""
    cost = arm_cost(settings, arm)
    return max(1, round(settings.minutes * 60 / cost)), cost


def _device(recipe: dict) -> torch.device:
    accelerator = str(recipe.get("trainer", {}).get("accelerator", "cpu"))
    wants_gpu = accelerator in ("gpu", "cuda") or (accelerator == "auto" and torch.cuda.is_available())
    return torch.device("cuda" if wants_gpu else "cpu")


class _ArmStep:
    """One arm built from its recipe on a copy of the base, with the first batches of its data pipeline."""

    def __init__(self, config: dict, base, tokenizer, n_batches: int, device: torch.device):
        init = config["model"]["init_args"]
        settings = model_settings(init["model"])
        torch.manual_seed(0)
        self.model = wrap(copy.deepcopy(base), vision=settings.vision, casa=settings.casa, lora=settings.lora)
        self.model.to(device).train()
        prompt = init.get("system_prompt")
        processor = Processor.from_model(self.model, tokenizer, **({} if prompt is None else {"system_prompt": prompt}))
        data = config["data"]["init_args"]
        loader = CasaDataModule(
            train=data.get("train"),
            val=data.get("val"),
            settings=DataSettings(
                **{**data.get("settings", {}), "num_workers": 0, "image_tokens": self.model.vision.num_tokens()}
            ),
            processor=processor,
            demo=DemoSettings(**data["demo"]) if data.get("demo") else None,
        )
        loader.prepare_data()
        loader.setup("fit")
        batches = iter(loader.train_dataloader())
        self.batches = [_to(next(batches), device) for _ in range(n_batches)]
        optim = OptimSettings(**{k: v for k, v in init.get("optim", {}).items() if k != "total_steps"})
        self.optimizer, _ = build_optimizer(self.model, optim, total_steps=1000)
        self.device = device

    def step(self, batch: dict) -> float:
        """Seconds of one training step on `batch`: forward, loss, backward, AdamW."""
        sync(self.device)
        start = time.perf_counter()
        logits, targets, _ = forward_answers(self.model, batch)
        answer_loss(logits, targets).backward()
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        sync(self.device)
        return time.perf_counter() - start


def _to(batch: dict, device: torch.device) -> dict:
    out = {}
    for key, value in batch.items():
        if isinstance(value, torch.Tensor):
            out[key] = value.to(device)
        elif key == "images" and value is not None:
            out[key] = [t.to(device) for t in value]
        else:
            out[key] = value
    return out


def measure_costs(settings: StudySettings, base_recipe: dict, arms: list[Arm]) -> dict:
    """Time every arm's training step round-robin (see the module docstring) and write `costs.json`."""
    marker = records_dir(settings) / MEASURING
    marker.parent.mkdir(parents=True, exist_ok=True)
    with atomic_file(marker, "w") as f:
        f.write(f"{os.getpid()}\n")
    try:
        costs = _measure(settings, base_recipe, arms)
    finally:
        marker.unlink(missing_ok=True)
    return costs


def _measure(settings: StudySettings, base_recipe: dict, arms: list[Arm]) -> dict:
    if settings.threads:
        torch.set_num_threads(settings.threads)
    device = _device(base_recipe)
    configs = {}
    with tempfile.TemporaryDirectory() as tmp:
        for arm in arms:
            configs[arm.name] = arm_recipe(base_recipe, arm, settings, Path(tmp) / arm.name)
        block = model_settings(configs[arms[0].name]["model"]["init_args"]["model"])
        base, tokenizer = load_base(block.base, getattr(torch, block.dtype))
        seconds: dict[str, list[float]] = {arm.name: [] for arm in arms}
        for r in range(settings.cost_rounds):
            for i, arm in enumerate(arms, 1):
                built = _ArmStep(configs[arm.name], base, tokenizer, settings.cost_steps + 1, device)
                built.step(built.batches[0])  # warm-up: allocator, kernels, optimizer state
                seconds[arm.name] += [built.step(b) for b in built.batches[1:]]
                del built
                print(
                    f"[study costs] round {r + 1}/{settings.cost_rounds}, {i}/{len(arms)} {arm.name}: "
                    f"{statistics.median(seconds[arm.name]):.2f} s/step so far",
                    flush=True,
                )
    costs = {
        "method": (
            f"round-robin over {len(arms)} arms, {settings.cost_rounds} rounds x {settings.cost_steps} timed steps "
            "(one warm-up step each), median"
        ),
        "rounds": settings.cost_rounds,
        "threads": settings.threads,
        "device": str(device),
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "arms": {n: {"median": statistics.median(s), "seconds": s} for n, s in seconds.items()},
    }
    with atomic_file(costs_path(settings), "w") as f:
        f.write(json.dumps(costs, indent=2) + "\n")
    return costs


__all__ = [
    "COSTS",
    "MEASURING",
    "arm_cost",
    "costs_path",
    "ensure_costs",
    "measure_costs",
    "read_costs",
    "round_medians",
    "time_budget_steps",
]
