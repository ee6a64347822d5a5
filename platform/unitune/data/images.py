"""Image loading with PIL and the default CLIP-style transform.

The default transform is used when the model brings no image processor: resize the
shorter side (bicubic), centre-crop to a square, scale to [0, 1] and normalise with
CLIP's mean and std.
"""

from __future__ import annotations

import numpy as np
import torch
from PIL import Image

from unitune.errors import UserError

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


def load_image(path: str) -> Image.Image:
    """Decode an image file fully into an RGB PIL image.

    Raises:
        UserError: the file is missing, not an image, truncated or otherwise corrupt
            (the message names the file).
    """
    try:
        with Image.open(path) as image:
            return image.convert("RGB")  # convert() forces the full decode
    except FileNotFoundError:
        raise UserError(f"{path}: image file not found") from None
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as exc:
        raise UserError(f"{path}: cannot decode image ({exc})") from None


class ImageTransform:
    """PIL.Image -> Tensor [3, size, size] float32, CLIP-normalised.

    A class rather than a closure so that it pickles into DataLoader workers.
    """

    def __init__(self, size: int = 224, mean=CLIP_MEAN, std=CLIP_STD):
        if size < 1:
            raise ValueError(f"size must be positive, got {size}")
        self.size = int(size)
        self.mean = torch.tensor(mean, dtype=torch.float32).view(3, 1, 1)
        self.std = torch.tensor(std, dtype=torch.float32).view(3, 1, 1)

    def __call__(self, image: Image.Image) -> torch.Tensor:
        image = image.convert("RGB")
        width, height = image.size
        scale = self.size / min(width, height)
        new_w, new_h = max(self.size, round(width * scale)), max(self.size, round(height * scale))
        if (new_w, new_h) != (width, height):
            image = image.resize((new_w, new_h), Image.Resampling.BICUBIC)
        left, top = (new_w - self.size) // 2, (new_h - self.size) // 2
        image = image.crop((left, top, left + self.size, top + self.size))
        pixels = torch.from_numpy(np.asarray(image, dtype=np.float32) / 255.0).permute(2, 0, 1)
        return (pixels - self.mean) / self.std

    def describe(self) -> dict:
        """The settings that change the output (the feature cache's key); JSON-able."""
        return {"class": "data.ImageTransform", "size": self.size, "mean": self.mean.flatten().tolist(),
                "std": self.std.flatten().tolist()}

    def __repr__(self) -> str:
        return f"ImageTransform(size={self.size})"


def default_transform(size: int = 224) -> ImageTransform:
    """The transform used when no model transform is given (same in train and eval)."""
    return ImageTransform(size)
