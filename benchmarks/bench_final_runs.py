"""What a study's final run costs beyond its epochs, against a bare ``run_training``.

    .venv/bin/python benchmarks/bench_final_runs.py [--quick] [--seeds 3] [--epochs 2]
        [--families frozen,shipped] [--no-train] [--max-minutes 20]

On the emoji set (``jobs/emoji_two_tower.yaml``, its feature cache built once before
anything is timed, under ``.unitune/features`` of the working directory) and one local Ray
(started before the timings, as a study has it), per family:

- baseline: ``run_training(job, evaluate_test=True)`` in this process, nothing logged;
- ``train(job)``: ``unitune train``'s path (Ray Train, the ``model`` artifact, the pyfunc);
- ``train_runs(jobs)``: the study's final runs, one per seed, ``log_model=False``.

A run's fixed cost is its wall time minus its epochs (the sum of ``epoch_time_s`` of the
epochs from 1, the last epoch's test evaluation included); epoch 0, the untrained model's
evaluation, counts as fixed cost. Families: ``frozen`` (``search_spaces/frozen.yaml``'s
fixed values: projections only, both towers cached) and ``shipped`` (the job's own freeze:
the image tower's last block trains). ``--quick``: the frozen family, 1 epoch, 2 seeds.
Where the time goes is printed per path: the functions it spends it in (wrapped for the
call), and for ``TorchTrainer.fit`` its start (to the MLflow timestamp of epoch 0) and end
(from the last epoch's); Ray Train's controller logs a report when it polls the workers,
so those two are upper bounds and the ``rest`` line can come out below zero.
The whole run is bounded (``--max-minutes``; SIGALRM). Not a test: timings depend on the
machine, whose load is printed.
"""

from __future__ import annotations

import argparse
import os
import signal
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
FAMILIES = {
    "frozen": {  # search_spaces/frozen.yaml's fixed values
        "model.freeze.projections_only": True,
        "model.freeze.visual_trainable_layers": None,
        "model.freeze.text_trainable_layers": None,
        "loss.mining": "all",
        "loss.warmup_epochs": 0,
        "loss.scale_by_gamma": False,
    },
    "shipped": {},
}


def epochs_s(reports: list[dict]) -> float:
    return sum(r["epoch_time_s"] for r in reports if r["epoch"] >= 1)


def the_job(family: str, epochs: int, seed: int, root: Path):
    from unitune.config import apply_overrides, load_job

    job = load_job(REPO / "jobs/emoji_two_tower.yaml")
    return apply_overrides(
        job,
        {
            **FAMILIES[family],
            "seed": seed,
            "train.epochs": epochs,
            "name": f"bench-{family}-seed{seed}",
            "tracking.uri": f"sqlite:///{root}/mlruns.db",
            "tracking.artifact_location": str(root / "mlartifacts"),
            "data.feature_cache": str(Path.cwd() / ".unitune/features"),
        },
    )


def bare(job) -> tuple[float, float]:
    """(wall, epochs) of a bare run_training with the test evaluation."""
    import torch

    from unitune.train import run_training

    threads = torch.get_num_threads()
    reports: list[dict] = []
    started = time.perf_counter()
    run_training(job, report=lambda m, d: reports.append(m), evaluate_test=True)
    wall = time.perf_counter() - started
    torch.set_num_threads(threads)
    return wall, epochs_s(reports)


def logged_epochs(tracker, run_id: str) -> float:
    return sum(v for step, v in tracker.metric_history(run_id, "epoch_time_s") if step >= 1)


class Phases:
    """Seconds spent inside some functions (wrapped for the block), and when each ran."""

    def __init__(self):
        self.seconds: dict[str, float] = {}
        self.first_start: dict[str, float] = {}
        self.last_end: dict[str, float] = {}
        self._undo: list = []

    def wrap(self, owner, attr: str, name: str) -> None:
        original = getattr(owner, attr)

        def timed(*args, **kwargs):
            started = time.time()
            try:
                return original(*args, **kwargs)
            finally:
                self.seconds[name] = self.seconds.get(name, 0.0) + time.time() - started
                self.first_start.setdefault(name, started)
                self.last_end[name] = time.time()

        setattr(owner, attr, timed)
        self._undo.append((owner, attr, original))

    def restore(self) -> None:
        for owner, attr, original in reversed(self._undo):
            setattr(owner, attr, original)
        self._undo.clear()


def logged_at(tracker, run_id: str, key: str, step: int) -> float:
    """When (epoch seconds) the run's metric ``key`` at ``step`` was logged."""
    return next(m.timestamp for m in tracker.client.get_metric_history(run_id, key) if m.step == step) / 1000.0


def breakdown(tracker, run_id: str, phases: Phases, fit: str, wall: float) -> list[tuple[str, float]]:
    """Where one run's wall time went: the phases, the fit's start (to epoch 0 logged), its
    epochs, its end (last epoch logged to the fit's return) and the rest (MLflow)."""
    epochs = tracker.client.get_run(run_id).data.params.get("train.epochs")
    start = logged_at(tracker, run_id, "rsum", 0) - phases.first_start[fit]
    end = phases.last_end[fit] - logged_at(tracker, run_id, "rsum", int(epochs))
    rows = [(name, sec) for name, sec in phases.seconds.items() if name != fit]
    rows += [(f"{fit}: start -> epoch 0 logged", start), ("epochs 1.. (epoch_time_s)", logged_epochs(tracker, run_id)),
             (f"{fit}: last epoch logged -> return", end)]
    return rows + [("rest (MLflow run, params, cleanup)", wall - sum(sec for _, sec in rows))]


