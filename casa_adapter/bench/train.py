"""`casa-adapter bench train`: training tokens/s and peak memory, CASA vs token insertion.

Both fusions train on the same frozen base weights and the same synthetic samples (4 text tokens,
one image marker, the rest of the text; loss on the text after the image), with AdamW over what
each one trains (CASA layers + marker + projector, or the projector; `--lora R` adds LoRA to both).
All samples of a run have the same length, so batches need no padding; `--pack K` puts K samples in a
row (`sample_ids`, positions restarting per sample, no attention across samples). Presets:

  image-heavy   256 image tokens + 48 text tokens a sample, batch 8
  text-heavy    256 image tokens + 1,024 text tokens a sample, batch 2

tokens/s counts every token of a sample (text + image) over the timed steps (after `--warmup`).
Memory: each (preset, fusion) runs in its own child process. CPU: the child loads the model,
builds the batch, runs one short forward + backward (gradients dropped) so that one-time library
set-up is not counted, collects garbage and trims malloc, reads VmRSS, resets the kernel's peak-RSS
counter (`5 > /proc/self/clear_refs`), runs every step (warm-up included, so optimizer state and
gradients count) and reads VmHWM: peak = VmHWM - RSS after load. Where clear_refs is refused it
falls back to ru_maxrss - RSS after load (and says so). CUDA: `max_memory_allocated` after
`reset_peak_memory_stats`, minus `memory_allocated` after load.
"""

from __future__ import annotations

import contextlib
import ctypes
import dataclasses
import gc
import json
import os
import re
import resource
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

from casa_adapter.bench.common import (
    FUSIONS,
    build,
    load_llm,
    machine,
    ratio,
    set_threads,
    settings_from,
    sync,
    table,
    write_json,
)


@dataclass
class Preset:
    """One workload: tokens per sample and batch size."""

    image_tokens: int
    text_tokens: int
    batch: int


PRESETS = {"image-heavy": Preset(256, 48, 8), "text-heavy": Preset(256, 1024, 2)}


@dataclass
class TrainBenchSettings:
    """`bench train` settings; every field is a command-line flag (`--text-tokens` for `text_tokens`)."""

    preset: str = field(default="both", metadata={"help": "workload", "choices": [*PRESETS, "both"]})
    model: str = field(default="tiny", metadata={"help": "tiny | smollm2-135m | a local HF folder or .gguf"})
    every: int = field(default=3, metadata={"help": "CASA in every N-th block"})
    layers: str = field(default="", metadata={"help": "CASA blocks, e.g. 14,17,-1; overrides --every"})
    lora: int = field(default=0, metadata={"help": "LoRA rank on the backbone for both fusions (0: none)"})
    freeze_marker: bool = field(
        default=False,
        metadata={"help": "CASA: keep the image-marker embedding frozen, so backward stops at the lowest CASA block"},
    )
    pack: int = field(default=1, metadata={"help": "samples packed in a row (sample_ids; 1: one sample a row)"})
    steps: int = field(default=3, metadata={"help": "timed optimizer steps"})
    warmup: int = field(default=1, metadata={"help": "untimed steps first (their memory counts)"})
    batch: int = field(default=0, metadata={"help": "samples a step (0: the preset's)"})
    image_tokens: int = field(default=0, metadata={"help": "image tokens a sample (0: the preset's)"})
    text_tokens: int = field(default=0, metadata={"help": "text tokens a sample (0: the preset's)"})
    kernel: str = field(default="", metadata={"help": "CASA attention kernel; empty: wrap()'s default"})
    threads: int = field(default=0, metadata={"help": "torch CPU threads (0: torch's default)"})
    device: str = field(default="cpu", metadata={"help": "cpu | cuda"})
    dtype: str = field(default="fp32", metadata={"help": "fp32 | bf16 | fp16", "choices": ["fp32", "bf16", "fp16"]})
    seed: int = field(default=0, metadata={"help": "seed of the data and new parameters"})
    json: str = field(default="", metadata={"help": "write the results here (JSON)"})

    def __post_init__(self) -> None:
        if self.pack < 1 or (self.batch and self.batch % self.pack):
            raise ValueError(f"--pack {self.pack} must be >= 1 and divide the batch")

    def workload(self, name: str) -> Preset:
        """The preset `name` with this run's overrides."""
        p = PRESETS[name]
        return Preset(self.image_tokens or p.image_tokens, self.text_tokens or p.text_tokens, self.batch or p.batch)


