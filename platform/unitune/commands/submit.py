"""``unitune submit JOB [--space FILE] [--address URL] [--python CMD] [--resume] [overrides]``:
validate the job here, submit its search to a Ray cluster (:mod:`unitune.submit`), print
the job id and the dashboard URL."""

from __future__ import annotations

import argparse
from pathlib import Path

from unitune.commands.jobargs import add_job_arguments, load_job_from_args
from unitune.errors import UserError, first_line
from unitune.submit import add_address_argument, connect, plan_submission, resolve_address


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.epilog = ("The search runs as `python -m unitune search JOB` on the cluster's head node, "
                     "so the cluster's Python must have unitune installed.")
    add_job_arguments(parser)
    add_address_argument(parser)
    parser.add_argument("--python", metavar="CMD",
                        help="the cluster's Python that has unitune installed (default: this "
                             "Python for a cluster on this machine, else `python`)")
    parser.add_argument("--resume", action="store_true",
                        help="continue the newest interrupted search of this job and space (needs "
                             "search.storage that outlives the job, unless the cluster runs on this machine)")
    parser.add_argument("--allow-local-store", action="store_true",
                        help="submit to a remote cluster although tracking.uri is a local sqlite/file "
                             "store (only when the cluster sees the same path, e.g. a shared disk)")


def run(args: argparse.Namespace) -> int:
    """Validate the job here, submit it, print the job id and the dashboard URL."""
    job = load_job_from_args(args)
    if job.search.space is None:
        raise UserError(f"{args.job}: search.space: not set; pass --space FILE")
    address = resolve_address(args.address)
    submission = plan_submission(job, Path(args.job), args.overrides, address=address,
                                 python=args.python, allow_local_store=args.allow_local_store,
                                 resume=args.resume)
    client = connect(address)
    try:
        job_id = client.submit_job(entrypoint=submission.entrypoint,
                                   runtime_env=submission.runtime_env, metadata=submission.metadata)
    except Exception as exc:  # Ray raises RuntimeError/ValueError with the server's reason
        raise UserError(f"Ray cluster {address} rejected the job: {first_line(exc)}") from None
    print(f"submitted {job_id} to {address}")
    print(f"  entrypoint: {submission.entrypoint}")
    print(f"  working_dir: {submission.runtime_env['working_dir']}")
    print(f"  dashboard: {address}/#/jobs/{job_id}")
    print(f"  follow it: unitune logs {job_id} --follow --address {address}")
    return 0
