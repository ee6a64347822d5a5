"""The ``unitune`` command line: thin; every command is ``run(args) -> exit code``.

Commands are registered in ``COMMANDS``. A command's module is imported only when it runs,
so ``unitune --help`` and ``unitune validate`` start without importing torch, Ray or MLflow.
A ``UserError`` ends in one ``unitune: error: ...`` message and exit code 2, no traceback.
"""

from __future__ import annotations

import argparse
import re
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from unitune import __version__, evaluate, export, submit, ui  # these import Ray/MLflow only when they run
from unitune.errors import UserError, mask_uri, shorten
from unitune.search import command as search_command  # imports Ray/Optuna only when it runs
from unitune.study import command as study_command  # imports Ray/Optuna only when it runs

OVERRIDE = re.compile(r"^[A-Za-z_][\w.]*=")


@dataclass(frozen=True)
class Command:
    """A subcommand: ``add_arguments(parser)`` declares its options, ``run(args)`` returns the exit code."""

    name: str
    help: str
    add_arguments: Callable[[argparse.ArgumentParser], None]
    run: Callable[[argparse.Namespace], int]


def add_job_arguments(parser: argparse.ArgumentParser) -> None:
    """``JOB [--space FILE] [key.path=value ...]``: the arguments of every job command."""
    parser.add_argument("job", metavar="JOB", help="job file (jobs/*.yaml)")
    parser.add_argument("--space", metavar="FILE", help="search-space file (default: the job's search.space)")
    parser.add_argument("overrides", nargs="*", metavar="key.path=value",
                        help="override job keys, e.g. loss.margin=0.3 train.epochs=2")


def load_job_from_args(args: argparse.Namespace):
    """The validated ``JobSpec`` of ``add_job_arguments``' arguments (``--space`` applied)."""
    from unitune.config import load_job

    overrides = list(args.overrides)
    if getattr(args, "space", None):
        overrides.append(f"search.space={Path(args.space).resolve()}")
    return load_job(args.job, overrides)


def load_space_for(job):
    """The job's ``SearchSpaceSpec`` checked against the job, or ``None`` when it names none."""
    from unitune.config import load_space

    return load_space(job.search.space, job) if job.search.space is not None else None


def run_validate(args: argparse.Namespace) -> int:
    """Check a job (and its search space) without running anything; print a summary."""
    from unitune.config import missing_inputs, space_warnings
    from unitune.preflight import preflight

    job = load_job_from_args(args)
    space = load_space_for(job)
    for line in summarize(job, space):
        print(shorten(line, 300))
    problems = missing_inputs(job)
    for problem in problems:
        print(f"unitune: warning: {job.source}: {problem} (needed to run this job)", file=sys.stderr)
    for warning in space_warnings(space) if space is not None else []:
        print(f"unitune: warning: {warning}", file=sys.stderr)
    if not problems:
        preflight(job)  # the data too, where it is on this machine: what train and search check first
    print("OK")
    return 0


def summarize(job, space) -> list[str]:
    """Short human summary of a job and its search space, one line per aspect."""
    data = job.data
    if data.format == "synthetic":
        s = data.synthetic
        where = f"{s.num_train}/{s.num_val}/{s.num_test} train/val/test items, {s.image_size}px"
    else:
        where = f"root {data.root}, annotations {data.annotations}"
    model = job.model
    what = {"tiny": f"preset {model.preset}", "clip": f"checkpoint {model.checkpoint}",
            "two_tower": f"{model.image_encoder} + {model.text_encoder}"}[model.name]
    res = job.resources
    device = f"{res.gpu_per_worker:g} GPU" if res.use_gpu else f"{res.cpu_per_worker:g} CPU"
    lines = [
        f"job:       {job.name} ({job.source})",
        f"data:      {data.format} {data.modality}: {where}",
        f"model:     {model.name} ({what}), embed_dim {model.embed_dim}",
        f"loss:      margin {job.loss.margin:g}, gamma {job.loss.gamma:g}, mining {job.loss.mining}",
        f"train:     {job.train.epochs} epochs, global batch {job.train.batch_size}, "
        f"{res.num_workers} worker(s) x {device}",
        f"ray:       {job.ray.address or 'local (127.0.0.1)'}",
        f"tracking:  {mask_uri(job.tracking.uri)} (experiment {job.experiment})",
    ]
    if space is None:
        lines.append("space:     none (search.space not set)")
        return lines
    conditional = sum(1 for p in space.params.values() if p.when)
    asha = f"ASHA {space.asha.grace_period}..{space.asha.max_epochs} epochs" if space.asha else "no ASHA"
    metrics, modes = space.objective_names()
    lines.append(f"space:     {space.source}: {len(space.params)} params ({conditional} conditional), "
                 f"{len(space.fixed)} fixed; {space.num_trials} trials, {asha}; "
                 + ", ".join(f"{m} ({d})" for m, d in zip(metrics, modes)))
    return lines


def run_train(args: argparse.Namespace) -> int:
    """Train one job on Ray Train, log it as one MLflow run, print the final metrics."""
    job = load_job_from_args(args)
    from unitune.config import require_inputs
    from unitune.preflight import preflight

    require_inputs(job)
    preflight(job)  # the data, before Ray and MLflow (and before importing them)
    from unitune.train.run import train

    train(job)
    return 0


COMMANDS: list[Command] = [
    Command("validate", "check a job and its search space without running", add_job_arguments, run_validate),
    # --- register further commands here (each module imported lazily inside its run function):
    Command("train", "train one job (Ray Train) and log it to MLflow", add_job_arguments, run_train),
    Command("search", "search the loss's hyperparameters (Ray Tune, Optuna, ASHA; MLflow per trial)",
            search_command.add_arguments, search_command.run),
    Command("study", "compare loss families: one search each, the bests over seeds, intervals (MLflow study run)",
            study_command.add_arguments, study_command.run),
    Command("eval", "measure a model (saved, a run's, or the job's before training) without training",
            evaluate.add_arguments, evaluate.run),
    Command("export", "write the best trial of a search as a job file for `unitune train`",
            export.add_arguments, export.run),
    Command("submit", "run a search on a Ray cluster (Ray Jobs API)", submit.add_submit_arguments,
            submit.run_submit),
    Command("status", "status of a submitted search", submit.add_job_id_arguments, submit.run_status),
    Command("logs", "logs of a submitted search", submit.add_logs_arguments, submit.run_logs),
    Command("stop", "stop a submitted search", submit.add_job_id_arguments, submit.run_stop),
    Command("ui", "browse a job's MLflow store in the MLflow UI", ui.add_arguments, ui.run),
]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="unitune",
        description="Hyperparameter search for vision-language retrieval with the unified loss.",
    )
    parser.add_argument("-V", "--version", action="version", version=f"unitune {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for command in COMMANDS:
        child = sub.add_parser(command.name, help=command.help, description=command.help)
        command.add_arguments(child)
        child.set_defaults(run=command.run)
    return parser


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    """Parse ``argv``; ``key=value`` overrides may come before or after options."""
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    overrides = [a for a in extra if OVERRIDE.match(a)]
    unknown = [a for a in extra if not OVERRIDE.match(a)]
    if unknown or (overrides and not hasattr(args, "overrides")):
        parser.error(f"unrecognized arguments: {' '.join(unknown or overrides)}")
    if overrides:
        args.overrides = list(args.overrides) + overrides
    return args


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``unitune`` console script; returns the exit code."""
    try:
        args = parse_args(argv)
        return args.run(args)
    except UserError as exc:
        print(f"unitune: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("unitune: interrupted", file=sys.stderr)
        return 130
