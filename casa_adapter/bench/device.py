"""`casa-adapter bench device`: the one prepared GPU check; one JSON and one markdown table.

Sections, in this order (each one's result is written as soon as it ends, so a run cut short keeps
what it finished; a section that fails records its error and the next one runs):

  kernels       every CASA kernel (`casa.kernels.KERNELS`, flash varlen where flash-attn is installed)
                against the dense reference, fp32 and bf16, forward and backward: max |difference|
  stream        `bench stream`, CASA vs insertion: time to first token per turn over 256 turns of
                1,024-token frames, decode tokens/s, session state, peak `max_memory_allocated`
  train         `bench train`, CASA vs insertion: tokens/s and peak memory, both presets
  kernel-bench  `bench kernel` at paper-like sizes (1,024-token images, 20 heads of 128, bf16),
                flex included on CUDA

The default base is `llama-2b-random` (a random ~2.3B Llama with Helium-2B's shape, built on the GPU: no
download), bf16. It needs nothing beyond torch, transformers, peft, timm and safetensors: no open_clip,
webdataset, jsonargparse or flash-attn (tests/bench/test_device.py checks the imports). `--quick` runs
a tiny version of every section on CPU in well under a minute (the CI test). Sized to end within
`--budget-s` (480 s) on one H200; a section that would start after that is skipped and says so.

    casa-adapter bench device --out device-check            # one GPU: device-check/device.json, device.md
    casa-adapter bench device --quick --out /tmp/quick       # CPU, tiny
"""

from __future__ import annotations

import dataclasses
import gc
import json
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path

import torch

from casa_adapter.bench import kernel as kernel_bench
from casa_adapter.bench.common import DTYPES, machine, settings_from
from casa_adapter.bench.device_report import markdown
from casa_adapter.bench.stream import StreamBenchSettings, run_stream
from casa_adapter.bench.train import TrainBenchSettings, run_train
from casa_adapter.casa.kernels import KERNELS, KeyLayout, reference_casa_attention
from casa_adapter.casa.kernels.flash import flash_casa_attention, flash_installed
from casa_adapter.casa.kernels.flex import flex_available

SECTIONS = ("kernels", "stream", "train", "kernel-bench")
"""In order of what matters most if time runs out: correctness, then the paper's two comparisons."""
PAPER_CASES = {
    "16w-img1024": dict(rows=1, windows=16, image=1024, text=64),
    "4w-img1024-text256": dict(rows=2, windows=4, image=1024, text=256),
    "decode-b8-img1024": dict(rows=8, windows=1, image=1024, text=64, decode=True),
}
"""`kernel-bench` cases: windows of 1,024 image tokens (896 px frames), as in the paper."""
QUICK_CASES = {"4w": dict(rows=1, windows=4, image=32, text=16)}
TOLERANCE = {"fp32": 2e-3, "bf16": 6e-2}
"""Largest |kernel - reference| accepted, relative to the reference's largest |value| (fp32 allows TF32)."""


@dataclass
class DeviceCheckSettings:
    """`bench device` settings; every field is a command-line flag (`--budget-s` for `budget_s`)."""

    out: str = field(default="device-check", metadata={"help": "folder for device.json and device.md"})
    quick: bool = field(default=False, metadata={"help": "a tiny version of every section, on CPU (CI)"})
    device: str = field(default="", metadata={"help": "cuda | cpu; empty: cuda when available (cpu with --quick)"})
    sections: str = field(default=",".join(SECTIONS), metadata={"help": f"comma-separated, of {', '.join(SECTIONS)}"})
    model: str = field(default="llama-2b-random", metadata={"help": "base of stream and train (--quick: tiny)"})
    every: int = field(default=1, metadata={"help": "CASA in every N-th block (stream and train)"})
    turns: int = field(default=256, metadata={"help": "stream: turns"})
    image_tokens: int = field(default=1024, metadata={"help": "stream and train: tokens per image"})
    budget_s: int = field(default=480, metadata={"help": "skip a section that would start after this many seconds"})

    def resolved(self) -> DeviceCheckSettings:
        """These settings with the device chosen and, for --quick, the tiny sizes."""
        device = self.device or ("cpu" if self.quick or not torch.cuda.is_available() else "cuda")
        if not self.quick and device == "cpu":
            raise SystemExit("casa-adapter bench device: no CUDA device; the full check needs a GPU (--quick: CPU)")
        if not self.quick:
            return dataclasses.replace(self, device=device)
        return dataclasses.replace(self, device=device, model="tiny", turns=3, image_tokens=8)


