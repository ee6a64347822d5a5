"""``unitune logs JOB_ID [--follow] [--address URL]``: the logs of a submitted search."""

from __future__ import annotations

import argparse
import asyncio

from unitune.errors import UserError, first_line
from unitune.submit import add_job_id_arguments, connect, job_info, resolve_address


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_job_id_arguments(parser)
    parser.add_argument("--follow", "-f", action="store_true", help="stream until the job ends")


def run(args: argparse.Namespace) -> int:
    """Print the job's logs so far; with ``--follow``, stream them until the job ends."""
    address = resolve_address(args.address)
    client = connect(address)
    job_info(client, args.job_id, address)  # a clear error for an unknown id
    if not args.follow:
        print(client.get_job_logs(args.job_id), end="", flush=True)
        return 0

    async def follow() -> None:
        async for chunk in client.tail_job_logs(args.job_id):
            print(chunk, end="", flush=True)

    try:
        asyncio.run(follow())
    except RuntimeError as exc:
        raise UserError(f"lost the log stream of {args.job_id} at {address}: {first_line(exc)}") from None
    return 0
