"""Thin helpers around Hugging Face tokenizers and `from_pretrained` errors."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from typing import Any, TypeVar

import torch

from unitune.errors import UserError

T = TypeVar("T")

# Tokenizers without a real limit report model_max_length as a huge sentinel.
_NO_LIMIT = 1_000_000


class HFTokenizer:
    """Picklable `list[str] -> {"input_ids", "attention_mask"}` (LongTensor [B, L]) around
    a Hugging Face tokenizer: pads to the longest text, truncates to `max_length` keeping
    the special tokens (CLIP's EOS survives truncation)."""

    def __init__(self, tokenizer: Any, max_length: int):
        self.tokenizer = tokenizer
        self.max_length = max_length

    def describe(self) -> dict:
        """What changes the token ids (the feature cache's key): class, source, limit, vocabulary digest."""
        vocab = json.dumps(sorted(self.tokenizer.get_vocab().items()), ensure_ascii=False)
        return {
            "class": type(self.tokenizer).__name__,
            "source": str(self.tokenizer.name_or_path),
            "max_length": self.max_length,
            "vocab_sha256": hashlib.sha256(vocab.encode()).hexdigest(),
        }

    def __call__(self, texts: list[str]) -> dict[str, torch.Tensor]:
        encoded = self.tokenizer(
            list(texts), padding=True, truncation=True, max_length=self.max_length, return_tensors="pt"
        )
        return {"input_ids": encoded["input_ids"].long(), "attention_mask": encoded["attention_mask"].long()}


def max_length(tokenizer: Any, max_positions: int) -> int:
    """The tokenizer's limit, capped by the model's position embeddings."""
    limit = getattr(tokenizer, "model_max_length", None) or _NO_LIMIT
    return min(int(limit) if limit < _NO_LIMIT else max_positions, max_positions)


def load_pretrained(loader: Callable[..., T], source: Any, *, key: str) -> T:
    """`loader(source)`, turning a missing or unreadable checkpoint into a UserError naming `key`."""
    try:
        return loader(source)
    except (OSError, ValueError) as error:
        raise UserError(f"{key}: cannot load {str(source)!r}: {error}") from error
