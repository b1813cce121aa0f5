"""Training callbacks and the atomic checkpoint IO.

- `AdapterCheckpoint`: adapter-only checkpoints (safetensors + manifest, never the frozen base)
  every N optimizer steps and at the end of training, plus `last` pointing at the newest.
- `ThroughputMonitor`: tokens/s, images/s, samples/s and peak memory (CUDA: max_memory_allocated;
  CPU: the process's peak RSS from getrusage).
- `AtomicCheckpointIO`: Lightning's resume checkpoints written atomically (`casa_adapter.atomic`), so a
  `kill -9` mid-write leaves the previous checkpoint whole.
"""

from __future__ import annotations

import resource
import shutil
import time
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.pytorch.plugins.io import TorchCheckpointIO

from casa_adapter.adapters.io import save_adapter
from casa_adapter.atomic import atomic_file


class AtomicCheckpointIO(TorchCheckpointIO):
    """torch.save through `casa_adapter.atomic.atomic_file`: a temp file, fsync, then one rename onto `path`."""

    def save_checkpoint(self, checkpoint: dict[str, Any], path, storage_options: Any | None = None) -> None:
        with atomic_file(path) as f:
            torch.save(checkpoint, f)


class AdapterCheckpoint(L.Callback):
    """Write `dirpath/step-NNNNNN` adapters every `every_n_steps` (the newest `keep_last` kept) and at each of
    `at_steps` (always kept: e.g. the steps a shorter run of the same schedule would end at), and `dirpath/final`
    at the end."""

    def __init__(
        self,
        dirpath: str = "runs/adapter",
        every_n_steps: int = 0,
        keep_last: int = 2,
        at_steps: list[int] | None = None,
    ) -> None:
        self.dirpath, self.every_n_steps, self.keep_last = Path(dirpath), every_n_steps, keep_last
        self.at_steps = set(at_steps or ())
        self._last_saved = -1

    def _save(self, trainer: L.Trainer, module: L.LightningModule, name: str) -> Path | None:
        tensors = _full_tensors(module.model)  # collective under FSDP: every rank takes part
        if not trainer.is_global_zero:
            return None
        target = save_adapter(module.model, self.dirpath / name, tensors=tensors)
        return target

    def on_train_batch_end(self, trainer: L.Trainer, module: L.LightningModule, *args: Any) -> None:
        step = trainer.global_step
        on_grid = bool(self.every_n_steps) and step % self.every_n_steps == 0
        if step == 0 or step == self._last_saved or not (on_grid or step in self.at_steps):
            return
        self._last_saved = step
        if self._save(trainer, module, f"step-{step:06d}") is not None:
            self._prune()

    def on_train_end(self, trainer: L.Trainer, module: L.LightningModule) -> None:
        target = self._save(trainer, module, "final")
        if target is not None:
            print(f"adapter saved to {target}\nload it with: casa_adapter.load_adapter({str(target)!r}, base_llm)")

    def _prune(self) -> None:
        steps = sorted(p for p in self.dirpath.glob("step-*") if int(p.name.removeprefix("step-")) not in self.at_steps)
        for old in steps[: max(0, len(steps) - self.keep_last)]:
            shutil.rmtree(old, ignore_errors=True)


def _full_tensors(model: torch.nn.Module) -> dict[str, torch.Tensor] | None:
    """Unsharded copies of every parameter/buffer when FSDP2 sharded the model (DTensors), else None."""
    state = dict(model.named_parameters()) | dict(model.named_buffers())
    if not any(hasattr(t, "full_tensor") for t in state.values()):
        return None
    return {n: (t.full_tensor() if hasattr(t, "full_tensor") else t).detach() for n, t in state.items()}


class ThroughputMonitor(L.Callback):
    """Logs perf/step_seconds, perf/tokens_per_s, perf/images_per_s, perf/samples_per_s and perf/peak_mem_mb
    each step."""

    def __init__(self) -> None:
        self._start = 0.0

    def on_train_batch_start(self, trainer: L.Trainer, module: L.LightningModule, batch: dict, batch_idx: int) -> None:
        self._start = time.perf_counter()

    def on_train_batch_end(
        self, trainer: L.Trainer, module: L.LightningModule, outputs: Any, batch: dict, batch_idx: int
    ) -> None:
        seconds = max(time.perf_counter() - self._start, 1e-9)
        tokens = int(batch["attention_mask"].sum())
        images = sum(int(x.shape[0]) for x in (batch.get("images") or []) if x is not None)
        samples = (
            int(batch["sample_ids"].max(-1).values.sum())
            if batch.get("sample_ids") is not None
            else len(batch["input_ids"])
        )
        module.log_dict(
            {
                "perf/step_seconds": seconds,
                "perf/tokens_per_s": tokens / seconds,
                "perf/images_per_s": images / seconds,
                "perf/samples_per_s": samples / seconds,
                "perf/peak_mem_mb": peak_memory_mb(module.device),
            },
            batch_size=len(batch["input_ids"]),
        )


def peak_memory_mb(device: torch.device) -> float:
    """CUDA: max_memory_allocated; CPU: peak resident set size of this process (getrusage ru_maxrss)."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
