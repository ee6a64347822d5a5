"""Which searcher finds the best configuration soonest: sampler x scheduler pairs against a
random-search oracle, on the frozen family of the emoji job and the unified space of the demo job.

    .venv/bin/python benchmarks/bench_search.py [--families emoji,demo] [--seeds 10]
        [--budgets 8,16] [--oracle 64] [--pairs tpe+asha,random+none,...] [--check tpe+asha]
        [--out .unitune/bench_search] [--plot docs/images/search_curves.png]
    .venv/bin/python benchmarks/bench_search.py --quick      # smoke run (78 s at load average 5 on 2 cores)

How it measures (docs/search.md says what one run found):

- Every trial trains through ``unitune.train.run_training`` in this process, the function a
  one-worker search trial runs, on the search's base job (``driver.search_job``: the space's
  fixed values, ``train.epochs = asha.max_epochs``), to the full budget once per distinct
  configuration, with the test split evaluated after the last epoch. The curve is kept
  (``--out``/<family>.json): training is deterministic for a seed, and a trial a scheduler
  stops at epoch k has exactly the first k epochs of that curve (the same job and epoch
  budget, so the same learning-rate schedule), so a search replays the curves.
- A search: the space's Optuna sampler (``search.space.make_sampler``) asks, trials run one
  at a time (``max_concurrent: 1``), each epoch's validation metric is told to the study as
  an intermediate value and to the space's Ray scheduler (``search.schedulers.make_scheduler``,
  the same objects ``unitune search`` uses, driven with Tune's calls), a finished trial is
  told COMPLETE with its last epoch's value, a stopped one PRUNED: what the driver's recorder
  does. Cost: the trial-epochs the search ran, and the seconds those epochs took in this
  process (each trial's set-up and epoch-0 evaluation included).
- The oracle: ``--oracle`` random configurations (Optuna's RandomSampler, seed 1000), each
  trained to the full budget; its best validation value is what every search is measured
  against. ``random + none`` at budget B and seed s is B of the oracle's trials in a seeded
  random order (random search's proposals do not depend on results, so this is a random
  search of B trials; ``random + asha/hyperband`` replay the same order through the
  scheduler). Random search's cost to reach the oracle's best minus ``--within`` is the
  median over 200 random orders of all the oracle's trials.
- ``--check PAIR``: one search of that pair through ``unitune search`` (a subprocess, a
  private MLflow store, ``--check-trials`` trials, max_concurrent 1) must sample the same
  configurations, run the same epochs and find the same values as the in-process search of
  the same seed; the bench prints the comparison.
- Rank agreement: Spearman's rho and Kendall's tau (scipy.stats) of each epoch's validation
  value against the last epoch's, over the oracle's trials: whether a scheduler's early cut
  keeps the configurations that end best.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
ORACLE_SEED = 1000
THREADS = 1  # torch threads of the in-process trials (a demo trial's, cpu_per_worker 1)
NEVER = 1e300  # inf inside a percentile (numpy's interpolation of inf gives nan)
FAMILIES = {  # name: (job, space, overrides of the job)
    "emoji": ("jobs/emoji_two_tower.yaml", "search_spaces/frozen.yaml", {}),
    "demo": ("jobs/demo.yaml", "search_spaces/unified.yaml", {}),
}
QUICK_OVERRIDES = {
    "train.epochs": 2,
    "data.synthetic.num_train": 64,
    "data.synthetic.num_val": 32,
    "data.synthetic.num_test": 32,
    "data.synthetic.image_size": 16,
    "train.batch_size": 32,
    "model.embed_dim": 32,
}


# --- pure arithmetic (tests/test_bench_search.py checks it by hand) --------------------------


def anytime(trials: list[dict]) -> list[tuple[int, float, float]]:
    """The anytime curve of a search: after each epoch any trial ran, in order,
    ``(cumulative trial-epochs, cumulative seconds, best validation value so far)``.

    Each trial is ``{"val": [v_1, ..., v_k], "seconds": [s_0, s_1, ..., s_k]}``: the
    validation value after each epoch it ran and the seconds of its set-up (with the epoch-0
    evaluation, ``s_0``, counted into its first epoch) and of each epoch.
    """
    points, epochs, seconds, best = [], 0, 0.0, -math.inf
    for trial in trials:
        seconds += trial["seconds"][0]
        for value, spent in zip(trial["val"], trial["seconds"][1:]):
            epochs, seconds, best = epochs + 1, seconds + spent, max(best, value)
            points.append((epochs, seconds, best))
    return points


def cost_to_reach(points: list[tuple[int, float, float]], threshold: float) -> tuple[float, float]:
    """(trial-epochs, seconds) at which the best value first reaches ``threshold``; inf if never."""
    for epochs, seconds, best in points:
        if best >= threshold:
            return float(epochs), seconds
    return math.inf, math.inf


def best_at(points: list[tuple[int, float, float]], epochs: float) -> float:
    """The best value found within ``epochs`` trial-epochs (-inf before the first epoch)."""
    found = [best for spent, _, best in points if spent <= epochs]
    return found[-1] if found else -math.inf


def exported(trials: list[dict]) -> int:
    """The trial ``unitune export`` picks: the highest validation value of any epoch it ran
    (the first such trial on a tie)."""
    return max(range(len(trials)), key=lambda i: (max(trials[i]["val"], default=-math.inf), -i))


def quartiles(values: list[float]) -> tuple[float, float, float]:
    """(median, 25th, 75th percentile), interpolated; inf (never reached) counts as larger than
    any number, and a quantile that falls among or next to inf values is inf."""
    array = np.where(np.isinf(np.asarray(values, dtype=float)), NEVER, np.asarray(values, dtype=float))
    qs = [float(np.percentile(array, q)) for q in (50, 25, 75)]
    return tuple(q if q < NEVER * 1e-9 else math.inf for q in qs)  # type: ignore[return-value]


# --- training, kept per configuration -------------------------------------------------------


class Curves:
    """Full-budget curves of one family's configurations, trained on first use, kept in a
    JSON file: ``{key: {"val": [v_0..v_E], "seconds": [s_0..s_E], "test": t}}``."""

    def __init__(self, base, path: Path):
        self.base, self.path = base, path
        self.metric = "rsum"
        self.data = json.loads(path.read_text()) if path.exists() else {}
        self.trained = 0

    @staticmethod
    def key(params: dict) -> str:
        return json.dumps(params, sort_keys=True)

    def get(self, params: dict) -> dict:
        key = self.key(params)
        if key not in self.data:
            self.data[key] = self.train(params)
            self.trained += 1
            self.path.write_text(json.dumps(self.data))
        return self.data[key]

    def train(self, params: dict) -> dict:
        from unitune.config import apply_overrides
        from unitune.train import run_training

        val, seconds, last = [], [], [time.perf_counter()]

        def report(metrics: dict, checkpoint=None) -> None:
            now = time.perf_counter()
            val.append(float(metrics[self.metric]))
            seconds.append(now - last[0])
            last[0] = now

        from unitune.errors import UserError
        from unitune.train.loop import NonFiniteLossError

        try:
            out = run_training(
                apply_overrides(self.base, params), report=report, save_final_model=False, evaluate_test=True
            )
        except (UserError, NonFiniteLossError) as exc:  # a failed trial: what it ran
            return {"val": val, "seconds": seconds, "test": -math.inf, "failed": str(exc)[:200]}
        return {"val": val, "seconds": seconds, "test": float(out[f"test_{self.metric}"])}


class FakeTrial:
    """What a Tune scheduler reads of a trial: its id."""

    def __init__(self, trial_id: str):
        self.trial_id = trial_id


def search(space, curves: Curves, *, sampler: str, scheduler: str, seed: int, budget: int, order=None) -> list[dict]:
    """One search, replayed on the kept curves (see the module docstring). ``order``: the
    configurations to try, in order (a random search read from the oracle), instead of asking
    the sampler. Returns per trial ``{"params", "val" (epochs 1..k run), "seconds", "test",
    "state"}``."""
    import optuna
    from ray.tune.schedulers import TrialScheduler

    from unitune.config import SearchSpaceSpec
    from unitune.search.schedulers import make_scheduler
    from unitune.search.space import define_by_run, make_sampler

    data = space.model_dump() | {"sampler": sampler, "scheduler": scheduler, "seed": seed}
    spec = SearchSpaceSpec.model_validate(data | {"num_trials": budget, "max_concurrent": 1})
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(direction="maximize" if spec.mode == "max" else "minimize", sampler=make_sampler(spec))
    for params in order or []:
        study.enqueue_trial(params)
    sched, ask, budget_epochs = make_scheduler(spec), define_by_run(spec), spec.asha.max_epochs
    trials = []
    for k in range(budget):
        trial = study.ask()
        ask(trial)
        curve = curves.get(trial.params)
        fake = FakeTrial(f"t{k}")
        sched.on_trial_add(None, fake)
        epoch, result = 0, {}
        for epoch, value in enumerate(curve["val"]):
            trial.report(value, epoch)
            result = {"epoch": epoch, spec.metric: value}
            if sched.on_trial_result(None, fake, result) == TrialScheduler.STOP:
                break
        sched.on_trial_complete(None, fake, result)
        done = epoch == budget_epochs
        if "failed" in curve:
            study.tell(trial, state=optuna.trial.TrialState.FAIL)
        elif done:
            study.tell(trial, value)
        else:
            study.tell(trial, state=optuna.trial.TrialState.PRUNED)
        trials.append({
            "params": trial.params,
            "val0": curve["val"][0],
            "val": curve["val"][1 : epoch + 1],
            "seconds": [curve["seconds"][0], *curve["seconds"][1 : epoch + 1]],
            "test": curve["test"],
            "state": "failed" if "failed" in curve else "completed" if done else "stopped",
        })
    return trials


# --- the run ---------------------------------------------------------------------------------


def family_setup(name: str, overrides: dict, out: Path):
    import torch

    from unitune import features
    from unitune.config import apply_overrides, load_job, load_space
    from unitune.search.driver import search_job

    job_file, space_file, own = FAMILIES[name]
    job = load_job(REPO / job_file)
    job = apply_overrides(job, {**own, **overrides}) if own or overrides else job
    space = load_space(REPO / space_file, job)
    base = search_job(job, space)
    torch.set_num_threads(THREADS)
    started = time.perf_counter()
    cache = features.prepare(base, ("train", "val", "test"))
    if cache["feature_cache_dir"] is not None:
        print(f"{name}: feature cache ready in {time.perf_counter() - started:.1f} s", flush=True)
    what = hashlib.sha1(json.dumps(base.model_dump(mode="json"), sort_keys=True).encode()).hexdigest()[:8]
    return job, space, base, Curves(base, out / f"{name}-{what}.json")  # curves of this base job only


def oracle(space, curves: Curves, trials: int) -> list[dict]:
    """``trials`` random configurations (RandomSampler, ORACLE_SEED), each to the full budget."""
    return search(space, curves, sampler="random", scheduler="none", seed=ORACLE_SEED, budget=trials)


def rank_agreement(runs: list[dict]) -> list[dict]:
    """Spearman's rho and Kendall's tau of each epoch's value vs the last epoch's, over the trials."""
    from scipy import stats

    runs = [r for r in runs if r["state"] == "completed"]
    final = [r["val"][-1] for r in runs]
    rows = []
    for epoch in range(1, len(runs[0]["val"])):
        early = [r["val"][epoch - 1] for r in runs]
        rows.append({
            "epoch": epoch,
            "spearman": float(stats.spearmanr(early, final).statistic),
            "kendall": float(stats.kendalltau(early, final).statistic),
        })
    return rows


def run_family(name: str, args, overrides: dict) -> dict:
    job, space, base, curves = family_setup(name, overrides, Path(args.out))
    started = time.perf_counter()
    reference = oracle(space, curves, args.oracle)
    best = max(max(t["val"], default=-math.inf) for t in reference)
    threshold = best - args.within
    print(f"{name}: oracle of {len(reference)} trials: best val {best:.2f} "
          f"({curves.trained} trained, {time.perf_counter() - started:.0f} s)", flush=True)
    # random search without early stopping, all the oracle's trials in 200 random orders
    rng = np.random.default_rng(0)
    reach = [cost_to_reach(anytime([reference[i] for i in rng.permutation(len(reference))]), threshold)
             for _ in range(200)]
    random_epochs = quartiles([r[0] for r in reach])
    print(f"{name}: random search without early stopping reaches {threshold:.2f} after "
          f"{show(random_epochs, 0)} trial-epochs (200 orders of the oracle's trials)", flush=True)
    for r in rank_agreement(reference):
        print(f"{name}: epoch {r['epoch']} vs last: spearman {r['spearman']:.3f}  kendall {r['kendall']:.3f}",
              flush=True)
    rows, curves_out = [], {}
    for pair in args.pairs:
        sampler, scheduler = pair.split("+")
        if not takes(space, sampler):
            print(f"{name}: {pair} skipped: the sampler cannot take {space.source.name}", flush=True)
            continue
        for budget in args.budgets:
            t0, results = time.perf_counter(), []
            for seed in range(args.seeds if sampler == "random" else args.model_seeds):
                order = None
                if sampler == "random":
                    perm = np.random.default_rng(seed).permutation(len(reference))[:budget]
                    order = [reference[i]["params"] for i in perm]
                trials = search(space, curves, sampler=sampler, scheduler=scheduler, seed=seed, budget=budget,
                                order=order)
                points = anytime(trials)
                results.append({
                    "best": points[-1][2],
                    "epochs": points[-1][0],
                    "seconds": points[-1][1],
                    "test": trials[exported(trials)]["test"],
                    "reach_epochs": cost_to_reach(points, threshold)[0],
                    "points": points,
                })
            row = {"family": name, "pair": pair, "budget": budget,
                   **{k: quartiles([r[k] for r in results]) for k in ("best", "epochs", "seconds", "test",
                                                                       "reach_epochs")},
                   "reached": sum(math.isfinite(r["reach_epochs"]) for r in results), "seeds": len(results),
                   "bench_s": time.perf_counter() - t0}
            rows.append(row)
            curves_out[f"{pair}@{budget}"] = [r["points"] for r in results]
            print(format_row(row), flush=True)
            if args.json:
                Path(f"{args.json}.{name}").write_text(json.dumps({"rows": rows, "curves": curves_out}))
    return {
        "family": name, "oracle_trials": len(reference), "oracle_best": best, "within": args.within,
        "oracle_test_of_best": reference[exported(reference)]["test"],
        "random_reach_epochs": random_epochs, "budget_epochs": base.train.epochs,
        "rank_agreement": rank_agreement(reference), "rows": rows, "curves": curves_out,
        "trained": curves.trained, "wall_s": time.perf_counter() - started,
        "space": space, "job": job,
    }


def takes(space, sampler: str) -> bool:
    from pydantic import ValidationError

    from unitune.config import SearchSpaceSpec

    try:
        SearchSpaceSpec.model_validate(space.model_dump() | {"sampler": sampler})
    except ValidationError:
        return False
    return True


def show(q: tuple[float, float, float], digits: int = 1) -> str:
    return f"{q[0]:.{digits}f} [{q[1]:.{digits}f}, {q[2]:.{digits}f}]"


def format_row(row: dict) -> str:
    return (f"{row['family']:6} {row['pair']:16} {row['budget']:>3}  best {show(row['best'])}  "
            f"test {show(row['test'])}  epochs {show(row['epochs'], 0)}  s {show(row['seconds'], 0)}  "
            f"to-oracle-2 {show(row['reach_epochs'], 0)} ({row['reached']} of {row['seeds']} seeds)")


# --- the check through `unitune search` ----------------------------------------------------


def check_cli(name: str, pair: str, seed: int, trials: int, overrides: dict, out: Path) -> bool:
    """One search of ``pair`` through ``unitune search`` against the in-process one."""
    import yaml

    from unitune.results import trials as read_trials

    job, space, base, curves = family_setup(name, overrides, out)
    sampler, scheduler = pair.split("+")
    mine = search(space, curves, sampler=sampler, scheduler=scheduler, seed=seed, budget=trials)
    with tempfile.TemporaryDirectory() as tmp:
        space_path = Path(tmp) / f"{Path(FAMILIES[name][1]).stem}.yaml"
        data = space.model_dump(mode="json") | {"sampler": sampler, "scheduler": scheduler, "seed": seed,
                                                "num_trials": trials, "max_concurrent": 1}
        data["asha"] = data["asha"] and {k: v for k, v in data["asha"].items() if k != "max_epochs"}
        space_path.write_text(yaml.safe_dump(data, sort_keys=False))  # the file's order is the sampling order
        store = f"sqlite:///{tmp}/mlruns.db"
        sets = [f"{k}={v}" for k, v in overrides.items()]
        sets += [f"tracking.uri={store}", f"tracking.artifact_location={tmp}/art", f"search.num_trials={trials}",
                 "search.max_concurrent=1"]
        env = {**os.environ, "UNITUNE_FEATURES_DIR": os.environ.get("UNITUNE_FEATURES_DIR", "")}
        started = time.perf_counter()
        subprocess.run([sys.executable, "-m", "unitune", "search", str(REPO / FAMILIES[name][0]), "--space",
                        str(space_path), *sets], check=True, cwd=os.getcwd(), env=env,
                       stdout=subprocess.DEVNULL)
        cli_s = time.perf_counter() - started
        frame = read_trials(tracking_uri=store, experiment=job.experiment)
    frame = frame.sort_values("run_name")
    agree = True
    for mine_t, (_, row) in zip(mine, frame.iterrows()):
        cfg = {k.removeprefix("config/"): row[k] for k in frame.columns
               if k.startswith("config/") and isinstance(row[k], (int, float, str)) and row[k] == row[k]}
        same_cfg = all(_close(cfg.get(k), v) for k, v in mine_t["params"].items())
        same_run = int(row["epochs_run"]) == len(mine_t["val"])
        best = max([mine_t["val0"], *mine_t["val"]])  # best_rsum counts epoch 0
        same_best = abs(float(row["best_rsum"]) - best) < 1e-3
        print(f"check {name} {pair} seed {seed} {row['run_name']}: config {'=' if same_cfg else '!='}, epochs "
              f"{int(row['epochs_run'])} vs {len(mine_t['val'])}, best {row['best_rsum']:.3f} vs {best:.3f}",
              flush=True)
        agree &= same_cfg and same_run and same_best
    agree &= len(frame) == len(mine)
    print(f"check {name} {pair}: unitune search ({cli_s:.0f} s) and the in-process search "
          f"{'AGREE' if agree else 'DISAGREE'}", flush=True)
    return agree


def _close(a, b) -> bool:
    if isinstance(b, (int, float)) and not isinstance(b, bool) and isinstance(a, (int, float)):
        return abs(float(a) - b) <= 1e-9 * max(1.0, abs(b))
    return str(a) == str(b)


# --- plot and main ---------------------------------------------------------------------------


def plot(families: list[dict], path: Path) -> None:
    """Median anytime curves of each family's largest budget, vs trial-epochs and vs seconds."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(2, len(families), figsize=(6.5 * len(families), 8), squeeze=False)
    for col, fam in enumerate(families):
        budget = max(int(k.split("@")[1]) for k in fam["curves"])
        for row, (xi, label) in enumerate([(0, "cumulative trial-epochs"), (1, "cumulative seconds")]):
            ax, lows = axes[row][col], [fam["oracle_best"]]
            for key, runs in fam["curves"].items():
                if not key.endswith(f"@{budget}"):
                    continue
                top = max(p[xi] for r in runs for p in r)
                grid = np.linspace(0, top, 200)
                # each seed's best so far (flat after its search ended); drawn where every seed has one
                ys = np.array([[max([p[2] for p in r if p[xi] <= x], default=np.nan) for x in grid] for r in runs])
                ax.plot(grid, np.median(ys, axis=0), label=key.split("@")[0])
                lows.append(float(np.median(ys[:, -1])))
            ax.axhline(fam["oracle_best"], color="k", ls=":", lw=1, label="oracle best")
            ax.axhline(fam["oracle_best"] - fam["within"], color="grey", ls=":", lw=1)
            ax.set_xlabel(label)
            ax.set_ylabel("best validation RSUM (median over seeds)")
            ax.set_title(f"{fam['family']}: {budget} trials")
            ax.set_ylim(bottom=min(lows) - 5 * fam["within"], top=max(lows) + fam["within"])
            ax.legend(fontsize=7)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=90)
    print(f"plot: {path}")


