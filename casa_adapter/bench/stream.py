"""`casa-adapter bench stream`: a long streamed conversation, CASA vs token insertion, turn by turn.

Each turn adds one frame of `--image-tokens` tokens and `--text-tokens` text tokens to a
`model.stream()` session, then generates `--decode-tokens` tokens (greedy, fed back). Measured per
turn and per fusion, on the same base weights, frames and text, in one process, the two fusions
alternating turn by turn (so a change in machine load hits both alike):

- `latency_ms`: time to first token = add_image + add_text + picking the first new token
  (`add_image_ms`: its add_image part: under CASA the vision encoder alone, since a session feeds the
  image's marker with the window's first text; under insertion the image tokens' forward too);
- `decode_tok_s`: generated tokens per second over the turn's `--decode-tokens` tokens;
- `state_bytes`: `session.state_bytes()` after the turn (KV caches; weights excluded).

The frames go through `BenchTower`, a negligible stand-in with exactly `--image-tokens` tokens
(the vision cost is not what is measured; it is the same for both fusions). The printed table
shows medians over the 5 turns ending at each reported turn (single CPU turns are noisy); the
JSON keeps every turn's raw value, index 0 = turn 1.
"""

from __future__ import annotations

import dataclasses
import statistics
import time
from dataclasses import dataclass, field

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
class StreamBenchSettings:
    """`bench stream` settings; every field is a command-line flag (`--image-tokens` for `image_tokens`)."""

    turns: int = field(default=256, metadata={"help": "turns: one frame + text + a short answer each"})
    image_tokens: int = field(default=64, metadata={"help": "tokens per frame (N); 896 px frames are ~1,024"})
    text_tokens: int = field(default=16, metadata={"help": "text tokens added per turn"})
    decode_tokens: int = field(default=4, metadata={"help": "tokens generated per turn (decode speed)"})
    model: str = field(default="tiny", metadata={"help": "tiny | smollm2-135m | a local HF folder or .gguf"})
    every: int = field(default=1, metadata={"help": "CASA in every N-th block"})
    layers: str = field(default="", metadata={"help": "CASA blocks, e.g. 14,17,-1; overrides --every"})
    kernel: str = field(default="", metadata={"help": "CASA attention kernel; empty: wrap()'s default"})
    threads: int = field(default=0, metadata={"help": "torch CPU threads (0: torch's default)"})
    device: str = field(default="cpu", metadata={"help": "cpu | cuda"})
    dtype: str = field(default="fp32", metadata={"help": "fp32 | bf16 | fp16", "choices": ["fp32", "bf16", "fp16"]})
    warmup: int = field(default=2, metadata={"help": "turns run and discarded before measuring, per fusion"})
    seed: int = field(default=0, metadata={"help": "seed of the frames, text and new parameters"})
    json: str = field(default="", metadata={"help": "write per-turn results here (JSON)"})


