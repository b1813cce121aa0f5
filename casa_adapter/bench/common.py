"""What `bench stream` and `bench train` share: settings to flags, the base model, a vision tower of
exactly N tokens, the two fusions built on the same weights, machine facts, tables and JSON."""

from __future__ import annotations

import argparse
import copy
import dataclasses
import json
import os
import platform
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from transformers import LlamaConfig, LlamaForCausalLM

from casa_adapter.backbone.base_models import load_base
from casa_adapter.config import CasaSettings, LoraSettings
from casa_adapter.fusion.build import wrap

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
FUSIONS = ("casa", "insertion")


class BenchTower(nn.Module):
    """(n, 3, S, S) -> (n, tokens, 32): pixels average-pooled to `tokens` slots and projected.

    A stand-in tower whose token count is whatever the benchmark asks for and whose cost is
    negligible and identical for both fusions: the benchmarks measure the LLM side, not vision."""

    embed_dim = 32

    def __init__(self, tokens: int, image_size: int = 16):
        super().__init__()
        self.tokens, self.image_size = tokens, image_size
        self.proj = nn.Linear(3, self.embed_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pooled = F.adaptive_avg_pool1d(x.flatten(2), self.tokens)  # (n, 3, tokens)
        return self.proj(pooled.transpose(1, 2))  # (n, tokens, E)


def add_settings_arguments(parser, cls) -> None:
    """One `--kebab-name` flag per field of the settings dataclass `cls` (help from field metadata)."""
    for f in dataclasses.fields(cls):
        flag = "--" + f.name.replace("_", "-")
        help_text = f.metadata.get("help", "")
        choices = f.metadata.get("choices")
        if isinstance(f.default, bool):
            parser.add_argument(flag, action=argparse.BooleanOptionalAction, default=f.default, help=help_text)
            continue
        kind = type(f.default) if f.default is not None else str
        parser.add_argument(
            flag, type=kind, default=f.default, choices=choices, help=f"{help_text} (default: {f.default})"
        )


def settings_from(args, cls):
    """The settings dataclass `cls` from parsed arguments."""
    return cls(**{f.name: getattr(args, f.name) for f in dataclasses.fields(cls)})


def set_threads(threads: int) -> None:
    """torch CPU threads; 0 keeps torch's default. One thread is steadier when other processes share the cores."""
    if threads:
        torch.set_num_threads(threads)


RANDOM_MODELS = {
    "llama-2b-random": dict(
        hidden_size=2560,
        intermediate_size=7040,
        num_hidden_layers=24,
        num_attention_heads=20,
        num_key_value_heads=20,
        vocab_size=64000,
    )
}
"""Random-weight Llama-shaped bases built in place (no download): `llama-2b-random` is a ~2.3B model
with the paper's Helium-2B geometry (24 blocks, width 2560, 20 heads of 128), for GPU benchmarks."""


def load_llm(name: str, dtype: str, device: str) -> nn.Module:
    """The frozen base LLM named `name`, on `device`: one of `RANDOM_MODELS` (initialised on `device`), else
    whatever `casa_adapter.backbone.base_models.load_base` loads."""
    if name in RANDOM_MODELS:
        config = LlamaConfig(**RANDOM_MODELS[name], max_position_embeddings=2**19, tie_word_embeddings=False)
        with torch.device(device):
            llm = LlamaForCausalLM(config)  # random init on the device itself: seconds on a GPU
        llm.config._name_or_path = name
    else:
        llm, _ = load_base(name, DTYPES[dtype])
    return llm.to(device=device, dtype=DTYPES[dtype]).eval()


def build(base: nn.Module, fusion: str, tokens: int, s, copy_base: bool = True):
    """`wrap()` a copy of `base` (so both fusions share the same weights) with a `BenchTower` of `tokens`
    tokens, as the settings `s` say: `every`, `layers` ("" or comma-separated block indices), `kernel`
    ("": wrap()'s default), `lora` (rank, 0: none), `freeze_marker` (CASA: `train_marker=False`), `seed`."""
    llm = copy.deepcopy(base) if copy_base else base
    torch.manual_seed(s.seed)
    layers = [int(i) for i in s.layers.split(",")] if s.layers else None
    casa = CasaSettings(
        every=s.every,
        layers=layers,
        fusion=fusion,
        train_marker=not getattr(s, "freeze_marker", False),
        **({"kernel": s.kernel} if s.kernel else {}),
    )
    lora = LoraSettings(rank=s.lora) if getattr(s, "lora", 0) else None
    model = wrap(llm, vision=BenchTower(tokens), casa=casa, lora=lora)
    ref = next(llm.parameters())
    return model.to(device=ref.device).eval()


def sync(device: str) -> None:
    if str(device).startswith("cuda"):
        torch.cuda.synchronize()


def machine(device: str) -> dict:
    """What ran the benchmark: CPU, cores, load average at the start, torch, threads, GPU."""
    info = {
        "platform": platform.platform(),
        "cpu": _cpu_name(),
        "cores": os.cpu_count(),
        "load_average_1_5_15": [round(x, 2) for x in os.getloadavg()],
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "device": device,
    }
    if str(device).startswith("cuda") and torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name()
    return info


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def table(headers: list[str], rows: list[list]) -> str:
    """A plain fixed-width text table."""
    cells = [headers] + [[_fmt(c) for c in row] for row in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    lines = ["  ".join(c.rjust(w) for c, w in zip(r, widths)) for r in cells]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def _fmt(value) -> str:
    if isinstance(value, float):
        return f"{value:,.2f}" if abs(value) < 1000 else f"{value:,.0f}"
    return str(value)


def ratio(a: float, b: float) -> float:
    return a / b if b else float("nan")


def write_json(path: str | None, data: dict) -> None:
    if path:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        Path(path).write_text(json.dumps(data, indent=2))
        print(f"wrote {path}")