class PeakMemory:
    """Peak memory of this process over a baseline taken at `start()` (method in the module docstring)."""

    def __init__(self, device: str):
        self.cuda = str(device).startswith("cuda")
        self.base, self.method = 0, ""

    def start(self) -> None:
        gc.collect()
        if self.cuda:
            torch.cuda.synchronize()
            self.base = torch.cuda.memory_allocated()
            torch.cuda.reset_peak_memory_stats()
            self.method = "cuda: max_memory_allocated - memory_allocated after load"
            return
        _malloc_trim()
        self.base = _status_bytes("VmRSS")
        try:
            Path("/proc/self/clear_refs").write_text("5")
            self.method = "cpu: VmHWM after a peak reset (clear_refs 5) - VmRSS after load, child process"
        except OSError:
            self.method = "cpu: ru_maxrss - VmRSS after load, child process (clear_refs refused: includes load peak)"

    def peak_bytes(self) -> int:
        if self.cuda:
            return torch.cuda.max_memory_allocated() - self.base
        if "clear_refs" in self.method and "refused" not in self.method:
            return _status_bytes("VmHWM") - self.base
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 - self.base


def _status_bytes(key: str) -> int:
    text = Path("/proc/self/status").read_text()
    return int(re.search(rf"{key}:\s+(\d+) kB", text).group(1)) * 1024


def _malloc_trim() -> None:
    with contextlib.suppress(OSError, AttributeError):  # not glibc: nothing to trim
        ctypes.CDLL("libc.so.6").malloc_trim(0)


def make_batch(model, p: Preset, seed: int, device: str, pack: int = 1) -> dict:
    """B samples: 4 text tokens, the image marker, the rest of the text; labels on the text after the
    image. pack > 1: `pack` samples a row, with `sample_ids` and restarting `position_ids`."""
    gen = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, model.config.vocab_size, (p.batch, p.text_tokens + 1), generator=gen)  # (B, t)
    ids[:, 4] = model.image_token_id
    labels = ids.clone()
    labels[:, :5] = -100
    size = model.vision.image_size
    pixels = torch.rand(p.batch, 3, size, size, generator=gen)  # (B, 3, S, S)
    rows = p.batch // pack
    batch = {
        "input_ids": ids.reshape(rows, -1),
        "labels": labels.reshape(rows, -1),  # (B / pack, pack * t)
        "images": list(pixels.reshape(rows, pack, 3, size, size)),
    }
    if pack > 1:
        batch["sample_ids"] = torch.arange(1, pack + 1).repeat_interleave(ids.shape[1]).expand(rows, -1)
        batch["position_ids"] = torch.arange(ids.shape[1]).repeat(pack).expand(rows, -1)
    return {k: [x.to(device) for x in v] if k == "images" else v.to(device) for k, v in batch.items()}


def child(config: dict) -> dict:
    """One (preset, fusion) in this process: load, measure memory and time over the steps."""
    s, fusion, p = TrainBenchSettings(**config["settings"]), config["fusion"], Preset(**config["preset"])
    set_threads(s.threads)
    model = build(load_llm(s.model, s.dtype, s.device), fusion, p.image_tokens, s, copy_base=False)
    model.train()
    batch = make_batch(model, p, s.seed, s.device, s.pack)
    _prime(model, make_batch(model, Preset(p.image_tokens, 8, 1), s.seed, s.device))
    opt = torch.optim.AdamW([q for q in model.parameters() if q.requires_grad], lr=1e-4)
    meter = PeakMemory(s.device)
    meter.start()
    for _ in range(s.warmup):
        _step(model, opt, batch)
    sync(s.device)
    start = time.perf_counter()
    losses = [_step(model, opt, batch) for _ in range(s.steps)]
    sync(s.device)
    seconds = (time.perf_counter() - start) / max(s.steps, 1)
    tokens = p.batch * (p.text_tokens + p.image_tokens)
    return {
        "load_average_1m_at_start": config["load"],
        "s_per_step": seconds,
        "tokens_per_s": tokens / seconds,
        "tokens_per_step": tokens,
        "peak_bytes": meter.peak_bytes(),
        "memory_method": meter.method,
        "loss": losses[-1] if losses else None,
        "trainable": sum(q.numel() for q in model.parameters() if q.requires_grad),
        "kernel": model.settings.kernel,
        "casa_layers": model.layer_indices,
    }


