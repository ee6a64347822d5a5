"""``unitune train JOB [--space FILE] [--register NAME] [overrides]``: train one job on Ray
Train, log it as one MLflow run with the trained model as an MLflow model (registered as
NAME with ``--register``, the same as ``tracking.register_as=NAME``), print the final metrics."""

from __future__ import annotations

import argparse
import json

from unitune.commands.jobargs import add_job_arguments, load_job_from_args


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_job_arguments(parser)
    parser.add_argument(
        "--register",
        metavar="NAME",
        help="register the trained model in MLflow's model registry as NAME "
        "(a new version each run; the job key tracking.register_as)",
    )


def run(args: argparse.Namespace) -> int:
    """Train one job on Ray Train, log it as one MLflow run, print the final metrics."""
    if args.register is not None:  # quoted: override values are read as YAML (`--register 2024` is a name)
        args.overrides = [*args.overrides, f"tracking.register_as={json.dumps(args.register)}"]
    job = load_job_from_args(args)
    # the job schema, the data checks (PIL) and the training (torch, Ray): when the command runs
    from unitune.config import require_inputs
    from unitune.preflight import preflight

    require_inputs(job)
    preflight(job)  # the data, before Ray and MLflow (and before importing them)
    from unitune.train.run import train

    train(job)
    return 0
