"""How images become input tensors, recorded in every checkpoint and manifest.

Kept free of torch so the edge runtime can preprocess with numpy and Pillow alone.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass(frozen=True)
class Preprocessing:
    """Resize the short side, centre-crop, scale to [0, 1], normalise per channel."""

    resize: int = 256
    crop: int = 224
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    interpolation: str = "bilinear"
    color: str = "RGB"

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["mean"] = list(self.mean)
        data["std"] = list(self.std)
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Preprocessing:
        """Read a recorded transform; unknown keys (older files' "extra") are ignored."""
        known: dict[str, Any] = {k: data[k] for k in ("resize", "crop", "interpolation", "color") if k in data}
        if "mean" in data:
            known["mean"] = tuple(float(v) for v in data["mean"])
        if "std" in data:
            known["std"] = tuple(float(v) for v in data["std"])
        return cls(**known)

    @classmethod
    def imagenet(cls, image_size: int = 224) -> Preprocessing:
        """The authors' ImageNet evaluation transform, scaled to `image_size`."""
        return cls(resize=round(image_size * 256 / 224), crop=image_size)
