"""`casa-adapter study` end to end on a tiny random Llama: two arms, two seeds, an equal-steps and an
equal-wall-time budget, the report with standard errors, its plots and the text-only control's blanked images.

The end-to-end tests are `slow` (8 training runs, ~5 min on 2 cores); the statistics and budgets without training
are in test_study_statistics_and_budgets.py."""

from __future__ import annotations

import json
import shutil
from collections import defaultdict
from pathlib import Path

import pytest
import torch
import yaml

from casa_adapter.study import main

from recipe_runs import tiny_recipe, write_recipe

ARMS = ("replace_lora", "text_only")
STEPS, VAL_EVERY, N_VAL, SEEDS, SNAPSHOT_EVERY = 4, 2, 24, (0, 1), 2
COST_ROUNDS, COST_STEPS = 2, 1
MINUTES = 1e-6  # one step at any cost: the time runs read the step-2 snapshot (the grid's nearest)


@pytest.fixture(scope="module")
def study(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("study")
    recipe = tiny_recipe(root / "base", root / "unused", max_steps=100)
    recipe["trainer"]["limit_val_batches"] = 2
    recipe["data"]["init_args"] = {
        "demo": {
            "out": str(root / "data"),
            "train": 96,
            "val": N_VAL,
            "image_size": 32,
            "qtypes": ["color", "word_under"],
        },
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
                "--seeds",
                ",".join(map(str, SEEDS)),
                "--minutes",
                str(MINUTES),
                "--snapshot-every",
                str(SNAPSHOT_EVERY),
                "--resume-every",
                "2",
                "--cost-rounds",
                str(COST_ROUNDS),
                "--cost-steps",
                str(COST_STEPS),
                "--work",
                str(root / "work"),
                "--out",
                str(root / "docs" / "results.md"),
                "--quiet",
                "--threads",
                "1",
            ]
        )
        == 0
    )
    return root


