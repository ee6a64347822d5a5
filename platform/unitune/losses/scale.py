"""Learnable scale γ (= 1/temperature) of the unified loss, held as log γ like CLIP's logit scale."""

import math

import torch
from torch import nn


class LearnableScale(nn.Module):
    """Holds the parameter `log_gamma`; `forward()` returns γ = exp(log_gamma) as a 0-d tensor.

    Like CLIP's logit scale, γ is kept at most `max_gamma`: each forward first clamps the
    parameter in place to log(max_gamma) (CLIP clamps it after each optimizer step), so the
    value never drifts past the bound and its gradient keeps flowing at the bound.

    Raises ValueError naming `init_gamma` (not in (0, max_gamma]) or `max_gamma` (not > 0).
    """

    def __init__(self, init_gamma, max_gamma=100.0):
        super().__init__()
        if not (isinstance(max_gamma, (int, float)) and math.isfinite(max_gamma) and max_gamma > 0):
            raise ValueError(f"max_gamma must be a finite number > 0, got {max_gamma!r}")
        if not (isinstance(init_gamma, (int, float)) and 0 < init_gamma <= max_gamma):
            raise ValueError(f"init_gamma must be in (0, max_gamma={max_gamma}], got {init_gamma!r}")
        self.max_gamma = float(max_gamma)
        self.log_gamma = nn.Parameter(torch.tensor(math.log(init_gamma)))

    def forward(self):
        """Return γ, a 0-d tensor in (0, max_gamma], differentiable w.r.t. `log_gamma`."""
        with torch.no_grad():
            self.log_gamma.clamp_(max=math.log(self.max_gamma))
        return self.log_gamma.exp()

    def extra_repr(self):
        return f"max_gamma={self.max_gamma}"
