"""Multi-worker training on cached features: 2 gloo processes (DDP, global-batch gather), both
ranks opening the same empty cache at once, give the curve of the same 2-worker run with the
cache off."""

from __future__ import annotations

import os
from datetime import timedelta
from pathlib import Path

import pytest
import torch.distributed as dist
import torch.multiprocessing as mp

pytestmark = pytest.mark.slow  # 2 spawned processes: ~25 s
WORLD = 2
REPO = Path(__file__).resolve().parents[1]


def _worker(rank: int, tmp: str, port: int, out) -> None:
    import torch
    from torch.nn.parallel import DistributedDataParallel

    from unitune.config import load_job
    from unitune.train.worker import _fit

    os.environ.update({"MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port)})
    dist.init_process_group("gloo", rank=rank, world_size=WORLD, timeout=timedelta(seconds=120))
    curves = {}
    for cache in (f"{tmp}/features", "off"):
        job = load_job(REPO / "jobs" / "demo.yaml", [
            "train.epochs=2", "data.synthetic.num_train=48", "data.synthetic.num_val=24", "train.batch_size=16",
            f"data.synthetic.cache_dir={tmp}/data", "model.embed_dim=32", "data.augment=false",
            f"data.feature_cache={cache}", "resources.num_workers=2",
            "model.freeze.visual_trainable_layers=1", "model.freeze.text_trainable_layers=1",
        ])
        reports = curves.setdefault(cache, [])
        _fit(job, rank=rank, world_size=WORLD, device=torch.device("cpu"),
             report=lambda metrics, directory: reports.append(dict(metrics)),
             prepare_model=lambda module: DistributedDataParallel(module))
    dist.destroy_process_group()
    if rank == 0:
        out.put(list(curves.values()))


def test_two_workers_with_and_without_the_cache_agree(tmp_path):
    queue = mp.get_context("spawn").SimpleQueue()
    mp.start_processes(_worker, args=(str(tmp_path), 29533, queue), nprocs=WORLD, start_method="spawn")
    on, off = queue.get()
    assert [m["epoch"] for m in on] == [m["epoch"] for m in off] == [0, 1, 2]
    # Both ranks opened the empty cache together: one entry per split and tower, all valid.
    assert len(list((tmp_path / "features").glob("*.safetensors"))) == 4  # train/val x visual/text
    for a, b in zip(on, off):
        for key in ("rsum", "r1_i2t", "r1_t2i", "train_loss"):
            if key in b:
                assert a[key] == pytest.approx(b[key], abs=1e-4), (a["epoch"], key)