@pytest.mark.slow
def test_every_run_did_its_own_recipe_seed_and_budget(study):
    for arm in ARMS:
        for seed in SEEDS:
            run = study / "work" / arm / f"steps-seed{seed}"
            recipe = yaml.safe_load((run / "recipe.yaml").read_text())
            casa = recipe["model"]["init_args"]["model"]["casa"]
            assert recipe["seed_everything"] == seed
            assert recipe["trainer"]["max_steps"] == STEPS and recipe["trainer"]["max_time"] is None
            assert casa.get("replace", False) == (arm == "replace_lora")
            lora = recipe["model"]["init_args"]["model"].get("lora")
            lora_arm = {"rank": 8, "alpha": 16.0, "blocks": "from_casa"}
            assert (lora == lora_arm) == (arm == "replace_lora")  # the tiny recipe has rank 4
            assert recipe["data"]["init_args"]["settings"].get("blank_images", False) == (arm == "text_only")
            if arm == ARMS[0]:  # it ran before the costs were measured (before its first time run): the whole grid
                assert recipe["adapter"]["every_n_steps"] == SNAPSHOT_EVERY and "at_steps" not in recipe["adapter"]
            else:  # after: just the step its time runs read
                assert recipe["adapter"]["at_steps"] == [SNAPSHOT_EVERY] and "every_n_steps" not in recipe["adapter"]
            assert not (run / "ckpt").exists()  # finished: its resume checkpoint deleted
            summary = json.loads((study / "docs" / "results" / "records" / arm / f"steps-seed{seed}.json").read_text())
            assert [p["step"] for p in summary["val"]] == [VAL_EVERY * (i + 1) for i in range(STEPS // VAL_EVERY)]
            assert summary["eval"]["count"] == N_VAL and 0 <= summary["eval"]["overall"] <= 1
            assert summary["eval"]["qtypes"].keys() == {"color", "word_under"}
            assert summary["trainable"] > 0 and summary["peak_rss_mb"] > 100 and summary["step_seconds"] > 0
            assert summary["threads"] == 1
        costs = json.loads((study / "docs" / "results" / "records" / "costs.json").read_text())  # measured first
        assert costs["threads"] == 1 and set(costs["arms"]) == set(ARMS)
        assert len(costs["arms"][arm]["seconds"]) == COST_ROUNDS * COST_STEPS
        cost = costs["arms"][arm]["median"]
        for seed in SEEDS:  # the time budget: MINUTES at the arm's side-by-side cost, in steps
            summary = json.loads((study / "docs" / "results" / "records" / arm / f"time-seed{seed}.json").read_text())
            assert summary["requested_steps"] == max(1, round(MINUTES * 60 / cost)) == 1
            assert summary["steps_done"] == summary["budget_steps"] == SNAPSHOT_EVERY and summary["step_cost"] == cost
            steps_run = study / "work" / arm / f"steps-seed{seed}"
            assert summary["snapshot"] == str(steps_run / "adapter" / "step-000002")
            assert [p.name for p in (steps_run / "adapter").glob("step-*")] == ["step-000002"]  # the rest pruned
            assert [p["step"] for p in summary["val"]] == [2] and summary["eval"]["count"] == N_VAL
            assert not (study / "work" / arm / f"time-seed{seed}" / "recipe.yaml").exists()  # nothing trained


@pytest.mark.slow
def test_a_trained_time_run_equals_the_snapshot_it_stands_for(study, tmp_path, monkeypatch):
    """A 2-step time run trained on its own (decay over STEPS, stopped at 2) gives the very tensors of the
    equal-steps run's step-2 snapshot: the time table may read snapshots instead of training."""
    from safetensors.torch import load_file

    from casa_adapter.study import runner
    from casa_adapter.study.arms import ARMS as ALL_ARMS

    arm = ALL_ARMS["replace_lora"]
    settings = runner.StudySettings(
        recipe=str(study / "recipe.yaml"), arms=[arm.name], steps=STEPS, val_every=VAL_EVERY, seeds=[0],
        minutes=1.0, work=str(tmp_path), records=str(tmp_path / "records"), quiet=True, threads=1,
    )  # fmt: skip
    monkeypatch.setattr(runner, "time_budget_steps", lambda settings, arm: (2, 0.5))
    base = yaml.safe_load((study / "recipe.yaml").read_text())
    summary = runner.run_arm(arm, base, settings, 1, 1, seed=0, budget="time")  # no snapshot here: it trains
    assert summary["steps_done"] == 2 and "snapshot" not in summary
    trained = load_file(tmp_path / arm.name / "time-seed0" / "adapter" / "final" / "adapter.safetensors")
    snapshot = load_file(study / "work" / arm.name / "steps-seed0" / "adapter" / "step-000002" / "adapter.safetensors")
    assert trained.keys() == snapshot.keys() and len(trained) > 10
    assert [n for n in trained if not torch.equal(trained[n], snapshot[n])] == []
    final = load_file(study / "work" / arm.name / "steps-seed0" / "adapter" / "final" / "adapter.safetensors")
    assert any(not torch.equal(final[n], snapshot[n]) for n in snapshot)  # steps 3-4 changed them: a real check


@pytest.mark.slow
def test_text_only_control_sees_no_image(study):
    """With every image grey, a prompt's answer depends on its text only: equal questions, equal answers."""
    answers = defaultdict(set)
    for line in (study / "work" / "text_only" / "steps-seed0" / "preds.jsonl").read_text().splitlines():
        row = json.loads(line)
        answers[row["question"]].add(row["prediction"])
    assert any(len(q) for q in answers) and all(len(a) == 1 for a in answers.values())


@pytest.mark.slow
def test_report_tables_and_plots(study):
    report = (study / "docs" / "results.md").read_text()
    assert "## Equal steps (4 steps)" in report and "## Equal wall time (1e-06 min)" in report
    for label in ("CASA replacing SA (CA-replace) + LoRA", "text-only control (images blanked)"):
        assert report.count(f"| {label} | 2 |") == 2  # two seeds, in both budgets' accuracy tables
    assert "| chance |" in report and " ± " in report and "standard errors are over seeds" in report
    assert "- replace_lora - text_only:" in report or "- text_only - replace_lora:" in report
    for name in ("val_accuracy.png", "val_loss.png", "qtype_accuracy.png", "arm_accuracy.png"):
        data = (study / "docs" / "results" / name).read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n" and f"results/{name}" in report


@pytest.mark.slow
def test_report_only_and_errors(study, capsys):
    out, records = study / "again.md", study / "docs" / "results" / "records"
    assert (
        main(
            [
                "--recipe",
                str(study / "recipe.yaml"),
                "--arms",
                "replace_lora",
                "--seeds",
                "0,1",
                "--work",
                str(study / "gone"),  # the records alone make the report: a lost work folder loses no run
                "--records",
                str(records),
                "--out",
                str(out),
                "--report-only",
            ]
        )
        == 0
    )
    assert "CASA replacing SA (CA-replace) + LoRA" in out.read_text()
    assert "## Equal wall time" not in out.read_text()  # no --minutes: the equal-steps runs only
    interim = study / "interim.md"
    args = ["--recipe", str(study / "recipe.yaml"), "--arms", "replace_lora,ca", "--seeds", "0,1"]
    args += ["--out", str(interim)]
    assert main([*args, "--records", str(records), "--report-only", "--partial"]) == 0
    text = interim.read_text()
    assert "**Interim report**: 2 runs finished so far; not finished yet: ca (every run)." in text
    assert "CASA replacing SA (CA-replace) + LoRA" in text and "--partial" not in text
    fewer = study / "fewer-records"  # one arm down to one seed: its error is binomial, the other's over seeds
    shutil.copytree(records, fewer)
    (fewer / "text_only" / "steps-seed1.json").unlink()
    mixed = ["--arms", "replace_lora,text_only", "--records", str(fewer), "--report-only", "--partial"]
    assert main([*args[:2], *mixed, "--seeds", "0,1", "--out", str(study / "mixed.md")]) == 0
    assert "standard errors are over seeds, binomial for an arm with one seed." in (study / "mixed.md").read_text()
    assert main([*args, "--records", str(records), "--partial"]) == 2
    assert "--partial goes with --report-only" in capsys.readouterr().err
    assert main(["--arms", "casa,nope", "--report-only", "--records", str(records)]) == 2
    assert "unknown study arm(s) ['nope']" in capsys.readouterr().err
    assert main(["--arms", "ca", "--report-only", "--records", str(records)]) == 2
    assert "no finished steps run of study arm 'ca' seed 0" in capsys.readouterr().err
