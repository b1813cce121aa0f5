"""Helpers for tests that run the `casa-adapter` CLI on a tiny recipe in a subprocess."""

from __future__ import annotations

import csv
import hashlib
import os
import subprocess
import sys
from pathlib import Path

import lightning as L
import torch
import yaml

TESTS = Path(__file__).resolve().parent


def make_demo_data(root: Path, train: int = 120, val: int = 24) -> Path:
    """A small demo dataset (the `data make-demo` generator) under root/data."""
    out = root / "data"
    if not (out / "meta.json").exists():
        from casa_adapter.data.commands import main as data_main

        assert (
            data_main(
                [
                    "make-demo",
                    "--out",
                    str(out),
                    "--train",
                    str(train),
                    "--val",
                    str(val),
                    "--image-size",
                    "32",
                    "--quiet",
                ]
            )
            == 0
        )
    return out


def tiny_recipe(root: Path, data: Path, max_steps: int = 8, **trainer) -> dict:
    """A recipe: tiny random Llama, siglip-tiny tower, demo shards, CSV losses, checkpoints every 2 steps."""
    return {
        "seed_everything": 0,
        "trainer": {
            "accelerator": "cpu",
            "devices": 1,
            "max_steps": max_steps,
            "log_every_n_steps": 1,
            "limit_val_batches": 0,
            "enable_progress_bar": False,
            "default_root_dir": str(root),
            "logger": {"class_path": "lightning.pytorch.loggers.CSVLogger", "init_args": {"save_dir": str(root)}},
            "callbacks": [
                {
                    "class_path": "lightning.pytorch.callbacks.ModelCheckpoint",
                    "init_args": {
                        "dirpath": str(root / "ckpt"),
                        "every_n_train_steps": 2,
                        "save_last": True,
                        "save_top_k": 1,
                    },
                }
            ],
            **trainer,
        },
        "model": {
            "class_path": "casa_adapter.CasaModule",
            "init_args": {
                "model": {
                    "base": "tiny",
                    "vision": {"name": "siglip-tiny", "pretrained": False, "image_size": 32},
                    "casa": {"every": 2},
                    "lora": {"rank": 4},
                },
                "optim": {"lr": 1e-3, "warmup_steps": 2},
            },
        },
        "data": {
            "class_path": "casa_adapter.data.CasaDataModule",
            "init_args": {
                "train": str(data / "train"),
                "val": str(data / "val"),
                "settings": {"batch_size": 4, "num_workers": 0, "max_tokens": 512},
            },
        },
        "adapter": {"dirpath": str(root / "adapter"), "every_n_steps": 0},
    }


def write_recipe(path: Path, recipe: dict) -> Path:
    path.write_text(yaml.safe_dump(recipe))
    return path


def run_cli(args: list[str], check: bool = True) -> subprocess.CompletedProcess:
    """`casa-adapter ARGS` in a subprocess with the tests folder importable (for test callbacks)."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(TESTS), os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.run(
        [sys.executable, "-m", "casa_adapter.cli", *args], env=env, capture_output=True, text=True, timeout=600
    )
    if check and proc.returncode != 0:
        raise AssertionError(f"casa-adapter {' '.join(args)} failed ({proc.returncode}):\n{proc.stderr[-4000:]}")
    return proc


def step_losses(root: Path) -> dict[int, float]:
    """train/loss by global step from every CSVLogger version under root."""
    losses: dict[int, float] = {}
    for metrics in sorted(root.glob("lightning_logs/version_*/metrics.csv")):
        with open(metrics) as f:
            for row in csv.DictReader(f):
                if row.get("train/loss"):
                    losses[int(row["step"])] = float(row["train/loss"])
    return losses


class KillAtStep(L.Callback):
    """Ends the process with SIGKILL (no clean-up at all) once `step` optimizer steps are done."""

    def __init__(self, step: int) -> None:
        self.step = step

    def on_train_batch_end(self, trainer, *args) -> None:
        if trainer.global_step >= self.step:
            for logger in trainer.loggers:
                logger.save()
            os.kill(os.getpid(), 9)


class ParamReport(L.Callback):
    """Writes, per rank, checksums of the trainable and frozen parameters before and after training."""

    def __init__(self, out_dir: str) -> None:
        self.out_dir = Path(out_dir)

    @staticmethod
    def _sums(module) -> dict:
        """Per parameter, a SHA-256 of its bytes: exact, where a float sum's last digit depends on the order of the
        reduction (a 1-ulp difference between two ranks' sums of the same frozen weight failed CI)."""
        report = {"trainable": {}, "frozen": {}}
        for name, p in module.model.named_parameters():
            t = (p.full_tensor() if hasattr(p, "full_tensor") else p).detach().cpu().contiguous()
            key = "trainable" if p.requires_grad else "frozen"
            report[key][name] = hashlib.sha256(t.view(torch.uint8).numpy().tobytes()).hexdigest()
        report["sharded"] = any(hasattr(p, "full_tensor") for p in module.model.parameters())
        return report

    def on_train_start(self, trainer, module) -> None:
        self._before = self._sums(module)

    def on_train_end(self, trainer, module) -> None:
        import json

        after = self._sums(module)
        self.out_dir.mkdir(parents=True, exist_ok=True)
        (self.out_dir / f"rank{trainer.global_rank}.json").write_text(
            json.dumps({"before": self._before, "after": after, "world": trainer.world_size})
        )