def measure(family: str, args, root: Path, rows: list) -> None:
    from ray.train.v2.torch.torch_trainer import TorchTrainer

    from unitune import features, pyfunc
    from unitune.tracking import Tracker
    from unitune.train import worker
    from unitune.train.run import train
    from unitune.train.runs import train_runs

    quiet = lambda *a, **k: None  # noqa: E731
    jobs = [the_job(family, args.epochs, seed, root) for seed in range(args.seeds)]
    started = time.perf_counter()
    built = features.prepare(jobs[0], splits=("train", "val", "test"))
    print(f"{family}: feature cache ready in {time.perf_counter() - started:.1f} s "
          f"({built['entries_built']} built, {built['entries_reused']} reused)", flush=True)
    tracker = Tracker(jobs[0].tracking.uri, jobs[0].tracking.artifact_location)

    wall, ep = bare(jobs[0])
    rows.append((family, "bare run_training (baseline)", 1, wall, ep, wall - ep))
    base_fixed = wall - ep
    if args.train:
        phases = Phases()
        phases.wrap(features, "prepare", "feature cache prepare (driver)")
        phases.wrap(TorchTrainer, "fit", "TorchTrainer.fit")
        phases.wrap(Tracker, "log_artifact", "log_artifact (job file, model dir)")
        phases.wrap(pyfunc, "log", "pyfunc.log (MLflow model)")
        started = time.perf_counter()
        try:
            result = train(jobs[0], storage_path=root / "ray", out=quiet)
        finally:
            phases.restore()
        wall = time.perf_counter() - started
        ep = logged_epochs(tracker, result["run_id"])
        rows.append((family, "train() (unitune train)", 1, wall, ep, wall - ep))
        print(f"{family}: where train()'s {wall:.1f} s went:")
        for name, sec in breakdown(tracker, result["run_id"], phases, "TorchTrainer.fit", wall):
            print(f"  {name:45s} {sec:7.2f}")
    phases = Phases()
    phases.wrap(worker, "run_training", "run_training")
    phases.wrap(Tracker, "log_artifact", "log_artifact (job file, model dir)")
    started = time.perf_counter()
    try:
        results = train_runs(jobs, tags=[{"bench": family, "seed": str(j.seed)} for j in jobs], out=quiet)
    finally:
        phases.restore()
    total = time.perf_counter() - started
    wall = total / len(jobs)
    ep = statistics.mean(logged_epochs(tracker, r["run_id"]) for r in results)
    rows.append((family, "train_runs(), per run", len(jobs), wall, ep, wall - ep))
    n = len(jobs)
    inside = phases.seconds["run_training"] / n
    logged = phases.seconds["log_artifact (job file, model dir)"] / n
    print(f"{family}: where a train_runs() run's {wall:.1f} s went (mean of {n}):")
    for name, sec in [("run_training: epochs 1.. (epoch_time_s)", ep),
                      ("run_training: the rest (build, epoch 0)", inside - ep),
                      ("log_artifact (job file, model dir)", logged),
                      ("rest (MLflow run, params)", wall - inside - logged)]:
        print(f"  {name:45s} {sec:7.2f}")
    print(f"{family}: done (baseline fixed cost {base_fixed:.2f} s)", flush=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="frozen family, 1 epoch, 2 seeds")
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--families", default="frozen,shipped")
    parser.add_argument("--no-train", dest="train", action="store_false", help="skip the train() path")
    parser.add_argument("--max-minutes", type=float, default=20.0)
    args = parser.parse_args()
    if args.quick:
        args.seeds, args.epochs, args.families = 2, 1, "frozen"
    signal.signal(signal.SIGALRM, lambda *a: sys.exit(f"bench_final_runs: over {args.max_minutes} min, stopped"))
    signal.alarm(int(args.max_minutes * 60))

    from unitune import terminal
    from unitune.cluster import init_ray, shutdown_ray

    root = Path(tempfile.mkdtemp(prefix="unitune-bench-finals-"))
    load = os.getloadavg()
    started = time.perf_counter()
    init_ray(None)
    terminal.adopt_library_loggers()
    print(f"Ray started in {time.perf_counter() - started:.1f} s (not counted)", flush=True)
    rows: list = []
    try:
        for family in args.families.split(","):
            measure(family, args, root, rows)
    finally:
        shutdown_ray()
    print(f"\nfinal-run cost, emoji job, {args.epochs} epoch(s), {os.cpu_count()} cores, "
          f"load avg {load[0]:.2f} before / {os.getloadavg()[0]:.2f} after, "
          f"wall {time.perf_counter() - started:.0f} s")
    print(f"{'family':8s} {'path':30s} {'runs':>4s} {'wall s':>7s} {'epochs s':>8s} {'fixed s':>7s} "
          f"{'fixed/base':>10s} {'wall/base':>9s}")
    base = {}
    for family, path, runs, wall, ep, fixed in rows:
        base.setdefault(family, (wall, fixed))
        bw, bf = base[family]
        print(f"{family:8s} {path:30s} {runs:4d} {wall:7.2f} {ep:8.2f} {fixed:7.2f} "
              f"{fixed / bf:10.2f} {wall / bw:9.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
