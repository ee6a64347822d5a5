"""`clip`: a Hugging Face CLIP checkpoint (hub name or local path) as a DualEncoder.

The `tiny` presets reuse this class with a random-initialised CLIPModel.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import torch
from transformers import (
    AutoImageProcessor,
    AutoTokenizer,
    CLIPConfig,
    CLIPModel,
    CLIPTextConfig,
    CLIPVisionConfig,
)
from transformers.masking_utils import create_causal_mask

from unitune.errors import UserError
from unitune.models.base import DualEncoder, features_tensor
from unitune.models.freeze import TowerLayout
from unitune.models.hf import HFTokenizer, load_pretrained, max_length
from unitune.models.transforms import CLIP_MEAN, CLIP_STD, ImageTransform, transform_from_processor

# transformers' CLIPTextModel pools argmax(input_ids) when eos_token_id == 2 (configs from
# before its PR #24773); any other id pools the first position holding that id.
_LEGACY_EOS_ID = 2


def vision_config(config: CLIPConfig) -> CLIPVisionConfig:
    """``config.vision_config``: transformers types it ``dict | CLIPVisionConfig | None``; a
    built config holds a CLIPVisionConfig (``__post_init__`` converts a dict)."""
    vision = config.vision_config
    if not isinstance(vision, CLIPVisionConfig):
        raise TypeError(f"CLIPConfig.vision_config is a {type(vision).__name__}, not a CLIPVisionConfig")
    return vision


def text_config(config: CLIPConfig) -> CLIPTextConfig:
    """``config.text_config`` (see :func:`vision_config`)."""
    text = config.text_config
    if not isinstance(text, CLIPTextConfig):
        raise TypeError(f"CLIPConfig.text_config is a {type(text).__name__}, not a CLIPTextConfig")
    return text


def image_size(config: CLIPConfig) -> int:
    """The vision tower's square input size."""
    size = vision_config(config).image_size
    if not isinstance(size, int):
        raise TypeError(f"CLIPVisionConfig.image_size is {size!r}, not one integer")
    return size


