"""`casa-adapter bench serve`: many video sessions over real HTTP, CASA vs token insertion, turn by turn.

For each fusion an adapter (on `--model`, the embedded tiny Llama by default, with `siglip-tiny`
and `--pool 2`: 16 tokens per frame; random new weights) is saved and served by `casa-adapter
serve` in its own process. `--streams` clients (threads, one HTTP connection each) open a session
each; every turn each client sends a frame (`POST .../frames`), then a question (`POST .../text`,
streamed) and reads `--decode-tokens` tokens. Turns are in step across clients (a barrier): all
sessions of a turn are in the server together, so the server decodes them in one batch, and the
server is sampled between turns. Measured per turn and fusion:

- `ttft_ms`: from sending the question to its first streamed token (p50 and p99 over the clients);
- `frame_ms`: the frame call's round trip (vision encoder + the frame's step);
- `state_bytes`: what the server's model holds for all sessions (`/v1/metrics`), `rss_bytes`: the
  resident memory of the server and its worker, both after the turn;
- `tokens_per_s`: answer tokens of all clients over the whole run's wall time; `errors`: calls that
  did not answer 2xx.

The fusions run one after the other (each in a fresh server), so the machine's load can differ
between them; the JSON keeps every turn's raw values.
"""

from __future__ import annotations

import base64
import dataclasses
import io
import json
import statistics
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

from casa_adapter.bench.common import FUSIONS, machine, ratio, settings_from, table, write_json

QUESTION = "What happens in the video now?"


@dataclass
class ServeBenchSettings:
    """`bench serve` settings; every field is a command-line flag (`--decode-tokens` for `decode_tokens`)."""

    streams: int = field(default=16, metadata={"help": "concurrent clients, one video session each"})
    turns: int = field(default=64, metadata={"help": "turns per session: a frame, a question, an answer"})
    decode_tokens: int = field(default=4, metadata={"help": "answer tokens per turn"})
    model: str = field(default="tiny", metadata={"help": "tiny | smollm2-135m (real weights, offline) | a folder"})
    accelerator: str = field(default="auto", metadata={"help": "the server's device: auto | cpu | cuda"})
    dtype: str = field(default="", metadata={"help": "server dtype: float32, bfloat16, float16 (empty: as saved)"})
    pool: int = field(default=2, metadata={"help": "siglip-tiny pooling: 2 -> 16 tokens per frame, 1 -> 64"})
    server_threads: int = field(default=0, metadata={"help": "torch threads of the server (0: torch's default)"})
    seed: int = field(default=0, metadata={"help": "seed of the frames and the new parameters"})
    json: str = field(default="", metadata={"help": "write per-turn results here (JSON)"})


