"""The study's report from its runs: a table per family, the verdicts of the last look, the
rounds of seeds, all pairs, where the variance is, CSVs and two plots, logged as the study
run's artifacts (study.md, study.csv, runs.csv, plots/*.png) with the headline numbers as
its metrics."""

from __future__ import annotations

import csv
import math
import statistics
import tempfile
from pathlib import Path

import numpy as np

from unitune import tags as T
from unitune.choices import METRIC_MAX, RECALL_KEYS
from unitune.search.convergence import convergence_summary
from unitune.study.sequential import study_weights
from unitune.study.stats import ALPHA, RESAMPLES, Decision, Interval, compare, holm, interval, spending, verdict

RECALLS = RECALL_KEYS  # R@1/5/10 image->text, then text->image
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


def _last_decisions(result) -> dict[str, Decision]:
    return {d.comparison.name: d for d in result.looks[-1].decisions} if result.looks else {}


def family_rows(plan, result) -> list[dict]:
    """One dict per family (the reference first): searches, test statistics, the comparison
    with the reference at the last look, convergence, variance components."""
    metric, test_key = plan.metric, f"test_{plan.metric}"
    by_family = {f.name: [r for r in result.finals if r.family == f.name] for f in plan.families}
    decisions = _last_decisions(result)
    rows = []
    for family in plan.families:
        runs = by_family[family.name]
        values = [r.metrics[test_key] for r in runs if test_key in r.metrics]
        conv = [convergence_summary(r.curve, metric, plan.mode, plan.target, budget=plan.final_epochs) for r in runs]
        searches = result.searches[family.name]
        row = {
            "family": family.name,
            "space": str(family.path),
            "seeds": len({r.seed for r in runs}),
            "runs": len(values),
            "repeats": len(searches),
            "search_id": ",".join(s.search_id for s in searches),
            "search_best_val": statistics.fmean(s.best_value for s in searches),
            "search_trial_epochs": sum(s.trial_epochs for s in searches),
            "search_wall_s": sum(s.wall_s for s in searches),
            "test": interval(values) if values else None,
            "decision": decisions.get(family.name),
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
            "components": components(result.outcomes.get(family.name, {})),
        }
        rows.append(row)
    return rows


def components(runs: dict) -> dict[str, float]:
    """Standard deviations of one run's test metric by level: ``search`` (between the
    searches' configurations, beyond what their seeds explain; NaN with one search),
    ``seed`` (between training seeds of one configuration, on this test set) and
    ``queries`` (the test set's sampling error of one run: the bootstrap over its clusters)."""
    if not runs:
        return {"search": math.nan, "seed": math.nan, "queries": math.nan}
    value = {u: float(o.value()[0]) for u, o in runs.items()}
    weights = study_weights({"x": runs})
    queries = math.sqrt(statistics.fmean(float(np.var(o.value(weights), ddof=1)) for o in runs.values()))
    repeats = sorted({r for r, _ in runs})
    within = [[value[u] for u in runs if u[0] == r] for r in repeats]
    spreads = [statistics.variance(v) for v in within if len(v) >= 2]
    seed_var = statistics.fmean(spreads) if spreads else math.nan
    search = math.nan
    if len(repeats) >= 2 and math.isfinite(seed_var):
        means = [statistics.fmean(v) for v in within]
        per_repeat = statistics.fmean(len(v) for v in within)
        search = math.sqrt(max(0.0, statistics.variance(means) - seed_var / per_repeat))
    return {"search": search, "seed": math.sqrt(seed_var) if math.isfinite(seed_var) else math.nan, "queries": queries}


def pairs(plan, result) -> list[list[Decision | None]]:
    """All pairs (row family − column family) on their shared runs, Holm over all of them at
    the last look's share of alpha; the diagonal None."""
    names = [f.name for f in plan.families]
    if not result.outcomes or not result.looks or len(names) < 2:
        return []
    weights = study_weights(result.outcomes)
    found = []
    for i, a in enumerate(names):
        for b in names[:i]:
            runs_a, runs_b = result.outcomes[a], result.outcomes[b]
            if set(runs_a) & set(runs_b):
                found.append(((i, names.index(b)), compare(a, b, runs_a, runs_b, weights)))
    share = spending([size / plan.max_seeds for size in plan.rounds])[len(result.looks) - 1]
    decided = holm([c for _, c in found], share)
    matrix: list[list[Decision | None]] = [[None] * len(names) for _ in names]
    for ((i, j), _), decision in zip(found, decided):
        matrix[i][j] = decision
    return matrix


