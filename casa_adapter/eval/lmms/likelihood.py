"""Log-likelihood of continuations after prompts (lmms-eval's `loglikelihood`, multiple-choice tasks).

Each sequence is a processed prompt (generation prompt included) followed by the continuation's
tokens; a batch is right-padded and run through one forward. The score of a continuation is the
sum of its tokens' log-probabilities, each read from the logits one position earlier, and it is
greedy when every one of its tokens is the argmax there. (`CasaLmms.loglikelihood` hands lmms-eval
the negated sum: lmms-eval 0.7 picks the choice with the *smallest* value, as its own models return
a loss.)

    scores = continuation_logprobs(model, processor, [prompt_inputs], [[id1, id2]])  # [(logprob, greedy)]
"""

from __future__ import annotations

from typing import Any

import torch

from casa_adapter.processor import IGNORE_INDEX


@torch.no_grad()
def continuation_logprobs(
    model: Any, processor: Any, prompts: list[dict], continuations: list[list[int]]
) -> list[tuple[float, bool]]:
    """(sum of log-probs, greedy?) of each continuation (token ids) after its processed prompt."""
    if any(not ids for ids in continuations):
        raise ValueError("a continuation has no tokens; loglikelihood needs at least one")
    samples = []
    for prompt, ids in zip(prompts, continuations):
        cont = torch.tensor(ids, dtype=torch.long)  # (C,)
        samples.append(
            {
                "input_ids": torch.cat([prompt["input_ids"], cont]),  # (P + C,)
                "attention_mask": torch.ones(len(prompt["input_ids"]) + len(ids), dtype=torch.long),
                "labels": torch.cat([torch.full_like(prompt["input_ids"], IGNORE_INDEX), cont]),
                "images": prompt["images"],
            }
        )
    batch = processor.collate(samples, padding_side="right")
    logits = model(
        batch["input_ids"].to(model.device),
        attention_mask=batch["attention_mask"].to(model.device),
        images=batch["images"],
    ).logits  # (B, T, V)
    logprobs = torch.log_softmax(logits[:, :-1].float(), dim=-1)  # (B, T-1, V): position t predicts token t+1
    targets = batch["labels"][:, 1:].to(logits.device)  # (B, T-1)
    scored = targets != IGNORE_INDEX  # (B, T-1)
    picked = logprobs.gather(-1, targets.clamp(min=0)[..., None])[..., 0]  # (B, T-1)
    greedy = logprobs.argmax(dim=-1) == targets  # (B, T-1)
    totals = (picked * scored).sum(dim=1)  # (B,)
    all_greedy = (greedy | ~scored).all(dim=1)  # (B,)
    return [(float(total), bool(flag)) for total, flag in zip(totals, all_greedy)]


__all__ = ["continuation_logprobs"]
