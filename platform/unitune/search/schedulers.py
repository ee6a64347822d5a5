"""A validated ``SearchSpaceSpec`` -> Ray Tune trial scheduler (``scheduler`` of the space).

``asha``: ``ASHAScheduler`` (one bracket of asynchronous successive halving) on the ``asha``
section's epochs; ``hyperband``: asynchronous Hyperband, the same scheduler with one bracket
per rung (bracket ``s`` first judges a trial at ``grace_period * reduction_factor**s``), each
trial's bracket drawn with the space's seed; ``none``: every trial runs its whole budget.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
from ray.tune.schedulers import AsyncHyperBandScheduler, FIFOScheduler, TrialScheduler

from unitune.config import SearchSpaceSpec


class SeededHyperBand(AsyncHyperBandScheduler):
    """``AsyncHyperBandScheduler`` whose bracket draw (Ray's: numpy's global generator, with
    weights ``e**(rungs - max rungs)``) uses its own seeded generator, so a search repeats."""

    def __init__(self, *, seed: int, **kwargs):
        super().__init__(**kwargs)
        self._rng = np.random.default_rng(seed)

    def on_trial_add(self, tune_controller, trial) -> None:
        sizes = np.array([len(b._rungs) for b in self._brackets])
        weights = np.e ** (sizes - sizes.max())
        self._trial_info[trial.trial_id] = self._brackets[self._rng.choice(len(sizes), p=weights / weights.sum())]


def brackets(max_epochs: int, grace_period: int, reduction_factor: float) -> int:
    """Hyperband's bracket count: one per rung of the first bracket (``s_max + 1``)."""
    return int(math.floor(math.log(max_epochs / grace_period, reduction_factor) + 1e-9)) + 1


def make_scheduler(space: SearchSpaceSpec) -> TrialScheduler:
    """The space's scheduler; the space must be loaded with its job (``asha.max_epochs`` set)."""
    if space.scheduler == "none" or space.asha is None:
        return FIFOScheduler()
    asha = space.asha
    if asha.max_epochs is None:  # ASHAScheduler would fail on None
        raise ValueError("asha.max_epochs is unset: load the space with its job (load_space(path, job))")
    common: dict[str, Any] = dict(
        time_attr="epoch",
        metric=space.metric,
        mode=space.mode,
        max_t=asha.max_epochs,
        grace_period=asha.grace_period,
        reduction_factor=asha.reduction_factor,
    )
    if space.scheduler == "asha":
        return AsyncHyperBandScheduler(**common)
    return SeededHyperBand(
        seed=space.seed, brackets=brackets(asha.max_epochs, asha.grace_period, asha.reduction_factor), **common
    )
