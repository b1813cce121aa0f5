"""A study run stopped half way continues from its resume checkpoint and ends with the very weights of a run
that was never stopped; a stopped run without a checkpoint starts over in a cleared folder."""

from __future__ import annotations

import os
from pathlib import Path

import torch
import yaml
from safetensors.torch import load_file

from casa_adapter.study import runner
from casa_adapter.study.arms import ARMS
from casa_adapter.study.curves import keep_earlier_log, read_curves

from recipe_runs import tiny_recipe

STEPS = 4


def _base(root: Path) -> dict:
    recipe = tiny_recipe(root / "base", root / "unused", max_steps=100)
    recipe["trainer"]["limit_val_batches"] = 1
    recipe["data"]["init_args"] = {
        "demo": {"out": str(root / "data"), "train": 48, "val": 8, "image_size": 32, "qtypes": ["color"]},
        "settings": {"batch_size": 4, "num_workers": 0, "max_tokens": 512},
    }
    return recipe


def _settings(root: Path, work: str, steps: int) -> runner.StudySettings:
    return runner.StudySettings(
        recipe=str(root / "recipe.yaml"), arms=["casa_lora"], steps=steps, val_every=steps, seeds=[0],
        work=str(root / work), records=str(root / work / "records"), quiet=True, threads=1, resume_every=2,
        overrides={"model.init_args.optim.total_steps": STEPS},  # the stopped attempt's schedule is the whole run's
    )  # fmt: skip


def _final(root: Path, work: str) -> dict[str, torch.Tensor]:
    return load_file(root / work / "casa_lora" / "steps-seed0" / "adapter" / "final" / "adapter.safetensors")


def test_a_resumed_run_ends_with_the_weights_of_an_unbroken_one(tmp_path):
    base = _base(tmp_path)
    (tmp_path / "recipe.yaml").write_text(yaml.safe_dump(base))
    arm = ARMS["casa_lora"]
    unbroken = runner.run_arm(arm, base, _settings(tmp_path, "a", STEPS), 1, 1)
    assert unbroken["resumed"] is False and unbroken["steps_done"] == STEPS
    runner.run_arm(arm, base, _settings(tmp_path, "b", 2), 1, 1)  # "stopped" at step 2, its checkpoint there
    run = tmp_path / "b" / "casa_lora" / "steps-seed0"
    assert (run / "ckpt" / "last.ckpt").exists()
    (tmp_path / "b" / "records" / "casa_lora" / "steps-seed0.json").unlink()  # as if killed before its record
    ckpt = run / "ckpt" / "last.ckpt"
    before = runner.checkpoint_train_seconds(ckpt)
    day = 24 * 3600.0
    os.utime(ckpt, (ckpt.stat().st_atime + day, ckpt.stat().st_mtime + day))  # copied to another machine a day later
    resumed = runner.run_arm(arm, base, _settings(tmp_path, "b", STEPS), 1, 1)
    assert resumed["resumed"] is True and resumed["steps_done"] == STEPS
    assert 0 < before < resumed["train_seconds"] < before + unbroken["train_seconds"] + 600  # not the day between
    a, b = _final(tmp_path, "a"), _final(tmp_path, "b")
    assert a.keys() == b.keys() and [k for k in a if not torch.equal(a[k], b[k])] == []
    log = (run / "train.log").read_text()  # both attempts: the second restored step 2 instead of starting over
    assert log.count("Restoring states from the checkpoint path") == 1 and str(run / "ckpt" / "last.ckpt") in log
    val_steps = [v["step"] for v in resumed["val"]]
    assert val_steps == [2, STEPS]  # the stopped attempt's validation too (Lightning 2.6 deletes an earlier log)


def test_a_stopped_run_without_a_checkpoint_starts_over(tmp_path):
    base = _base(tmp_path)
    (tmp_path / "recipe.yaml").write_text(yaml.safe_dump(base))
    run = tmp_path / "w" / "casa_lora" / "steps-seed0"
    (run / "logs").mkdir(parents=True)
    (run / "logs" / "metrics.csv").write_text("step,val/accuracy,val/loss\n999,0.5,1.0\n")  # a killed run's leftovers
    settings = _settings(tmp_path, "w", 2)
    settings.resume_every = 0
    summary = runner.run_arm(ARMS["casa_lora"], base, settings, 1, 1)
    assert summary["resumed"] is False and summary["steps_done"] == 2 and not (run / "ckpt").exists()


def test_curves_join_every_attempt_and_keep_the_later_rows_of_a_step(tmp_path):
    logs = tmp_path / "logs"
    logs.mkdir()
    header = "step,perf/tokens_per_s,perf/samples_per_s,perf/step_seconds,val/accuracy,val/loss\n"
    (logs / "metrics.csv").write_text(header + "0,1,1,9,,\n1,1,1,1,0.1,2.0\n2,1,1,1,,\n")  # killed after step 2
    keep_earlier_log(logs)
    (logs / "metrics.csv").write_text(header + "2,1,1,2,,\n3,1,1,2,0.5,1.0\n")  # resumed from step 2's checkpoint
    keep_earlier_log(logs)
    (logs / "metrics.csv").write_text(header + "5,1,1,3,0.7,0.5\n")
    assert sorted(p.name for p in logs.iterdir()) == ["metrics.attempt-1.csv", "metrics.attempt-2.csv", "metrics.csv"]
    curves = read_curves(logs)
    assert [(v["step"], v["accuracy"]) for v in curves["val"]] == [(2, 0.1), (4, 0.5), (6, 0.7)]
    assert curves["steps_done"] == 6 and curves["step_seconds"] == 2.0  # steps 1, 2 (the later row), 3, 5
