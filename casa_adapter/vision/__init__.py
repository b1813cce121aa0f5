"""Vision: images -> LLM-width image tokens.

- `encoder`: `VisionEncoder` (tower, patch pooling, projector, trainable tower blocks), `build_vision`;
- `towers`: open_clip / timm towers (`siglip`, `siglip-so400m`, `siglip-tiny`, other open_clip names);
- `weights`: where pretrained tower weights come from (local files, caches), and the offline error;
- `transform`: the image preprocessing every tower shares.
"""

from casa_adapter.vision.build import build_vision
from casa_adapter.vision.encoder import VisionEncoder

__all__ = ["VisionEncoder", "build_vision"]
