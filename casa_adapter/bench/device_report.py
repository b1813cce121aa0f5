"""The markdown page of `bench device`: the paper's numbers beside this run's, then one table per section."""

from __future__ import annotations

from casa_adapter.bench.stream import report_turns, smoothed

PAPER = {
    "train tokens/s": ("1,560", "1,501"),
    "train memory GB": ("33.1", "62.8"),
    "stream TTFT ms, first -> last turn": ("64 -> 64", "80 -> 459"),
}
"""CASA and insertion as the paper reports them (arXiv 2512.19535; a 2B model on an H100)."""


def _num(x) -> str:
    if isinstance(x, bool) or x is None:
        return str(x)
    if isinstance(x, float):
        return f"{x:.2e}" if 0 < abs(x) < 0.01 else (f"{x:,.2f}" if abs(x) < 1000 else f"{x:,.0f}")
    return str(x)


def _table(headers: list[str], rows: list[list]) -> list[str]:
    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    return lines + ["| " + " | ".join(_num(c) for c in row) + " |" for row in rows]


def _status(result: dict) -> str | None:
    if "error" in result:
        return f"**failed**: `{result['error']}`"
    if "skipped" in result:
        return f"skipped: {result['skipped']}"
    return None


def _ours(sections: dict) -> dict:
    """This run's values for the PAPER rows: {row: (CASA, insertion)} where the sections ran."""
    found = {}
    train = sections.get("train", {}).get("results", {})
    if train:
        preset = "text-heavy" if "text-heavy" in train else next(iter(train))
        runs = train[preset]
        found["train tokens/s"] = tuple(f"{runs[f]['tokens_per_s']:,.0f} ({preset})" for f in ("casa", "insertion"))
        found["train memory GB"] = tuple(f"{runs[f]['peak_bytes'] / 1e9:.1f} ({preset})" for f in ("casa", "insertion"))
    stream = sections.get("stream", {})
    if "casa" in stream:
        ttft = lambda f: f"{stream[f]['latency_ms'][0]:.0f} -> {stream[f]['latency_ms'][-1]:.0f}"
        found["stream TTFT ms, first -> last turn"] = (ttft("casa"), ttft("insertion"))
    return found


def _paper(sections: dict) -> list[str]:
    ours = _ours(sections)
    rows = [[k, *v, *ours.get(k, ("-", "-"))] for k, v in PAPER.items()]
    return _table(["measure", "paper CASA", "paper insertion", "this run CASA", "this run insertion"], rows)


def _kernels(result: dict) -> list[str]:
    rows = []
    for layout, by_dtype in result.items():
        if not isinstance(by_dtype, dict):
            continue
        for dtype, by_kernel in by_dtype.items():
            for name, r in by_kernel.items():
                out = r.get("out_max_abs_diff", r.get("skipped", ""))
                grad = r.get("grad_max_abs_diff", r.get("backward", r.get("skipped", "")))
                rows.append([layout, dtype, name, out, grad, r.get("ok", "-")])
    return _table(["layout", "dtype", "kernel", "max abs diff out", "max abs diff grads", "ok"], rows)


def _kernel_bench(result: dict) -> list[str]:
    cases = result.get("cases", [])
    if not cases:
        return []
    names = list(cases[0]["ms"]["fwd"])
    rows = [
        [c["case"], mode, f"{c['Tq']}x{c['K']}", *(ms[n] for n in names)] for c in cases for mode, ms in c["ms"].items()
    ]
    return _table(["case", "mode", "Tq x K", *(f"{n} ms" for n in names)], rows)


def _stream(result: dict) -> list[str]:
    casa, ins = result["casa"], result["insertion"]
    rows = []
    for t in report_turns(len(casa["latency_ms"])):
        ttft = [smoothed(casa["latency_ms"], t), smoothed(ins["latency_ms"], t)]
        decode = [smoothed(casa["decode_tok_s"], t), smoothed(ins["decode_tok_s"], t)]
        rows.append([t, *ttft, *decode, casa["state_bytes"][t - 1] / 2**20, ins["state_bytes"][t - 1] / 2**20])
    headers = ["turn", "CASA TTFT ms", "ins TTFT ms", "CASA dec tok/s", "ins dec tok/s", "CASA state MiB", "ins MiB"]
    lines = _table(headers, rows)
    if "max_memory_allocated" in result:
        lines.append(f"\nPeak `max_memory_allocated` over both sessions: {result['max_memory_allocated'] / 1e9:.1f} GB")
    return lines


def _train(result: dict) -> list[str]:
    rows = []
    for preset, runs in result.get("results", {}).items():
        for fusion in ("casa", "insertion"):
            r = runs[fusion]
            rows.append([preset, fusion, r["tokens_per_s"], r["s_per_step"], r["peak_bytes"] / 1e9, r["kernel"]])
    lines = _table(["preset", "fusion", "tokens/s", "s/step", "peak GB over loaded", "kernel"], rows)
    return [*lines, f"\nmemory: {result.get('memory_method', '')}"]


SECTION_TABLES = {"kernels": _kernels, "kernel-bench": _kernel_bench, "stream": _stream, "train": _train}


def markdown(report: dict) -> str:
    """The whole page for a `bench device` report (device.json's content)."""
    m, s = report["machine"], report["settings"]
    lines = [
        "# casa-adapter bench device",
        "",
        f"{m.get('gpu', m.get('cpu'))}, torch {m['torch']}, device {s['device']}, base {s['model']}, "
        f"CASA every {s['every']} block(s), {'quick' if s['quick'] else 'full'} run, "
        f"{report.get('seconds', 0):.0f} s.",
        "",
        "## Against the paper",
        "",
        *_paper(report["sections"]),
    ]
    for name, result in report["sections"].items():
        lines += ["", f"## {name} ({result.get('seconds', 0):.0f} s)", ""]
        status = _status(result)
        lines += [status] if status else SECTION_TABLES[name](result)
    return "\n".join(lines) + "\n"


__all__ = ["PAPER", "markdown"]
