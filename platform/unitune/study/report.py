"""The study's report from its runs: a table per family, verdicts, CSVs and two plots,
logged as the study run's artifacts (study.md, study.csv, runs.csv, plots/*.png) with the
headline numbers as its metrics."""

from __future__ import annotations

import csv
import math
import statistics
import tempfile
from pathlib import Path

from unitune import tags as T
from unitune.search.convergence import convergence_summary
from unitune.study.stats import Interval, interval, paired_difference, verdict

RECALLS = ("r1_i2t", "r5_i2t", "r10_i2t", "r1_t2i", "r5_t2i", "r10_t2i")
LABELS = {
    "rsum": "RSUM",
    "medr_i2t": "median rank image→text",
    "medr_t2i": "median rank text→image",
    "meanr_i2t": "mean rank image→text",
    "meanr_t2i": "mean rank text→image",
    "train_loss": "train loss",
    **{
        f"r{k}_{d}": f"R@{k} {'image→text' if d == 'i2t' else 'text→image'}" for k in (1, 5, 10) for d in ("i2t", "t2i")
    },
}


def label(metric: str) -> str:
    return LABELS.get(metric, metric)


def _num(value: float, digits: int = 1) -> str:
    return "–" if value is None or not math.isfinite(value) else f"{value:.{digits}f}"


def _median(values: list[float], median=statistics.median) -> float:
    finite = [v for v in values if math.isfinite(v)]
    return median(finite) if finite else math.nan


def _epochs(value: float, budget: int) -> str:
    """Epochs to the target for the table: past the budget (budget + 1) reads "never"."""
    return "never" if math.isfinite(value) and value > budget else _num(value, 0)


def family_rows(plan, result) -> list[dict]:
    """One dict per family (the reference first): search, test statistics, convergence."""
    metric, test_key = plan.metric, f"test_{plan.metric}"
    by_family = {f.name: [r for r in result.finals if r.family == f.name] for f in plan.families}
    ref_values = {r.seed: r.metrics[test_key] for r in by_family[plan.reference.name] if test_key in r.metrics}
    rows = []
    for family in plan.families:
        runs = by_family[family.name]
        values = {r.seed: r.metrics[test_key] for r in runs if test_key in r.metrics}
        conv = [convergence_summary(r.curve, metric, plan.mode, plan.target, budget=plan.final_epochs) for r in runs]
        search = result.searches[family.name]
        row = {
            "family": family.name,
            "space": str(family.path),
            "seeds": len(values),
            "search_id": search.search_id,
            "search_best_val": search.best_value,
            "search_trial_epochs": search.trial_epochs,
            "search_wall_s": search.wall_s,
            "test": interval(list(values.values())) if values else None,
            "diff": (
                paired_difference(values, ref_values)
                if family is not plan.reference and values and ref_values
                else None
            ),
            "recalls": {
                k: statistics.fmean(r.metrics[f"test_{k}"] for r in runs)
                if runs and all(f"test_{k}" in r.metrics for r in runs)
                else math.nan
                for k in RECALLS
            },
            "reached": sum(c["target_reached"] == 1.0 for c in conv),
            # median_high: an epoch some run has; with an even count the slower of the middle
            # two, so a never-reached budget + 1 is not averaged into an epoch nobody reached
            "epochs_to_target": _median([c["epochs_to_target"] for c in conv], statistics.median_high),
            "seconds_to_target": _median([c["seconds_to_target"] for c in conv]),
            "auc": _median([c["normalized_auc"] for c in conv]),
        }
        rows.append(row)
    return rows


def best_family(plan, rows: list[dict]) -> str | None:
    """The family with the best mean test value (by the metric's mode)."""
    scored = [r for r in rows if r["test"] is not None]
    if not scored:
        return None
    sign = 1 if plan.mode == "max" else -1
    return max(scored, key=lambda r: sign * r["test"].mean)["family"]


def verdicts(plan, rows: list[dict]) -> list[str]:
    return [
        verdict(r["family"], plan.reference.name, r["diff"], label(plan.metric), plan.mode)
        for r in rows
        if r["diff"] is not None
    ]


def _ci(iv: Interval | None) -> str:
    if iv is None or not math.isfinite(iv.low):
        return "–"
    return f"{iv.low:.1f} to {iv.high:.1f}"


