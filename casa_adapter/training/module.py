"""`CasaModule`: the LightningModule that trains a wrapped model on answer tokens only.

It builds the model from `ModelSettings` (base LLM, CASA placement, vision, LoRA), computes the
loss only where labels are (logits for the other positions are never materialised), steps AdamW
over the trainable groups with warmup + decay, and validates with loss and answer accuracy.
Lightning checkpoints hold only the trainable tensors (`strict_loading=False`), never the
frozen base; adapters (safetensors + manifest) are written by `callbacks.AdapterCheckpoint`.

    module = CasaModule(model=ModelSettings(base="tiny", vision=VisionSettings("siglip-tiny", pretrained=False)))
    trainer.fit(module, datamodule=CasaDataModule(train="data/demo/train", val="data/demo/val"))
"""

from __future__ import annotations

import dataclasses

import lightning as L
import torch
import torch.nn.functional as F

from casa_adapter.adapters.io import saved_state_keys
from casa_adapter.config import ModelSettings
from casa_adapter.fusion.build import build_from_settings
from casa_adapter.processor import IGNORE_INDEX, Processor
from casa_adapter.training.optim import OptimSettings, build_optimizer
from casa_adapter.training.sharding import shard_if_model_parallel

MODEL_KEYS = ("input_ids", "attention_mask", "images", "position_ids", "sample_ids")


def answer_accuracy(preds: torch.Tensor, targets: torch.Tensor, sample_ids: torch.Tensor) -> tuple[int, int]:
    """(samples whose every answer token is predicted, samples with answer tokens).

    preds, targets, sample_ids: (B, P) at the kept positions. Teacher-forced argmax matching every
    answer token is exactly "greedy decoding reproduces the answer".
    """
    has = targets != IGNORE_INDEX  # (B, P)
    wrong = has & (preds != targets)
    keys = (
        torch.arange(targets.shape[0], device=targets.device).unsqueeze(-1) * (int(sample_ids.max()) + 1) + sample_ids
    )
    n_keys = targets.shape[0] * (int(sample_ids.max()) + 1)
    answered = torch.zeros(n_keys, dtype=torch.long, device=targets.device).index_add_(
        0, keys[has], torch.ones_like(keys[has])
    )
    missed = torch.zeros_like(answered).index_add_(0, keys[wrong], torch.ones_like(keys[wrong]))
    total = int((answered > 0).sum())
    return int(((answered > 0) & (missed == 0)).sum()), total


def forward_answers(model, batch: dict) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """`model` on a collated `batch` with logits only where a label follows: (logits (B, P, V), targets (B, P),
    sample ids (B, P))."""
    targets = batch["labels"][:, 1:]  # (B, T-1): position t predicts token t+1
    keep = (targets != IGNORE_INDEX).any(0).nonzero().squeeze(-1)  # (P,)
    if keep.numel() == 0:
        keep = torch.zeros(1, dtype=torch.long, device=targets.device)
    inputs = {k: batch[k] for k in MODEL_KEYS if batch.get(k) is not None}
    out = model(**inputs, logits_to_keep=keep)
    sample_ids = batch.get("sample_ids")
    sample_ids = torch.ones_like(targets) if sample_ids is None else sample_ids[:, 1:]
    return out.logits, targets[:, keep], sample_ids[:, keep]


def answer_loss(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Mean cross-entropy over the answer tokens (fp32)."""
    return F.cross_entropy(logits.flatten(0, 1).float(), targets.flatten(), ignore_index=IGNORE_INDEX)


class CasaModule(L.LightningModule):
    """Trains only the new parameters of a CASA-wrapped LLM.

    Args:
        model: what to build (`ModelSettings`).
        optim: AdamW groups and schedule (`OptimSettings`).
        gradient_checkpointing: recompute decoder blocks in backward (HF activation checkpointing).
        compile: `torch.compile` the LLM's decoder blocks in `configure_model`.
        system_prompt: system message for chats that have none (e.g. "" for an empty one, which keeps
            SmolLM2's template from adding its 20-token default); None: the template's own behaviour.
    """

    def __init__(
        self,
        model: ModelSettings | None = None,
        optim: OptimSettings | None = None,
        gradient_checkpointing: bool = False,
        compile: bool = False,
        system_prompt: str | None = None,
    ) -> None:
        super().__init__()
        self.settings = model or ModelSettings()
        self.optim_settings = optim or OptimSettings()
        self.gradient_checkpointing, self.compile_blocks = gradient_checkpointing, compile
        self.save_hyperparameters(
            {
                "model": dataclasses.asdict(self.settings),
                "optim": dataclasses.asdict(self.optim_settings),
                "gradient_checkpointing": gradient_checkpointing,
                "compile": compile,
                "system_prompt": system_prompt,
            }
        )
        self.model, self.tokenizer = build_from_settings(self.settings)
        self.model.train()  # from_pretrained returns eval mode and Lightning keeps each module's mode as found
        extra = {} if system_prompt is None else {"system_prompt": system_prompt}
        self.processor = Processor.from_model(self.model, self.tokenizer, **extra)
        self.strict_loading = False  # checkpoints hold only the trainable tensors

    @property
    def image_tokens(self) -> int:
        """Tokens one image costs in a packed row's budget (CASA: not in the text stream, but in memory)."""
        return self.model.vision.num_tokens()

    # -- model set-up ----------------------------------------------------------------------
    def configure_model(self) -> None:
        if "mixed" in str(self.trainer.precision):  # frozen base may stay bf16; trained weights keep fp32 masters
            for name in self.model.trainable_parameter_names():
                self.model.get_parameter(name).data = self.model.get_parameter(name).data.float()
        if self.gradient_checkpointing:
            self.model.llm.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        if self.compile_blocks:
            for block in self.model.decoder_blocks():
                block.compile()
        shard_if_model_parallel(self)

    # -- steps -----------------------------------------------------------------------------
    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        logits, targets, _ = forward_answers(self.model, batch)
        loss = answer_loss(logits, targets)
        self.log("train/loss", loss, prog_bar=True, batch_size=targets.shape[0])
        self.log("train/lr", self.lr_schedulers().get_last_lr()[0], prog_bar=False)
        return loss

    def validation_step(self, batch: dict, batch_idx: int, dataloader_idx: int = 0) -> None:
        logits, targets, sample_ids = forward_answers(self.model, batch)
        loss = answer_loss(logits, targets)
        correct, total = answer_accuracy(logits.argmax(-1), targets, sample_ids)
        n_tokens = int((targets != IGNORE_INDEX).sum())
        self.log("val/loss", loss, prog_bar=True, batch_size=max(1, n_tokens), sync_dist=True)
        self.log("val/accuracy", correct / max(1, total), prog_bar=True, batch_size=max(1, total), sync_dist=True)

    # -- optimisation --------------------------------------------------------------------------
    def configure_optimizers(self):
        total = self.optim_settings.total_steps or int(self.trainer.estimated_stepping_batches)
        optimizer, scheduler = build_optimizer(self.model, self.optim_settings, total)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

    # -- checkpoints ---------------------------------------------------------------------------
    def on_save_checkpoint(self, checkpoint: dict) -> None:
        """Keep only the trainable tensors (and a random tower, which cannot be rebuilt) in Lightning checkpoints."""
        keep = {f"model.{key}" for key in saved_state_keys(self.model)}
        checkpoint["state_dict"] = {k: v for k, v in checkpoint["state_dict"].items() if k in keep}
