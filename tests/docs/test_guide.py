"""docs/guide.md runs as written: its blocks in order, in one empty folder holding a copy of `recipes/`.

Python blocks share one namespace (the page is one session); each line of a bash block is run by
bash with this interpreter's `bin/` first on PATH (so `casa-adapter` is the installed console
script). Blocks after `<!-- no-test -->` (the install, the hour-long study) are skipped.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import torch
from test_docs import ROOT, code_blocks

GUIDE = ROOT / "docs" / "guide.md"


def blocks_in_order(page: Path = GUIDE) -> list[tuple[str, object]]:
    """(language, Block) for every python and bash block of `page`, in page order."""
    found = [("python", b) for b in code_blocks(page, "python")] + [("bash", b) for b in code_blocks(page, "bash")]
    return sorted(found, key=lambda pair: pair[1].line)


def run_page(page: Path, cwd: Path) -> tuple[dict[str, int], dict]:
    """Run `page`'s blocks in order in `cwd` (python in one namespace, bash line by line); returns the
    counts run by language and the python namespace."""
    namespace = {"__name__": "__main__"}
    ran = {"python": 0, "bash": 0}
    with torch.random.fork_rng(devices=[]):
        for lang, block in blocks_in_order(page):
            if block.no_test:
                continue
            if lang == "python":
                exec(compile(block.code, f"{page.name}:{block.line}", "exec"), namespace)
            else:
                run_bash(block, cwd)
            ran[lang] += 1
    return ran, namespace


def run_bash(block, cwd: Path) -> None:
    env = {**os.environ, "PATH": os.pathsep.join([str(Path(sys.executable).parent), os.environ["PATH"]])}
    for line in (x for x in block.code.splitlines() if x.strip()):
        proc = subprocess.run(["bash", "-c", line], cwd=cwd, env=env, capture_output=True, text=True, timeout=600)
        assert proc.returncode == 0, (
            f"{Path(block.doc).name}:{block.line}: `{line}` failed ({proc.returncode}):\n{proc.stderr[-3000:]}"
        )


def test_guide_runs_top_to_bottom(tmp_path, monkeypatch):
    shutil.copytree(ROOT / "recipes", tmp_path / "recipes")
    monkeypatch.chdir(tmp_path)
    ran, namespace = run_page(GUIDE, tmp_path)
    assert ran["python"] >= 5 and ran["bash"] >= 4
    assert (tmp_path / "runs" / "demo" / "adapter" / "final" / "manifest.json").exists()
    assert (tmp_path / "runs" / "captions" / "adapter" / "final" / "manifest.json").exists()
    assert len((tmp_path / "preds.jsonl").read_text().splitlines()) == 16
    assert namespace["session"].state_bytes() > 0
