"""``unitune stop JOB_ID [--address URL]``: stop a submitted search."""

from __future__ import annotations

import argparse

from unitune.submit import add_job_id_arguments, connect, job_info, resolve_address


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_job_id_arguments(parser)


def run(args: argparse.Namespace) -> int:
    """Ask the cluster to stop the job (its trials end; logged MLflow runs stay)."""
    address = resolve_address(args.address)
    client = connect(address)
    info = job_info(client, args.job_id, address)
    if client.stop_job(args.job_id):
        print(f"{args.job_id}: stop requested")
    else:
        print(f"{args.job_id}: already {info.status}")
    return 0
