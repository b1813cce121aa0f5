"""The census checks: what "wraps any decoder-only LLM" means for one `model_type`, on a tiny random base.

`check_type(model_type)` builds the tiny base (`census.tiny`), wraps it and runs five checks; the
first that fails decides the outcome:

1. `wrap`: `casa_adapter.wrap(llm, vision=CensusTower())` succeeds (or refuses with
   `UnsupportedModelError` naming the `model_type`: outcome `refused`);
2. `text`: zero init, text-only logits equal the base's, bit for bit;
3. `causal`: with the new parameters moved off their start, logits before the image do not depend
   on it (up to fp32 rounding, `ROUNDING`) and logits after it do;
4. `generate`: cached greedy `generate()` with the image equals greedy full forwards;
5. `step`: one AdamW step on the loss moves the trainables and leaves every frozen weight
   bit-identical.

Outcomes: `pass`, `refused` (a clear error), `fail` (a check did not hold), `crash` (any other
exception, or a refusal that does not name the `model_type`), `no-base` (the tiny base itself does
not build or run), `out-of-scope` (`scope.OUT_OF_SCOPE`).
"""

from __future__ import annotations

import logging
import time
import warnings
from dataclasses import dataclass

import torch
from torch import nn

from casa_adapter.backbone.families import UnsupportedModelError
from casa_adapter.census.scope import OUT_OF_SCOPE
from casa_adapter.census.tiny import VOCAB, tiny_base

CHECKS = ("wrap", "text", "causal", "generate", "step")
"""The checks, in the order they run."""
ROUNDING = 1e-5
"""fp32 rounding allowed where "does not depend" is checked: mixture-of-experts layers group tokens by expert,
so another image changes later tokens' routing and with it the order of the earlier tokens' sums."""


