"""``unitune study JOB [--spaces FILE,FILE,...] [--seeds N] [--resume] [overrides]``.

Light at import (the CLI imports it to build its parser); Ray, Optuna and MLflow are
imported when the command runs.
"""

from __future__ import annotations

import argparse
import shlex


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("job", metavar="JOB", help="job file (jobs/*.yaml) with a study: block")
    parser.add_argument(
        "--spaces",
        metavar="FILE,FILE",
        help="search-space files of the families, the reference first (default: the job's study.spaces)",
    )
    parser.add_argument(
        "--seeds", type=int, metavar="N", help="final runs per family, seeds 0..N-1 (default: the job's study.seeds)"
    )
    parser.add_argument(
        "--resume",
        action="store_true",
        help="continue the newest interrupted study of this job: finished searches and "
        "final runs are found by their tags and not run again",
    )
    parser.add_argument("--address", metavar="ADDR", help="Ray address (default: the job's ray.address)")
    parser.add_argument("--quiet", action="store_true", help="no live trials tables")
    parser.add_argument(
        "overrides",
        nargs="*",
        metavar="key.path=value",
        help="override job keys, e.g. study.final_epochs=4 search.num_trials=4",
    )


def run(args: argparse.Namespace) -> int:
    """Plan (refusing bad input before any compute), run, report; 0 on success."""
    # Here, not at the top: the CLI imports this module to build its parser (pydantic, scipy)
    from unitune.config import load_job, require_inputs
    from unitune.study.plan import plan_study

    job = load_job(args.job, args.overrides)
    spaces = [s for s in args.spaces.split(",") if s.strip()] if args.spaces else None
    plan = plan_study(job, spaces, args.seeds)
    require_inputs(job)
    from unitune.study.runner import run_study  # Ray, MLflow, torch: only once the plan holds

    command = shlex.join(
        [
            "unitune",
            "study",
            args.job,
            *(["--spaces", args.spaces] if args.spaces else []),
            *(["--seeds", str(args.seeds)] if args.seeds is not None else []),
            *args.overrides,
        ]
    )
    run_study(plan, resume=args.resume, address=args.address, verbose=not args.quiet, command=command)
    return 0
