"""Freeze policies: which modules make up a tower (`TowerLayout`), freezing all but its last
n layers, and `Freezable`, the part of `DualEncoder` that applies `config["freeze"]` and
keeps frozen modules a fixed function."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Self

from torch import nn

from unitune.errors import UserError

FREEZE_KEYS = ("visual_trainable_layers", "text_trainable_layers", "projections_only")


@dataclass
class TowerLayout:
    """Which modules make up a tower, for freeze policies.

    `body`: every module of the (pretrained) tower. `layers`: its blocks in order (CLIP or
    BERT encoder layers, EfficientNet blocks). `head`: modules after the last block (final
    norm, head conv), trainable together with the last n > 0 layers. Projections are not
    part of a layout: freeze policies always leave them trainable.
    """

    body: list[nn.Module]
    layers: list[nn.Module]
    head: list[nn.Module] = field(default_factory=list)


def _set_trainable(modules: list[nn.Module], trainable: bool) -> None:
    for module in modules:
        for parameter in module.parameters():
            parameter.requires_grad_(trainable)


def freeze_tower(layout: TowerLayout, trainable_layers: int | None, *, key: str) -> None:
    """Freeze the tower except its last `trainable_layers` layers (and head when > 0).

    None leaves the tower as it is. Raises UserError (naming `key`) for a negative count
    or more layers than the tower has.
    """
    if trainable_layers is None:
        return
    count = len(layout.layers)
    if not 0 <= trainable_layers <= count:
        raise UserError(f"{key}: {trainable_layers} is not between 0 and the tower's {count} layers")
    _set_trainable(layout.body, False)
    if trainable_layers > 0:
        _set_trainable(layout.layers[count - trainable_layers :], True)
        _set_trainable(layout.head, True)


def longest_module_list(module: nn.Module) -> list[nn.Module]:
    """The layers of a generic transformer: its longest nn.ModuleList (first one on ties)."""
    best: list[nn.Module] = []
    for child in module.modules():
        if isinstance(child, nn.ModuleList) and len(child) > len(best):
            best = list(child)
    return best


def generic_layout(module: nn.Module) -> TowerLayout:
    """Layout of a Hugging Face encoder: layers = its longest ModuleList; head = the direct
    children registered after the child holding those layers (final norm, pooler)."""
    layers = longest_module_list(module)
    children = list(module.children())
    holder = next(
        (i for i, child in enumerate(children) if layers and any(m is layers[0] for m in child.modules())),
        len(children),
    )
    return TowerLayout([module], layers, children[holder + 1 :])


class Freezable(nn.Module):
    """Applies `config["freeze"]` to the towers a subclass lays out (`tower_layouts`)."""

    config: dict

    def tower_layouts(self) -> dict[str, TowerLayout]:
        """{"visual": TowerLayout, "text": TowerLayout}."""
        raise NotImplementedError

    def apply_freeze(self) -> None:
        """Apply `config["freeze"]`. Raises UserError for contradictory or out-of-range keys."""
        freeze = self.config["freeze"]
        layouts = self.tower_layouts()
        visual, text = freeze["visual_trainable_layers"], freeze["text_trainable_layers"]
        if freeze["projections_only"]:
            if visual is not None or text is not None:
                raise UserError("model.freeze: projections_only contradicts visual/text_trainable_layers")
            visual = text = 0
        freeze_tower(layouts["visual"], visual, key="model.freeze.visual_trainable_layers")
        freeze_tower(layouts["text"], text, key="model.freeze.text_trainable_layers")

    def train(self, mode: bool = True) -> Self:
        """As nn.Module.train, but every module whose parameters are all frozen stays in eval
        mode: frozen BatchNorm keeps its statistics, and frozen dropout / drop-connect draw
        nothing, so a frozen layer is a fixed function (what the feature cache relies on)."""
        super().train(mode)
        for module in self.modules():
            parameters = list(module.parameters())
            if parameters and not any(p.requires_grad for p in parameters):
                module.eval()
        return self

    def trainable_layers(self) -> dict[str, int | None]:
        """`{"visual": n, "text": n}` from `config["freeze"]` (projections_only: 0, 0)."""
        freeze = self.config["freeze"]
        if freeze["projections_only"]:
            return {"visual": 0, "text": 0}
        return {"visual": freeze["visual_trainable_layers"], "text": freeze["text_trainable_layers"]}
