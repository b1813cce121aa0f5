"""The study's statistics, tables and budgets on hand-made run summaries, without training: standard errors and
Welch's test, the difference and cost tables, the orderings, the snapshot grid, the equal-time budget and the
interim report's bookkeeping."""

from __future__ import annotations

import json
import math

import pytest


def test_standard_errors_and_resolved_differences():
    from casa_adapter.study.stats import Stat, aggregate, compare, welch_dof

    def run(arm, seed, acc):
        return {
            "arm": arm,
            "label": arm,
            "seed": seed,
            "budget": "steps",
            "steps": 4,
            "train_seconds": 1.0,
            "step_seconds": 0.1,
            "trainable": 1,
            "eval": {"overall": acc, "count": 600, "qtypes": {"a": acc}},
        }

    rows = aggregate([run("x", 0, 0.60), run("x", 1, 0.62), run("x", 2, 0.64), run("y", 0, 0.40)], "steps")
    x, y = rows
    assert abs(x["overall"].mean - 0.62) < 1e-9 and abs(x["overall"].se - 0.02 / 3**0.5) < 1e-9
    assert y["se_kind"] == "binomial" and abs(y["overall"].se - (0.4 * 0.6 / 600) ** 0.5) < 1e-9
    assert compare(x, y)[3] and not compare(x, {**x, "overall": type(x["overall"])(0.60, 0.02)})[3]
    # Welch: two 3-seed arms with equal errors have df = 4, t(0.975, 4) = 2.776; 2.5 standard errors apart is
    # not resolved (a "2 SE" rule would call it), 3 standard errors apart is
    z = aggregate([run("z", s, 0.62 + d) for s, d in enumerate((0.0, 0.02, 0.04))], "steps")[0]
    se_diff = math.hypot(x["overall"].se, z["overall"].se)
    assert abs(welch_dof(x, z) - 4.0) < 1e-9 and abs(compare(x, z)[2] - 2.7764) < 1e-3
    for gap, resolved in ((2.5, False), (3.0, True)):
        shifted = {**z, "overall": Stat(x["overall"].mean + gap * se_diff, z["overall"].se)}
        assert compare(shifted, x)[3] is resolved
    assert welch_dof(y, {**y}) == math.inf and abs(compare(y, y)[2] - 1.96) < 1e-2  # binomial errors: normal


def test_difference_table_and_lora_twins_in_the_orderings():
    from casa_adapter.study.stats import aggregate, difference_table, orderings

    def run(arm, seed, overall, a):
        scores = {"overall": overall, "count": 600, "qtypes": {"a": a, "b": overall}}
        return {"arm": arm, "label": arm, "seed": seed, "budget": "steps", "steps": 4, "train_seconds": 1.0,
                "trainable": 1, "eval": scores}  # fmt: skip

    spread = (0.0, 0.01, 0.02)
    rows = aggregate(
        [run("casa", s, 0.50 + d, 0.50 + d) for s, d in enumerate(spread)]
        + [run("ca", s, 0.51 + d, 0.80 + d) for s, d in enumerate(spread)]  # far ahead on `a` only
        + [run("ca_lora", s, 0.52 + d, 0.80 + d) for s, d in enumerate(spread)]
        + [run("casa_lora", s, 0.60 + d, 0.60 + d) for s, d in enumerate(spread)],  # against casa twice over
        "steps",
    )
    table = difference_table(rows)
    assert table[0] == "| arm - casa | overall | a | b |"
    assert table[2] == "| ca | +1.0 | +30.0 * | +1.0 |" and table[3].startswith("| ca_lora | +2.0 | +30.0 * |")
    assert difference_table(rows[1:]) == []  # no casa arm, no table
    lines = orderings(rows)
    assert any(line.startswith("- ca_lora - ca: +1.0") for line in lines)  # the twin against its arm
    assert [line[:25] for line in lines if "casa_lora - casa:" in line] == ["- casa_lora - casa: +10.0"]
    assert len(lines) == len({line.split(":")[0] for line in lines})  # no pair listed twice


