"""Two processes on CPU: DDP (gloo) and the FSDP2 sharding plan (ModelParallelStrategy + fully_shard)."""

import json

import pytest

from recipe_runs import make_demo_data, run_cli, tiny_recipe, write_recipe

pytestmark = pytest.mark.slow


def two_rank_run(tmp_path, strategy) -> list[dict]:
    data = make_demo_data(tmp_path)
    recipe = tiny_recipe(tmp_path / "run", data, max_steps=4, devices=2, strategy=strategy)
    recipe["trainer"]["callbacks"].append(
        {"class_path": "recipe_runs.ParamReport", "init_args": {"out_dir": str(tmp_path / "report")}}
    )
    write_recipe(tmp_path / "r.yaml", recipe)
    run_cli(["run", str(tmp_path / "r.yaml")])
    return [json.loads((tmp_path / "report" / f"rank{r}.json").read_text()) for r in (0, 1)]


def check_ranks(reports: list[dict]) -> None:
    r0, r1 = reports
    assert r0["world"] == r1["world"] == 2
    assert r0["after"]["trainable"] == r1["after"]["trainable"]  # identical across ranks
    moved = [n for n, v in r0["after"]["trainable"].items() if v != r0["before"]["trainable"][n]]
    assert moved, "no trainable parameter changed"
    for r in reports:
        assert r["after"]["frozen"] == r["before"]["frozen"]  # frozen ones bit-identical
    assert r0["after"]["frozen"] == r1["after"]["frozen"]


def test_ddp_two_processes_cpu(tmp_path):
    reports = two_rank_run(tmp_path, "ddp")
    check_ranks(reports)
    assert not reports[0]["after"]["sharded"]


def test_fsdp2_two_processes_cpu(tmp_path):
    strategy = {
        "class_path": "lightning.pytorch.strategies.ModelParallelStrategy",
        "init_args": {"data_parallel_size": 2, "tensor_parallel_size": 1},
    }
    reports = two_rank_run(tmp_path, strategy)
    check_ranks(reports)
    assert reports[0]["after"]["sharded"] and reports[1]["after"]["sharded"]  # DTensor shards, gathered to compare
    assert (tmp_path / "run" / "adapter" / "final" / "manifest.json").exists()  # adapter gathered and written
