"""Video pooling: per-frame features `[B, F, D]` -> one clip feature `[B, D]` (CLIP4Clip's
meanP and seqTransf)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from unitune.errors import UserError

VIDEO_POOLINGS = ("mean", "seqTransf")


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
