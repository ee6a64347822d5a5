"""``unitune search JOB [--space FILE] [--address ADDR] [--warm-start ID] [--resume] [overrides]``.

Light at import (the CLI imports it to build its parser; it never imports the CLI); Ray, Optuna and MLflow are
imported when the command runs.
"""

from __future__ import annotations

import argparse
import shlex
import sys

from unitune.commands.jobargs import add_job_arguments, load_job_from_args, load_space_for
from unitune.errors import UserError, redact
from unitune.probes import SQLITE_LOCKED_HINT, sqlite_locked


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_job_arguments(parser)
    parser.add_argument(
        "--address", metavar="ADDR", help="Ray address (default: the job's ray.address; none: a local Ray on 127.0.0.1)"
    )
    parser.add_argument(
        "--warm-start",
        metavar="SEARCH_ID",
        help="seed the sampler with the completed trials of an earlier search's Optuna study",
    )
    parser.add_argument(
        "--resume",
        action="store_true",
        help="continue the newest interrupted search of this job and space (same "
        "working directory: Ray Tune's state is in .unitune/tune)",
    )
    parser.add_argument("--quiet", action="store_true", help="no live trials table")


def run(args: argparse.Namespace) -> int:
    """Run (or resume) the search, print its summary; 0 when at least one trial reported."""
    from unitune.config import require_inputs, space_warnings  # the job schema (pydantic): not for --help

    job = load_job_from_args(args)
    space = load_space_for(job)
    if space is None:
        raise UserError(f"{job.source}: search.space: not set; give --space FILE")
    require_inputs(job)
    for warning in space_warnings(space):
        print(f"unitune: warning: {warning}", file=sys.stderr)
    from unitune.preflight import preflight  # PIL: when the command runs

    preflight(job, splits=("train", "val"))  # the data a search reads, before Ray and MLflow
    # Ray, Optuna and MLflow: when the command runs, not for --help
    from unitune.search.driver import run_search
    from unitune.search.report import bound_warnings, format_summary

    space_arg = ["--space", args.space] if args.space else []
    again = "unitune search " + shlex.join([args.job, *space_arg, *args.overrides, "--resume"])
    try:
        result = run_search(
            job,
            space,
            address=args.address,
            warm_start_from=args.warm_start,
            verbose=not args.quiet,
            resume=args.resume,
            resume_hint=again,
        )
    except Exception as exc:
        if not sqlite_locked(exc):
            raise
        raise UserError(f"tracking.uri {redact(job.tracking.uri)}: {SQLITE_LOCKED_HINT}") from None
    print(redact(format_summary(result.summary, job.tracking.uri, args.job)))
    for warning in bound_warnings(result.summary, space):
        print(f"unitune: warning: {warning}", file=sys.stderr)
    if result.interrupted:
        if result.signal is None:
            print(f"interrupted: resume with  {again}", file=sys.stderr)
        return 128 + result.signal if result.signal else 130
    trials = result.summary["trials"]
    errors = {t["error"] for t in trials if t["state"] == "failed"}
    if trials and all(t["state"] == "failed" for t in trials) and len(errors) == 1:
        raise UserError(f"every trial failed: {errors.pop()}")
    return 0 if result.summary["best"] is not None else 1
