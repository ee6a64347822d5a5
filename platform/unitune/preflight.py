"""Preflight: what a run needs, checked in the driver before the first trial and before any
MLflow run exists, so that a mistake in the data ends the command in one line, in seconds.

    preflight(job, splits=("train", "val", "test")) -> list[SplitCheck]
    check_resources(job, cluster, nodes=None, autoscaling=False) -> [warning]
    check_fits(job, address)   # check_resources of the connected Ray cluster

Data (``data.preflight``): the annotations are parsed by the data layer's own loaders (the
same code the trials run); every referenced media file must exist and not be empty; under
``full`` every one is decoded (images opened, verified and loaded, with PIL's pixel bound
against decompression bombs; videos opened and their first and last frame decoded), under
``sample`` ``SAMPLE_SIZE`` of each split, under ``off`` nothing is checked. Decoding runs in
a thread pool with a progress line on stderr for large splits. Each split must keep at least
one item, the train split at least one batch of captions; a warning says when ``drop_last``
drops more than ``DROP_WARN`` of the train captions every epoch. Under
``on_bad_sample: error`` the first bad sample raises; under ``skip`` a warning counts them.
"""

from __future__ import annotations

import contextlib
import os
import random
import sys
import time
import warnings
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import TextIO

from PIL import Image

from unitune.config import JobSpec
from unitune.errors import UserError, first_line, shorten

# The data layer (torch, decord) is imported by the functions that read data, so that
# `unitune validate` of a synthetic job stays light.

SAMPLE_SIZE = 256  # media files decoded per split under data.preflight: sample
PROGRESS_MIN = 1000  # splits with at least this many files print progress
PROGRESS_EVERY_S = 5.0
DROP_WARN = 0.05  # warn when drop_last drops more of the train captions per epoch


@dataclass
class SplitCheck:
    """What preflight found in one split role: items and captions kept, samples skipped."""

    role: str
    source: str
    items: int
    captions: int
    skipped: int
    decoded: int


