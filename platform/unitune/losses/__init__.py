"""Losses of unitune: the unified loss of pair similarity optimization, its two published
special cases in textbook form, the learnable scale and the mining schedule."""

from .mining import MINING_MODES, MiningSchedule
from .reference import triplet_hn_loss, vlc_loss
from .scale import LearnableScale
from .unified import unified_loss

__all__ = ["MINING_MODES", "LearnableScale", "MiningSchedule", "triplet_hn_loss", "unified_loss", "vlc_loss"]
