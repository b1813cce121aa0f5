"""`casa-adapter bench kernel`: CASA attention kernels against each other and against plain SDPA.

For each case (rows of packed windows: image tokens + text tokens per window) it times, forward
and forward+backward, in `--repeats` rounds that run every kernel once in turn (the table shows
medians, the JSON also minima):

- `windowed`: `casa_adapter.casa.kernels.windowed`, its planning included in every call (a fresh `KeyLayout`);
- `reference`: the dense-mask softmax (`kernels.dense.reference_casa_attention`), (B, H, Tq, K) scores;
- `dense-sdpa`: the same dense mask through one SDPA call (`kernels.dense.sdpa_casa_attention`);
- `causal-equal`: one plain causal SDPA over T tokens with T(T+1)/2 = the number of allowed
  query/key pairs of the case: the same useful FLOPs with no CASA structure at all.

    casa-adapter bench kernel [--json PATH] [--cases 16w 4w] [--device cuda --dtype bf16] [--repeats 5]"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import platform
import statistics
import time

import torch
import torch.nn.functional as F

from casa_adapter.casa.kernels import KERNELS
from casa_adapter.casa.kernels.layout import KeyLayout
from casa_adapter.casa.kernels.plan import plan_windows

CASES = {
    "16w": dict(rows=1, windows=16, image=256, text=64),
    "4w": dict(rows=1, windows=4, image=256, text=64),
    "8w-text256": dict(rows=1, windows=8, image=256, text=256),
    "decode-b8": dict(rows=8, windows=1, image=256, text=64, decode=True),
}
"""Default cases: rows x windows per row, image tokens per window, mean text tokens per window."""
KERNEL_NAMES = ("windowed", "reference", "dense-sdpa", "causal-equal")
"""What `bench kernel` times by default; `run_case(..., kernels=...)` also takes "flex" (CUDA: no CPU backward)."""
_KERNEL_OF = {"windowed": "windowed", "reference": "reference", "dense-sdpa": "sdpa", "flex": "flex"}


def make_layout(rows: int, windows: int, image: int, text: int, decode: bool = False, seed: int = 0) -> KeyLayout:
    """Packed rows of `windows` windows each; text lengths vary uniformly in [text/2, 3 text/2].

    Returns the `KeyLayout` of queries (B, Tq) and keys (B, K): keys are each row's image tokens
    (at their window's start index), then the row's text; rows are right-padded (window 0). `decode`
    keeps only each row's last token as the query (a generate step over the cached window).
    """
    g = torch.Generator().manual_seed(seed)
    lengths = torch.randint(max(text // 2, 1), text + text // 2 + 1, (rows, windows), generator=g)  # (B, W)
    Tq = int(lengths.sum(-1).max())
    q_window = torch.zeros(rows, Tq, dtype=torch.long)
    img_window = torch.arange(1, windows + 1).repeat_interleave(image).expand(rows, -1)  # (B, W*image)
    img_index = torch.zeros(rows, windows * image, dtype=torch.long)
    for b in range(rows):
        q_window[b, : int(lengths[b].sum())] = torch.arange(1, windows + 1).repeat_interleave(lengths[b])
        img_index[b] = (lengths[b].cumsum(0) - lengths[b]).repeat_interleave(image)  # window starts
    q_index = torch.arange(Tq).expand(rows, Tq)
    k_window, k_index = torch.cat([img_window, q_window], 1), torch.cat([img_index, q_index], 1)
    if decode:
        last = lengths.sum(-1, keepdim=True) - 1  # (B, 1)
        q_window, q_index = q_window.gather(1, last), last
    return KeyLayout(q_window, q_index, k_window, k_index)


def _time_round_robin(runners: dict, repeats: int, sync, clock) -> dict:
    """{name: (median ms, min ms)}: one warm-up each, then `repeats` rounds that run every kernel once in turn,
    so a burst of load from other processes hits all kernels alike."""
    times = {name: [] for name in runners}
    for _ in range(repeats + 1):
        for name, fn in runners.items():
            start = clock()
            fn()
            sync()
            times[name].append((clock() - start) * 1e3)
    return {name: (statistics.median(t[1:]), min(t[1:])) for name, t in times.items()}


def _runner(name: str, q, k, v, layout, pairs: int, backward: bool):
    """A no-argument callable running one kernel on the case (forward, or forward + backward)."""
    if name == "causal-equal":
        T = max(1, round((math.sqrt(8 * pairs + 1) - 1) / 2))  # T (T + 1) / 2 = pairs
        q, k, v = (x.new_empty(1, x.shape[1], T, x.shape[-1]).normal_().requires_grad_(backward) for x in (q, q, q))
        call = lambda: F.scaled_dot_product_attention(q, k, v, is_causal=True)
    else:
        kernel = KERNELS[_KERNEL_OF[name]]
        call = lambda: kernel(
            q, k, v, dataclasses.replace(layout), q.shape[-1] ** -0.5
        )  # a fresh layout: planning included
    if not backward:
        return call
    grad = torch.randn(call().shape, device=q.device, dtype=q.dtype)
    return lambda: torch.autograd.grad(call(), (q, k, v), grad)


def _inputs(B: int, Tq: int, K: int, args, backward: bool):
    device, dtype = torch.device(args.device), {"fp32": torch.float32, "bf16": torch.bfloat16}[args.dtype]
    torch.manual_seed(0)
    q = torch.randn(B, args.heads, Tq, args.head_dim, device=device, dtype=dtype, requires_grad=backward)
    k, v = (
        torch.randn(B, args.kv_heads, K, args.head_dim, device=device, dtype=dtype, requires_grad=backward)
        for _ in range(2)
    )
    return q, k, v


def run_case(name: str, spec: dict, args, kernels: tuple[str, ...] = KERNEL_NAMES) -> dict:
    """Time `kernels` on one case: a JSON-able dict with the layout, the windowed plan and milliseconds."""
    cpu = make_layout(**spec)
    layout = KeyLayout(*(t.to(args.device) for t in (cpu.q_window, cpu.q_index, cpu.k_window, cpu.k_index)))
    (B, Tq), K = layout.q_window.shape, layout.k_window.shape[1]
    pairs = int(layout.mask().sum())
    plan = plan_windows(layout)
    sync = torch.cuda.synchronize if args.device == "cuda" else (lambda: None)
    result = dict(
        case=name,
        **spec,
        Tq=Tq,
        K=K,
        allowed_pairs=pairs,
        blocks=plan.shapes,
        block_pairs=sum(n * lq * lk for n, lq, lk in plan.shapes),
        ms={},
    )
    for backward in (False, True):
        q, k, v = _inputs(B, Tq, K, args, backward)
        runners = {kn: _runner(kn, q, k, v, layout, pairs, backward) for kn in kernels}
        clock = time.thread_time if args.clock == "cpu" else time.perf_counter
        timed = _time_round_robin(runners, args.repeats, sync, clock)
        mode = "fwd+bwd" if backward else "fwd"
        result["ms"][mode] = {kn: med for kn, (med, _) in timed.items()}
        result.setdefault("min_ms", {})[mode] = {kn: low for kn, (_, low) in timed.items()}
    with torch.no_grad():
        got = KERNELS["windowed"](q, k, v, layout, args.head_dim**-0.5)
        want = KERNELS["reference"](q.float(), k.float(), v.float(), layout, args.head_dim**-0.5)
    result["max_abs_diff"] = float((got.float() - want).abs().max())
    return result


def _table(results: list[dict]) -> str:
    head = (
        f"{'case':<15}{'mode':<9}{'Tq x K':>12}{'windowed':>10}{'reference':>11}{'dense-sdpa':>11}"
        f"{'causal-eq':>11}{'ref/win':>9}{'win/causal':>11}"
    )
    lines = [head, "-" * len(head)]
    for r in results:
        shape = f"{r['Tq']}x{r['K']}"
        for mode, ms in r["ms"].items():
            lines.append(
                f"{r['case']:<15}{mode:<9}{shape:>12}"
                f"{ms['windowed']:>10.1f}{ms['reference']:>11.1f}{ms['dense-sdpa']:>11.1f}"
                f"{ms['causal-equal']:>11.1f}{ms['reference'] / ms['windowed']:>8.1f}x"
                f"{ms['windowed'] / ms['causal-equal']:>10.2f}x"
            )
    return "\n".join(lines)


def _machine(args) -> dict:
    info = dict(
        torch=torch.__version__,
        device=args.device,
        dtype=args.dtype,
        threads=torch.get_num_threads(),
        clock=args.clock,
        cpu=platform.processor() or platform.machine(),
        cores=os.cpu_count(),
    )
    if hasattr(os, "getloadavg"):
        info["load_avg_1m_end"] = round(os.getloadavg()[0], 2)
    if args.device == "cuda":
        info["gpu"] = torch.cuda.get_device_name()
    return info


def parse_args(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="casa-adapter bench kernel", description=__doc__.split("\n\n")[0])
    p.add_argument("--cases", nargs="+", default=list(CASES), choices=list(CASES), help="which cases to run")
    p.add_argument("--heads", type=int, default=8)
    p.add_argument("--kv-heads", type=int, default=8, help="fewer than --heads for GQA")
    p.add_argument("--head-dim", type=int, default=64)
    p.add_argument("--repeats", type=int, default=5, help="timed runs per measurement (median reported)")
    p.add_argument("--threads", type=int, help="torch CPU threads (default: torch's own choice)")
    p.add_argument(
        "--clock",
        default="wall",
        choices=["wall", "cpu"],
        help="cpu: this thread's CPU time (implies --threads 1), steadier on shared cores",
    )
    p.add_argument("--device", default="cpu", help="cpu | cuda")
    p.add_argument("--dtype", default="fp32", choices=["fp32", "bf16"])
    p.add_argument("--json", metavar="PATH", help="write the results and the machine description here")
    return p.parse_args(argv)


def main(argv: list[str]) -> int:
    args = parse_args(argv)
    if args.clock == "cpu":
        args.threads = 1
    if args.threads:
        torch.set_num_threads(args.threads)
    load_start = round(os.getloadavg()[0], 2) if hasattr(os, "getloadavg") else None
    results = []
    for name in args.cases:
        results.append(run_case(name, CASES[name], args))
        print(f"done {name}: max |windowed - reference| = {results[-1]['max_abs_diff']:.2e}", flush=True)
    machine = dict(_machine(args), load_avg_1m_start=load_start)
    print(f"\nCASA kernels, ms (median of {args.repeats}); {machine}\n" + _table(results))
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"machine": machine, "args": vars(args), "results": results}, f, indent=2)
    return 0