def markdown(plan, result, rows: list[dict], command: str | None = None) -> str:
    """study.md: what was run, the table, the verdicts, the method and where the runs are."""
    name = label(plan.metric)
    best = best_family(plan, rows)
    ref = plan.reference.name
    lines = [f"# Study {result.study_id}", ""]
    if command:
        lines += [f"`{command}` — wall time {result.wall_s / 60:.1f} min", ""]
    lines += [
        f"Families: {', '.join(f.name for f in plan.families)} (reference: {ref}); each searched on the "
        f"same budget, its best trial trained with seeds 0..{plan.seeds - 1} for {plan.final_epochs} "
        f"epochs and measured on the test split. Metric: {name} ({plan.mode}); target {plan.target}.",
        "",
        f"| family | search best val {name} | test {name} mean ± std | 95% CI | {name} − {ref} (paired 95% CI) "
        f"| R@1/5/10 i→t | R@1/5/10 t→i | reached target | epochs to target | s to target | AUC "
        f"| search trial-epochs | search wall s |",
        "|" + "---|" * 13,
    ]
    for r in rows:
        test, diff, rc = r["test"], r["diff"], r["recalls"]
        mark = " **(best)**" if r["family"] == best else ""
        mean = f"{test.mean:.1f} ± {_num(test.std)}" if test else "–"
        paired = f"{diff.mean:+.1f} ({_ci(diff)})" if diff else "reference"
        lines.append(
            f"| {r['family']}{mark} | {_num(r['search_best_val'])} | {mean} | {_ci(test)} | {paired} "
            f"| {'/'.join(_num(rc[k]) for k in RECALLS[:3])} | {'/'.join(_num(rc[k]) for k in RECALLS[3:])} "
            f"| {r['reached']}/{r['seeds']} | {_epochs(r['epochs_to_target'], plan.final_epochs)} "
            f"| {_num(r['seconds_to_target'], 0)} "
            f"| {_num(r['auc'], 3)} | {r['search_trial_epochs']} | {_num(r['search_wall_s'], 0)} |"
        )
    lines += ["", "Verdicts:", ""] + [f"- {v}" for v in verdicts(plan, rows)]
    bounds = [f"- {name}: {w}" for name, search in result.searches.items() for w in search.at_bounds]
    if bounds:
        lines += [
            "",
            "Search bounds (a family's best value at the edge of its range; the family may do better beyond it):",
            "",
            *bounds,
        ]
    lines += [
        "",
        "Method: mean ± sample standard deviation over seeds; 95% CI = Student t interval of the "
        "mean; paired difference = t interval over the seed-paired differences (same seed, same "
        "initial weights and data order); a comparison is resolved only when that interval excludes 0 "
        "(each read on its own, no multiple-comparison correction). Convergence columns are medians "
        f"over the final runs: epochs to the target (never reached = {plan.final_epochs + 1}, i.e. "
        'budget + 1, in study.csv; "never" here; the higher middle value for an even count), '
        "seconds to it among the runs that reached it, and the validation AUC over the "
        "full final budget normalised by the metric's maximum (600 for RSUM).",
        "",
        f"MLflow: the study run `{result.run_id}`; its searches and final runs carry the tag "
        f"`unitune.study_id = {result.study_id}` (filter: tags.`unitune.study_id` = '{result.study_id}').",
        "",
    ]
    return "\n".join(lines)