def check_image(path: str) -> None:
    """Open, verify and decode one image; refuse more pixels than ``Image.MAX_IMAGE_PIXELS``.

    Raises:
        UserError: naming the file and the reason.
    """
    try:
        with Image.open(path) as image:
            width, height = image.size
            if Image.MAX_IMAGE_PIXELS and width * height > Image.MAX_IMAGE_PIXELS:
                raise UserError(
                    f"{path}: {width}x{height} image ({width * height} pixels) is larger than "
                    f"the decompression-bomb bound of {Image.MAX_IMAGE_PIXELS} pixels"
                )
            image.verify()  # checksums and structure, without decoding
        with Image.open(path) as image:
            image.draft("RGB", (max(1, width // 8), max(1, height // 8)))  # JPEG: decode at 1/8 scale
            image.load()  # the whole stream: truncation and corrupt data show here
    except UserError:
        raise
    except Image.DecompressionBombError as exc:
        raise UserError(f"{path}: decompression bomb refused ({exc})") from None
    except Exception as exc:  # noqa: BLE001 - PIL raises many types on corrupt input
        raise UserError(
            f"{path}: cannot decode image ({type(exc).__name__}: {shorten(first_line(exc), 200)})"
        ) from None


def check_video(path: str) -> None:
    """Open a video and decode its first and last frame. Raises UserError naming the file."""
    from unitune.data.video import probe_video  # decord: only for video data

    try:
        probe_video(path)
    except UserError:
        raise
    except Exception as exc:  # noqa: BLE001 - decord/ffmpeg errors
        raise UserError(
            f"{path}: cannot decode video ({type(exc).__name__}: {shorten(first_line(exc), 200)})"
        ) from None


def preflight(
    job: JobSpec, splits: tuple[str, ...] = ("train", "val", "test"), *, err: TextIO | None = None
) -> list[SplitCheck]:
    """Check the job's data before anything starts (see the module doc); warnings go to ``err``.

    ``splits``: the roles the command reads (``unitune search`` does not read ``test``).
    Returns one ``SplitCheck`` per role checked ([] for ``data.preflight: off``).

    Raises:
        UserError: an unreadable annotation file, a bad sample under ``on_bad_sample: error``
            (naming the media file, where it is listed, and why), an empty split, or a train
            split smaller than one batch, ``data.test_folds`` not dividing the test split.
    """
    err = err or sys.stderr
    data = job.data
    if data.preflight == "off":
        return []
    if data.format == "synthetic":  # generated: every item is decodable by construction
        s = data.synthetic
        warn_dropped(job, s.num_train * s.captions_per_item, "the synthetic train split", err)
        return []
    checks = [check_split(job, role, err) for role in splits]
    train = next((c for c in checks if c.role == "train"), None)
    if train is not None:
        if train.captions < job.train.batch_size:
            raise UserError(
                f"{_prefix(job)}train.batch_size: {job.train.batch_size} is larger than the train "
                f"split ({train.source}: {train.captions} captions)"
            )
        warn_dropped(job, train.captions, f"{train.source}: split {data.splits.train!r}", err)
    test = next((c for c in checks if c.role == "test"), None)
    if test is not None and test.items % data.test_folds:
        raise UserError(
            f"{_prefix(job)}data.test_folds: {data.test_folds} does not divide the test split "
            f"({test.source}: split {data.splits.test!r} holds {test.items} {'item' if test.items == 1 else 'items'})"
        )
    skipped = [c for c in checks if c.skipped]
    if skipped:
        counts = ", ".join(f"{c.skipped} of split {c.role}" for c in skipped)
        print(
            f"unitune: warning: {_prefix(job)}data.on_bad_sample: skip: {sum(c.skipped for c in skipped)} bad "
            f"samples will be skipped ({counts}; {checks[0].source})",
            file=err,
        )
    return checks


def check_split(job: JobSpec, role: str, err: TextIO) -> SplitCheck:
    """Parse one split role with the data layer and check its media (see ``preflight``)."""
    # the data layer (torch): not for `unitune validate` of a synthetic job
    from unitune.data import read_entries, split_names
    from unitune.data.base import Screen, screen_files

    data = job.data
    screen = Screen(data.on_bad_sample)
    names, key = split_names(data.splits.model_dump(), role)
    if data.annotations is None:
        raise UserError(f"data.annotations: required for data.format {data.format!r}")
    source = os.fspath(data.annotations)
    root = os.fspath(data.root) if data.root is not None else None
    entries = read_entries(data.format, data.modality, source, root, names, key, screen)
    kept = screen_files(entries, screen, data.modality)
    chosen = kept
    if data.preflight == "sample" and len(kept) > SAMPLE_SIZE:
        chosen = random.Random(0).sample(kept, SAMPLE_SIZE)
    bad = decode_all(chosen, data.modality, screen, label=f"{role} split", err=err)
    kept = [entry for entry in kept if id(entry) not in bad]
    if not kept:
        after = f" after skipping {screen.skipped} bad samples" if screen.skipped else ""
        raise UserError(f"{source}: split {'+'.join(names)!r} ({key}) is empty{after}")
    return SplitCheck(role, source, len(kept), sum(len(e.captions) for e in kept), screen.skipped, len(chosen))


def decode_all(entries: list, modality: str, screen, *, label: str, err: TextIO) -> set[int]:
    """Decode every ``unitune.data.base.Entry``'s media in a thread pool; ``screen``
    (a ``unitune.data.base.Screen``) gets each failure in file order
    (under ``error`` the first one raises and the rest are cancelled). Returns the ``id()`` of
    the entries that failed."""
    check = check_video if modality == "video" else check_image
    total = len(entries)

    def problem(entry) -> str | None:
        try:
            check(entry.path)
        except UserError as exc:
            return f"{exc} (listed at {entry.where})"
        return None

    bad: set[int] = set()
    last, shown = time.monotonic(), False
    pool = ThreadPoolExecutor(max_workers=min(8, os.cpu_count() or 1), thread_name_prefix="preflight")
    quiet = quiet_native_stderr(err) if modality == "video" else contextlib.nullcontext(err)
    try:
        with quiet as err, warnings.catch_warnings():
            # Between 1x and 2x its pixel bound PIL only warns; check_image refuses those itself.
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            for done, (entry, message) in enumerate(zip(entries, pool.map(problem, entries)), 1):
                if message is not None:
                    screen.reject(message)  # raises under on_bad_sample: error
                    bad.add(id(entry))
                # A split that takes a while shows its progress (and then its end).
                if total >= PROGRESS_MIN and (time.monotonic() - last >= PROGRESS_EVERY_S or (shown and done == total)):
                    last, shown = time.monotonic(), True
                    print(f"unitune: preflight: {label}: {done}/{total} {modality}s decoded", file=err, flush=True)
    finally:
        pool.shutdown(wait=True, cancel_futures=True)
    return bad


@contextlib.contextmanager
def quiet_native_stderr(err: TextIO):
    """Send file descriptor 2 to /dev/null inside the block: decord and ffmpeg print their own
    lines about every bad video there, besides the error they raise. Yields the stream for
    unitune's own lines (``err``, or a copy of the real stderr when ``err`` writes to fd 2)."""
    try:
        to_fd2 = err.fileno() == 2
    except (AttributeError, OSError, ValueError):
        to_fd2 = False
    sys.stderr.flush()
    saved = os.dup(2)
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, 2)
    os.close(devnull)
    out = os.fdopen(os.dup(saved), "w", buffering=1) if to_fd2 else err
    try:
        yield out
    finally:
        if to_fd2:
            out.close()
        os.dup2(saved, 2)
        os.close(saved)


def dropped_per_epoch(captions: int, batch_size: int, workers: int) -> int:
    """Train captions left out of every epoch: ``DistributedSampler(drop_last=True)`` gives each
    of ``workers`` ranks ``captions // workers``; each rank's ``DataLoader(drop_last=True)``
    then uses whole local batches of ``batch_size // workers``."""
    per_rank = captions // workers
    local = batch_size // workers
    return captions - (per_rank // local) * local * workers


def warn_dropped(job: JobSpec, captions: int, where: str, err: TextIO) -> None:
    """Print a warning when more than ``DROP_WARN`` of the train captions are dropped per epoch."""
    dropped = dropped_per_epoch(captions, job.train.batch_size, job.resources.num_workers)
    if captions and dropped / captions > DROP_WARN:
        print(
            f"unitune: warning: {_prefix(job)}train.batch_size: {job.train.batch_size} leaves {dropped} of "
            f"{captions} train captions ({dropped / captions:.0%}) out of every epoch (drop_last; {where})",
            file=err,
        )


def check_resources(
    job: JobSpec, cluster: dict, nodes: list[dict] | None = None, *, autoscaling: bool = False
) -> list[str]:
    """Can the cluster ever run one trial of ``job``? Pure: no Ray call.

    Args:
        cluster: ``ray.cluster_resources()``, e.g. ``{"CPU": 2.0, "memory": ...}``.
        nodes: ``ray.nodes()`` (dicts with ``Alive`` and ``Resources``); with it, one worker
            must also fit on a single node.
        autoscaling: the cluster can add nodes: problems become warnings.

    Returns:
        Warnings (only with ``autoscaling``), one line each.

    Raises:
        UserError: a trial no node or the whole cluster can hold, naming the resource key, what
            a trial needs and what the cluster has.
    """
    res = job.resources
    per_worker = {"CPU": (res.cpu_per_worker, "resources.cpu_per_worker")}
    if res.use_gpu:
        per_worker["GPU"] = (
            res.gpu_per_worker,
            "resources.use_gpu" if not cluster.get("GPU") else "resources.gpu_per_worker",
        )
    has = ", ".join(f"{cluster.get(k, 0):g} {k}" for k in ("CPU", "GPU"))
    alive = [n.get("Resources", {}) for n in (nodes or []) if n.get("Alive", True)]
    problems = []
    for name, (amount, key) in per_worker.items():
        need = amount * res.num_workers
        if name == "GPU" and not cluster.get("GPU"):
            problems.append(f"{key}: true, but the Ray cluster has no GPU (it has {has})")
        elif cluster.get(name, 0) < need:
            key = "resources.num_workers" if cluster.get(name, 0) >= amount else key
            problems.append(
                f"{key}: a trial needs {need:g} {name} ({res.num_workers} workers x {amount:g}); "
                f"the Ray cluster has {cluster.get(name, 0):g} {name} in all ({has})"
            )
        elif alive and max(n.get(name, 0) for n in alive) < amount:
            problems.append(
                f"{key}: one worker needs {amount:g} {name}; the largest of the cluster's "
                f"{len(alive)} nodes has {max(n.get(name, 0) for n in alive):g}"
            )
    problems = [_prefix(job) + p for p in problems]
    if problems and not autoscaling:
        raise UserError(problems[0])
    return [p + " (waiting for the autoscaler to add nodes)" for p in problems]


def _prefix(job: JobSpec) -> str:
    return f"{job.source}: " if job.source else ""


def check_fits(job: JobSpec, address: str | None) -> None:
    """:func:`check_resources` against the Ray cluster this process is connected to: a run
    (one trial) that no node can hold is an error now, not a job that waits forever; a
    cluster given by address may autoscale: a warning there.

    Raises:
        UserError: names the resource key, what a run needs and what the cluster has.
    """
    import ray  # heavy (the Ray runtime): only once Ray is connected

    for warning in check_resources(job, ray.cluster_resources(), ray.nodes(), autoscaling=address is not None):
        print(f"unitune: warning: {warning}", file=sys.stderr)
