"""`casa-adapter bench device --quick`: every section runs on CPU, in a process (and train's child processes)
where open_clip, webdataset, jsonargparse and flash_attn cannot be imported, as on the GPU machine; the JSON
and the markdown hold what docs/performance.md says they hold. No timing is asserted."""

import json
import os
import subprocess
import sys
from pathlib import Path

import torch

from casa_adapter.bench.device import SECTIONS
from casa_adapter.casa.kernels import KERNELS

BLOCKED = ("open_clip", "webdataset", "jsonargparse", "flash_attn")
ROOT = Path(__file__).resolve().parents[2]


def test_quick_device_check_without_the_packages_the_gpu_machine_lacks(tmp_path):
    blocker = tmp_path / "blocker"
    blocker.mkdir()
    (blocker / "sitecustomize.py").write_text(
        "import sys\n" + "".join(f"sys.modules[{name!r}] = None\n" for name in BLOCKED)  # import -> ImportError
    )
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(blocker), str(ROOT), os.environ.get("PYTHONPATH", "")])}
    out = tmp_path / "check"
    cmd = [sys.executable, "-m", "casa_adapter.cli", "bench", "device", "--quick", "--out", str(out)]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    probe = subprocess.run([sys.executable, "-c", "import open_clip"], env=env, capture_output=True, text=True)
    assert probe.returncode != 0  # the blocker works, so the check above really ran without them

    report = json.loads((out / "device.json").read_text())
    sections = report["sections"]
    assert list(sections) == list(SECTIONS)
    assert not [name for name, r in sections.items() if "error" in r or "skipped" in r]
    for layout in ("packed", "decode"):
        for dtype in ("fp32", "bf16"):
            checked = sections["kernels"][layout][dtype]
            assert set(checked) == set(KERNELS) - {"reference"}
            assert all(r["ok"] for r in checked.values()), checked
            assert "no CPU backward" in checked["flex"]["backward"]
            assert "grad_max_abs_diff" in checked["windowed"]
    assert {c["case"] for c in sections["kernel-bench"]["cases"]} == {"4w"}
    assert len(sections["stream"]["casa"]["latency_ms"]) == len(sections["stream"]["insertion"]["latency_ms"]) == 3
    runs = sections["train"]["results"]["image-heavy"]
    assert runs["casa"]["tokens_per_s"] > 0 and runs["insertion"]["peak_bytes"] > 0

    page = (out / "device.md").read_text()
    for heading in ("## Against the paper", "## kernels", "## kernel-bench", "## stream", "## train"):
        assert heading in page
    assert "| train tokens/s | 1,560 | 1,501 |" in page and "80 -> 459" in page
    assert "| packed | bf16 | flex |" in page and "| image-heavy | insertion |" in page


def test_random_llama_bases_are_built_in_place_in_the_asked_dtype(monkeypatch):
    import casa_adapter.bench.common as common

    assert common.RANDOM_MODELS["llama-2b-random"]["hidden_size"] == 2560  # Helium-2B's shape, ~2.3B parameters
    tiny = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4, vocab_size=128)
    monkeypatch.setitem(common.RANDOM_MODELS, "llama-tiny-random", dict(tiny, num_key_value_heads=2))
    llm = common.load_llm("llama-tiny-random", "bf16", "cpu")
    assert {p.dtype for p in llm.parameters()} == {torch.bfloat16} and not llm.training
    assert llm.config.num_hidden_layers == 2 and llm.config.max_position_embeddings >= 256 * 1045  # 256 turns fit
    assert llm.config._name_or_path == "llama-tiny-random"


def test_the_documented_one_shot_command_fits_the_device_tool():
    """docs/performance.md holds the line a GPU session passes to the device tool's `run` (<= 2,000 characters)."""
    page = (ROOT / "docs" / "performance.md").read_text()
    line = next(x.strip() for x in page.splitlines() if "bench device --out $OUT/check" in x)
    assert len(line) <= 2000 and "timeout" in line and "tests/casa/test_kernels_flex.py" in line
    assert "No GPU numbers exist yet" in page