def frames(seed: int, n: int = 8) -> list[str]:
    """n random 64x64 PNG frames as data URIs."""
    rng, out = np.random.default_rng(seed), []
    for _ in range(n):
        buffer = io.BytesIO()
        Image.fromarray((rng.random((64, 64, 3)) * 255).astype("uint8")).save(buffer, format="PNG")
        out.append("data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode())
    return out


def save_adapter(fusion: str, folder: Path, s: ServeBenchSettings) -> Path:
    import torch

    import casa_adapter
    from casa_adapter.backbone.base_models import load_base

    torch.manual_seed(s.seed)
    llm, _ = load_base(s.model, with_tokenizer=False)
    model = casa_adapter.wrap(llm, vision="siglip-tiny", pretrained=False, pool=s.pool, fusion=fusion, init="copy")
    model.save_adapter(folder / fusion)
    return folder / fusion


class Client(threading.Thread):
    """One video session driven turn by turn, in step with the other clients."""

    def __init__(self, url: str, images: list[str], s: ServeBenchSettings, barrier: threading.Barrier):
        super().__init__(daemon=True)
        self.url, self.images, self.s, self.barrier = url, images, s, barrier
        self.ttft_ms, self.frame_ms, self.tokens, self.errors = [], [], 0, 0

    def run(self) -> None:
        import httpx  # the [test]/[serve] extras' HTTP client, imported when a benchmark runs

        with httpx.Client(base_url=self.url, timeout=120) as http:
            session = http.post("/v1/sessions").json()["id"]
            for turn in range(self.s.turns):
                try:
                    self.turn(http, session, self.images[turn % len(self.images)])
                except (httpx.HTTPError, KeyError, ValueError):
                    self.errors += 1
                    self.ttft_ms.append(float("nan"))
                self.barrier.wait()  # the turn is done everywhere: the server is sampled
                self.barrier.wait()  # sampled: next turn
            http.delete(f"/v1/sessions/{session}")

    def turn(self, http, session: str, image: str) -> None:
        start = time.perf_counter()
        if http.post(f"/v1/sessions/{session}/frames", json={"image": image}).status_code != 200:
            self.errors += 1
        self.frame_ms.append((time.perf_counter() - start) * 1e3)
        ask = {"text": QUESTION, "max_tokens": self.s.decode_tokens, "stream": True}
        start, first = time.perf_counter(), None
        with http.stream("POST", f"/v1/sessions/{session}/text", json=ask) as response:
            if response.status_code != 200:
                raise ValueError(response.status_code)
            for line in response.iter_lines():
                if line.startswith("data: {") and '"text"' in line and first is None:
                    first = time.perf_counter()
                if '"object": "text"' in line:
                    self.tokens += json.loads(line[6:])["usage"]["completion_tokens"]
        self.ttft_ms.append(((first or time.perf_counter()) - start) * 1e3)


def run_fusion(adapter: Path, s: ServeBenchSettings) -> dict:
    """Serve one adapter and run every client; per-turn lists and totals."""
    import httpx

    from casa_adapter.serve.launch import ServerProcess

    flags = ["--max-sessions", str(s.streams + 1), "--max-cache-tokens", "0", "--accelerator", s.accelerator]
    flags += ["--dtype", s.dtype] if s.dtype else []
    env = {"OMP_NUM_THREADS": str(s.server_threads)} if s.server_threads else {}
    with ServerProcess(adapter, flags, env=env) as server:
        images = frames(s.seed)
        per_turn = {"state_bytes": [], "rss_bytes": []}

        def sample():
            per_turn["state_bytes"].append(httpx.get(server.url + "/v1/metrics").json()["state_bytes"])
            per_turn["rss_bytes"].append(server.rss_bytes())

        barrier = threading.Barrier(s.streams + 1)
        clients = [Client(server.url, images, s, barrier) for _ in range(s.streams)]
        start = time.perf_counter()
        for client in clients:
            client.start()
        for _ in range(s.turns):
            barrier.wait()  # every client has finished this turn
            sample()
            barrier.wait()
        for client in clients:
            client.join()
        wall = time.perf_counter() - start
    ttft = [[c.ttft_ms[t] for c in clients] for t in range(s.turns)]  # (turns, streams)
    frame = [[c.frame_ms[t] for c in clients] for t in range(s.turns)]
    return {
        "ttft_ms": ttft,
        "frame_ms": frame,
        **per_turn,
        "tokens_per_s": sum(c.tokens for c in clients) / wall,
        "wall_s": wall,
        "errors": sum(c.errors for c in clients),
    }


def percentile(values: list[float], q: float) -> float:
    values = sorted(v for v in values if v == v)  # NaN: a failed turn
    return values[min(len(values) - 1, round(q * (len(values) - 1)))] if values else float("nan")


def summarize(results: dict, s: ServeBenchSettings) -> list[list]:
    rows = []
    for t in sorted({1, 8, s.turns} & set(range(1, s.turns + 1))):
        row = [t]
        for fusion in FUSIONS:
            r = results[fusion]
            row += [percentile(r["ttft_ms"][t - 1], 0.5), percentile(r["ttft_ms"][t - 1], 0.99)]
            row += [statistics.median(r["frame_ms"][t - 1]), r["state_bytes"][t - 1] / 2**20]
        row.append(ratio(results["insertion"]["state_bytes"][t - 1], results["casa"]["state_bytes"][t - 1]))
        rows.append(row)
    return rows


def run(args) -> int:
    s = settings_from(args, ServeBenchSettings)
    results = {"bench": "serve", "settings": dataclasses.asdict(s), "machine": machine("cpu")}
    with tempfile.TemporaryDirectory() as folder:
        for fusion in FUSIONS:
            print(f"bench serve: {fusion}: {s.streams} sessions x {s.turns} turns over HTTP ...", flush=True)
            results[fusion] = run_fusion(save_adapter(fusion, Path(folder), s), s)
    headers = ["turn"]
    for fusion in FUSIONS:
        headers += [f"{fusion} ttft p50 ms", "p99", "frame p50 ms", "state MiB"]
    print(table([*headers, "state ins/casa"], summarize(results, s)))
    for fusion in FUSIONS:
        r = results[fusion]
        rss = r["rss_bytes"][-1] / 2**20
        print(f"{fusion}: {r['tokens_per_s']:.1f} answer tokens/s, server RSS {rss:.0f} MiB, errors {r['errors']}")
    write_json(s.json or None, results)
    return 0
