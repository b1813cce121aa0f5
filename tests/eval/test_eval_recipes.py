"""`casa-adapter eval` from recipes and saved run configs, with `--limit`, and its errors on bad arguments."""

from __future__ import annotations

# ruff: noqa: F401, F811  (the shared fixtures are imported by name and requested as arguments)
import pytest
from eval_fixtures import ROOT, adapter, demo, read_jsonl

import casa_adapter
from casa_adapter.backbone.base_models import load_base
from casa_adapter.eval import main
from casa_adapter.eval.loading import read_recipe

from conftest import tiny_tower
from recipe_runs import tiny_recipe, write_recipe

pytestmark = pytest.mark.filterwarnings("ignore:VQAAccuracy")


def test_recipe_zero_shot_with_limit(demo, tmp_path):
    """`--recipe`: the recipe's untrained model on its validation shards (the default), first 5 samples."""
    recipe = write_recipe(tmp_path / "recipe.yaml", tiny_recipe(tmp_path, demo))
    out = tmp_path / "preds.jsonl"
    assert (
        main(
            [
                "--recipe",
                str(recipe),
                "--limit",
                "5",
                "--batch-size",
                "2",
                "--max-new-tokens",
                "2",
                "--out",
                str(out),
                "--quiet",
            ]
        )
        == 0
    )
    assert [x["id"] for x in read_jsonl(out)] == [f"val-{i:06d}" for i in range(5)]


def test_errors_are_clear(demo, adapter, tmp_path, capsys):
    val = str(demo / "val")
    assert main(["--adapter", str(tmp_path / "nope"), "--base", "tiny", "--shards", val]) == 2
    assert "adapter directory" in capsys.readouterr().err
    assert main(["--adapter", str(adapter[0]), "--base", "tiny", "--shards", str(tmp_path / "none.tar")]) == 2
    assert "does not exist" in capsys.readouterr().err
    assert (
        main(
            [
                "--adapter",
                str(adapter[0]),
                "--base",
                str(tmp_path / "missing.gguf"),
                "--shards",
                val,
                "--out",
                str(tmp_path / "p.jsonl"),
            ]
        )
        == 2
    )
    assert "missing.gguf does not exist" in capsys.readouterr().err  # load_base's error
    assert main(["--adapter", str(adapter[0]), "--shards", val]) == 2
    assert "trained on 'tiny'" in capsys.readouterr().err  # names the base the adapter was trained on
    llm, _ = load_base("tiny")
    casa_adapter.wrap(llm, vision=tiny_tower(), every=2).save_adapter(str(tmp_path / "custom"))
    assert main(["--adapter", str(tmp_path / "custom"), "--base", "tiny", "--shards", val]) == 2
    assert "custom vision tower" in capsys.readouterr().err
    assert not (tmp_path / "p.jsonl").exists()


@pytest.mark.parametrize("recipe", sorted(str(p.relative_to(ROOT)) for p in (ROOT / "recipes").glob("*.yaml")))
def test_every_recipe_gives_model_settings(recipe):
    """`--recipe` reads each shipped recipe's model block, system prompt and validation shards."""
    parsed = read_recipe(str(ROOT / recipe))
    assert parsed.model.base and parsed.model.adapter is None and parsed.val


def test_saved_run_config_gives_model_settings(tmp_path):
    """The `config.yaml` LightningCLI saves with a run nests settings as `{class_path, init_args}`."""
    config = {
        "model": {
            "class_path": "casa_adapter.CasaModule",
            "init_args": {
                "system_prompt": "",
                "model": {
                    "base": "tiny",
                    "casa": {"class_path": "casa_adapter.CasaSettings", "init_args": {"every": 2}},
                    "vision": {"class_path": "casa_adapter.VisionSettings", "init_args": {"name": "siglip-tiny"}},
                    "lora": None,
                },
            },
        },
        "data": {
            "class_path": "casa_adapter.data.CasaDataModule",
            "init_args": {"val": "v", "settings": {"max_frames": 4}},
        },
    }
    parsed = read_recipe(str(write_recipe(tmp_path / "config.yaml", config)))
    assert (parsed.model.casa.every, parsed.model.vision.name, parsed.model.lora) == (2, "siglip-tiny", None)
    assert (parsed.system_prompt, parsed.val, parsed.decode) == ("", ["v"], {"max_frames": 4})
