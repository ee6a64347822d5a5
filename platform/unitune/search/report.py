"""The end of a search: summary from MLflow, parent-run artifacts, the terminal summary.

Everything is read back from the MLflow store (the source of truth), so a resumed or
interrupted search summarizes all its trials, not just those this process saw.
"""

from __future__ import annotations

import contextlib
import csv
import math
import shutil
import tempfile
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import optuna
import yaml

from unitune import tags as T
from unitune.choices import CONVERGENCE_KEYS
from unitune.config import JobSpec, SearchSpaceSpec, apply_overrides
from unitune.record import ENDED, Record, State, TrialRecord, best, counts, trial_epochs
from unitune.search.trial import TrialSetup, read_curve
from unitune.terminal import num

if TYPE_CHECKING:
    from matplotlib.axes import Axes


def pareto_front(storage, search_id: str) -> list[optuna.trial.FrozenTrial]:
    """The Pareto front of a multi-objective search: Optuna's ``best_trials`` of its study,
    the completed trials no other completed trial dominates, each scored by the values told
    to Optuna when it ended (its last report). Trials stopped by ASHA (pruned), failed or
    unfinished are not on it. The search summary and ``unitune export --pareto`` list it."""
    return optuna.load_study(study_name=search_id, storage=storage).best_trials


def summarize(setup: TrialSetup, space: SearchSpaceSpec, storage=None) -> dict:
    """Trials of the search (from MLflow, through ``unitune.record``) and the best one (the
    one rule, ``unitune.record.best``: the trial ``unitune export`` picks and ``unitune
    results`` lists first).

    Returns ``{"search_id", "parent_run_id", "metric", "mode", "trials": [...], "best": trial
    or None, "pareto": [trial ids] or None, "counts": {state: n}, "trial_epochs": n}``; each
    trial is ``{"trial_id", "label", "run_id", "name", "state", "status", "params",
    "metrics", "score", "stopped_at_epoch", "error", "epochs_run"}`` (``label``: ``t03``, as the
    terminal and the plots name the trial).
    """
    record = Record(setup.tracker)
    records = record.trials(record.search_run(setup.parent_run_id), [setup.metric])
    top = best(records, setup.metric, setup.mode)
    trials = [_trial_dict(t, setup.metric) for t in records]
    pareto = None
    if space.objectives and storage is not None:
        pareto = [t.user_attrs.get("trial_id") for t in pareto_front(storage, setup.search_id)]
    return {
        "search_id": setup.search_id,
        "parent_run_id": setup.parent_run_id,
        "experiment": setup.experiment,
        "metric": setup.metric,
        "mode": setup.mode,
        "target": setup.target,
        "trials": trials,
        "best": trials[records.index(top)] if top is not None else None,
        "pareto": pareto,
        "counts": {str(state): n for state, n in counts(records).items() if state in ENDED},
        "trial_epochs": trial_epochs(records),
    }


def _trial_dict(t: TrialRecord, metric: str) -> dict:
    return {
        "score": t.values.get(metric),  # its best epoch's metric: what the best trial is chosen by
        "trial_id": t.tags.get(T.TRIAL),
        "run_id": t.run_id,
        "name": t.name,
        "label": t.label,
        "state": t.tags.get(T.STATE),
        "status": t.status,
        "params": t.params,
        "metrics": t.metrics,
        "stopped_at_epoch": t.stopped_at_epoch,
        "error": t.error,
        "epochs_run": t.tags.get(T.EPOCHS_RUN),
    }


def best_job(setup: TrialSetup, best: dict) -> JobSpec:
    """The search's base job with the best trial's sampled values applied."""
    return apply_overrides(setup.job, best["params"])


def write_artifacts(setup: TrialSetup, space: SearchSpaceSpec, job: JobSpec, storage, summary: dict) -> None:
    """Log the parent run's artifacts: job and space YAML, trials.csv, plots, best config."""
    tracker, parent = setup.tracker, setup.parent_run_id
    with tempfile.TemporaryDirectory(prefix="unitune-search-") as tmp:
        out = Path(tmp)
        for name, src, spec in (("job.yaml", job.source, job), ("space.yaml", space.source, space)):
            if src is not None and Path(src).is_file():
                shutil.copyfile(src, out / name)
            else:
                (out / name).write_text(yaml.safe_dump(spec.model_dump(mode="json"), sort_keys=False))
        _trials_csv(summary, space, out / "trials.csv")
        _curves_plot(setup, summary, out / "plots" / "curves.png")
        _optuna_plots(setup, storage, out / "plots")
        if summary["best"] is not None:
            best = best_job(setup, summary["best"])
            header = (
                f"# best trial {summary['best']['label']} (run {summary['best']['run_id']}) of search "
                f"{setup.search_id} ({setup.metric}={summary['best']['score']})\n"
                f"# unitune train best_config.yaml\n"
            )
            (out / "best_config.yaml").write_text(
                header + yaml.safe_dump(best.model_dump(mode="json"), sort_keys=False)
            )
        tracker.log_artifact(parent, out)


