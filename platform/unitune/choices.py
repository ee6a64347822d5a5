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

# The one list of metric names. What ``unitune.eval.retrieval_metrics`` returns, in its
# order, with the better direction: recalls in percent (R@1/5/10, image->text then
# text->image), their sum, median and mean ranks (1-based).
RECALL_KEYS: tuple[str, ...] = ("r1_i2t", "r5_i2t", "r10_i2t", "r1_t2i", "r5_t2i", "r10_t2i")
RETRIEVAL_METRICS: dict[str, str] = {
    **dict.fromkeys(RECALL_KEYS, "max"),
    "rsum": "max",
    "medr_i2t": "min",
    "meanr_i2t": "min",
    "medr_t2i": "min",
    "meanr_t2i": "min",
}
RETRIEVAL_METRIC_KEYS: tuple[str, ...] = tuple(RETRIEVAL_METRICS)
# Largest value of a bounded metric: a recall is a percentage, RSUM the sum of the recalls.
METRIC_MAX: dict[str, float] = {**dict.fromkeys(RECALL_KEYS, 100.0), "rsum": 100.0 * len(RECALL_KEYS)}
# Per-epoch metrics a trial reports (``unitune.train``), with the direction that is better.
METRICS: dict[str, str] = {"rsum": "max", **RETRIEVAL_METRICS, "train_loss": "min"}
# Per-trial convergence speed (``unitune.search.convergence``), usable as Pareto objectives.
CONVERGENCE_METRICS: dict[str, str] = {
    "epochs_to_target": "min",
    "seconds_to_target": "min",
    "epochs_to_90pct_best": "min",
    "normalized_auc": "max",
}
# Everything a trial's convergence summary holds (logged once, when the trial ends).
CONVERGENCE_KEYS: tuple[str, ...] = (
    "epochs_to_target",
    "seconds_to_target",
    "target_reached",
    "epochs_to_90pct_best",
    "normalized_auc",
    "best_value",
    "best_epoch",
)

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
