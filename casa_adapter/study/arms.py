"""The arms of the fidelity study: one training recipe, changed in one place per arm.

Every arm trains from the same recipe (data, seed, steps, optimiser, vision tower); an arm only
names the recipe keys it changes. Every design (variant, placement, option, token insertion)
comes frozen and with LoRA (`NAME_lora`). The text-only control keeps the CASA model and blanks every
image (training and evaluation), so it measures what the prompts alone give away.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

CASA = "model.init_args.model.casa"
"""Recipe path of the `CasaSettings` block."""


@dataclass(frozen=True)
class Arm:
    """One model of the study."""

    name: str
    """Short name: the arm's folder under the study's work directory and its row in the table."""
    label: str
    """What the arm is, for the table and the plots."""
    recipe: dict[str, Any] = field(default_factory=dict)
    """Dotted recipe paths -> values set for this arm (on top of the shared recipe)."""
    blank_images: bool = False
    """Evaluate with every image replaced by a grey one (the text-only control)."""


LORA = {"model.init_args.model.lora": {"rank": 8, "alpha": 16.0, "blocks": "from_casa"}}
"""What a `_lora` arm adds: LoRA (rank 8) on every linear layer of the frozen LLM's blocks from the lowest one holding
a CASA layer up (every block for insertion and `casa_all`): the blocks backward reaches anyway, so each arm keeps
its own cost. `casa_lora_all` measures what LoRA on the blocks below the CASA layers adds."""

_DESIGNS = (
    Arm("casa", "CASA (image + window-text keys)", {f"{CASA}.variant": "casa"}),
    Arm("ca", "cross-attention (image keys only)", {f"{CASA}.variant": "ca"}),
    Arm("shared", "CASA with SA's projections", {f"{CASA}.variant": "shared"}),
    Arm("replace", "CASA replacing SA (CA-replace)", {f"{CASA}.replace": True, f"{CASA}.init": "copy"}),
    Arm("ffn", "CASA, image tokens through the frozen FFN", {f"{CASA}.image_ffn": "frozen"}),
    Arm("ffn_new", "CASA, image tokens through a new FFN", {f"{CASA}.image_ffn": "new"}),
    Arm("gist", "CASA + gist history (k=4)", {f"{CASA}.history": "gist", f"{CASA}.history_size": 4}),
    Arm("casa_all", "CASA in every block", {f"{CASA}.layers": None, f"{CASA}.every": 1}),
    Arm("casa_every2", "CASA in every 2nd block", {f"{CASA}.layers": None, f"{CASA}.every": 2}),
    Arm("casa_copy", "CASA, init copy (q/k/v/o from SA)", {f"{CASA}.init": "copy"}),
    Arm("casa_marker", "CASA, image marker trained", {f"{CASA}.train_marker": True}),
    Arm("insertion", "token insertion (LLaVA-style)", {f"{CASA}.fusion": "insertion"}),
)
"""The design arms, frozen backbone; each also has a `_lora` twin (`LORA` on top)."""

ARMS: dict[str, Arm] = {
    **{arm.name: arm for arm in _DESIGNS},
    **{f"{arm.name}_lora": Arm(f"{arm.name}_lora", f"{arm.label} + LoRA", {**arm.recipe, **LORA}) for arm in _DESIGNS},
    "casa_lora_all": Arm(
        "casa_lora_all",
        "CASA + LoRA on every block",
        {f"{CASA}.variant": "casa", "model.init_args.model.lora": {"rank": 8, "alpha": 16.0, "blocks": "all"}},
    ),
    "text_only": Arm(
        "text_only",
        "text-only control (images blanked)",
        {f"{CASA}.variant": "casa", "data.init_args.settings.blank_images": True},
        blank_images=True,
    ),
}
"""Every arm, in table order."""


STUDY = [
    *(arm.name for arm in _DESIGNS),
    *(f"{n}_lora" for n in ("casa", "ca", "shared", "replace", "ffn", "ffn_new", "gist", "insertion")),
    "casa_lora_all",
    "text_only",
]
"""The arms of the study docs/results.md reports (`casa-adapter study`'s default): every design frozen, the LoRA twins
of the variants and of insertion (not of the placement, init and marker arms, which decide the frozen defaults),
LoRA on every block, and the text-only control."""


def select(names: str | list[str]) -> list[Arm]:
    """Arms by name (a comma-separated string or a list), in the order given."""
    wanted = [n.strip() for n in names.split(",")] if isinstance(names, str) else list(names)
    unknown = [n for n in wanted if n not in ARMS]
    if unknown or not wanted:
        raise ValueError(f"unknown study arm(s) {unknown}; choose from {', '.join(ARMS)}")
    return [ARMS[n] for n in wanted]
