"""Resume after `kill -9`: the same losses, step by step, as an uninterrupted run (CPU)."""

import pytest

from recipe_runs import make_demo_data, run_cli, step_losses, tiny_recipe, write_recipe

pytestmark = pytest.mark.slow


def test_resume_after_kill_gives_identical_losses(tmp_path):
    data = make_demo_data(tmp_path)
    straight = tmp_path / "straight"
    write_recipe(tmp_path / "a.yaml", tiny_recipe(straight, data, max_steps=8))
    run_cli(["run", str(tmp_path / "a.yaml")])
    want = step_losses(straight)
    assert sorted(want) == list(range(8))

    killed = tmp_path / "killed"
    recipe = tiny_recipe(killed, data, max_steps=8)
    recipe["trainer"]["callbacks"].append({"class_path": "recipe_runs.KillAtStep", "init_args": {"step": 5}})
    write_recipe(tmp_path / "b.yaml", recipe)
    proc = run_cli(["run", str(tmp_path / "b.yaml")], check=False)
    assert proc.returncode == -9, proc.stderr[-2000:]
    assert (killed / "ckpt" / "last.ckpt").exists()  # written at step 4, before the kill at 5

    recipe["trainer"]["callbacks"].pop()
    write_recipe(tmp_path / "c.yaml", recipe)
    run_cli(["run", str(tmp_path / "c.yaml"), "--ckpt_path", str(killed / "ckpt" / "last.ckpt")])
    got = step_losses(killed)
    assert sorted(got) == list(range(8))
    assert got == want  # bit-identical losses, before and after the resume