def make_inputs(s: StreamBenchSettings, vocab: int, image_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The same frames (turns, 3, S, S) and text ids (turns, text_tokens) for both fusions."""
    gen = torch.Generator().manual_seed(s.seed)
    frames = torch.rand(s.turns + s.warmup, 3, image_size, image_size, generator=gen)  # (turns, 3, S, S)
    text = torch.randint(0, vocab, (s.turns + s.warmup, s.text_tokens), generator=gen)  # (turns, t)
    return frames.to(s.device), text.to(s.device)


def turn(session, frame: torch.Tensor, text: torch.Tensor, decode: int, device: str) -> dict:
    """One turn: time to first token and its add_image part (ms), decode tokens/s, state bytes after it."""
    sync(device)
    start = time.perf_counter()
    session.add_image(frame)
    sync(device)
    image = time.perf_counter()
    session.add_text(text)
    session.next_token()
    sync(device)
    first = time.perf_counter()
    session.generate(max_new_tokens=decode)
    sync(device)
    return {
        "latency_ms": 1000 * (first - start),
        "add_image_ms": 1000 * (image - start),
        "decode_tok_s": decode / (time.perf_counter() - first),
        "state_bytes": session.state_bytes(),
    }


def run_turns(models: dict, frames: torch.Tensor, text: torch.Tensor, s: StreamBenchSettings) -> dict:
    """Per-turn lists per fusion. The fusions alternate turn by turn, so that a change in machine load
    hits both alike; `s.warmup` turns in separate sessions come first and are discarded."""
    warm = {fusion: model.stream() for fusion, model in models.items()}
    for i in range(s.warmup):
        for session in warm.values():
            turn(session, frames[i], text[i], s.decode_tokens, s.device)
    del warm
    sessions = {fusion: model.stream() for fusion, model in models.items()}
    keys = ("latency_ms", "add_image_ms", "decode_tok_s", "state_bytes")
    out = {fusion: {key: [] for key in keys} for fusion in models}
    for i in range(s.warmup, s.warmup + s.turns):
        for fusion, session in sessions.items():
            for key, value in turn(session, frames[i], text[i], s.decode_tokens, s.device).items():
                out[fusion][key].append(value)
    for fusion, session in sessions.items():
        out[fusion]["kv_positions"] = session.index
        out[fusion]["kernel"] = models[fusion].settings.kernel
        out[fusion]["casa_layers"] = models[fusion].layer_indices
    return out


def report_turns(turns: int) -> list[int]:
    return sorted({t for t in (1, 8, 64, 256, 512, 1024) if t <= turns} | {turns})


def smoothed(values: list[float], t: int, width: int = 5) -> float:
    """Median of the `width` turns ending at turn t (1-based)."""
    return statistics.median(values[max(0, t - width) : t])


def summarize(results: dict, s: StreamBenchSettings) -> dict:
    """Ratios the issue's targets name: CASA latency last/turn 8, insertion/CASA state at the last turn."""
    casa, ins = results["casa"], results["insertion"]
    t8, last = min(8, s.turns), s.turns
    growth = lambda values: ratio(smoothed(values, last), smoothed(values, t8))
    return {
        "casa_latency_last_over_turn8": growth(casa["latency_ms"]),
        "insertion_latency_last_over_turn8": growth(ins["latency_ms"]),
        "casa_add_image_last_over_turn8": growth(casa["add_image_ms"]),
        "insertion_add_image_last_over_turn8": growth(ins["add_image_ms"]),
        "state_insertion_over_casa_at_last": ratio(ins["state_bytes"][-1], casa["state_bytes"][-1]),
        "casa_state_growth_per_turn_bytes": casa["state_bytes"][-1] - casa["state_bytes"][-2] if s.turns > 1 else None,
    }


def print_table(results: dict, s: StreamBenchSettings) -> None:
    casa, ins = results["casa"], results["insertion"]
    rows = []
    for t in report_turns(s.turns):
        c_ms, i_ms = smoothed(casa["latency_ms"], t), smoothed(ins["latency_ms"], t)
        c_tok, i_tok = smoothed(casa["decode_tok_s"], t), smoothed(ins["decode_tok_s"], t)
        c_mb, i_mb = casa["state_bytes"][t - 1] / 2**20, ins["state_bytes"][t - 1] / 2**20
        rows.append([t, c_ms, i_ms, ratio(i_ms, c_ms), c_tok, i_tok, c_mb, i_mb, ratio(i_mb, c_mb)])
    print(
        table(
            [
                "turn",
                "CASA TTFT ms",
                "ins TTFT ms",
                "ins/CASA",
                "CASA dec tok/s",
                "ins dec tok/s",
                "CASA state MiB",
                "ins state MiB",
                "ins/CASA",
            ],
            rows,
        )
    )
    summary, span = results["summary"], f"turn {s.turns} / turn {min(8, s.turns)}"
    print(
        f"\nCASA TTFT {span}: {summary['casa_latency_last_over_turn8']:.2f}"
        f"   insertion: {summary['insertion_latency_last_over_turn8']:.2f}"
        f"   state insertion/CASA at turn {s.turns}: {summary['state_insertion_over_casa_at_last']:.1f}x"
        f"\nadd_image alone, {span}: CASA {summary['casa_add_image_last_over_turn8']:.2f}"
        f"   insertion: {summary['insertion_add_image_last_over_turn8']:.2f}"
    )


def run_stream(s: StreamBenchSettings) -> dict:
    """Both fusions on the same base, frames and text; the result dict written as JSON."""
    base = load_llm(s.model, s.dtype, s.device)
    models = {fusion: build(base, fusion, s.image_tokens, s) for fusion in FUSIONS}
    frames, text = make_inputs(s, base.config.vocab_size, models["casa"].vision.image_size)
    results = {"bench": "stream", "settings": dataclasses.asdict(s), "machine": machine(s.device)}
    print(f"bench stream: {s.turns} turns, CASA and insertion turn by turn ...", flush=True)
    results.update(run_turns(models, frames, text, s))
    results["load_average_after"] = machine(s.device)["load_average_1_5_15"]
    results["summary"] = summarize(results, s)
    return results


def run(args) -> int:
    """`bench stream` from parsed arguments: print the table, write the JSON."""
    s = settings_from(args, StreamBenchSettings)
    set_threads(s.threads)
    print(f"machine load average before: {machine(s.device)['load_average_1_5_15']}", flush=True)
    results = run_stream(s)
    print_table(results, s)
    write_json(s.json or None, results)
    return 0