def write_csvs(plan, result, rows: list[dict], out: Path) -> None:
    heads = [
        "family",
        "seeds",
        "search_id",
        "search_best_val",
        "test_mean",
        "test_std",
        "test_ci_low",
        "test_ci_high",
        "diff_mean",
        "diff_ci_low",
        "diff_ci_high",
        *(f"test_{k}" for k in RECALLS),
        "reached_target",
        "epochs_to_target",
        "seconds_to_target",
        "normalized_auc",
        "search_trial_epochs",
        "search_wall_s",
    ]
    with open(out / "study.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(heads)
        for r in rows:
            t, d = r["test"], r["diff"]
            w.writerow(
                [
                    r["family"],
                    r["seeds"],
                    r["search_id"],
                    r["search_best_val"],
                    *((t.mean, t.std, t.low, t.high) if t else ("",) * 4),
                    *((d.mean, d.low, d.high) if d else ("",) * 3),
                    *(r["recalls"][k] for k in RECALLS),
                    r["reached"],
                    r["epochs_to_target"],
                    r["seconds_to_target"],
                    r["auc"],
                    r["search_trial_epochs"],
                    r["search_wall_s"],
                ]
            )
    keys = [f"test_{plan.metric}", *(f"test_{k}" for k in RECALLS if k != plan.metric)]
    with open(out / "runs.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["family", "seed", "run_id", *keys, f"best_val_{plan.metric}"])
        for r in result.finals:
            vals = [p[plan.metric] for p in r.curve]
            best = (max(vals) if plan.mode == "max" else min(vals)) if vals else ""
            w.writerow([r.family, r.seed, r.run_id, *(r.metrics.get(k, "") for k in keys), best])


def plots(plan, result, rows: list[dict], out: Path) -> None:
    """plots/curves.png (validation curves: mean line, min–max band over seeds, target) and
    plots/test.png (test metric per family with its 95% CI, the best family marked)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out.mkdir(parents=True, exist_ok=True)
    name, best = label(plan.metric), best_family(plan, rows)
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for family in plan.families:
        by_epoch: dict[int, list[float]] = {}
        for run in (r for r in result.finals if r.family == family.name):
            for point in run.curve:
                by_epoch.setdefault(int(point["epoch"]), []).append(point[plan.metric])
        if not by_epoch:
            continue
        epochs = sorted(by_epoch)
        mean = [statistics.fmean(by_epoch[e]) for e in epochs]
        (line,) = ax.plot(
            epochs,
            mean,
            marker="o",
            linewidth=2.5 if family.name == best else 1.5,
            label=family.name + (" (best on test)" if family.name == best else ""),
        )
        ax.fill_between(
            epochs,
            [min(by_epoch[e]) for e in epochs],
            [max(by_epoch[e]) for e in epochs],
            color=line.get_color(),
            alpha=0.2,
        )
    if plan.target is not None:
        ax.axhline(plan.target, color="grey", linestyle="--", linewidth=1, label=f"target {plan.target:g}")
    ax.set_xlabel("epoch (0 = before training)")
    ax.set_ylabel(f"validation {name}")
    ax.set_title(f"Final runs per family: mean over {plan.seeds} seed(s), band = min–max")
    ax.legend(loc="best")
    fig.tight_layout()
    fig.savefig(out / "curves.png", dpi=120)
    plt.close(fig)

    scored = [r for r in rows if r["test"] is not None]
    fig, ax = plt.subplots(figsize=(max(4.5, 1.4 * len(scored) + 2), 4.5))
    for i, r in enumerate(scored):
        t = r["test"]
        err = [[t.mean - t.low], [t.high - t.mean]] if math.isfinite(t.low) else None
        ax.errorbar(
            [i],
            [t.mean],
            yerr=err,
            fmt="o",
            capsize=6,
            markersize=8,
            color="tab:red" if r["family"] == best else "tab:blue",
        )
        values = [run.metrics.get(f"test_{plan.metric}") for run in result.finals if run.family == r["family"]]
        ax.scatter([i] * len(values), values, s=12, color="grey", zorder=3)
    ax.set_xticks(range(len(scored)), [r["family"] + ("\n(best)" if r["family"] == best else "") for r in scored])
    ax.set_ylabel(f"test {name}")
    ax.set_title(f"Test {name}: mean and 95% CI over seeds (grey: each seed)")
    fig.tight_layout()
    fig.savefig(out / "test.png", dpi=120)
    plt.close(fig)


def headline_metrics(plan, rows: list[dict]) -> dict[str, float]:
    """The study run's metrics: per family the test mean, CI and paired difference."""
    metrics: dict[str, float] = {}
    for r in rows:
        key = f"{r['family']}.test_{plan.metric}"
        if r["test"] is not None:
            t = r["test"]
            metrics.update(
                {f"{key}_mean": t.mean, f"{key}_std": t.std, f"{key}_ci_low": t.low, f"{key}_ci_high": t.high}
            )
        if r["diff"] is not None:
            d = r["diff"]
            metrics.update(
                {
                    f"{key}_minus_{plan.reference.name}": d.mean,
                    f"{key}_minus_{plan.reference.name}_ci_low": d.low,
                    f"{key}_minus_{plan.reference.name}_ci_high": d.high,
                }
            )
        metrics[f"{r['family']}.search_best_val_{plan.metric}"] = r["search_best_val"]
    return metrics


def write_report(tracker, plan, result, *, command: str | None = None, out=print) -> str:
    """Log the report as the study run's artifacts and metrics; print and return study.md."""
    rows = family_rows(plan, result)
    text = markdown(plan, result, rows, command)
    with tempfile.TemporaryDirectory(prefix="unitune-study-") as tmp:
        folder = Path(tmp)
        (folder / "study.md").write_text(text)
        write_csvs(plan, result, rows, folder)
        plots(plan, result, rows, folder / "plots")
        tracker.log_artifact(result.run_id, folder)
    tracker.log_metrics(result.run_id, headline_metrics(plan, rows), step=0)
    best = best_family(plan, rows)
    if best is not None:
        tracker.set_tags(result.run_id, {T.BEST_FAMILY: best})
    out(text)
    return text
