"""The equal-wall-time budget's step costs: measured side by side (round-robin, one process) into costs.json, and
a finished time run whose budget no longer matches them is run again."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading

import pytest

from casa_adapter.study.arms import ARMS
from casa_adapter.study.cost import COSTS, measure_costs, read_costs
from casa_adapter.study.runner import StudySettings, _budget_holds, run_dir

from recipe_runs import make_demo_data, tiny_recipe


def test_costs_are_measured_round_robin_and_written(tmp_path, capsys):
    recipe = tiny_recipe(tmp_path / "run", make_demo_data(tmp_path, train=16, val=4))
    settings = StudySettings(records=str(tmp_path / "records"), threads=1, cost_rounds=2, cost_steps=1)
    costs = measure_costs(settings, recipe, [ARMS["casa"], ARMS["insertion"]])
    assert read_costs(settings) == costs and (tmp_path / "records" / COSTS).exists()
    assert costs["threads"] == 1 and costs["device"] == "cpu" and "2 rounds x 1 timed steps" in costs["method"]
    assert costs["rounds"] == 2
    for arm in ("casa", "insertion"):
        assert len(costs["arms"][arm]["seconds"]) == 2 and costs["arms"][arm]["median"] > 0
    progress = [line for line in capsys.readouterr().out.splitlines() if line.startswith("[study costs]")]
    assert [line.split(":")[0] for line in progress] == [  # round by round, every arm in turn
        "[study costs] round 1/2, 1/2 casa",
        "[study costs] round 1/2, 2/2 insertion",
        "[study costs] round 2/2, 1/2 casa",
        "[study costs] round 2/2, 2/2 insertion",
    ]


def test_a_time_run_whose_budget_changed_is_run_again(tmp_path):
    settings = StudySettings(arms=["casa"], minutes=1.0, work=str(tmp_path), records=str(tmp_path), threads=1)
    (tmp_path / COSTS).write_text(json.dumps({"threads": 1, "arms": {"casa": {"median": 2.0}}}))  # 30 steps
    folder = run_dir(settings, ARMS["casa"], 0, "time")
    folder.mkdir(parents=True)
    (folder / "eval.json").write_text("{}")
    assert _budget_holds(settings, ARMS["casa"], {"seed": 0, "requested_steps": 30}, "[t]")
    assert _budget_holds(settings, ARMS["casa"], {"seed": 0, "budget_steps": 30}, "[t]")  # a trained time run
    assert folder.exists()
    assert not _budget_holds(settings, ARMS["casa"], {"seed": 0, "requested_steps": 34}, "[t]")
    assert not folder.exists()  # cleared, to be run again


def test_a_second_study_process_waits_for_the_costs_another_one_measures(tmp_path, monkeypatch, capsys):
    from casa_adapter.study import cost

    settings = StudySettings(records=str(tmp_path), threads=1)
    measuring = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        (tmp_path / cost.MEASURING).write_text(f"{measuring.pid}\n")
        monkeypatch.setattr(cost, "WAIT_SECONDS", 0.05)
        monkeypatch.setattr(cost, "measure_costs", lambda *a: pytest.fail("measured although another process is"))
        written = {"threads": 1, "arms": {"casa": {"median": 2.0}}}
        later = threading.Timer(0.3, lambda: (tmp_path / COSTS).write_text(json.dumps(written)))
        later.start()
        assert cost.ensure_costs(settings, {}, [ARMS["casa"]]) == written
        later.join()
    finally:
        measuring.kill()
        measuring.wait()
    assert capsys.readouterr().out.count(f"waiting for process {measuring.pid}") == 1


def test_a_stale_measuring_marker_does_not_block_and_a_measurement_leaves_none(tmp_path, monkeypatch):
    from casa_adapter.study import cost

    settings = StudySettings(records=str(tmp_path), threads=1)
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    (tmp_path / cost.MEASURING).write_text(f"{dead.pid}\n")  # a killed measurement's leftover

    def measure(settings, base_recipe, arms):
        assert (tmp_path / cost.MEASURING).read_text().strip() == str(os.getpid())  # marked while it runs
        return {"threads": 1, "arms": {a.name: {"median": 1.0} for a in arms}}

    monkeypatch.setattr(cost, "_measure", measure)
    assert cost.ensure_costs(settings, {}, [ARMS["ca"]])["arms"] == {"ca": {"median": 1.0}}
    assert not (tmp_path / cost.MEASURING).exists()


def test_round_medians_split_the_timed_steps_by_round():
    from casa_adapter.study.cost import round_medians

    costs = {"rounds": 2, "arms": {"casa": {"median": 6.5, "seconds": [1.0, 2.0, 9.0, 10.0, 20.0, 30.0]}}}
    assert round_medians(costs, "casa") == [2.0, 20.0]