def test_cost_table_shows_the_side_by_side_cost_and_each_seeds_own():
    from casa_adapter.study.report import cost_table
    from casa_adapter.study.stats import aggregate

    runs = [
        {"arm": "x", "label": "X", "seed": s, "budget": "steps", "steps": 4, "train_seconds": 60.0 * (s + 1),
         "trainable": 7, "eval": {"overall": 0.5, "count": 600, "qtypes": {"a": 0.5}}, **cost}
        for s, cost in enumerate(({"step_seconds": 2.0, "threads": 2}, {"step_seconds": 3.5, "threads": 1}, {}))
    ]  # fmt: skip
    (row,) = aggregate(runs, "steps")
    seconds = [3.0, 3.1, 3.2, 2.8, 2.9, 3.3, 3.4, 3.6, 3.5]  # 3 rounds x 3 steps: round medians 3.1, 2.9, 3.5
    costs = {"rounds": 3, "arms": {"x": {"median": 3.1, "seconds": seconds}}}
    assert cost_table([row], costs)[2] == "| X | 7 | 2.0 | 3.10 | 2.90-3.50 | 2.00 (2), 3.50 (1) |"
    assert cost_table([row], None)[2] == "| X | 7 | 2.0 | - | - | 2.00 (2), 3.50 (1) |"


def test_time_runs_read_the_nearest_snapshot():
    from casa_adapter.study.snapshots import snapshot_step

    assert snapshot_step(200, 5, 122) == 120 and snapshot_step(200, 5, 2) == 5 and snapshot_step(200, 5, 199) == 200
    assert snapshot_step(200, 10, 195) == 200 and snapshot_step(200, 10, 194) == 190  # ties go to the later step
    assert snapshot_step(200, 5, 201) is None and snapshot_step(200, 0, 50) is None  # must train: longer / off


def test_time_budget_counts_steps_at_the_side_by_side_cost(tmp_path):
    """The equal-wall-time budget: minutes at the arm's cost in costs.json, which must cover the arm and the
    study's thread count."""
    from casa_adapter.study.arms import ARMS as ALL_ARMS
    from casa_adapter.study.cost import COSTS, time_budget_steps
    from casa_adapter.study.recipes import arm_recipe
    from casa_adapter.study.runner import StudySettings

    settings = StudySettings(arms=["casa"], seeds=[0, 1, 2], minutes=2.0, records=str(tmp_path), threads=1)
    arm = ALL_ARMS["casa"]
    with pytest.raises(FileNotFoundError, match="no step costs .* --costs-only --recipe .* --threads 1 .*--arms casa"):
        time_budget_steps(settings, arm)
    costs = {"threads": 1, "arms": {"casa": {"median": 1.2}}, "method": "m", "device": "cpu"}
    (tmp_path / COSTS).write_text(json.dumps(costs))
    assert time_budget_steps(settings, arm) == (100, 1.2)  # 120 s / 1.2 s
    with pytest.raises(ValueError, match="has no cost of arm 'ca' .measured: casa"):
        time_budget_steps(settings, ALL_ARMS["ca"])
    with pytest.raises(ValueError, match="measured at threads=1, this study runs at threads=2"):
        time_budget_steps(StudySettings(minutes=2.0, records=str(tmp_path), threads=2), arm)
    recipe = arm_recipe({}, arm, settings, tmp_path / "t", 0, "time", 100)
    assert recipe["trainer"]["max_steps"] == 100 and recipe["trainer"]["max_time"] is None
    with pytest.raises(ValueError, match="threads"):
        StudySettings(threads=0)
    with pytest.raises(ValueError, match="needs its steps"):
        arm_recipe({}, arm, settings, tmp_path / "t", 0, "time")


def test_an_interim_report_reads_the_finished_runs_and_names_the_rest(tmp_path):
    from casa_adapter.study.arms import ARMS as ALL_ARMS
    from casa_adapter.study.runner import StudySettings, missing_runs, read_summaries
    from casa_adapter.study.settings import record_path

    settings = StudySettings(arms=["casa", "ca"], seeds=[0, 1], records=str(tmp_path))
    with pytest.raises(FileNotFoundError, match="no finished run of the study arms asked for yet"):
        read_summaries(settings, partial=True)
    path = record_path(settings, ALL_ARMS["casa"], 0, "steps")
    path.parent.mkdir(parents=True)
    path.write_text(json.dumps({"arm": "casa", "seed": 0}))
    assert read_summaries(settings, partial=True) == [{"arm": "casa", "seed": 0}]
    assert missing_runs(settings) == ["casa steps seed 1", "ca (every run)"]
    with pytest.raises(FileNotFoundError, match="no finished steps run of study arm 'casa' seed 1"):
        read_summaries(settings)
