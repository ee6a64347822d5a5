"""Image loading and preprocessing with plain PIL and torch (no torchvision: PyPI's wheel
does not import beside this project's torch), so transforms pickle into DataLoader workers.

``ImageTransform`` is the one image transform: the models build theirs from it
(``unitune.models.transforms``), and ``default_transform`` is its evaluation mode at CLIP's
mean and std, for data read without a model.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch
from PIL import Image

from unitune.errors import UserError

# OpenAI CLIP's normalisation (the CLIP image processor's defaults).
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
    """PIL.Image -> Tensor[3, crop, crop]: RGB, resize, crop, scale to [0, 1], normalise.

    Evaluation: resize the shorter side to `resize`, centre crop `crop` x `crop`.
    Training: a random square crop covering `train_scale` of the shorter side's square
    area, resized to `crop` (no flips: captions may say "left of").
    """

    def __init__(
        self,
        *,
        resize: int,
        crop: int,
        mean: Sequence[float],
        std: Sequence[float],
        train: bool,
        train_scale: tuple[float, float] = (0.8, 1.0),
    ):
        self.resize, self.crop, self.train = int(resize), int(crop), train
        self.mean = torch.tensor(mean, dtype=torch.float32).view(3, 1, 1)
        self.std = torch.tensor(std, dtype=torch.float32).view(3, 1, 1)
        self.train_scale = train_scale

    def describe(self) -> dict:
        """The settings that change the output (the feature cache's key); JSON-able."""
        return {
            "class": "ImageTransform",
            "resize": self.resize,
            "crop": self.crop,
            "mean": self.mean.flatten().tolist(),
            "std": self.std.flatten().tolist(),
            "train": self.train,
            "train_scale": list(self.train_scale) if self.train else None,
        }

    def __call__(self, image: Image.Image) -> torch.Tensor:
        image = image.convert("RGB")
        width, height = image.size
        if self.train:
            low, high = self.train_scale
            area = low + (high - low) * torch.rand(()).item()
            side = max(1, round(math.sqrt(area) * min(width, height)))
            left = torch.randint(0, width - side + 1, ()).item()
            top = torch.randint(0, height - side + 1, ()).item()
            image = image.resize(
                (self.crop, self.crop), Image.Resampling.BICUBIC, box=(left, top, left + side, top + side)
            )
        else:
            scale = self.resize / min(width, height)
            size = (max(self.crop, round(width * scale)), max(self.crop, round(height * scale)))
            if size != (width, height):
                image = image.resize(size, Image.Resampling.BICUBIC)
            left, top = (size[0] - self.crop) // 2, (size[1] - self.crop) // 2
            image = image.crop((left, top, left + self.crop, top + self.crop))
        pixels = torch.from_numpy(np.array(image, dtype=np.uint8)).permute(2, 0, 1)
        return (pixels.float() / 255.0 - self.mean) / self.std


def default_transform(size: int = 224) -> ImageTransform:
    """The transform used when no model transform is given (same in train and eval): resize
    the shorter side to ``size``, centre crop, CLIP-normalise."""
    if size < 1:
        raise ValueError(f"size must be positive, got {size}")
    return ImageTransform(resize=size, crop=size, mean=CLIP_MEAN, std=CLIP_STD, train=False)
