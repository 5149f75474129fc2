"""Image preprocessing of Qwen-VL: any Pillow image -> normalised float32 ``[3, size, size]``.

Matches Hugging Face Qwen-VL's transform (RGB, bicubic resize to a square, scale to [0, 1],
CLIP mean/std) and adds the conversions its ``convert("RGB")`` gets wrong: transparency is
composited on white, and 16-bit or float greyscale is rescaled instead of clipped to white.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

PREPROCESSOR_CONFIG_NAME = "preprocessor_config.json"
CLIP_MEAN: tuple[float, float, float] = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD: tuple[float, float, float] = (0.26862954, 0.26130258, 0.27577711)

ImageInput = Image.Image | str | Path | np.ndarray


def to_rgb(image: Image.Image) -> Image.Image:
    """Convert any Pillow mode to 8-bit RGB without losing the picture.

    Transparent pixels become white (dropping alpha would expose arbitrary colours); 16-bit and
    32-bit greyscale are scaled into 0-255 (Pillow's own conversion clips them).
    """
    if image.mode == "RGB":
        return image
    if image.mode == "P":
        image = image.convert("RGBA" if "transparency" in image.info else "RGB")
    if image.mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    if image.mode.startswith("I") or image.mode == "F":
        return Image.fromarray(_grey_to_uint8(image)).convert("RGB")
    return image.convert("RGB")


def _grey_to_uint8(image: Image.Image) -> np.ndarray:
    values = np.asarray(image).astype(np.float64)
    if image.mode.startswith("I;16"):
        scaled = values / 257.0
    elif image.mode == "F" and values.size and values.min() >= 0.0 and values.max() <= 1.0:
        scaled = values * 255.0
    elif values.size and values.max() > 255.0:
        # 32-bit integers or floats in an unknown range: 16-bit data if it fits, else stretch.
        high = 65535.0 if values.max() <= 65535.0 else values.max()
        scaled = values / high * 255.0
    else:
        scaled = values
    return np.clip(np.rint(scaled), 0, 255).astype(np.uint8)


class QwenVLImageProcessor:
    """Turns images into the vision tower's input: float32 ``[3, image_size, image_size]``."""

    def __init__(
        self,
        image_size: int = 448,
        image_mean: Sequence[float] = CLIP_MEAN,
        image_std: Sequence[float] = CLIP_STD,
    ) -> None:
        self.image_size = int(image_size)
        self.image_mean = tuple(float(m) for m in image_mean)
        self.image_std = tuple(float(s) for s in image_std)

    def preprocess(self, image: ImageInput) -> np.ndarray:
        """One image (Pillow image, file path, or ``HxW``/``HxWxC`` uint8 array) -> ``[3, S, S]``."""
        pil = _as_pil(image)
        resized = to_rgb(pil).resize(
            (self.image_size, self.image_size), resample=Image.Resampling.BICUBIC
        )
        pixels = np.asarray(resized, dtype=np.float32) / 255.0
        mean = np.asarray(self.image_mean, dtype=np.float32)
        std = np.asarray(self.image_std, dtype=np.float32)
        return ((pixels - mean) / std).transpose(2, 0, 1).astype(np.float32)

    def __call__(self, images: ImageInput | Sequence[ImageInput]) -> np.ndarray:
        """A batch ``[N, 3, S, S]`` from one image or a sequence of images."""
        if isinstance(images, (Image.Image, str, Path, np.ndarray)):
            images = [images]
        if not images:
            return np.zeros((0, 3, self.image_size, self.image_size), dtype=np.float32)
        return np.stack([self.preprocess(image) for image in images])

    def to_dict(self) -> dict[str, Any]:
        return {
            "image_processor_type": type(self).__name__,
            "image_size": self.image_size,
            "image_mean": list(self.image_mean),
            "image_std": list(self.image_std),
            "resample": "bicubic",
        }

    def save_pretrained(self, folder: str | Path) -> Path:
        """Write ``preprocessor_config.json`` into ``folder``; returns the file's path."""
        path = Path(folder) / PREPROCESSOR_CONFIG_NAME
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(self.to_dict(), indent=2) + "\n", encoding="utf-8")
        return path

    @classmethod
    def from_pretrained(cls, folder: str | Path) -> QwenVLImageProcessor:
        """Read ``preprocessor_config.json`` from ``folder``."""
        settings = json.loads((Path(folder) / PREPROCESSOR_CONFIG_NAME).read_text("utf-8"))
        return cls(
            image_size=settings["image_size"],
            image_mean=settings.get("image_mean", CLIP_MEAN),
            image_std=settings.get("image_std", CLIP_STD),
        )


def _as_pil(image: ImageInput) -> Image.Image:
    if isinstance(image, Image.Image):
        return image
    if isinstance(image, (str, Path)):
        with Image.open(image) as opened:
            opened.load()
            return opened.copy()
    if isinstance(image, np.ndarray):
        return Image.fromarray(image)
    raise TypeError(f"expected a Pillow image, a path or a numpy array, got {type(image).__name__}")