def markdown(fam: dict) -> str:
    """The family's table as docs/search.md shows it (median [25th, 75th percentile] over seeds)."""
    lines = [
        f"**{fam['family']}**: oracle best val **{fam['oracle_best']:.2f}** of {fam['oracle_trials']} random trials "
        f"({fam['budget_epochs']} epochs each; test of its best {fam['oracle_test_of_best']:.2f}); random search "
        f"without early stopping needs **{show(fam['random_reach_epochs'], 0)}** trial-epochs to reach "
        f"{fam['oracle_best'] - fam['within']:.2f}",
        "",
        "| pair | trials | seeds | best val | test | epochs | s | to oracle \u22122 (seeds that got there) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in fam["rows"]:
        lines.append(
            f"| {r['pair'].replace('+', ' + ')} | {r['budget']} | {r['seeds']} | {show(r['best'])} | {show(r['test'])} "
            f"| {show(r['epochs'], 0)} | {show(r['seconds'], 0)} | {show(r['reach_epochs'], 0)} "
            f"({r['reached']} of {r['seeds']}) |"
        )
    lines += ["", "| epoch | Spearman \u03c1 | Kendall \u03c4 |", "|---|---|---|"]
    lines += [f"| {a['epoch']} of {fam['budget_epochs']} | {a['spearman']:.3f} | {a['kendall']:.3f} |"
              for a in fam["rank_agreement"]]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--families", default="emoji,demo")
    parser.add_argument("--pairs", default="random+none,random+asha,tpe+asha,tpe+none,tpe+hyperband,gp+asha,"
                        "gp+none,qmc+asha,cmaes+asha")
    parser.add_argument("--seeds", type=int, default=10, help="search seeds of random search (replayed: free)")
    parser.add_argument("--model-seeds", type=int, default=10, help="search seeds of the other samplers")
    parser.add_argument("--budgets", default="8,16,32")
    parser.add_argument("--oracle", type=int, default=128)
    parser.add_argument("--within", type=float, default=2.0, help="RSUM below the oracle's best that counts")
    parser.add_argument("--check", default="", help="pairs to check through unitune search (comma-separated)")
    parser.add_argument("--check-trials", type=int, default=3)
    parser.add_argument("--out", default=".unitune/bench_search")
    parser.add_argument("--plot", default="")
    parser.add_argument("--json", default="", help="write the table, curves and rank agreement here")
    parser.add_argument("--quick", action="store_true", help="smoke run on a shrunken demo job (< 1 min)")
    parser.add_argument("--plot-from", default="", help="only plot (--plot) and print the tables: --json files "
                        "of earlier runs (comma-separated)")
    args = parser.parse_args()
    if args.plot_from:
        loaded = [json.loads(Path(p).read_text()) for p in args.plot_from.split(",")]
        families = [fam for one in loaded for fam in one["families"]]
        for fam in families:
            print(markdown(fam) + "\n")
        if args.plot:
            plot(families, Path(args.plot))
        return
    overrides: dict = {}
    if args.quick:
        args.families, args.pairs, args.budgets, args.oracle = "demo", "random+none,tpe+asha", "3", 4
        args.seeds = args.model_seeds = 2
        overrides = QUICK_OVERRIDES
    args.pairs = [p for p in args.pairs.split(",") if p]
    args.budgets = [int(b) for b in args.budgets.split(",")]
    Path(args.out).mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    load = os.getloadavg()
    print(f"bench_search: {os.cpu_count()} CPUs, load average {load[0]:.1f} at start", flush=True)
    results = [run_family(name, args, overrides) for name in args.families.split(",")]
    for fam in results:
        print(f"\n{fam['family']}: oracle best val {fam['oracle_best']:.2f} of {fam['oracle_trials']} random trials "
              f"({fam['budget_epochs']} epochs each; its test {fam['oracle_test_of_best']:.2f}); random search "
              f"without early stopping reaches {fam['oracle_best'] - fam['within']:.2f} after "
              f"{show(fam['random_reach_epochs'], 0)} trial-epochs")
        for r in fam["rank_agreement"]:
            print(f"  epoch {r['epoch']} vs last: spearman {r['spearman']:.3f}  kendall {r['kendall']:.3f}")
    checks = []
    for check in filter(None, args.check.split(",")):
        name = "demo" if "demo" in args.families else args.families.split(",")[0]
        checks.append(check_cli(name, check, 0, args.check_trials, overrides, Path(args.out)))
    wall = time.perf_counter() - started
    print(f"\nbench_search: {wall:.0f} s wall, load average {os.getloadavg()[0]:.1f} at the end", flush=True)
    if args.plot:
        plot(results, Path(args.plot))
    if args.json:
        for fam in results:
            fam.pop("space"), fam.pop("job")
        Path(args.json).write_text(json.dumps({"families": results, "checks": checks, "wall_s": wall,
                                               "argv": sys.argv[1:], "load_start": load}, default=str))
    if checks and not all(checks):
        sys.exit(1)


if __name__ == "__main__":
    main()