def _prime(model, batch: dict) -> None:
    """Forward + backward on one short sample, gradients dropped: the libraries' one-time set-up
    (thread pools, kernels, autograd engine) then sits in the baseline, not in the measured peak."""
    model(**batch).loss.backward()
    for q in model.parameters():
        q.grad = None


def _step(model, opt, batch: dict) -> float:
    loss = model(**batch).loss
    loss.backward()
    opt.step()
    opt.zero_grad(set_to_none=True)
    return float(loss.detach())


def run_child(s: TrainBenchSettings, fusion: str, p: Preset) -> dict:
    """`child()` in a fresh Python process; its result comes back as the last stdout line."""
    config = {
        "settings": dataclasses.asdict(s),
        "fusion": fusion,
        "preset": dataclasses.asdict(p),
        "load": os.getloadavg()[0],
    }
    proc = subprocess.run(
        [sys.executable, "-m", "casa_adapter.bench.train", json.dumps(config)], capture_output=True, text=True
    )
    if proc.returncode != 0:
        raise RuntimeError(f"bench train child ({fusion}, {p}) failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def run_train(s: TrainBenchSettings) -> dict:
    """Every selected preset x both fusions; the result dict written as JSON."""
    names = list(PRESETS) if s.preset == "both" else [s.preset]
    results = {
        "bench": "train",
        "settings": dataclasses.asdict(s),
        "machine": machine(s.device),
        "results": {},
        "summary": {},
    }
    for name in names:
        p = s.workload(name)
        print(f"bench train: {name} {p} ...", flush=True)
        runs = {fusion: run_child(s, fusion, p) for fusion in FUSIONS}
        results["results"][name] = {"workload": dataclasses.asdict(p), **runs}
        casa, ins = runs["casa"], runs["insertion"]
        results["summary"][name] = {
            "memory_casa_over_insertion": ratio(casa["peak_bytes"], ins["peak_bytes"]),
            "tokens_per_s_casa_over_insertion": ratio(casa["tokens_per_s"], ins["tokens_per_s"]),
        }
    results["memory_method"] = runs["casa"]["memory_method"]
    return results


def print_table(results: dict) -> None:
    rows = []
    for name, runs in results["results"].items():
        for fusion in FUSIONS:
            r = runs[fusion]
            rows.append([name, fusion, r["s_per_step"], r["tokens_per_s"], r["peak_bytes"] / 2**20, r["trainable"]])
        summary = results["summary"][name]
        rows.append(
            [
                name,
                "CASA/ins",
                "",
                summary["tokens_per_s_casa_over_insertion"],
                summary["memory_casa_over_insertion"],
                "",
            ]
        )
    print(table(["preset", "fusion", "s/step", "tokens/s", "peak MiB over loaded", "trainable"], rows))
    print(f"\nmemory: {results['memory_method']}")


def run(args) -> int:
    """`bench train` from parsed arguments: print the table, write the JSON."""
    s = settings_from(args, TrainBenchSettings)
    set_threads(s.threads)  # the children set it too; here it is what `machine` reports
    print(f"machine load average before: {machine(s.device)['load_average_1_5_15']}", flush=True)
    results = run_train(s)
    print_table(results)
    write_json(s.json or None, results)
    return 0


if __name__ == "__main__":
    print(json.dumps(child(json.loads(sys.argv[1]))))