def _kernels(device: str) -> dict:
    """Every kernel to check on `device`, by name (the reference itself excluded)."""
    found = {name: fn for name, fn in KERNELS.items() if name != "reference"}
    if device.startswith("cuda") and flash_installed():
        found["flash"] = flash_casa_attention
    return found


def _one_check(kernel, name: str, layout, dtype_name: str, device: str, quick: bool) -> dict:
    """Max |kernel - fp32 reference| of the output and of the q/k/v gradients, relative to the reference."""
    if name == "flash" and dtype_name == "fp32":
        return {"skipped": "flash-attn runs fp16/bf16 only"}
    torch.manual_seed(0)
    dtype = DTYPES[dtype_name]
    (B, Tq), K = layout.q_window.shape, layout.k_window.shape[1]
    H, Hkv, hd = (4, 2, 16) if quick else (8, 2, 64)
    xs = [torch.randn(B, n, T, hd, device=device) for n, T in ((H, Tq), (Hkv, K), (Hkv, K))]
    grad = torch.randn(B, H, Tq, hd, device=device)
    backward = not (name == "flex" and not device.startswith("cuda"))
    ref_in = [x.clone().requires_grad_() for x in xs]
    want = reference_casa_attention(*ref_in, layout, hd**-0.5)
    want_grads = torch.autograd.grad(want, ref_in, grad)
    got_in = [x.to(dtype).requires_grad_(backward) for x in xs]
    with torch.set_grad_enabled(backward):
        got = kernel(*got_in, layout, hd**-0.5)
    scale = float(want.detach().abs().max()) or 1.0
    result = {"out_max_abs_diff": float((got.float() - want).abs().max()), "reference_max_abs": scale}
    if backward:
        grads = torch.autograd.grad(got, got_in, grad.to(dtype))
        result["grad_max_abs_diff"] = max(float((g.float() - w).abs().max()) for g, w in zip(grads, want_grads))
        scale = max(scale, *(float(w.abs().max()) for w in want_grads))
    else:
        result["backward"] = "skipped: torch's flex_attention has no CPU backward"
    worst = max(result["out_max_abs_diff"], result.get("grad_max_abs_diff", 0.0))
    result["ok"] = worst <= TOLERANCE[dtype_name] * max(scale, 1.0)
    return result


def check_kernels(s: DeviceCheckSettings) -> dict:
    """{layout: {dtype: {kernel: result}}} over a packed layout (queries outside windows included) and decode."""
    packed = kernel_bench.make_layout(rows=2, windows=4, image=32 if s.quick else 256, text=24 if s.quick else 96)
    packed.q_window[0, :3] = 0  # text before the first image: no keys, output exactly 0
    layouts = {"packed": packed, "decode": kernel_bench.make_layout(rows=4, windows=1, image=32, text=24, decode=True)}
    out = {}
    for lname, cpu_layout in layouts.items():
        fields = (cpu_layout.q_window, cpu_layout.q_index, cpu_layout.k_window, cpu_layout.k_index)
        layout = KeyLayout(*(t.to(s.device) for t in fields))
        out[lname] = {
            dt: {n: _one_check(fn, n, layout, dt, s.device, s.quick) for n, fn in _kernels(s.device).items()}
            for dt in ("fp32", "bf16")
        }
    return out