def _trials_csv(summary: dict, space: SearchSpaceSpec, path: Path) -> None:
    params = list(space.params)
    metric = summary["metric"]
    heads = ["trial_id", "run_id", "state", "stopped_at_epoch", *params, metric, *CONVERGENCE_KEYS, "error"]
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(heads)
        for t in summary["trials"]:
            m = t["metrics"]
            writer.writerow(
                [
                    t["trial_id"],
                    t["run_id"],
                    t["state"],
                    t["stopped_at_epoch"] or "",
                    *(t["params"].get(p, "") for p in params),
                    m.get(metric, ""),
                    *(m.get(k, "") for k in CONVERGENCE_KEYS),
                    t["error"] or "",
                ]
            )


LEGEND_PT = 9  # the smallest text of the plots: legends, ticks


def _curves_plot(setup: TrialSetup, summary: dict, path: Path) -> None:
    """Every trial's validation curve, named as in the terminal (``t03``); the best trial
    drawn thick and its best epoch starred; dashed: stopped by ASHA, dotted: failed."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    path.parent.mkdir(parents=True, exist_ok=True)
    best = summary.get("best")
    fig, ax = plt.subplots(figsize=(8, 4.8))
    for t in summary["trials"]:
        curve = [r for r in read_curve(setup.tracker, t["run_id"], [setup.metric]) if setup.metric in r]
        if not curve:
            continue
        is_best = best is not None and t["run_id"] == best["run_id"]
        style = "-" if t["state"] == State.COMPLETED else ":" if t["state"] == State.FAILED else "--"
        state = {State.STOPPED_BY_ASHA: "stopped by ASHA"}.get(t["state"], t["state"])
        label = f"{t['label']} ({state})" + (", best" if is_best else "")
        (line,) = ax.plot(
            [r["epoch"] for r in curve],
            [r[setup.metric] for r in curve],
            style,
            marker="o",
            markersize=3,
            linewidth=2.8 if is_best else 1.2,
            zorder=3 if is_best else 2,
            label=label,
        )
        if is_best:
            top = (max if setup.mode == "max" else min)(curve, key=lambda r: r[setup.metric])
            ax.plot(
                [top["epoch"]],
                [top[setup.metric]],
                "*",
                color=line.get_color(),
                markersize=16,
                markeredgecolor="black",
                zorder=4,
                label=f"best: {t['label']} {setup.metric} {num(top[setup.metric])} at epoch {num(top['epoch'])}",
            )
    if setup.target is not None:
        ax.axhline(setup.target, color="grey", linewidth=0.8, label=f"target {num(setup.target)}")
    ax.set_xlabel("epoch (0: before training)")
    ax.set_ylabel(f"validation {setup.metric}")
    ax.set_title(f"{setup.search_id}: validation {setup.metric} per epoch")
    ax.tick_params(labelsize=LEGEND_PT)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=LEGEND_PT, loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def _optuna_plots(setup: TrialSetup, storage, out: Path) -> None:
    """Parallel coordinates and parameter importance, when the study has enough trials;
    axes name the study metric (not Optuna's "Objective Value")."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.figure import Figure
    from optuna.visualization import matplotlib as ovm

    study = optuna.load_study(study_name=setup.search_id, storage=storage)
    done = study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))
    if len(done) < 2:
        return  # nothing to compare
    # A Pareto study has no single objective: plot the first (the study metric). Importance
    # with an explicit target ranks parameters for *low* values, so a max metric is negated.
    sign = -1.0 if setup.mode == "max" else 1.0
    plots: list[tuple[str, Callable[..., Axes], Callable[[optuna.trial.FrozenTrial], float]]] = [
        ("parallel_coordinates.png", ovm.plot_parallel_coordinate, lambda t: t.values[0])
    ]
    if len(done) >= 3:
        plots.append(("param_importances.png", ovm.plot_param_importances, lambda t: sign * t.values[0]))
    for name, plot, target in plots:
        try:
            with _quiet(), matplotlib.rc_context({"font.size": 10, "legend.fontsize": LEGEND_PT}):
                ax = plot(study, target=target, target_name=setup.metric)
                _label(ax, name, setup.metric)
                fig = ax.figure
                if not isinstance(fig, Figure):  # optuna draws each plot on a figure of its own
                    raise TypeError(f"{name}: optuna drew on a subfigure")
                fig.tight_layout()
                fig.savefig(out / name, dpi=120)
            plt.close(fig)
        except (ValueError, RuntimeError, ZeroDivisionError):
            # e.g. importance needs at least one parameter that varied over complete trials
            plt.close("all")


