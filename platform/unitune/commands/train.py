"""``unitune train JOB [--space FILE] [overrides]``: train one job on Ray Train, log it
as one MLflow run, print the final metrics."""

from __future__ import annotations

import argparse

from unitune.commands.jobargs import add_job_arguments, load_job_from_args


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_job_arguments(parser)


def run(args: argparse.Namespace) -> int:
    """Train one job on Ray Train, log it as one MLflow run, print the final metrics."""
    job = load_job_from_args(args)
    from unitune.config import require_inputs
    from unitune.preflight import preflight

    require_inputs(job)
    preflight(job)  # the data, before Ray and MLflow (and before importing them)
    from unitune.train.run import train

    train(job)
    return 0
