"""`CasaCLI`: LightningCLI with the project's always-on pieces.

Recipes name `casa_adapter.CasaModule` and `casa_adapter.data.CasaDataModule` by `class_path`.
On top of LightningCLI this adds, for every run:

- `adapter:` (an `AdapterCheckpoint`: adapter-only safetensors checkpoints every N steps and at the end);
- `ThroughputMonitor` (tokens/s, images/s, peak memory) and the data pipeline's bad-sample counts;
- a rich progress bar (unless the recipe lists another or sets `trainer.enable_progress_bar: false`);
- `AtomicCheckpointIO` for Lightning's resume checkpoints (only trainable tensors are in them);
- `--ckpt_path=last` resumes from the newest `last.ckpt` of the recipe's ModelCheckpoint.
"""

from __future__ import annotations

from lightning.pytorch.callbacks import ProgressBar, RichProgressBar
from lightning.pytorch.cli import LightningCLI

from casa_adapter.data.datamodule import CasaDataModule, DataCountsLogger
from casa_adapter.training.callbacks import AdapterCheckpoint, AtomicCheckpointIO, ThroughputMonitor
from casa_adapter.training.module import CasaModule


class CasaCLI(LightningCLI):
    """LightningCLI over CasaModule and CasaDataModule (subclass mode: recipes give class_path)."""

    def __init__(self, args: list[str] | None = None) -> None:
        super().__init__(
            CasaModule,
            CasaDataModule,
            subclass_mode_model=True,
            subclass_mode_data=True,
            save_config_kwargs={"overwrite": True},
            args=args,
            auto_configure_optimizers=False,
        )

    def add_arguments_to_parser(self, parser) -> None:
        parser.add_lightning_class_args(AdapterCheckpoint, "adapter")

    def _instantiate_trainer(self, config: dict, callbacks: list):
        """Add the always-on callbacks (the `adapter:` one comes from add_lightning_class_args) and atomic IO."""
        callbacks = [*callbacks, ThroughputMonitor(), DataCountsLogger()]
        listed = [*callbacks, *(config.get("callbacks") or [])]
        if config.get("enable_progress_bar") is not False and not any(isinstance(c, ProgressBar) for c in listed):
            callbacks.append(RichProgressBar())
        config["plugins"] = config.get("plugins") or [AtomicCheckpointIO()]
        return super()._instantiate_trainer(config, callbacks)
