"""``unitune results [SEARCH] [--format table|csv|json] [--sort METRIC] [--job JOB | --tracking-uri URI]``
and ``unitune results --compare SEARCH SEARCH ...``: a search's trials, or searches side by
side, at the prompt (the DataFrames of :mod:`unitune.results`).

SEARCH is a search id, a parent or trial run id or an experiment name; without it, the
newest search of ``--job``'s experiment, or of the store. The store: ``--job JOB``'s
``tracking.uri``, else ``--tracking-uri``, else ``sqlite:///mlruns.db`` (the demo's).
``table`` rounds numbers for people; ``csv`` and ``json`` keep every digit.
"""

from __future__ import annotations

import argparse
import math

from unitune.choices import CONVERGENCE_METRICS
from unitune.errors import UserError
from unitune.stores import DEFAULT_STORE
from unitune.terminal import num, text_table

FORMATS = ("table", "csv", "json")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "search",
        nargs="?",
        metavar="SEARCH",
        help="search id, parent or trial run id, or experiment name (default: the newest search)",
    )
    parser.add_argument(
        "--compare",
        nargs="+",
        metavar="SEARCH",
        help="put these searches side by side: best, median, trials per state, trial-epochs",
    )
    parser.add_argument("--format", choices=FORMATS, default="table", help="output format (default: table)")
    parser.add_argument(
        "--sort",
        metavar="METRIC",
        help="sort the trials by this metric's best epoch (rsum, r1_i2t, ...) or by a "
        "convergence speed (epochs_to_target, ...); default: the search's metric",
    )
    where = parser.add_mutually_exclusive_group()
    where.add_argument("--job", metavar="JOB", help="job file whose tracking.uri holds the searches")
    where.add_argument("--tracking-uri", metavar="URI", help="MLflow tracking URI (default: sqlite:///mlruns.db)")


def run(args: argparse.Namespace) -> int:
    """Print the trials (or the comparison) in the chosen format; 0 on success."""
    from unitune import results  # pandas and MLflow: when the command runs, not for --help

    uri, experiment = _store(args)
    if args.compare:
        if args.search or args.sort:
            raise UserError("--compare takes the searches itself and sorts nothing: drop SEARCH and --sort")
        frame = results.compare(args.compare, tracking_uri=uri, experiment=experiment)
        print(_render(frame, args.format, _compare_table))
        return 0
    sort = args.sort
    if sort in results.SPEED:
        frame = results.trials(args.search, tracking_uri=uri, experiment=experiment)
        frame = results.sort(frame, sort, CONVERGENCE_METRICS[sort])
        frame.attrs["sorted_by"] = f"{sort} ({CONVERGENCE_METRICS[sort]})"
    else:
        frame = results.trials(args.search, tracking_uri=uri, experiment=experiment, metric=sort)
    print(_render(frame, args.format, _trials_table))
    return 0


def _store(args: argparse.Namespace) -> tuple[str, str | None]:
    """(tracking URI, experiment or None) from ``--job``, ``--tracking-uri`` or the default."""
    if args.job:
        from unitune.config import load_job  # the job schema (pydantic): loaded when the command runs, not for --help

        job = load_job(args.job)
        return job.tracking.uri, job.experiment
    return args.tracking_uri or DEFAULT_STORE, None


def _render(frame, fmt: str, table) -> str:
    if fmt == "csv":
        return frame.to_csv(index=False).rstrip("\n")
    if fmt == "json":
        return frame.to_json(orient="records", indent=1)
    return table(frame)


def _cell(value) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    if hasattr(value, "item"):  # numpy scalars
        value = value.item()
    return num(value)


def _trials_table(frame) -> str:
    a = frame.attrs
    metric = a["metric"]
    params = [c for c in frame.columns if c.startswith("config/")]
    short = [p.rsplit(".", 1)[-1] for p in params]
    # A parameter's last name part, unless two parameters share it.
    names = [s if short.count(s) == 1 else p[len("config/") :] for p, s in zip(params, short)]
    columns = [
        ("run_name", "trial"),
        ("state", "state"),
        *zip(params, names),
        (f"best_{metric}", f"best {metric}"),
        (f"last_{metric}", f"last {metric}"),
        ("epochs_run", "epochs"),
        ("epochs_to_target", "epochs to target"),
        ("seconds_to_target", "s to target"),
        ("normalized_auc", "auc"),
    ]
    # The run name's first word (``t03``): the rest of it repeats the parameter columns.
    rows = [
        [str(r[c]).split(" ", 1)[0] if c == "run_name" else _cell(r[c]) for c, _ in columns]
        for _, r in frame.iterrows()
    ]
    numeric = [c not in ("run_name", "state") and frame[c].map(_is_number).all() for c, _ in columns]
    order = a.get("sorted_by", f"best {metric} ({a['mode']})")
    title = f"search {a['search_id']} (experiment {a['experiment']}): {len(frame)} trials, by {order}"
    return "\n".join([title, text_table([h for _, h in columns], rows, numeric)])


def _compare_table(frame) -> str:
    from unitune.results import STATES  # pandas: when the command runs, not for --help

    columns = [
        ("search_id", "search"),
        ("state", "state"),
        ("metric", "metric"),
        ("best", "best"),
        ("median", "median"),
        ("trials", "trials"),
        *((s, s) for s in STATES),
        ("trial_epochs", "trial-epochs"),
        ("best_trial", "best trial"),
    ]
    rows = [
        [_cell(r[c]) if c not in ("metric",) else f"{r['metric']} ({r['mode']})" for c, _ in columns]
        for _, r in frame.iterrows()
    ]
    numeric = [c in ("best", "median", "trials", "trial_epochs", *STATES) for c, _ in columns]
    return text_table([h for _, h in columns], rows, numeric)


def _is_number(value) -> bool:
    return value is None or (isinstance(value, (int, float)) and not isinstance(value, bool)) or hasattr(value, "dtype")