def best_family(plan, rows: list[dict]) -> str | None:
    """The family with the best mean test value (by the metric's mode)."""
    scored = [r for r in rows if r["test"] is not None]
    if not scored:
        return None
    sign = 1 if plan.mode == "max" else -1
    return max(scored, key=lambda r: sign * r["test"].mean)["family"]


def verdicts(plan, rows: list[dict]) -> list[str]:
    return [verdict(r["decision"], label(plan.metric), plan.mode) for r in rows if r["decision"] is not None]


def _ci(iv: Interval | None) -> str:
    if iv is None or not math.isfinite(iv.low):
        return "–"
    return f"{iv.low:.1f} to {iv.high:.1f}"


def _adjusted(d: Decision | None) -> str:
    """``+3.1 (−0.4 to +6.6, 98.8%)`` at the level the verdict used."""
    if d is None:
        return "reference"
    c = d.comparison
    if c.identical:
        return f"{c.mean:+.1f} (identical)"
    if not math.isfinite(c.se) or c.se == 0.0:
        return f"{c.mean:+.1f} (–)"
    return f"{c.mean:+.1f} ({c.mean - d.detectable:+.1f} to {c.mean + d.detectable:+.1f}, {100 * (1 - d.level):.1f}%)"


def _rounds(plan, result) -> list[str]:
    """One line per round: the seeds it trained, for which families, what stayed open."""
    lines, start, families = [], 0, [f.name for f in plan.families]
    for look in result.looks:
        seeds = f"seed {start}" if look.seeds - start == 1 else f"seeds {start}–{look.seeds - 1}"
        still = look.open()
        lines.append(f"- {seeds}: {', '.join(families)}; then open: {', '.join(still) if still else 'none'}")
        families, start = [plan.reference.name, *still], look.seeds
    return lines


def _matrix(plan, result) -> list[str]:
    matrix = pairs(plan, result)
    if not matrix:
        return []
    names = [f.name for f in plan.families]
    lines = [
        f"All pairs (row − column, {label(plan.metric)}; Holm over the {len(names) * (len(names) - 1) // 2} pairs "
        "at the last look's level; ✓ resolved):",
        "",
        "| | " + " | ".join(names) + " |",
        "|" + "---|" * (len(names) + 1),
    ]
    for i, name in enumerate(names):
        cells = []
        for j in range(len(names)):
            d = matrix[i][j]
            cells.append("" if d is None else _adjusted(d) + (" ✓" if d.resolved else ""))
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return lines


def _scope(plan) -> str:
    if plan.search_repeats == 1:
        return (
            "Scope: each family was searched once, so the verdicts compare the configurations these "
            "searches found, not the families: a search with another sampler seed may find another best "
            "(`study.search_repeats: 2` or more makes the searches a level of the intervals)."
        )
    return (
        f"Scope: each family was searched {plan.search_repeats} times (sampler seeds space seed + 0.."
        f"{plan.search_repeats - 1}) and every search's best trained with the seeds, so the intervals include "
        "the spread between searches: the verdicts are about the families on this budget."
    )


