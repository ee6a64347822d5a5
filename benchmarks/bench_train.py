"""Throughput of the training loop under Ray Train vs the same loop in one process.

    .venv/bin/python benchmarks/bench_train.py [--epochs 3] [--num-train 256] [--batch 32]

Baseline: ``run_training`` (the plain loop in this process, 1 CPU thread). Rows: Ray
Train ``TorchTrainer`` with 1 and 2 CPU workers (1 thread each) on the same job and the
same global batch. samples/s is the last epoch's training throughput (start-up and
evaluation excluded); wall s is the whole call, Ray start-up included. Goal: the 1-worker
Ray row at >= 0.9x the baseline.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import ray

from unitune.config import load_job
from unitune.train import run_training
from unitune.train.run import build_trainer

JOB = Path(__file__).resolve().parents[1] / "jobs" / "demo.yaml"


def job_for(args, workers: int, cache: str):
    return load_job(JOB, [
        f"train.epochs={args.epochs}", f"data.synthetic.num_train={args.num_train}",
        "data.synthetic.num_val=64", "data.synthetic.num_test=64", f"train.batch_size={args.batch}",
        f"resources.num_workers={workers}", "resources.cpu_per_worker=1", f"data.synthetic.cache_dir={cache}",
    ])


def plain(args, cache: str) -> tuple[float, float]:
    started = time.perf_counter()
    last = run_training(job_for(args, 1, cache), report=lambda metrics, directory: None)
    return last["samples_per_s"], time.perf_counter() - started


def on_ray(args, workers: int, cache: str, storage: str) -> tuple[float, float]:
    started = time.perf_counter()
    trainer = build_trainer(job_for(args, workers, cache), name=f"bench-{workers}", storage_path=storage,
                            evaluate_test=False)
    return trainer.fit().metrics["samples_per_s"], time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--num-train", type=int, default=256)
    parser.add_argument("--batch", type=int, default=32)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        cache = f"{tmp}/data"
        rows = [("plain run_training (baseline)", 1, *plain(args, cache))]
        ray.init(num_cpus=2, include_dashboard=False, _node_ip_address="127.0.0.1")
        try:
            for workers in (1, 2):
                rows.append((f"Ray Train TorchTrainer", workers, *on_ray(args, workers, cache, f"{tmp}/ray")))
        finally:
            ray.shutdown()
    base = rows[0][2]
    print(f"demo job, tiny-s, {args.num_train} items x 3 captions, global batch {args.batch}, "
          f"{args.epochs} epochs, CPU, 1 thread per worker")
    print(f"{'mode':<32} {'workers':>7} {'samples/s':>10} {'ratio':>6} {'wall s':>7}")
    for name, workers, rate, wall in rows:
        print(f"{name:<32} {workers:>7} {rate:>10.1f} {rate / base:>6.2f} {wall:>7.1f}")


if __name__ == "__main__":
    main()
