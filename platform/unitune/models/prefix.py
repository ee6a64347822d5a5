"""Cache support: the frozen prefix of each tower (what `unitune.features` caches), its
split point, digests of the frozen weights, and the trainable state a checkpoint holds.
`PrefixSplit` is the part of `DualEncoder` that offers them; a model that can be cut
implements `can_split` and the `{visual,text}_prefix/suffix` pairs."""

from __future__ import annotations

import hashlib

import torch
import torch.nn.functional as F
from torch import nn

from unitune.models.freeze import Freezable


class PrefixSplit(Freezable):
    """The frozen prefix of each tower (see the module docstring)."""

    video_pooling: nn.Module

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
