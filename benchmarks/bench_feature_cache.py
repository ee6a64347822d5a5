"""What the frozen-prefix feature cache saves on the emoji job (real EfficientNet-Lite0 + MiniLM).

    .venv/bin/python benchmarks/bench_feature_cache.py [--quick]

Baseline: one epoch of ``jobs/emoji_two_tower.yaml`` with ``data.feature_cache=off`` and the
deterministic transform (``data.augment=false``), i.e. every step runs the whole model. Rows,
for ``projections_only``, the last block of each tower trainable, and the shipped freeze
(the image tower's last block trainable, the text tower frozen):

- ``cache off``: one epoch (training + validation), the baseline;
- ``cold build``: ``unitune.features.prepare`` (train and val entries, empty cache); its
  ratio is what a first trial pays: (build + warm run) wall / cache-off run wall;
- ``cache warm``: one epoch with every entry on disk.

"epoch s" is the epoch's training plus its validation (``epoch_time_s``); "wall s" the whole
``run_training`` call (model load, cache load, epoch 0 skipped). Every case runs in a fresh
process, so "peak RSS" is that case's own. Goals: warm >= 10x faster than off with
``projections_only``, >= 4x with the last block of each tower; cold build <= 1.2x one epoch off.
``--quick``: the first 600 training and 150 validation images (their captions), same ratios.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import resource
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
JOB = REPO / "jobs" / "emoji_two_tower.yaml"
EMOJI = Path(os.environ.get("UNITUNE_EMOJI_DIR") or REPO.parent / "shared" / "datasets" / "emoji")
FREEZES = {
    "projections_only": ["model.freeze.projections_only=true", "model.freeze.visual_trainable_layers=null",
                         "model.freeze.text_trainable_layers=null"],
    "last block of each tower": ["model.freeze.text_trainable_layers=1"],
    "image last block (shipped)": [],
}


def subset(directory: Path, train: int, val: int) -> Path:
    """A Karpathy file with the first ``train`` / ``val`` images of those splits (and all test)."""
    data = json.loads((EMOJI / "dataset_emoji.json").read_text())
    counts = {"train": 0, "val": 0}
    images = []
    for image in data["images"]:
        split = image["split"]
        if split in counts:
            counts[split] += 1
            if counts[split] > {"train": train, "val": val}[split]:
                continue
        images.append(image)
    path = directory / "dataset_emoji_subset.json"
    path.write_text(json.dumps({**data, "images": images}))
    return path


def overrides(annotations: Path, cache: str, freeze: list[str]) -> list[str]:
    return [f"data.annotations={annotations}", f"data.root={EMOJI}", "train.epochs=1", "data.augment=false",
            f"data.feature_cache={cache}", *freeze]


def _case(kind: str, args: list[str], queue) -> None:
    """Child process: one measurement -> (seconds, wall seconds, peak RSS MiB, stats)."""
    import torch

    from unitune.config import load_job
    from unitune.features import prepare
    from unitune.train import run_training

    job = load_job(JOB, args)
    torch.set_num_threads(int(job.resources.cpu_per_worker))
    started = time.perf_counter()
    if kind == "build":
        stats = prepare(job)
        seconds = stats["feature_cache_s"]
    else:
        stats = run_training(job, report=lambda metrics, directory: None, save_final_model=False,
                             report_epoch_0=False)
        seconds = stats["epoch_time_s"]
    wall = time.perf_counter() - started
    queue.put((seconds, wall, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
               {k: v for k, v in stats.items() if isinstance(v, (int, float))}))


def measure(kind: str, args: list[str]) -> tuple[float, float, float, dict]:
    context = multiprocessing.get_context("spawn")
    queue = context.Queue()
    process = context.Process(target=_case, args=(kind, args, queue))
    process.start()
    result = queue.get()
    process.join()
    return result


def disk_bytes(directory: Path) -> int:
    return sum(p.stat().st_size for p in directory.glob("*.safetensors"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="600 train / 150 val images instead of all")
    args = parser.parse_args()
    if not (EMOJI / "dataset_emoji.json").is_file():
        sys.exit(f"emoji data set not found at {EMOJI} (set UNITUNE_EMOJI_DIR)")
    rows = []
    with tempfile.TemporaryDirectory(prefix="bench-feature-cache-") as tmp:
        tmp = Path(tmp)
        annotations = subset(tmp, 600, 150) if args.quick else EMOJI / "dataset_emoji.json"
        for name, freeze in FREEZES.items():
            cache = tmp / name.split()[0]
            off = measure("train", overrides(annotations, "off", freeze))
            cold = measure("build", overrides(annotations, str(cache), freeze))
            size = disk_bytes(cache)
            warm = measure("train", overrides(annotations, str(cache), freeze))
            rows.append((name, off, cold, warm, size))
            print(f"{name}: off {off[0]:.1f} s, cold {cold[0]:.1f} s, warm {warm[0]:.1f} s", flush=True)
    scope = "600 train / 150 val images (--quick)" if args.quick else "3,880 train / 458 val images"
    print(f"\nemoji job ({scope}), batch 128, 96 px, CPU, {os.cpu_count()} cores on the machine, "
          "one epoch = training + validation")
    print(f"{'freeze':<28} {'case':<11} {'epoch s':>8} {'wall s':>7} {'ratio':>8} {'cache MB':>9} {'peak RSS MB':>12}")
    for name, off, cold, warm, size in rows:
        print(f"{name:<28} {'cache off':<11} {off[0]:>8.1f} {off[1]:>7.1f} {'1.00x':>8} {'-':>9} {off[2]:>12.0f}")
        print(f"{'':<28} {'cold build':<11} {cold[0]:>8.1f} {cold[1]:>7.1f} {(cold[1] + warm[1]) / off[1]:>7.2f}x "
              f"{size / 2**20:>9.1f} {cold[2]:>12.0f}")
        print(f"{'':<28} {'cache warm':<11} {warm[0]:>8.1f} {warm[1]:>7.1f} {off[0] / warm[0]:>7.1f}x "
              f"{size / 2**20:>9.1f} {warm[2]:>12.0f}")
    print("ratio: cold build = (build wall + warm wall) / off wall, a first trial on an empty cache "
          "(goal <= 1.2); cache warm = epoch s off / epoch s warm "
          "(goal >= 10 projections_only, >= 4 last block of each tower)")


if __name__ == "__main__":
    main()
