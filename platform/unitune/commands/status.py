"""``unitune status JOB_ID [--address URL]``: the status of a submitted search."""

from __future__ import annotations

import argparse

from unitune.submit import add_job_id_arguments, connect, job_info, resolve_address


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_job_id_arguments(parser)


def run(args: argparse.Namespace) -> int:
    """Print the job's status (PENDING, RUNNING, SUCCEEDED, FAILED, STOPPED) and message."""
    address = resolve_address(args.address)
    info = job_info(connect(address), args.job_id, address)
    print(f"{args.job_id}: {info.status}" + (f" ({info.message})" if info.message else ""))
    return 0
