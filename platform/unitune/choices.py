"""The closed sets of values and the defaults of a job file, in one place.

Part of the config layer (``unitune.config`` builds its specs from them), kept in a leaf
module that imports nothing, so the plain-PyTorch library (losses, data, models, eval)
checks and defaults its keyword arguments with the same lists without importing the
config package (pydantic, the store rules).
"""

from __future__ import annotations

from typing import Any, Literal, get_args

DataFormat = Literal["synthetic", "karpathy", "msrvtt", "manifest"]
DATA_FORMATS: tuple[str, ...] = get_args(DataFormat)
ModelName = Literal["tiny", "clip", "two_tower"]
MODEL_NAMES: tuple[str, ...] = get_args(ModelName)
# Negative mining of the unified loss: every negative (softmax-weighted), the hardest, the k hardest.
MiningMode = Literal["all", "hardest", "topk"]
MINING_MODES: tuple[str, ...] = get_args(MiningMode)
# What the warm-up epochs train with: "all" = the unified loss over all negatives;
# "hinge_mean" = VSE∞'s warm-up, the triplet hinge averaged over all negatives (Triplet-HN).
WarmupMode = Literal["all", "hinge_mean"]
WARMUP_MODES: tuple[str, ...] = get_args(WarmupMode)
PreflightMode = Literal["full", "sample", "off"]
PREFLIGHT_MODES: tuple[str, ...] = get_args(PreflightMode)
TINY_PRESET_NAMES = ("tiny-s", "tiny-m")  # the keys of ``unitune.models.tiny.TINY_PRESETS`` (a test keeps them equal)

# What ``unitune.eval.retrieval_metrics`` returns, in its order, with the better direction:
# recalls in percent, their sum, median and mean ranks (1-based).
RETRIEVAL_METRICS: dict[str, str] = {
    "r1_i2t": "max",
    "r5_i2t": "max",
    "r10_i2t": "max",
    "r1_t2i": "max",
    "r5_t2i": "max",
    "r10_t2i": "max",
    "rsum": "max",
    "medr_i2t": "min",
    "meanr_i2t": "min",
    "medr_t2i": "min",
    "meanr_t2i": "min",
}
RETRIEVAL_METRIC_KEYS: tuple[str, ...] = tuple(RETRIEVAL_METRICS)

# ``data.synthetic``: the generated data set (``unitune.data.synthetic.generate``).
SYNTHETIC_DEFAULTS = {
    "num_train": 512,
    "num_val": 128,
    "num_test": 128,
    "captions_per_item": 3,
    "image_size": 64,
    "num_frames": 8,
    "seed": 0,
}
SYNTHETIC_CACHE_DIR = ".unitune/data"
NUM_FRAMES = 8  # ``data.num_frames``: frames per video clip
# ``model``: the dual encoder (``unitune.models.model_config``) and its ``freeze`` block.
MODEL_DEFAULTS: dict[str, Any] = {
    "name": "tiny",
    "preset": "tiny-s",
    "checkpoint": None,
    "image_encoder": None,
    "text_encoder": None,
    "embed_dim": 256,
    "video_pooling": "mean",
    "image_size": None,
}
FREEZE_DEFAULTS: dict[str, Any] = {
    "visual_trainable_layers": None,
    "text_trainable_layers": None,
    "projections_only": False,
}
