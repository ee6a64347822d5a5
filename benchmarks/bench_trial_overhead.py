"""Orchestration overhead of one search trial vs. a bare ``TorchTrainer.fit``.

    .venv/bin/python benchmarks/bench_trial_overhead.py [--trials 4] [--workers 1]

Measured in one run, on one local Ray (127.0.0.1):
- baseline: wall time of ``TorchTrainer(<report once>, num_workers=W).fit()``;
- unitune: a search of N trials through ``unitune.search.run_search``. For W=1 each trial
  runs a stub training that reports one epoch at once (pure overhead); for W>1 it runs the
  real tiny job for one epoch through ``TorchTrainer`` + ``TuneReportCallback``.
  Per trial: Tune's trial start -> first result, and start -> trial closed in MLflow.
Prints a table with the ratios to the baseline. Not a test: timings depend on the machine.
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time

from ray import tune

from unitune.config import JobSpec, SearchSpaceSpec


def instant_training(job, *, report, checkpoint_dir=None, resume_from=None):
    report({"epoch": 1, "rsum": 100.0, "train_time_s": 0.0}, None)
    return {}


class Timing(tune.Callback):
    def __init__(self):
        self.start, self.first, self.end = {}, {}, {}

    def on_trial_start(self, iteration, trials, trial, **info):
        self.start[trial.trial_id] = time.perf_counter()

    def on_trial_result(self, iteration, trials, trial, result, **info):
        self.first.setdefault(trial.trial_id, time.perf_counter())

    def on_trial_complete(self, iteration, trials, trial, **info):
        self.end[trial.trial_id] = time.perf_counter()


def bare_torch_trainer(workers: int, storage: str) -> float:
    import ray.train
    from ray.train import RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    def trivial(config):
        ray.train.report({"x": 1.0})

    started = time.perf_counter()
    TorchTrainer(trivial, scaling_config=ScalingConfig(num_workers=workers),
                 run_config=RunConfig(name="bare", storage_path=storage)).fit()
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--trials", type=int, default=4)
    parser.add_argument("--workers", type=int, default=1)
    args = parser.parse_args()

    from unitune.search.driver import init_ray, run_search

    root = tempfile.mkdtemp(prefix="unitune-bench-")
    os.chdir(root)
    init_ray(None)
    bare = bare_torch_trainer(args.workers, os.path.join(root, "bare"))

    job = JobSpec.model_validate({
        "name": "bench", "tracking": {"uri": "sqlite:///mlruns.db", "artifact_location": "mlartifacts"},
        "data": {"synthetic": {"num_train": 64, "num_val": 32, "num_test": 16, "image_size": 16}},
        "model": {"embed_dim": 32}, "train": {"epochs": 1, "batch_size": 16},
        "resources": {"num_workers": args.workers},
    })
    space = SearchSpaceSpec.model_validate({
        "metric": "rsum", "mode": "max", "num_trials": args.trials, "max_concurrent": 1, "seed": 0,
        "asha": None, "params": {"loss.margin": {"type": "uniform", "low": 0.0, "high": 0.4}},
    })
    timing = Timing()
    started = time.perf_counter()
    run_search(job, space, train_fn=instant_training if args.workers == 1 else None,
               callbacks=[timing], verbose=False)
    total = time.perf_counter() - started

    ids = sorted(timing.start, key=timing.start.get)
    first = [timing.first[t] - timing.start[t] for t in ids]
    closed = [timing.end[t] - timing.start[t] for t in ids]
    rows = [("bare TorchTrainer.fit (baseline)", bare),
            ("trial start -> first result, 1st trial", first[0]),
            ("trial start -> closed, 1st trial", closed[0])]
    if len(ids) > 1:
        rows += [("trial start -> first result, later (median)", statistics.median(first[1:])),
                 ("trial start -> closed, later (median)", statistics.median(closed[1:]))]
    rows.append((f"whole search of {len(ids)} trials (incl. artifacts)", total))
    print(f"\ntrial overhead, {args.workers} worker(s) per trial, {len(ids)} trials")
    print(f"{'measure':48s} {'seconds':>8s} {'ratio':>7s}")
    for name, seconds in rows:
        print(f"{name:48s} {seconds:8.2f} {seconds / bare:7.2f}")


if __name__ == "__main__":
    main()
