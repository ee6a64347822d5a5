"""Losses of unitune: the unified loss of pair similarity optimization, its two published
special cases in textbook form, VSE∞'s warm-up hinge, the learnable scale and the mining
schedule."""

from .hinge import hinge_mean_loss
from .inputs import NonFiniteSimilarityError
from .mining import MINING_MODES, WARMUP_MODES, MiningSchedule
from .reference import triplet_hn_loss, vlc_loss
from .scale import LearnableScale
from .scheduled import scheduled_loss
from .unified import unified_loss

__all__ = [
    "MINING_MODES",
    "WARMUP_MODES",
    "NonFiniteSimilarityError",
    "LearnableScale",
    "MiningSchedule",
    "hinge_mean_loss",
    "scheduled_loss",
    "triplet_hn_loss",
    "unified_loss",
    "vlc_loss",
]
