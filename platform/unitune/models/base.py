"""The dual-encoder interface shared by every model (video pooling: `pooling.py`; freeze
policies: `freeze.py`; the frozen prefix the feature cache uses: `prefix.py`).

A `DualEncoder` maps images `[B, 3, H, W]`, videos `[B, F, 3, H, W]` and tokenized text
`[B, L]` to L2-normalised embeddings `[B, D]`. Subclasses supply the unnormalised
features (`image_features`, `text_features`), the layout of their towers (for freezing
and per-tower learning rates) and the files they need besides the weights
(`save_assets`, `from_config(..., assets=...)`).

The temperature / scale lives in the loss config (`unitune.losses.LearnableScale`), not
here: a model holds no parameter that its forward pass does not use, so DDP never sees
an unused parameter.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from unitune.models.pooling import build_video_pooling
from unitune.models.prefix import PrefixSplit


def features_tensor(output: Any) -> torch.Tensor:
    """The embedding tensor from `get_*_features`, which returns a tensor or an output object."""
    if isinstance(output, torch.Tensor):
        return output
    for name in ("pooler_output", "image_embeds", "text_embeds"):
        value = getattr(output, name, None)
        if isinstance(value, torch.Tensor):
            return value
    raise TypeError(f"cannot find an embedding tensor in {type(output).__name__}")


class DualEncoder(PrefixSplit):
    """Image/video and text encoders into one L2-normalised embedding space.

    Attributes: `config` (JSON-able dict that rebuilds the model, see
    `unitune.models.model_config`), `tokenizer` (picklable callable
    `list[str] -> {"input_ids", "attention_mask"}`), `embed_dim` (D), `video_pooling`.
    """

    name: str = ""

    def __init__(self, config: dict, tokenizer: Callable, embed_dim: int):
        super().__init__()
        self.config = config
        self.tokenizer = tokenizer
        self.embed_dim = embed_dim
        self.video_pooling = build_video_pooling(config["video_pooling"], embed_dim)

    # --- to implement -------------------------------------------------------------
    def image_features(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """`[B, 3, H, W]` -> unnormalised `[B, D]`."""
        raise NotImplementedError

    def text_features(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """`[B, L]`, `[B, L]` -> unnormalised `[B, D]`."""
        raise NotImplementedError

    def tower_modules(self) -> dict[str, list[nn.Module]]:
        """{"visual": [...], "text": [...]}: the modules whose parameters get the tower's lr."""
        raise NotImplementedError

    def image_transform(self, train: bool) -> Callable:
        """A picklable callable PIL.Image -> Tensor[3, H, W] matching this model's input."""
        raise NotImplementedError

    def save_assets(self, directory: Path) -> None:
        """Write what `from_config(config, assets=directory)` needs besides the weights."""
        raise NotImplementedError

    @classmethod
    def from_config(cls, config: dict, *, captions: list[str] | None = None, assets: Path | None = None) -> DualEncoder:
        """Build from `config`: pretrained sources when `assets` is None, else the
        architecture saved in `assets` (weights are loaded by `load_model`)."""
        raise NotImplementedError

    # --- shared --------------------------------------------------------------------
    def encode_image(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """`[B, 3, H, W]` -> L2-normalised `[B, D]`."""
        return F.normalize(self.image_features(pixel_values), dim=-1)

    def encode_video(self, frames: torch.Tensor) -> torch.Tensor:
        """`[B, F, 3, H, W]` -> L2-normalised `[B, D]` (per-frame features, then pooling)."""
        batch, num_frames = frames.shape[:2]
        per_frame = self.image_features(frames.flatten(0, 1)).view(batch, num_frames, -1)
        return F.normalize(self.video_pooling(per_frame), dim=-1)

    def encode_text(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """`[B, L]` token ids and mask -> L2-normalised `[B, D]`."""
        return F.normalize(self.text_features(input_ids, attention_mask), dim=-1)

    def encode_visual(self, visual: torch.Tensor) -> torch.Tensor:
        """Images `[B, 3, H, W]` or videos `[B, F, 3, H, W]` -> `[B, D]`. Raises ValueError."""
        if visual.dim() == 4:
            return self.encode_image(visual)
        if visual.dim() == 5:
            return self.encode_video(visual)
        raise ValueError(f"visual input must be [B,3,H,W] or [B,F,3,H,W], got shape {tuple(visual.shape)}")

    def forward(
        self, visual: torch.Tensor, input_ids: torch.Tensor, attention_mask: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """-> (visual embeddings `[B, D]`, text embeddings `[B, D]`), for DDP wrapping."""
        return self.encode_visual(visual), self.encode_text(input_ids, attention_mask)

    def tokenize(self, texts: list[str]) -> dict[str, torch.Tensor]:
        """-> {"input_ids": LongTensor[B, L], "attention_mask": LongTensor[B, L]}."""
        return self.tokenizer(texts)

    def param_groups(self) -> dict[str, list[nn.Parameter]]:
        """Trainable parameters split into {"visual", "text", "other"} for per-tower lr.

        "visual"/"text" hold the (pretrained) towers; "other" the rest (new projections,
        the temporal transformer). Frozen parameters are left out.
        """
        owner: dict[int, str] = {}
        for group, modules in self.tower_modules().items():
            for module in modules:
                for parameter in module.parameters():
                    owner[id(parameter)] = group
        groups: dict[str, list[nn.Parameter]] = {"visual": [], "text": [], "other": []}
        for parameter in self.parameters():
            if parameter.requires_grad:
                groups[owner.get(id(parameter), "other")].append(parameter)
        return groups
