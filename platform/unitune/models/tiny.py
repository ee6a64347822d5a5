"""`tiny`: random-initialised CLIP-architecture presets with a word-level tokenizer.

They train in seconds on a CPU at 64x64 images. The vocabulary is built from the
dataset's captions (no pretrained tokenizer can be downloaded) and saved with the model.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections import Counter
from pathlib import Path

import torch
from transformers import CLIPConfig, CLIPModel

from unitune.errors import UserError
from unitune.models.clip import CLIPDualEncoder, image_size
from unitune.models.transforms import CLIP_MEAN, CLIP_STD, ImageTransform

# width/layers/heads per tower; max_length counts BOS and EOS.
TINY_PRESETS: dict[str, dict[str, int]] = {
    "tiny-s": {
        "image_size": 64,
        "patch_size": 8,
        "vision_width": 64,
        "vision_layers": 2,
        "text_width": 64,
        "text_layers": 2,
        "heads": 2,
        "max_length": 32,
    },
    "tiny-m": {
        "image_size": 64,
        "patch_size": 8,
        "vision_width": 128,
        "vision_layers": 4,
        "text_width": 128,
        "text_layers": 4,
        "heads": 4,
        "max_length": 48,
    },
}

# Special tokens first, so their ids lie inside the vocabulary. EOS must not be id 2:
# transformers' CLIPTextModel then pools argmax(input_ids) instead of the EOS position.
SPECIAL_TOKENS = ("<pad>", "<unk>", "<bos>", "<eos>")
PAD_ID, UNK_ID, BOS_ID, EOS_ID = range(4)
MAX_VOCAB = 32768
_WORD = re.compile(r"[^\W_]+(?:'[^\W_]+)*")


def words(text: str) -> list[str]:
    """Lower-cased word tokens of `text`, punctuation dropped."""
    return _WORD.findall(text.lower())


class WordTokenizer:
    """Word-level tokenizer: `list[str] -> {"input_ids", "attention_mask"}` LongTensor [B, L].

    Each text becomes BOS, its first `max_length - 2` known words (unknown -> UNK), EOS,
    then PAD up to the longest text of the batch; EOS is present even after truncation.
    """

    def __init__(self, vocab: list[str], max_length: int):
        if tuple(vocab[: len(SPECIAL_TOKENS)]) != SPECIAL_TOKENS:
            raise ValueError(f"vocab must start with {SPECIAL_TOKENS}")
        if max_length < 3:
            raise ValueError(f"max_length must be >= 3, got {max_length}")
        self.vocab = list(vocab)
        self.index = {token: i for i, token in enumerate(self.vocab)}
        self.max_length = max_length

    @classmethod
    def from_captions(cls, captions: list[str], max_length: int, max_vocab: int = MAX_VOCAB) -> WordTokenizer:
        """Vocabulary: the specials, then words by descending count (ties alphabetical)."""
        counts = Counter(word for caption in captions for word in words(caption))
        ranked = sorted(counts, key=lambda word: (-counts[word], word))
        return cls(list(SPECIAL_TOKENS) + ranked[: max_vocab - len(SPECIAL_TOKENS)], max_length)

    def describe(self) -> dict:
        """What changes the token ids (the feature cache's key)."""
        vocab = json.dumps(self.vocab, ensure_ascii=False).encode()
        return {
            "class": "WordTokenizer",
            "max_length": self.max_length,
            "vocab_sha256": hashlib.sha256(vocab).hexdigest(),
        }

    def encode(self, text: str) -> list[int]:
        body = [self.index.get(word, UNK_ID) for word in words(text)][: self.max_length - 2]
        return [BOS_ID, *body, EOS_ID]

    def __call__(self, texts: list[str]) -> dict[str, torch.Tensor]:
        encoded = [self.encode(text) for text in texts]
        length = max(len(ids) for ids in encoded) if encoded else 2
        input_ids = torch.full((len(encoded), length), PAD_ID, dtype=torch.long)
        attention_mask = torch.zeros((len(encoded), length), dtype=torch.long)
        for row, ids in enumerate(encoded):
            input_ids[row, : len(ids)] = torch.tensor(ids)
            attention_mask[row, : len(ids)] = 1
        return {"input_ids": input_ids, "attention_mask": attention_mask}


def tiny_clip_config(preset: dict[str, int], vocab_size: int, embed_dim: int) -> CLIPConfig:
    """A CLIPConfig for a preset, with the word tokenizer's special ids."""
    text = {
        "vocab_size": vocab_size,
        "hidden_size": preset["text_width"],
        "intermediate_size": 4 * preset["text_width"],
        "num_hidden_layers": preset["text_layers"],
        "num_attention_heads": preset["heads"],
        "max_position_embeddings": preset["max_length"],
        "pad_token_id": PAD_ID,
        "bos_token_id": BOS_ID,
        "eos_token_id": EOS_ID,
    }
    vision = {
        "image_size": preset["image_size"],
        "patch_size": preset["patch_size"],
        "hidden_size": preset["vision_width"],
        "intermediate_size": 4 * preset["vision_width"],
        "num_hidden_layers": preset["vision_layers"],
        "num_attention_heads": preset["heads"],
    }
    return CLIPConfig(text_config=text, vision_config=vision, projection_dim=embed_dim)


class TinyCLIP(CLIPDualEncoder):
    """A random-initialised CLIP of a `TINY_PRESETS` size with a WordTokenizer."""

    name = "tiny"

    def image_transform(self, train: bool) -> ImageTransform:
        size = image_size(self.clip.config)
        return ImageTransform(resize=size, crop=size, mean=CLIP_MEAN, std=CLIP_STD, train=train)

    def save_assets(self, directory: Path) -> None:
        if not isinstance(self.tokenizer, WordTokenizer):  # from_config gives it one
            raise TypeError(f"a tiny model saves a WordTokenizer, not a {type(self.tokenizer).__name__}")
        vocab = {"vocab": self.tokenizer.vocab, "max_length": self.tokenizer.max_length}
        (Path(directory) / "vocab.json").write_text(json.dumps(vocab))

    @classmethod
    def from_config(cls, config: dict, *, captions: list[str] | None = None, assets: Path | None = None) -> TinyCLIP:
        """Build the preset; the vocabulary comes from `captions` (or `assets/vocab.json`).

        Raises UserError for an unknown preset, ValueError without captions or assets.
        """
        preset_name = config.get("preset")
        if preset_name not in TINY_PRESETS:
            raise UserError(f"model.preset: unknown tiny preset {preset_name!r}; choose from {list(TINY_PRESETS)}")
        preset = TINY_PRESETS[preset_name]
        if assets is not None:
            saved = json.loads((Path(assets) / "vocab.json").read_text())
            tokenizer = WordTokenizer(saved["vocab"], saved["max_length"])
        elif captions:
            tokenizer = WordTokenizer.from_captions(captions, preset["max_length"])
        else:
            raise ValueError("the tiny model builds its vocabulary from captions: pass captions")
        clip = CLIPModel(tiny_clip_config(preset, len(tokenizer.vocab), config["embed_dim"]))
        return cls(config, clip, tokenizer)