class CensusTower(nn.Module):
    """A conv patchifier standing in for a ViT: (B, 3, 16, 16) -> (B, 16, 24)."""

    embed_dim, image_size = 24, 16

    def __init__(self):
        super().__init__()
        self.patch = nn.Conv2d(3, self.embed_dim, kernel_size=4, stride=4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.patch(x).flatten(2).transpose(1, 2)  # (B, 16, 24)


@dataclass
class Outcome:
    """What the census found for one `model_type`."""

    model_type: str
    status: str
    """`pass`, `refused`, `fail`, `crash`, `no-base` or `out-of-scope`."""
    check: str = ""
    """The check that decided a status other than `pass` (one of `CHECKS`, or `base`)."""
    detail: str = ""
    """The refusal or error message, or what did not hold."""
    seconds: float = 0.0


class CheckFailed(AssertionError):
    """A census check (`check`, one of `CHECKS`) that did not hold (outcome `fail`)."""

    def __init__(self, check: str, what: str):
        super().__init__(what)
        self.check = check


def _expect(condition: bool, check: str, what: str) -> None:
    if not condition:
        raise CheckFailed(check, what)


def _prompt(marker: int) -> torch.Tensor:
    """(1, 10) ids: 3 text tokens, the image marker, 6 text tokens."""
    ids = torch.randint(1, VOCAB - 6, (1, 10), generator=torch.Generator().manual_seed(0))
    ids[0, 3] = marker
    return ids


def _images(seed: int) -> list[torch.Tensor]:
    return [torch.rand(1, 3, 16, 16, generator=torch.Generator().manual_seed(seed))]


def _move_trainables(model) -> None:
    """Give the new parameters (zero-started CASA output, marker, projector) random values, as after training."""
    gen = torch.Generator().manual_seed(2)
    with torch.no_grad():
        for p in model.parameters():
            if p.requires_grad:
                p.add_(0.2 * torch.randn(p.shape, generator=gen, dtype=p.dtype))


def _check_causal(model, ids: torch.Tensor) -> None:
    with torch.no_grad():
        a = model(ids, images=_images(1)).logits  # (1, T, V)
        b = model(ids, images=_images(2)).logits
    before, after = (a[0, :3] - b[0, :3]).abs().max(), (a[0, 3:] - b[0, 3:]).abs().max()
    _expect(before <= ROUNDING, "causal", f"logits before the image depend on it (by {before:.2e})")
    _expect(after > 100 * ROUNDING, "causal", f"logits after the image do not depend on it (by {after:.2e})")


def _check_generate(model, ids: torch.Tensor) -> None:
    images, seq = _images(1), ids
    out = model.generate(ids, attention_mask=torch.ones_like(ids), images=images, max_new_tokens=4, do_sample=False)
    with torch.no_grad():
        for _ in range(4):
            nxt = model(seq, images=images).logits[:, -1].argmax(-1, keepdim=True)  # (1, 1)
            seq = torch.cat([seq, nxt], 1)
    seq = seq[:, : out.shape[1]]  # generate() may stop early at an end-of-sequence token
    _expect(torch.equal(out, seq), "generate", f"generate() gave {out.tolist()}, greedy full forwards {seq.tolist()}")


def _check_step(model, ids: torch.Tensor) -> None:
    params = dict(model.named_parameters())
    frozen = {n: p.detach().clone() for n, p in params.items() if not p.requires_grad}
    trainable = {n: p.detach().clone() for n, p in params.items() if p.requires_grad}
    model.train()
    opt = torch.optim.AdamW([p for p in params.values() if p.requires_grad], lr=1e-2)
    labels = ids.masked_fill(ids == model.image_token_id, -100)
    model(ids, images=_images(1), labels=labels).loss.backward()
    opt.step()
    model.eval()
    moved = [n for n, before in trainable.items() if not torch.equal(params[n], before)]
    changed = [n for n, before in frozen.items() if not torch.equal(params[n], before)]
    _expect(not changed, "step", f"frozen weights changed: {changed[:3]}")
    _expect(any(".casa." in n for n in moved), "step", "no CASA parameter moved")


def _run_checks(model_type: str, llm: nn.Module, ids_text: torch.Tensor, options: dict) -> None:
    import casa_adapter

    llm.requires_grad_(False)  # frozen, as wrap() leaves it: torch's matmul folds differently for a weight that
    with torch.no_grad():  # requires grad (Jamba's `dt_proj.weight @ x`), which moves the base's logits by 1e-7
        base = llm(ids_text).logits
    model = casa_adapter.wrap(llm, vision=CensusTower(), **options)
    with torch.no_grad():
        _expect(torch.equal(model(ids_text).logits, base), "text", "text-only logits differ from the base")
    _move_trainables(model)
    ids = _prompt(model.image_token_id)
    for check in (_check_causal, _check_generate, _check_step):
        check(model, ids)


def check_type(model_type: str, **options) -> Outcome:
    """Run the census checks on a tiny random `model_type` (see the module docstring), wrapped with `options`
    (`wrap()` options: the census itself uses the defaults; `mixers="all"` checks CASA beside a hybrid's mixers)."""
    start = time.perf_counter()
    if model_type in OUT_OF_SCOPE:
        return Outcome(model_type, "out-of-scope", detail=OUT_OF_SCOPE[model_type])
    with warnings.catch_warnings(), _quiet():
        warnings.simplefilter("ignore")
        try:
            llm = tiny_base(model_type)
            ids_text = _prompt(1)
            with torch.no_grad():
                llm(ids_text)
        except Exception as e:  # the tiny base does not build: not counted against the adapter
            return Outcome(model_type, "no-base", "base", f"{type(e).__name__}: {e}"[:300], time.perf_counter() - start)
        outcome = _outcome(model_type, llm, ids_text, options)
    outcome.seconds = time.perf_counter() - start
    return outcome


def _outcome(model_type: str, llm: nn.Module, ids_text: torch.Tensor, options: dict) -> Outcome:
    try:
        _run_checks(model_type, llm, ids_text, options)
    except UnsupportedModelError as e:
        named = {repr(model_type), repr(getattr(llm.config, "model_type", model_type))}
        status = "refused" if any(n in str(e) for n in named) else "crash"
        return Outcome(model_type, status, "wrap", str(e))
    except CheckFailed as e:
        return Outcome(model_type, "fail", e.check, str(e))
    except Exception as e:
        return Outcome(model_type, "crash", "", f"{type(e).__name__}: {e}"[:300])
    return Outcome(model_type, "pass")


class _quiet:
    """Silence transformers' and casa_adapter's loggers below ERROR for one census run."""

    def __enter__(self):
        self.level = logging.root.manager.disable
        logging.disable(logging.WARNING)

    def __exit__(self, *exc):
        logging.disable(self.level)


__all__ = ["CHECKS", "CensusTower", "CheckFailed", "Outcome", "check_type"]
