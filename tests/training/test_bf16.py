"""bf16 on CPU: a few Lightning steps under `precision="bf16-mixed"` (fp32 and bf16-loaded base) track the
fp32 losses, and a model loaded with `dtype=bfloat16` runs forward, generate and a streaming session in bf16
with logits close to fp32."""

import pytest
import torch
from lightning.pytorch import Callback, Trainer, seed_everything

from casa_adapter import CasaModule, CasaSettings, VisionSettings
from casa_adapter.bench.train import Preset, make_batch
from casa_adapter.config import ModelSettings
from casa_adapter.fusion.build import build_from_settings
from casa_adapter.training.optim import OptimSettings

STEPS = 4


def settings(dtype: str) -> ModelSettings:
    return ModelSettings(
        base="tiny",
        dtype=dtype,
        vision=VisionSettings(name="siglip-tiny", pretrained=False, unfreeze_last=1),
        casa=CasaSettings(every=2, init="copy"),
    )


class Losses(Callback):
    def __init__(self):
        self.losses = []

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx):
        self.losses.append(float(outputs["loss"]))


def fit(precision: str, dtype: str) -> tuple[list[float], CasaModule]:
    """Losses of STEPS AdamW steps on one fixed batch (4 samples, 24 text tokens + an image each)."""
    seed_everything(0)
    module = CasaModule(settings(dtype), OptimSettings(lr=3e-3, warmup_steps=0, total_steps=STEPS))
    batch = make_batch(module.model, Preset(image_tokens=0, text_tokens=24, batch=4), seed=0, device="cpu")
    record = Losses()
    trainer = Trainer(
        accelerator="cpu",
        precision=precision,
        max_steps=STEPS,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=[record],
    )
    trainer.fit(module, train_dataloaders=torch.utils.data.DataLoader([batch] * STEPS, collate_fn=lambda b: b[0]))
    return record.losses, module


@pytest.fixture(scope="module")
def fp32_losses():
    return fit("32-true", "float32")[0]


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"], ids=["fp32-base", "bf16-base"])
def test_bf16_mixed_training_tracks_fp32_losses(fp32_losses, dtype):
    losses, module = fit("bf16-mixed", dtype)
    assert len(losses) == len(fp32_losses) == STEPS
    assert fp32_losses[-1] < fp32_losses[0]  # the run learns something, so the comparison means something
    assert losses[-1] < losses[0]
    for got, want in zip(losses, fp32_losses):
        assert abs(got - want) <= 0.02 * want, (losses, fp32_losses)
    trained = [module.model.get_parameter(n) for n in module.model.trainable_parameter_names()]
    assert all(p.dtype == torch.float32 for p in trained)  # fp32 master weights under mixed precision
    assert module.model.llm.lm_head.weight.dtype == getattr(torch, dtype)  # the frozen base as loaded


def inputs(model):
    torch.manual_seed(0)
    ids = torch.randint(4, 300, (2, 12))
    ids[:, 3] = ids[1, 7] = model.image_token_id
    images = [torch.rand(1, 3, 64, 64), torch.rand(2, 3, 64, 64)]
    return ids, images


def test_bfloat16_loaded_model_runs_forward_generate_and_stream():
    seed_everything(0)
    ref, _ = build_from_settings(settings("float32"))
    seed_everything(0)
    model, _ = build_from_settings(settings("bfloat16"))
    assert {p.dtype for p in model.llm.parameters()} == {torch.bfloat16}
    ids, images = inputs(model)
    with torch.no_grad():
        want = ref(ids, images=images).logits
        got = model(ids, images=images).logits
        assert got.dtype == torch.bfloat16 and torch.isfinite(got).all()
        assert (got.float() - want).abs().max() <= 0.05 * want.abs().max()
        assert torch.equal(got.argmax(-1)[:, -4:], want.argmax(-1)[:, -4:])
        out = model.generate(ids[:1], images=images[:1], max_new_tokens=3, do_sample=False)
        assert out.shape == (1, 15)
        session = model.stream()
        session.add_text(ids[1, :7])
        session.add_image(images[1][0])
        session.add_image(images[1][1])
        streamed = session.add_text(ids[1, 8:])
    assert streamed.dtype == torch.bfloat16 and torch.isfinite(streamed).all()
