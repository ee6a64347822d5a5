"""AdamW with per-tower learning rates, and linear warm-up followed by cosine decay."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import torch
from torch import nn

if TYPE_CHECKING:
    from unitune.models.base import DualEncoder

# Parameters of these modules are never decayed: shrinking a norm's gain or an embedding
# table towards zero is not regularisation, it changes what the layer can represent.
_NO_DECAY_MODULES = (nn.LayerNorm, nn.GroupNorm, nn.modules.batchnorm._BatchNorm, nn.Embedding)


def no_decay_ids(module: nn.Module) -> set[int]:
    """``id()`` of every parameter that must not get weight decay.

    Those are biases and other vectors/scalars (``ndim < 2``: norm gains, a learnable
    logit scale), every parameter of norm and embedding layers, and bare parameters
    named ``*embed*``/``*token*`` (position embeddings, class tokens).
    """
    ids = {id(p) for p in module.parameters() if p.ndim < 2}
    for sub in module.modules():
        if isinstance(sub, _NO_DECAY_MODULES):
            ids.update(id(p) for p in sub.parameters(recurse=False))
    for name, p in module.named_parameters():
        leaf = name.rsplit(".", 1)[-1]
        if "embed" in leaf or "token" in leaf:
            ids.add(id(p))
    return ids


def build_optimizer(model: DualEncoder, optim, scale: nn.Module | None = None) -> torch.optim.AdamW:
    """AdamW over the model's towers (and the learnable scale, if any).

    Args:
        model: a ``DualEncoder``; ``model.param_groups()`` gives ``{"visual", "text",
            "other"}`` lists of parameters.
        optim: the job's ``OptimSpec`` (``lr``, ``visual_lr``, ``text_lr``,
            ``weight_decay``).
        scale: a ``LearnableScale`` or None; trained at ``lr`` without weight decay.

    Returns:
        ``torch.optim.AdamW`` with up to two groups per tower (decayed / not decayed);
        each group carries a ``name`` such as ``"visual"`` or ``"visual_no_decay"``.
        Frozen parameters (``requires_grad=False``) are left out.
    """
    lrs = {
        "visual": optim.visual_lr if optim.visual_lr is not None else optim.lr,
        "text": optim.text_lr if optim.text_lr is not None else optim.lr,
        "other": optim.lr,
    }
    towers = {name: list(params) for name, params in model.param_groups().items()}
    if scale is not None:
        towers["other"] = towers.get("other", []) + list(scale.parameters())
    skip = no_decay_ids(model) | ({id(p) for p in scale.parameters()} if scale is not None else set())
    groups = []
    for name, params in towers.items():
        params = [p for p in params if p.requires_grad]
        decay = [p for p in params if id(p) not in skip]
        plain = [p for p in params if id(p) in skip]
        if decay:
            groups.append({"name": name, "params": decay, "lr": lrs[name], "weight_decay": optim.weight_decay})
        if plain:
            groups.append({"name": f"{name}_no_decay", "params": plain, "lr": lrs[name], "weight_decay": 0.0})
    if not groups:
        raise ValueError("the model has no trainable parameters")
    return torch.optim.AdamW(groups)


class WarmupCosine:
    """Learning-rate multiplier: linear from ~0 to 1 over ``warmup_steps``, then cosine to 0.

    A plain object (not a closure) so that ``LambdaLR.state_dict()`` stores its two ints
    and the checkpoint stays loadable with ``torch.load(weights_only=True)``.
    """

    def __init__(self, warmup_steps: int, total_steps: int):
        if total_steps < 1 or not 0 <= warmup_steps <= total_steps:
            raise ValueError(f"need 0 <= warmup_steps ({warmup_steps}) <= total_steps ({total_steps}), total >= 1")
        self.warmup_steps = warmup_steps
        self.total_steps = total_steps

    def __call__(self, step: int) -> float:
        if step < self.warmup_steps:
            return (step + 1) / self.warmup_steps
        progress = (step - self.warmup_steps) / max(1, self.total_steps - self.warmup_steps)
        return 0.5 * (1.0 + math.cos(math.pi * min(progress, 1.0)))


def build_scheduler(
    optimizer: torch.optim.Optimizer, *, warmup_epochs: float, epochs: int, steps_per_epoch: int
) -> torch.optim.lr_scheduler.LambdaLR:
    """Per-step warm-up + cosine schedule over ``epochs * steps_per_epoch`` steps."""
    total = epochs * steps_per_epoch
    warmup = min(total, round(warmup_epochs * steps_per_epoch))
    return torch.optim.lr_scheduler.LambdaLR(optimizer, WarmupCosine(warmup, total))