class CLIPDualEncoder(DualEncoder):
    """A CLIPModel's vision and text towers with their projections.

    Video: per-frame CLIP image embeddings pooled by `config["video_pooling"]`.
    `clip.logit_scale` is frozen: the loss owns the scale. `config["embed_dim"]` is not
    used: D is the checkpoint's projection_dim.
    """

    name = "clip"

    def __init__(self, config: dict, clip: CLIPModel, tokenizer: Callable, processor=None):
        embed_dim = clip.config.projection_dim
        if embed_dim is None:  # CLIPModel builds its projections with it: never None here
            raise TypeError("CLIPConfig.projection_dim is None")
        super().__init__(config, tokenizer, embed_dim)
        self.clip = clip
        self.processor = processor
        self.clip.logit_scale.requires_grad_(False)
        self.apply_freeze()

    def image_features(self, pixel_values: torch.Tensor) -> torch.Tensor:
        return features_tensor(self.clip.get_image_features(pixel_values=pixel_values))

    def text_features(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        return features_tensor(self.clip.get_text_features(input_ids=input_ids, attention_mask=attention_mask))

    # --- frozen prefix: the CLIP forward of transformers, cut after layer k -----------
    def can_split(self, tower: str, k: int) -> bool:
        return True

    def visual_prefix(self, pixel_values: torch.Tensor, k: int) -> torch.Tensor:
        """-> tokens `[B, 1 + patches, W]` after layer k, or the pooled `[B, W]` when k = all."""
        vision = self.clip.vision_model
        hidden = vision.pre_layrnorm(vision.embeddings(pixel_values))
        for layer in vision.encoder.layers[:k]:
            hidden = layer(hidden, None)
        return vision.post_layernorm(hidden[:, 0]) if k == len(vision.encoder.layers) else hidden

    def visual_suffix(self, prefix: torch.Tensor, k: int) -> torch.Tensor:
        vision = self.clip.vision_model
        if k < len(vision.encoder.layers):
            hidden = prefix
            for layer in vision.encoder.layers[k:]:
                hidden = layer(hidden, None)
            prefix = vision.post_layernorm(hidden[:, 0])
        return self.clip.visual_projection(prefix)

    def _eos_positions(self, input_ids: torch.Tensor) -> torch.Tensor:
        eos_id = self.clip.text_model.eos_token_id
        if eos_id == _LEGACY_EOS_ID:
            return input_ids.to(torch.int).argmax(dim=-1)
        return (input_ids.to(torch.int) == eos_id).int().argmax(dim=-1)

    def _causal_mask(self, hidden: torch.Tensor, attention_mask: torch.Tensor):
        return create_causal_mask(
            config=self.clip.text_model.config, inputs_embeds=hidden, attention_mask=attention_mask, cache=None
        )

    def text_prefix(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, k: int) -> dict[str, torch.Tensor]:
        """-> `{"hidden", "attention_mask", "pool_index"}` (the EOS position) after layer k,
        or `{"pooled"}` (final norm at EOS) when k = all."""
        text = self.clip.text_model
        hidden = text.embeddings(input_ids=input_ids)
        mask = self._causal_mask(hidden, attention_mask)
        for layer in text.encoder.layers[:k]:
            hidden = layer(hidden, mask, is_causal=True)
        pool = self._eos_positions(input_ids)
        if k == len(text.encoder.layers):
            rows = torch.arange(len(hidden), device=hidden.device)
            return {"pooled": text.final_layer_norm(hidden)[rows, pool]}
        return {"hidden": hidden, "attention_mask": attention_mask, "pool_index": pool}

    def text_suffix(self, prefix: dict[str, torch.Tensor], k: int) -> torch.Tensor:
        text = self.clip.text_model
        if "pooled" in prefix:
            return self.clip.text_projection(prefix["pooled"])
        hidden = prefix["hidden"]
        mask = self._causal_mask(hidden, prefix["attention_mask"])
        for layer in text.encoder.layers[k:]:
            hidden = layer(hidden, mask, is_causal=True)
        rows = torch.arange(len(hidden), device=hidden.device)
        return self.clip.text_projection(text.final_layer_norm(hidden)[rows, prefix["pool_index"]])

    def tower_layouts(self) -> dict[str, TowerLayout]:
        vision, text = self.clip.vision_model, self.clip.text_model
        return {
            "visual": TowerLayout([vision], list(vision.encoder.layers), [vision.post_layernorm]),
            "text": TowerLayout([text], list(text.encoder.layers), [text.final_layer_norm]),
        }

    def tower_modules(self) -> dict[str, list[torch.nn.Module]]:
        # The projections come with the checkpoint, so they train at the tower's rate.
        return {
            "visual": [self.clip.vision_model, self.clip.visual_projection],
            "text": [self.clip.text_model, self.clip.text_projection],
        }

    def image_transform(self, train: bool) -> ImageTransform:
        if self.processor is not None:
            return transform_from_processor(self.processor, train)
        size = image_size(self.clip.config)
        return ImageTransform(resize=size, crop=size, mean=CLIP_MEAN, std=CLIP_STD, train=train)

    def save_assets(self, directory: Path) -> None:
        if not isinstance(self.tokenizer, HFTokenizer):  # from_config gives it one
            raise TypeError(f"a clip model saves a Hugging Face tokenizer, not a {type(self.tokenizer).__name__}")
        hf_dir = Path(directory) / "hf"
        self.clip.config.save_pretrained(hf_dir)
        self.tokenizer.tokenizer.save_pretrained(hf_dir)
        if self.processor is not None:
            self.processor.save_pretrained(hf_dir)

    @classmethod
    def from_config(
        cls, config: dict, *, captions: list[str] | None = None, assets: Path | None = None
    ) -> CLIPDualEncoder:
        """Load `config["checkpoint"]` (or the architecture saved in `assets`).

        Raises UserError for a missing checkpoint or a tokenizer whose EOS id differs from
        the text model's (CLIP pools the EOS position).
        """
        key = "model.checkpoint"
        if assets is None:
            source = config.get("checkpoint")
            if not source:
                raise UserError(f"{key}: the clip model needs a checkpoint (hub name or local path)")
            clip = load_pretrained(CLIPModel.from_pretrained, source, key=key)
        else:
            source = Path(assets) / "hf"
            clip = CLIPModel(load_pretrained(CLIPConfig.from_pretrained, source, key=key))
        tokenizer = load_pretrained(AutoTokenizer.from_pretrained, source, key=key)
        try:
            processor = AutoImageProcessor.from_pretrained(source)
        except OSError:  # no preprocessor_config.json: fall back to the vision config
            processor = None
        text = text_config(clip.config)
        eos_id = text.eos_token_id
        if eos_id != _LEGACY_EOS_ID and tokenizer.eos_token_id != eos_id:
            raise UserError(
                f"{key}: tokenizer eos_token_id {tokenizer.eos_token_id} != "
                f"text_config.eos_token_id {eos_id} in {str(source)!r}"
            )
        length = max_length(tokenizer, text.max_position_embeddings)
        return cls(config, clip, HFTokenizer(tokenizer, length), processor)
