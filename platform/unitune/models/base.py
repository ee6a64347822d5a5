"""The dual-encoder interface shared by every model, video pooling and freeze policies.

A `DualEncoder` maps images `[B, 3, H, W]`, videos `[B, F, 3, H, W]` and tokenized text
`[B, L]` to L2-normalised embeddings `[B, D]`. Subclasses supply the unnormalised
features (`image_features`, `text_features`), the layout of their towers (for freezing
and per-tower learning rates) and the files they need besides the weights
(`save_assets`, `from_config(..., assets=...)`).

The temperature / scale lives in the loss config (`unitune.losses.LearnableScale`), not
here: a model holds no parameter that its forward pass does not use, so DDP never sees
an unused parameter.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from unitune.errors import UserError

FREEZE_KEYS = ("visual_trainable_layers", "text_trainable_layers", "projections_only")
VIDEO_POOLINGS = ("mean", "seqTransf")
TOWERS = ("visual", "text")


class MeanPooling(nn.Module):
    """CLIP4Clip meanP: mean of the L2-normalised frame features.

    forward: frames `[B, F, D]` -> `[B, D]` (not normalised).
    """

    def forward(self, frames: torch.Tensor) -> torch.Tensor:
        return F.normalize(frames, dim=-1).mean(dim=1)


def _num_heads(dim: int) -> int:
    """The most attention heads (<= 8) that divide `dim` with heads of >= 16 channels."""
    for heads in (8, 4, 2):
        if dim % heads == 0 and dim // heads >= 16:
            return heads
    return 1


class SeqTransfPooling(nn.Module):
    """CLIP4Clip seqTransf: a temporal transformer over frame features.

    Frame position embeddings are added, a small transformer encoder mixes the frames,
    its output is added back to the input frames (residual to the mean pooling), and the
    L2-normalised frames are averaged.

    forward: frames `[B, F, D]` -> `[B, D]` (not normalised). Raises ValueError when
    F > max_frames.
    """

    def __init__(self, dim: int, *, num_layers: int = 2, max_frames: int = 64):
        super().__init__()
        self.max_frames = max_frames
        self.frame_position = nn.Embedding(max_frames, dim)
        nn.init.normal_(self.frame_position.weight, std=0.01)
        layer = nn.TransformerEncoderLayer(
            dim,
            _num_heads(dim),
            4 * dim,
            dropout=0.0,
            activation="gelu",
            batch_first=True,
            norm_first=True,
        )
        self.transformer = nn.TransformerEncoder(layer, num_layers, enable_nested_tensor=False)

    def forward(self, frames: torch.Tensor) -> torch.Tensor:
        num_frames = frames.shape[1]
        if num_frames > self.max_frames:
            raise ValueError(f"seqTransf takes at most {self.max_frames} frames, got {num_frames}")
        positions = torch.arange(num_frames, device=frames.device)
        mixed = self.transformer(frames + self.frame_position(positions))
        return F.normalize(mixed + frames, dim=-1).mean(dim=1)


def build_video_pooling(name: str, dim: int) -> nn.Module:
    """`mean` -> MeanPooling, `seqTransf` -> SeqTransfPooling(dim). Raises UserError."""
    if name == "mean":
        return MeanPooling()
    if name == "seqTransf":
        return SeqTransfPooling(dim)
    raise UserError(f"model.video_pooling: unknown pooling {name!r}; choose from {list(VIDEO_POOLINGS)}")


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


def features_tensor(output: Any) -> torch.Tensor:
    """The embedding tensor from `get_*_features`, which returns a tensor or an output object."""
    if isinstance(output, torch.Tensor):
        return output
    for name in ("pooler_output", "image_embeds", "text_embeds"):
        value = getattr(output, name, None)
        if isinstance(value, torch.Tensor):
            return value
    raise TypeError(f"cannot find an embedding tensor in {type(output).__name__}")


class DualEncoder(nn.Module):
    """Image/video and text encoders into one L2-normalised embedding space.

    Attributes: `config` (JSON-able dict that rebuilds the model, see
    `unitune.models.model_config`), `tokenizer` (picklable callable
    `list[str] -> {"input_ids", "attention_mask"}`), `embed_dim` (D), `video_pooling`.
    """

    name: str = ""

    def __init__(self, config: dict, tokenizer: Callable, embed_dim: int):
        super().__init__()
        self.config = config
        self.tokenizer = tokenizer
        self.embed_dim = embed_dim
        self.video_pooling = build_video_pooling(config["video_pooling"], embed_dim)

    # --- to implement -------------------------------------------------------------
    def image_features(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """`[B, 3, H, W]` -> unnormalised `[B, D]`."""
        raise NotImplementedError

    def text_features(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """`[B, L]`, `[B, L]` -> unnormalised `[B, D]`."""
        raise NotImplementedError

    def tower_layouts(self) -> dict[str, TowerLayout]:
        """{"visual": TowerLayout, "text": TowerLayout}."""
        raise NotImplementedError

    def tower_modules(self) -> dict[str, list[nn.Module]]:
        """{"visual": [...], "text": [...]}: the modules whose parameters get the tower's lr."""
        raise NotImplementedError

    def image_transform(self, train: bool) -> Callable:
        """A picklable callable PIL.Image -> Tensor[3, H, W] matching this model's input."""
        raise NotImplementedError

    def save_assets(self, directory: Path) -> None:
        """Write what `from_config(config, assets=directory)` needs besides the weights."""
        raise NotImplementedError

    @classmethod
    def from_config(cls, config: dict, *, captions: list[str] | None = None, assets: Path | None = None) -> DualEncoder:
        """Build from `config`: pretrained sources when `assets` is None, else the
        architecture saved in `assets` (weights are loaded by `load_model`)."""
        raise NotImplementedError

    # --- shared --------------------------------------------------------------------
    def encode_image(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """`[B, 3, H, W]` -> L2-normalised `[B, D]`."""
        return F.normalize(self.image_features(pixel_values), dim=-1)

    def encode_video(self, frames: torch.Tensor) -> torch.Tensor:
        """`[B, F, 3, H, W]` -> L2-normalised `[B, D]` (per-frame features, then pooling)."""
        batch, num_frames = frames.shape[:2]
        per_frame = self.image_features(frames.flatten(0, 1)).view(batch, num_frames, -1)
        return F.normalize(self.video_pooling(per_frame), dim=-1)

    def encode_text(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """`[B, L]` token ids and mask -> L2-normalised `[B, D]`."""
        return F.normalize(self.text_features(input_ids, attention_mask), dim=-1)

    def encode_visual(self, visual: torch.Tensor) -> torch.Tensor:
        """Images `[B, 3, H, W]` or videos `[B, F, 3, H, W]` -> `[B, D]`. Raises ValueError."""
        if visual.dim() == 4:
            return self.encode_image(visual)
        if visual.dim() == 5:
            return self.encode_video(visual)
        raise ValueError(f"visual input must be [B,3,H,W] or [B,F,3,H,W], got shape {tuple(visual.shape)}")

    def forward(
        self, visual: torch.Tensor, input_ids: torch.Tensor, attention_mask: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """-> (visual embeddings `[B, D]`, text embeddings `[B, D]`), for DDP wrapping."""
        return self.encode_visual(visual), self.encode_text(input_ids, attention_mask)

    def tokenize(self, texts: list[str]) -> dict[str, torch.Tensor]:
        """-> {"input_ids": LongTensor[B, L], "attention_mask": LongTensor[B, L]}."""
        return self.tokenizer(texts)

    def param_groups(self) -> dict[str, list[nn.Parameter]]:
        """Trainable parameters split into {"visual", "text", "other"} for per-tower lr.

        "visual"/"text" hold the (pretrained) towers; "other" the rest (new projections,
        the temporal transformer). Frozen parameters are left out.
        """
        owner: dict[int, str] = {}
        for group, modules in self.tower_modules().items():
            for module in modules:
                for parameter in module.parameters():
                    owner[id(parameter)] = group
        groups: dict[str, list[nn.Parameter]] = {"visual": [], "text": [], "other": []}
        for parameter in self.parameters():
            if parameter.requires_grad:
                groups[owner.get(id(parameter), "other")].append(parameter)
        return groups

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

    def train(self, mode: bool = True) -> DualEncoder:
        """As nn.Module.train, but every module whose parameters are all frozen stays in eval
        mode: frozen BatchNorm keeps its statistics, and frozen dropout / drop-connect draw
        nothing, so a frozen layer is a fixed function (what the feature cache relies on)."""
        super().train(mode)
        for module in self.modules():
            parameters = list(module.parameters())
            if parameters and not any(p.requires_grad for p in parameters):
                module.eval()
        return self

    # --- the frozen prefix (unitune.features caches its output) -------------------------
    def trainable_layers(self) -> dict[str, int | None]:
        """`{"visual": n, "text": n}` from `config["freeze"]` (projections_only: 0, 0)."""
        freeze = self.config["freeze"]
        if freeze["projections_only"]:
            return {"visual": 0, "text": 0}
        return {"visual": freeze["visual_trainable_layers"], "text": freeze["text_trainable_layers"]}

    def frozen_split(self) -> dict[str, int | None]:
        """Per tower, the split point `k` of its frozen prefix, or None when not split.

        `k` counts the frozen layers: the prefix is the tower's input stage and its first
        `k` layers (with `k` = all layers, the whole tower up to its pooled output). None
        when the tower trains whole, when only its input stage is frozen (nothing worth
        caching), or when the tower cannot be cut there (`can_split`).
        """
        split: dict[str, int | None] = {}
        for tower, layout in self.tower_layouts().items():
            trainable = self.trainable_layers()[tower]
            count = len(layout.layers)
            k = None if trainable is None or trainable >= count else count - trainable
            split[tower] = k if k is not None and self.can_split(tower, k) else None
        return split

    def can_split(self, tower: str, k: int) -> bool:
        """Whether `{visual,text}_prefix/suffix` support split point `k` of `tower`."""
        return False

    def visual_prefix(self, pixel_values: torch.Tensor, k: int) -> torch.Tensor:
        """`[B, 3, H, W]` -> the frozen prefix's output `[B, *S]` (feature maps, tokens or pooled)."""
        raise NotImplementedError

    def visual_suffix(self, prefix: torch.Tensor, k: int) -> torch.Tensor:
        """`[B, *S]` -> unnormalised `[B, D]`: `visual_suffix(visual_prefix(x, k), k) == image_features(x)`."""
        raise NotImplementedError

    def text_prefix(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, k: int) -> dict[str, torch.Tensor]:
        """`[B, L]` ids and mask -> the frozen prefix's output: `{"hidden": [B, L, H],
        "attention_mask": [B, L], ...per-caption extras [B]}` or `{"pooled": [B, H]}` (k = all)."""
        raise NotImplementedError

    def text_suffix(self, prefix: dict[str, torch.Tensor], k: int) -> torch.Tensor:
        """`text_prefix`'s dict (padded batch) -> unnormalised `[B, D]`."""
        raise NotImplementedError

    def encode_visual_prefix(self, prefix: torch.Tensor, *, video: bool = False) -> torch.Tensor:
        """Cached prefixes of images `[B, *S]` or videos `[B, F, *S]` -> L2-normalised `[B, D]`."""
        k = self._split("visual")
        if not video:
            return F.normalize(self.visual_suffix(prefix, k), dim=-1)
        batch, num_frames = prefix.shape[:2]
        per_frame = self.visual_suffix(prefix.flatten(0, 1), k).view(batch, num_frames, -1)
        return F.normalize(self.video_pooling(per_frame), dim=-1)

    def encode_text_prefix(self, prefix: dict[str, torch.Tensor]) -> torch.Tensor:
        """A cached text prefix (see `text_prefix`) -> L2-normalised `[B, D]`."""
        return F.normalize(self.text_suffix(prefix, self._split("text")), dim=-1)

    def _split(self, tower: str) -> int:
        """`frozen_split()[tower]` of a tower whose prefix is cached (so it is split)."""
        k = self.frozen_split()[tower]
        if k is None:
            raise ValueError(f"the {tower} tower is not split: it has no frozen prefix to continue from")
        return k

    def tower_digest(self, tower: str) -> str:
        """sha256 of the frozen weights (parameters and buffers) of `tower`'s body: what its
        prefix computes with. Hex string."""
        frozen = set(self.state_dict()) - set(self.trainable_state())
        names = {id(m): n for n, m in self.named_modules()}
        digest = hashlib.sha256()
        for module in self.tower_layouts()[tower].body:
            prefix = names[id(module)]
            for name, value in sorted(module.state_dict().items()):
                full = f"{prefix}.{name}" if prefix else name
                if full in frozen:
                    _hash_tensor(digest, full, value)
        return digest.hexdigest()

    def frozen_digest(self) -> str:
        """sha256 of every state entry a checkpoint leaves out (`trainable_state`'s complement)."""
        trainable = set(self.trainable_state())
        digest = hashlib.sha256()
        for name, value in sorted(self.state_dict().items()):
            if name not in trainable:
                _hash_tensor(digest, name, value)
        return digest.hexdigest()

    def trainable_state(self) -> dict[str, torch.Tensor]:
        """The state a checkpoint needs: trainable parameters and the buffers of modules that
        hold one (BatchNorm statistics of trained blocks). The rest is rebuilt from the
        model's sources (pretrained weights, seed) and checked by `frozen_digest`."""
        keep: set[str] = set()
        for prefix, module in self.named_modules():
            own = dict(module.named_parameters(recurse=False))
            if not any(p.requires_grad for p in own.values()):
                continue
            dot = f"{prefix}." if prefix else ""
            keep.update(dot + n for n, p in own.items() if p.requires_grad)
            keep.update(dot + n for n, _ in module.named_buffers(recurse=False))
        return {name: value for name, value in self.state_dict().items() if name in keep}

    def load_trainable_state(self, state: dict[str, torch.Tensor]) -> None:
        """Load `trainable_state()`'s output. Raises ValueError when its keys differ from this
        model's trainable state (another freeze policy or architecture)."""
        expected = set(self.trainable_state())
        if set(state) != expected:
            extra, missing = sorted(set(state) - expected)[:3], sorted(expected - set(state))[:3]
            raise ValueError(
                f"checkpoint does not match the model's trainable state (extra {extra}, missing {missing})"
            )
        self.load_state_dict(state, strict=False)


def _hash_tensor(digest, name: str, value: torch.Tensor) -> None:
    value = value.detach().cpu().contiguous()
    digest.update(f"{name}:{value.dtype}:{tuple(value.shape)};".encode())
    digest.update(value.reshape(-1).view(torch.uint8).numpy().tobytes() if value.numel() else b"")
