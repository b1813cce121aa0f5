"""Every recipe parses (LightningCLI --print_config) and starts with the command that runs it."""

from pathlib import Path

import pytest
import yaml

from casa_adapter.cli import main

RECIPES = sorted((Path(__file__).resolve().parents[2] / "recipes").glob("*.yaml"))


def test_there_are_recipes():
    assert {p.name for p in RECIPES} >= {"demo.yaml", "llava_mix.yaml", "llava_mix_fsdp.yaml", "video_stream.yaml"}


@pytest.mark.parametrize("recipe", RECIPES, ids=lambda p: p.name)
def test_recipe_parses_and_names_its_command(recipe, capsys):
    first = recipe.read_text().splitlines()[0]
    assert first == f"# casa-adapter run recipes/{recipe.name}"
    with pytest.raises(SystemExit) as done:
        main(["run", str(recipe), "--print_config"])
    assert done.value.code in (0, None)
    printed = yaml.safe_load(capsys.readouterr().out)
    assert printed["model"]["class_path"] == "casa_adapter.CasaModule"
    assert printed["data"]["class_path"] == "casa_adapter.data.CasaDataModule"
    assert printed["adapter"]["dirpath"]


def test_run_without_recipe_is_a_usage_error(capsys):
    assert main(["run"]) == 2
    assert "usage: casa-adapter run RECIPE" in capsys.readouterr().err


def test_recipes_doc_names_every_settings_field():
    """docs/recipes.md documents every field of the dataclasses a recipe can set."""
    import dataclasses

    from casa_adapter.config import CasaSettings, LoraSettings, ModelSettings, VisionSettings
    from casa_adapter.data.settings import DataSettings
    from casa_adapter.training.optim import OptimSettings

    text = (Path(__file__).resolve().parents[2] / "docs" / "recipes.md").read_text()
    for cls in (ModelSettings, CasaSettings, VisionSettings, OptimSettings, DataSettings):
        for f in dataclasses.fields(cls):
            assert f".{f.name}" in text or f"`{f.name}" in text, f"{cls.__name__}.{f.name} is not in docs/recipes.md"
    assert all(f"{f.name}" in text for f in dataclasses.fields(LoraSettings))
