"""The arms of the fidelity study: one training recipe, changed in one place per arm.

Every arm trains from the same recipe (data, seed, steps, optimiser, vision tower); an arm only
names the recipe keys it changes. The text-only control keeps the CASA model and blanks every
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


ARMS: dict[str, Arm] = {
    arm.name: arm
    for arm in (
        Arm("casa", "CASA (image + window-text keys)", {f"{CASA}.variant": "casa"}),
        Arm("ca", "cross-attention (image keys only)", {f"{CASA}.variant": "ca"}),
        Arm("shared", "CASA with SA's projections", {f"{CASA}.variant": "shared"}),
        Arm("insertion", "token insertion (LLaVA-style)", {f"{CASA}.fusion": "insertion"}),
        Arm(
            "text_only",
            "text-only control (images blanked)",
            {f"{CASA}.variant": "casa", "data.init_args.settings.blank_images": True},
            blank_images=True,
        ),
    )
}
"""Every arm, in table order."""


def select(names: str | list[str]) -> list[Arm]:
    """Arms by name (a comma-separated string or a list), in the order given."""
    wanted = [n.strip() for n in names.split(",")] if isinstance(names, str) else list(names)
    unknown = [n for n in wanted if n not in ARMS]
    if unknown or not wanted:
        raise ValueError(f"unknown study arm(s) {unknown}; choose from {', '.join(ARMS)}")
    return [ARMS[n] for n in wanted]
