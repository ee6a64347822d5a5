"""Dual encoders for vision-language retrieval: `tiny`, `clip` and `two_tower`.

build_model(config, captions=None) -> DualEncoder   # config: job.model.model_dump() or a model.json
save_model(model, directory); load_model(directory) -> DualEncoder
"""

from unitune.models.base import DualEncoder
from unitune.models.pooling import VIDEO_POOLINGS
from unitune.models.registry import MODEL_REGISTRY, build_model, load_model, model_config, save_model
from unitune.models.tiny import TINY_PRESETS, WordTokenizer
from unitune.models.towers import IMAGE_TOWERS
from unitune.models.two_tower import TEXT_ENCODERS

__all__ = [
    "DualEncoder",
    "MODEL_REGISTRY",
    "IMAGE_TOWERS",
    "TEXT_ENCODERS",
    "TINY_PRESETS",
    "VIDEO_POOLINGS",
    "WordTokenizer",
    "build_model",
    "load_model",
    "model_config",
    "save_model",
]
