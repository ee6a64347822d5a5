"""``unitune submit JOB [--space FILE] [--address URL] [--python CMD] [--resume] [overrides]``:
validate the job here, submit its search to a Ray cluster (:mod:`unitune.submit`), print
the job id and the dashboard URL."""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

from unitune.commands.jobargs import add_job_arguments, load_job_from_args
from unitune.errors import UserError
from unitune.submit import add_address_argument, connect, plan_submission, resolve_address, stage, upload_error


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.epilog = (
        "The search runs as `python -m unitune search JOB` on the cluster's head node, "
        "so the cluster's Python must have unitune installed."
    )
    add_job_arguments(parser)
    add_address_argument(parser)
    parser.add_argument(
        "--python",
        metavar="CMD",
        help="the cluster's Python that has unitune installed (default: this "
        "Python for a cluster on this machine, else `python`)",
    )
    parser.add_argument(
        "--resume",
        action="store_true",
        help="continue the newest interrupted search of this job and space (needs "
        "search.storage that outlives the job, unless the cluster runs on this machine)",
    )
    parser.add_argument(
        "--allow-local-store",
        action="store_true",
        help="submit to a remote cluster although tracking.uri is a local sqlite/file "
        "store (only when the cluster sees the same path, e.g. a shared disk)",
    )
    parser.add_argument(
        "--exclude",
        action="append",
        default=[],
        metavar="PATTERN",
        help="leave matching files out of the upload (glob on the path relative to the "
        "project, or on a file or directory name; repeatable), e.g. --exclude '*.mp4'",
    )


def run(args: argparse.Namespace) -> int:
    """Validate the job here, submit it, print the job id and the dashboard URL."""
    job = load_job_from_args(args)
    if job.search.space is None:
        raise UserError(f"{args.job}: search.space: not set; pass --space FILE")
    from unitune.config import require_space  # the job schema (pydantic): not for --help

    require_space(job)  # the search the cluster runs reads it
    address = resolve_address(args.address)
    submission = plan_submission(
        job,
        Path(args.job),
        args.overrides,
        address=address,
        python=args.python,
        allow_local_store=args.allow_local_store,
        resume=args.resume,
        excludes=args.exclude,
    )
    client = connect(address)
    with tempfile.TemporaryDirectory(prefix="unitune-submit-") as staged:
        runtime_env = stage(submission, Path(staged))
        try:
            job_id = client.submit_job(
                entrypoint=submission.entrypoint, runtime_env=runtime_env, metadata=submission.metadata
            )
        except Exception as exc:  # Ray raises RuntimeError/ValueError with the server's reason
            raise UserError(upload_error(exc, submission, address)) from None
    size = sum((submission.project / f).stat().st_size for f in submission.files)
    shown = ", ".join(submission.files[:4]) + (", ..." if len(submission.files) > 4 else "")
    print(f"submitted {job_id} to {address}")
    print(f"  entrypoint: {submission.entrypoint}")
    print(f"  uploaded from {submission.project}: {len(submission.files)} files, {size / 1024:.0f} KiB ({shown})")
    print(f"  dashboard: {address}/#/jobs/{job_id}")
    print(f"  follow it: unitune logs {job_id} --follow --address {address}")
    return 0