def _label(ax, name: str, metric: str) -> None:
    """Titles that say what is plotted; parallel coordinates wide enough for their labels."""
    if name == "parallel_coordinates.png":
        labels = ax.get_xticklabels()
        ax.figure.set_size_inches(max(8.0, 1.7 * len(labels)), 5.0)
        ax.set_xticks(ax.get_xticks(), [lbl.get_text() for lbl in labels], rotation=25, ha="right", fontsize=LEGEND_PT)
        ax.set_title(f"{metric} of the completed trials by parameter value", y=1.03)
    else:
        ax.figure.set_size_inches(8.0, 4.8)
        ax.set_title(f"parameter importance for {metric}", loc="left")
        ax.set_xlabel(f"importance for {metric} (fANOVA over the completed trials)")
        ax.tick_params(labelsize=LEGEND_PT)
        if ax.get_legend() is not None:
            ax.get_legend().remove()  # one metric: its name is in the title


@contextlib.contextmanager
def _quiet():
    """Silence Optuna's warnings around its matplotlib plots (experimental feature; importance
    estimated from few trials): the summary is what the user reads, not these."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        warnings.simplefilter("ignore", UserWarning)
        yield


def format_summary(result_summary: dict, tracker_uri: str, job_path: str | None) -> str:
    """The terminal summary: best trial, params, metric, convergence speed, runs, next steps."""
    s = result_summary
    trials = s["trials"]
    lines = [
        f"search {s['search_id']} (experiment {s['experiment']}, parent run {s['parent_run_id']})",
        "trials: " + ", ".join(f"{n} {state}" for state, n in s["counts"].items() if n),
    ]
    best = s["best"]
    if best is None:
        lines.append(f"no finished trial reported {s['metric']}")
    else:
        m = best["metrics"]
        lines += [
            f"best trial {best['label']} (run {best['run_id']}, {best['state']}): "
            f"{s['metric']} {num(best['score'])} at epoch {num(m.get('best_epoch'))}",
            "  params: " + ", ".join(f"{k}={num(v)}" for k, v in sorted(best["params"].items())),
            f"  convergence: epochs to target {num(s['target'])}: {num(m.get('epochs_to_target'))}, "
            f"seconds: {num(m.get('seconds_to_target'))}, epochs to 90% of best: "
            f"{num(m.get('epochs_to_90pct_best'))}, normalized AUC: {num(m.get('normalized_auc'))}",
        ]
    if s["pareto"]:
        labels = {t["trial_id"]: t["label"] for t in trials}
        lines.append("Pareto front: " + ", ".join(str(labels.get(t, t)) for t in s["pareto"]))
    job_arg = job_path or "JOB"
    lines += [
        f"MLflow: {tracker_uri}",
        f"next: unitune results {s['search_id']} --job {job_arg}    # the trials, best first",
        f"      unitune ui {job_arg}    # browse the runs",
        f"      unitune export {s['search_id']} --job {job_arg}    # best config -> final job",
    ]
    return "\n".join(lines)


def bound_warnings(summary: dict, space: SearchSpaceSpec, margin: float = 0.05) -> list[str]:
    """One line per numeric parameter whose best-trial value lies in the outer ``margin`` of
    its range (in log space for log-scaled ones): the optimum may lie beyond the bound.

    A low bound of 0 is taken as the parameter's natural limit (a margin, warm-up epochs,
    a weight decay cannot go below it): a best value near it asks for no widening."""
    best = summary.get("best")
    if best is None:
        return []
    out = []
    for name, param in space.params.items():
        value = best["params"].get(name)
        if param.type == "choice" or not isinstance(value, (int, float)) or isinstance(value, bool):
            continue
        log = param.type == "loguniform" or getattr(param, "log", False)
        p_low, p_high = param.bounds()
        low, high, v = (math.log(x) for x in (p_low, p_high, value)) if log else (p_low, p_high, value)
        if high <= low:
            continue
        where = (v - low) / (high - low)
        if where <= margin and not (p_low == 0 and not log):
            out.append(
                f"best {name}={value:.4g} lies at the low end of its range [{p_low:g}, {p_high:g}]: "
                f"widen {name}'s low bound"
            )
        elif where >= 1 - margin:
            out.append(
                f"best {name}={value:.4g} lies at the high end of its range [{p_low:g}, {p_high:g}]: "
                f"widen {name}'s high bound"
            )
    return out
