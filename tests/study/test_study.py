"""`casa-adapter study` end to end on a tiny random Llama: three arms, a few steps each, the report,
its plots and the text-only control's blanked images."""

from __future__ import annotations

import json
from collections import defaultdict
from pathlib import Path

import pytest
import yaml

from casa_adapter.study import main

from recipe_runs import tiny_recipe, write_recipe

ARMS = ("casa", "insertion", "text_only")
STEPS, VAL_EVERY, N_VAL = 4, 2, 24


@pytest.fixture(scope="module")
def study(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("study")
    recipe = tiny_recipe(root / "base", root / "unused", max_steps=100)
    recipe["trainer"]["limit_val_batches"] = 2
    recipe["data"]["init_args"] = {
        "demo": {"out": str(root / "data"), "train": 96, "val": N_VAL, "image_size": 32},
        "settings": {"batch_size": 4, "num_workers": 0, "max_tokens": 512},
    }
    path = write_recipe(root / "recipe.yaml", recipe)
    assert (
        main(
            [
                "--recipe",
                str(path),
                "--arms",
                ",".join(ARMS),
                "--steps",
                str(STEPS),
                "--val-every",
                str(VAL_EVERY),
                "--work",
                str(root / "work"),
                "--out",
                str(root / "docs" / "results.md"),
                "--quiet",
            ]
        )
        == 0
    )
    return root


def test_every_arm_ran_its_own_recipe(study):
    for arm in ARMS:
        recipe = yaml.safe_load((study / "work" / arm / "recipe.yaml").read_text())
        casa = recipe["model"]["init_args"]["model"]["casa"]
        assert recipe["trainer"]["max_steps"] == STEPS and recipe["trainer"]["max_time"] is None
        assert casa.get("fusion", "casa") == ("insertion" if arm == "insertion" else "casa")
        assert recipe["data"]["init_args"]["settings"].get("blank_images", False) == (arm == "text_only")
        summary = json.loads((study / "work" / arm / "summary.json").read_text())
        assert [p["step"] for p in summary["val"]] == [VAL_EVERY * (i + 1) for i in range(STEPS // VAL_EVERY)]
        assert summary["eval"]["count"] == N_VAL and 0 <= summary["eval"]["overall"] <= 1
        assert (
            summary["trainable"] > 0
            and summary["peak_rss_mb"] > 100
            and summary["tokens_per_s"] > 0 < summary["step_seconds"]
        )


def test_text_only_control_sees_no_image(study):
    """With every image grey, a prompt's answer depends on its text only: equal questions, equal answers."""
    answers = defaultdict(set)
    for line in (study / "work" / "text_only" / "preds.jsonl").read_text().splitlines():
        row = json.loads(line)
        answers[row["question"]].add(row["prediction"])
    assert any(len(q) for q in answers) and all(len(a) == 1 for a in answers.values())


def test_report_tables_and_plots(study):
    report = (study / "docs" / "results.md").read_text()
    for label in ("CASA (image + window-text keys)", "token insertion (LLaVA-style)", "text-only control"):
        assert report.count(f"| {label}") == 2  # accuracy and cost tables
    assert "| chance |" in report and "insertion - CASA" not in report  # no `ca` arm: that check is not stated
    for name in ("val_accuracy.png", "val_loss.png", "qtype_accuracy.png"):
        data = (study / "docs" / "results" / name).read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n" and f"results/{name}" in report


def test_report_only_and_errors(study, capsys):
    out = study / "again.md"
    assert (
        main(
            [
                "--recipe",
                str(study / "recipe.yaml"),
                "--arms",
                "casa",
                "--work",
                str(study / "work"),
                "--out",
                str(out),
                "--report-only",
            ]
        )
        == 0
    )
    assert "CASA (image + window-text keys)" in out.read_text()
    assert main(["--arms", "casa,nope", "--report-only", "--work", str(study / "work")]) == 2
    assert "unknown study arm(s) ['nope']" in capsys.readouterr().err
    assert main(["--arms", "ca", "--report-only", "--work", str(study / "work")]) == 2
    assert "no finished run of study arm 'ca'" in capsys.readouterr().err