def markdown(plan, result, rows: list[dict], command: str | None = None) -> str:
    """study.md: what was run, the table, the verdicts, the rounds, all pairs, where the
    variance is, the method and where the runs are."""
    name = label(plan.metric)
    best = best_family(plan, rows)
    ref = plan.reference.name
    m = len(plan.families) - 1
    looks = ", ".join(str(size) for size in plan.rounds)
    lines = [f"# Study {result.study_id}", ""]
    if command:
        lines += [f"`{command}` — wall time {result.wall_s / 60:.1f} min", ""]
    lines += [
        f"Families: {', '.join(f.name for f in plan.families)} (reference: {ref}); each searched on the "
        f"same budget, its best trial trained with seeds in rounds (at most {plan.max_seeds}: looks after "
        f"{looks} seeds) for {plan.final_epochs} epochs and measured on the test split. "
        f"Metric: {name} ({plan.mode}); target {plan.target}.",
        "",
        _scope(plan),
        "",
        f"| family | search best val {name} | seeds | test {name} mean ± std | 95% CI | {name} − {ref} "
        f"(CI at the verdict's level) | seed-only 95% CI | p | resolvable beyond "
        f"| R@1/5/10 i→t | R@1/5/10 t→i | reached target | epochs to target | s to target | AUC "
        f"| search trial-epochs | search wall s |",
        "|" + "---|" * 17,
    ]
    for r in rows:
        test, d, rc = r["test"], r["decision"], r["recalls"]
        mark = " **(best)**" if r["family"] == best else ""
        mean = f"{test.mean:.1f} ± {_num(test.std)}" if test else "–"
        c = d.comparison if d is not None else None
        seeds = str(r["seeds"]) + (f" × {r['repeats']} searches" if r["repeats"] > 1 else "")
        lines.append(
            f"| {r['family']}{mark} | {_num(r['search_best_val'])} | {seeds} | {mean} | {_ci(test)} "
            f"| {_adjusted(d)} | {_ci(c.seed_only) if c else '–'} | {_p(c.p) if c else '–'} "
            f"| {_pm(d.detectable) if d else '–'} "
            f"| {'/'.join(_num(rc[k]) for k in RECALLS[:3])} | {'/'.join(_num(rc[k]) for k in RECALLS[3:])} "
            f"| {r['reached']}/{r['runs']} | {_epochs(r['epochs_to_target'], plan.final_epochs)} "
            f"| {_num(r['seconds_to_target'], 0)} "
            f"| {_num(r['auc'], 3)} | {r['search_trial_epochs']} | {_num(r['search_wall_s'], 0)} |"
        )
    lines += [
        "",
        f"Verdicts ({m} comparison{'s' if m != 1 else ''} with {ref}, Holm-corrected; a false claim "
        f"anywhere in the study at most {ALPHA:.0%}, the repeated looks included):",
        "",
        *[f"- {v}" for v in verdicts(plan, rows)],
        "",
        "Rounds of seeds (the same seeds for every family trained in a round, so runs stay paired):",
        "",
        *_rounds(plan, result),
    ]
    matrix = _matrix(plan, result)
    if matrix:
        lines += ["", *matrix]
    lines += [
        "",
        f"Where the variance is (standard deviation of one run's test {name}, by level; a difference of two "
        "families averages it over runs and queries):",
        "",
        "| family | between searches | between training seeds | test queries (bootstrap) |",
        "|---|---|---|---|",
        *[
            f"| {r['family']} | {_num(r['components']['search'])} | {_num(r['components']['seed'])} "
            f"| {_num(r['components']['queries'])} |"
            for r in rows
        ],
    ]
    bounds = [f"- {name}: {w}" for name, found in result.searches.items() for s in found for w in s.at_bounds]
    if bounds:
        lines += [
            "",
            "Search bounds (a family's best value at the edge of its range; the family may do better beyond it):",
            "",
            *bounds,
        ]
    lines += [
        "",
        f"Method: a family's difference from {ref} is the mean of its paired per-run differences (same "
        "search repeat and seed: same initial weights and data order; same test queries and gallery). Its "
        "standard error has two levels: the spread of those differences over the runs (over the searches' "
        f"means with several searches) and a paired bootstrap of the test set ({RESAMPLES} resamples of its "
        "items with their captions, one resample for every run of both families), less the run × query "
        "noise counted in both; the interval is Student's t with Welch–Satterthwaite degrees of freedom "
        "(the runs' part at its upper 90% bound). Holm's step-down over the comparisons; each look after a "
        "round of seeds spends a share of alpha (f² − f_prev², f = seeds / max seeds), so the chance of "
        f"any false claim stays at most {ALPHA:.0%}; a round more is trained only for open comparisons. "
        "'Resolvable beyond' is the interval's half-width: the smallest difference this study could have "
        "resolved. The seed-only column is the plain t interval of the per-run differences (95%, no "
        "correction). The false-alarm rate is measured by simulation (tests/test_study_simulation.py). "
        "Convergence columns are medians over the final runs: epochs to the target (never reached = "
        f'{plan.final_epochs + 1}, i.e. budget + 1, in study.csv; "never" here; the higher middle value '
        "for an even count), seconds to it among the runs that reached it, and the validation AUC over "
        f"the full final budget normalised by the metric's maximum ({METRIC_MAX['rsum']:.0f} for RSUM).",
        "",
        f"MLflow: the study run `{result.run_id}`; its searches and final runs carry the tag "
        f"`unitune.study_id = {result.study_id}` (filter: tags.`unitune.study_id` = '{result.study_id}'); "
        "each final run's per-query ranks are its artifact test_ranks.csv.",
        "",
    ]
    return "\n".join(lines)


