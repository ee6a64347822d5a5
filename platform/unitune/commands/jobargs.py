"""The arguments every job command takes, ``JOB [--space FILE] [key.path=value ...]``,
and the validated job they name."""

from __future__ import annotations

import argparse
from pathlib import Path


def add_job_arguments(parser: argparse.ArgumentParser) -> None:
    """``JOB [--space FILE] [key.path=value ...]``: the arguments of every job command."""
    parser.add_argument("job", metavar="JOB", help="job file (jobs/*.yaml)")
    parser.add_argument("--space", metavar="FILE", help="search-space file (default: the job's search.space)")
    parser.add_argument(
        "overrides", nargs="*", metavar="key.path=value", help="override job keys, e.g. loss.margin=0.3 train.epochs=2"
    )


def load_job_from_args(args: argparse.Namespace):
    """The validated ``JobSpec`` of ``add_job_arguments``' arguments (``--space`` applied)."""
    from unitune.config import load_job  # the job schema (pydantic): loaded when the command runs, not for --help

    overrides = list(args.overrides)
    if getattr(args, "space", None):
        overrides.append(f"search.space={Path(args.space).resolve()}")
    return load_job(args.job, overrides)


def load_space_for(job):
    """The job's ``SearchSpaceSpec`` checked against the job, or ``None`` when it names none.

    Raises:
        UserError: ``search.space`` names a file that does not exist (``job: search.space: ...``).
    """
    from unitune.config import load_space, require_space  # the job schema (pydantic): not for --help

    path = require_space(job)
    return load_space(path, job) if path is not None else None
