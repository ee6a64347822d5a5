"""Video decoding with decord: frame sampling and clip loading.

Evaluation samples F frames uniformly (the middle frame of each of F equal segments);
training samples segment-randomly (one random frame inside each segment, TSN-style).
Decoding happens in `load_video`, which datasets call from `__getitem__`, so it runs
inside DataLoader workers.
"""

from __future__ import annotations

import os

import decord
import numpy as np
import torch
from PIL import Image

from unitune.errors import UserError, first_line


def _segments(num_total: int, num_frames: int) -> tuple[np.ndarray, np.ndarray]:
    if num_total < 1:
        raise ValueError(f"num_total must be positive, got {num_total}")
    if num_frames < 1:
        raise ValueError(f"num_frames must be positive, got {num_frames}")
    bounds = np.arange(num_frames + 1) * num_total / num_frames
    starts = np.floor(bounds[:-1]).astype(np.int64)
    ends = np.maximum(np.floor(bounds[1:]).astype(np.int64), starts + 1)  # non-empty
    return starts, np.minimum(ends, num_total)


def uniform_indices(num_total: int, num_frames: int) -> list[int]:
    """F frame indices in [0, num_total): the middle of each of F equal segments.

    Indices repeat when the clip has fewer than F frames.
    Raises ValueError when num_total or num_frames is not positive.
    """
    _segments(num_total, num_frames)  # argument checks
    return [min(int((i + 0.5) * num_total / num_frames), num_total - 1) for i in range(num_frames)]


def segment_random_indices(num_total: int, num_frames: int, generator: torch.Generator | None = None) -> list[int]:
    """F frame indices, one drawn uniformly inside each of F equal segments (sorted).

    Uses torch's RNG, which DataLoader seeds differently in every worker.
    Raises ValueError when num_total or num_frames is not positive.
    """
    starts, ends = _segments(num_total, num_frames)
    offsets = torch.rand(num_frames, generator=generator).numpy()
    picks = starts + np.floor(offsets * (ends - starts)).astype(np.int64)
    return [int(min(max(p, s), e - 1)) for p, s, e in zip(picks, starts, ends)]


def open_video(path: str) -> decord.VideoReader:
    """Open a video with decord.

    Raises:
        UserError: the file is missing, unreadable or has zero frames.
    """
    try:
        reader = decord.VideoReader(str(path), ctx=decord.cpu(0), num_threads=1)
    except Exception as exc:  # decord raises DECORDError/RuntimeError with ffmpeg's text
        if not os.path.exists(path):
            raise UserError(f"{path}: video file not found") from None
        raise UserError(f"{path}: cannot open video ({first_line(exc)})") from None
    if len(reader) == 0:
        raise UserError(f"{path}: video has zero frames")
    return reader


def decode_frames(path: str, indices: list[int], reader: decord.VideoReader | None = None) -> np.ndarray:
    """Decode the given frames -> uint8 array [len(indices), H, W, 3].

    Raises:
        UserError: the video cannot be opened or a frame cannot be decoded.
    """
    reader = reader if reader is not None else open_video(path)
    try:
        try:
            frames = reader.get_batch(list(indices)).asnumpy()
        except Exception as exc:
            if "size must exactly match" not in str(exc):
                raise
            frames = _aligned_reader(path).get_batch(list(indices)).asnumpy()
    except Exception as exc:
        raise UserError(f"{path}: cannot decode frames {list(indices)} ({first_line(exc)})") from None
    if frames.shape[0] != len(indices):
        raise UserError(f"{path}: decoded {frames.shape[0]} frames, expected {len(indices)}")
    return frames


def _aligned_reader(path: str) -> decord.VideoReader:
    """Reopen with decord's scaler to a width that is a multiple of 32.

    decord 0.6 cannot copy out frames of some small widths (16, 24, 48, 72, ...: "size
    must exactly match"); scaling up to an aligned width (aspect kept) avoids it.
    """
    height, width = decord.VideoReader(str(path), ctx=decord.cpu(0), num_threads=1).next().shape[:2]
    aligned = 32 * -(-width // 32)
    return decord.VideoReader(
        str(path), ctx=decord.cpu(0), num_threads=1, width=aligned, height=2 * round(height * aligned / width / 2)
    )


def load_video(path: str, num_frames: int, *, train: bool, transform) -> torch.Tensor:
    """Sample and decode a clip -> Tensor [F, 3, H, W].

    `train` picks segment-random sampling, otherwise uniform. `transform` maps one
    PIL.Image frame to Tensor [3, H, W] (it also resizes).
    Raises UserError for a missing, corrupt or zero-frame video.
    """
    reader = open_video(path)
    total = len(reader)
    indices = segment_random_indices(total, num_frames) if train else uniform_indices(total, num_frames)
    frames = decode_frames(path, indices, reader)
    return torch.stack([transform(Image.fromarray(frame)) for frame in frames])


def probe_video(path: str) -> int:
    """Open a video and decode its first and last frame; returns the frame count.

    Used for eager validation (`on_bad_sample: skip`). Raises UserError when bad.
    """
    reader = open_video(path)
    decode_frames(path, sorted({0, len(reader) - 1}), reader)
    return len(reader)
