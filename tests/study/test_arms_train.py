"""Every study arm trains: its recipe (recipes/study.yaml with the arm's changes, on a tiny base) builds a
`CasaModule`, and two Lightning training steps on batches from the real data pipeline give a finite loss and move a
parameter of every trainable group the arm has (CASA, none for insertion; LoRA for the `_lora` arms). A
fast guard for the hours-long study: its gist arm once failed at step 0, because the collate's `sample_ids`
were taken for packed rows."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
import yaml
from lightning.pytorch import Trainer

from casa_adapter import CasaModule
from casa_adapter.data import CasaDataModule
from casa_adapter.data.make_demo import DemoSettings, make_demo
from casa_adapter.data.settings import DataSettings
from casa_adapter.eval.loading import model_settings
from casa_adapter.study.arms import ARMS
from casa_adapter.study.recipes import arm_recipe
from casa_adapter.study.settings import StudySettings
from casa_adapter.training.optim import OptimSettings

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def demo(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("arms") / "data"
    make_demo(
        DemoSettings(out=str(out), train=8, val=4, image_size=64, qtypes=("color", "word_under", "video_color")), False
    )
    return out


@pytest.mark.parametrize("name", list(ARMS))
def test_every_arm_trains_a_step(name, demo, tmp_path):
    base = yaml.safe_load((ROOT / "recipes/study.yaml").read_text())
    base["model"]["init_args"]["model"]["base"] = "tiny"
    config = arm_recipe(base, ARMS[name], StudySettings(recipe="recipes/study.yaml", arms=[name]), tmp_path)
    module = CasaModule(model_settings(config["model"]["init_args"]["model"]), OptimSettings(lr=1e-3, warmup_steps=0))
    data = {**config["data"]["init_args"]["settings"], "batch_size": 4, "num_workers": 0}
    loader = CasaDataModule(
        train=str(demo / "train"),
        settings=DataSettings(**data, image_tokens=module.image_tokens),
        processor=module.processor,
    )
    before = {n: module.model.get_parameter(n).detach().clone() for n in module.model.trainable_parameter_names()}
    trainer = Trainer(
        accelerator="cpu",
        max_steps=2,  # zero-initialised outputs (CASA's o_proj, LoRA's B) pass gradient on from step 2
        limit_val_batches=0,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    trainer.fit(module, datamodule=loader)
    assert trainer.global_step == 2 and math.isfinite(float(trainer.callback_metrics["train/loss"]))
    moved = {n for n, b in before.items() if not torch.equal(module.model.get_parameter(n), b)}
    assert all(torch.isfinite(module.model.get_parameter(n)).all() for n in moved)
    groups = {g: set(names) & moved for g, names in module.model.trainable_groups().items() if names}
    assert all(groups.values()), (name, {g: len(m) for g, m in groups.items()})  # every trainable group moved
    assert ("casa" in groups) == (module.settings.casa.fusion == "casa") and ("lora" in groups) == bool(
        module.settings.lora
    )