def bench_kernels(s: DeviceCheckSettings) -> dict:
    """`bench kernel` cases (paper-like, bf16 on CUDA; tiny, fp32 on CPU)."""
    cuda = s.device.startswith("cuda")
    heads, kv_heads, head_dim = ("20", "20", "128") if cuda else ("2", "1", "16")
    size = ["--heads", heads, "--kv-heads", kv_heads, "--head-dim", head_dim]
    args = kernel_bench.parse_args(
        [*size, "--device", s.device, "--dtype", "bf16" if cuda else "fp32", "--repeats", "5" if cuda else "1"]
    )
    names = (*kernel_bench.KERNEL_NAMES, "flex") if cuda and flex_available() else kernel_bench.KERNEL_NAMES
    cases = QUICK_CASES if s.quick else PAPER_CASES
    return {"args": vars(args), "cases": [kernel_bench.run_case(n, c, args, names) for n, c in cases.items()]}


def _peak_reset(device: str) -> None:
    gc.collect()
    if device.startswith("cuda"):
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()


def bench_stream(s: DeviceCheckSettings) -> dict:
    """`bench stream`: CASA vs insertion over `turns` turns of `image_tokens`-token frames."""
    dtype = "bf16" if s.device.startswith("cuda") else "fp32"
    quick = dict(text_tokens=4, decode_tokens=2, warmup=1) if s.quick else {}
    settings = StreamBenchSettings(
        turns=s.turns, image_tokens=s.image_tokens, model=s.model, every=s.every, device=s.device, dtype=dtype, **quick
    )
    _peak_reset(s.device)
    result = run_stream(settings)
    if s.device.startswith("cuda"):
        result["max_memory_allocated"] = torch.cuda.max_memory_allocated()
    return result


def bench_train(s: DeviceCheckSettings) -> dict:
    """`bench train`: CASA vs insertion, both presets (image tokens as set), one child process each."""
    dtype = "bf16" if s.device.startswith("cuda") else "fp32"
    quick = dict(preset="image-heavy", batch=1, text_tokens=8, steps=1, warmup=0) if s.quick else {}
    settings = TrainBenchSettings(
        model=s.model, every=s.every, image_tokens=s.image_tokens, device=s.device, dtype=dtype, **quick
    )
    _peak_reset(s.device)
    return run_train(settings)


RUNNERS = {"kernels": check_kernels, "stream": bench_stream, "train": bench_train, "kernel-bench": bench_kernels}


def run_check(s: DeviceCheckSettings) -> dict:
    """Every selected section; device.json and device.md rewritten after each."""
    s = s.resolved()
    out = Path(s.out)
    out.mkdir(parents=True, exist_ok=True)
    report = {"bench": "device", "settings": dataclasses.asdict(s), "machine": machine(s.device), "sections": {}}
    start = time.perf_counter()
    for name in [x for x in s.sections.split(",") if x]:
        if name not in RUNNERS:
            raise SystemExit(f"casa-adapter bench device: unknown section {name!r} (sections: {', '.join(SECTIONS)})")
        elapsed = time.perf_counter() - start
        if elapsed > s.budget_s:
            report["sections"][name] = {"skipped": f"budget: {elapsed:.0f} s spent of --budget-s {s.budget_s}"}
            continue
        print(f"bench device: {name} (at {elapsed:.0f} s) ...", flush=True)
        began = time.perf_counter()
        try:
            result = RUNNERS[name](s)
        except Exception as err:  # one broken section must not lose the others' numbers
            result = {"error": f"{type(err).__name__}: {err}", "traceback": traceback.format_exc()[-4000:]}
        result["seconds"] = time.perf_counter() - began
        report["sections"][name] = result
        report["seconds"] = time.perf_counter() - start
        (out / "device.json").write_text(json.dumps(report, indent=2, default=str))
        (out / "device.md").write_text(markdown(report))
    print(f"wrote {out / 'device.json'} and {out / 'device.md'} ({report.get('seconds', 0):.0f} s)")
    return report


def run(args) -> int:
    """`bench device` from parsed arguments."""
    report = run_check(settings_from(args, DeviceCheckSettings))
    print(markdown(report))
    failed = [n for n, r in report["sections"].items() if "error" in r]
    return 1 if failed else 0


__all__ = ["DeviceCheckSettings", "PAPER_CASES", "SECTIONS", "check_kernels", "run_check"]