def _p(p: float) -> str:
    return "–" if not math.isfinite(p) else (f"{p:.2g}" if p >= 1e-4 else "<1e-4")


def _pm(value: float) -> str:
    return "–" if not math.isfinite(value) else f"±{value:.1f}"


def _decision_cells(d: Decision | None) -> list:
    if d is None:
        return [""] * 11
    c = d.comparison
    return [
        c.mean,
        c.mean - d.detectable,
        c.mean + d.detectable,
        d.level,
        c.p,
        c.df,
        c.se_runs,
        c.se_queries,
        c.seed_only.low,
        c.seed_only.high,
        int(d.resolved),
    ]


def write_csvs(plan, result, rows: list[dict], out: Path) -> None:
    heads = [
        "family",
        "seeds",
        "runs",
        "search_repeats",
        "search_id",
        "search_best_val",
        "test_mean",
        "test_std",
        "test_ci_low",
        "test_ci_high",
        "diff_mean",
        "diff_ci_low",
        "diff_ci_high",
        "diff_level",
        "diff_p",
        "diff_df",
        "diff_se_runs",
        "diff_se_queries",
        "diff_seed_only_ci_low",
        "diff_seed_only_ci_high",
        "resolved",
        *(f"test_{k}" for k in RECALLS),
        "reached_target",
        "epochs_to_target",
        "seconds_to_target",
        "normalized_auc",
        "sd_between_searches",
        "sd_between_seeds",
        "sd_test_queries",
        "search_trial_epochs",
        "search_wall_s",
    ]
    with open(out / "study.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(heads)
        for r in rows:
            t = r["test"]
            w.writerow(
                [
                    r["family"],
                    r["seeds"],
                    r["runs"],
                    r["repeats"],
                    r["search_id"],
                    r["search_best_val"],
                    *((t.mean, t.std, t.low, t.high) if t else ("",) * 4),
                    *_decision_cells(r["decision"]),
                    *(r["recalls"][k] for k in RECALLS),
                    r["reached"],
                    r["epochs_to_target"],
                    r["seconds_to_target"],
                    r["auc"],
                    r["components"]["search"],
                    r["components"]["seed"],
                    r["components"]["queries"],
                    r["search_trial_epochs"],
                    r["search_wall_s"],
                ]
            )
    keys = [f"test_{plan.metric}", *(f"test_{k}" for k in RECALLS if k != plan.metric)]
    with open(out / "runs.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["family", "search_repeat", "seed", "run_id", *keys, f"best_val_{plan.metric}"])
        for r in result.finals:
            vals = [p[plan.metric] for p in r.curve]
            best = (max(vals) if plan.mode == "max" else min(vals)) if vals else ""
            w.writerow([r.family, r.repeat, r.seed, r.run_id, *(r.metrics.get(k, "") for k in keys), best])


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
    """The study run's metrics: per family the test mean and CI, the difference from the
    reference with its interval at the verdict's level, its p-value and whether resolved."""
    metrics: dict[str, float] = {}
    for r in rows:
        key = f"{r['family']}.test_{plan.metric}"
        if r["test"] is not None:
            t = r["test"]
            metrics.update(
                {f"{key}_mean": t.mean, f"{key}_std": t.std, f"{key}_ci_low": t.low, f"{key}_ci_high": t.high}
            )
        d = r["decision"]
        if d is not None:
            c, diff = d.comparison, f"{key}_minus_{plan.reference.name}"
            metrics.update(
                {
                    diff: c.mean,
                    f"{diff}_ci_low": c.mean - d.detectable,
                    f"{diff}_ci_high": c.mean + d.detectable,
                    f"{diff}_p": c.p,
                    f"{diff}_resolved": float(d.resolved),
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
