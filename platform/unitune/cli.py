"""The ``unitune`` command line: thin; every command is ``run(args) -> exit code``.

This module is the one place that builds the parser. Commands are registered in
``COMMANDS``, one entry each; a command is a module with ``add_arguments(parser)`` and
``run(args) -> int`` (see :mod:`unitune.commands`) that imports torch, Ray and MLflow only
inside ``run``, so ``unitune --help`` and ``unitune validate`` start without them.
A ``UserError`` ends in one ``unitune: error: ...`` message and exit code 2, no traceback.
"""

from __future__ import annotations

import argparse
import re
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass

# Command modules import torch, Ray, Optuna and MLflow only inside run(); none imports this module.
from unitune import __version__, evaluate, export, terminal, ui
from unitune.commands import logs, results, status, stop, submit, train, validate
from unitune.errors import UserError
from unitune.search import command as search
from unitune.study import command as study

OVERRIDE = re.compile(r"^[A-Za-z_][\w.]*=")


@dataclass(frozen=True)
class Command:
    """A subcommand: ``add_arguments(parser)`` declares its options, ``run(args)`` returns the exit code."""

    name: str
    help: str
    add_arguments: Callable[[argparse.ArgumentParser], None]
    run: Callable[[argparse.Namespace], int]


# One entry per command: name, help, and its module's add_arguments and run.
COMMANDS: list[Command] = [
    Command("validate", "check a job and its search space without running", validate.add_arguments, validate.run),
    Command("train", "train one job (Ray Train) and log it to MLflow", train.add_arguments, train.run),
    Command(
        "search",
        "search the loss's hyperparameters (Ray Tune, Optuna, ASHA; MLflow per trial)",
        search.add_arguments,
        search.run,
    ),
    Command(
        "study",
        "compare loss families: one search each, the bests over seeds, intervals (MLflow study run)",
        study.add_arguments,
        study.run,
    ),
    Command(
        "eval",
        "measure a model (saved, a run's, or the job's before training) without training",
        evaluate.add_arguments,
        evaluate.run,
    ),
    Command(
        "export", "write the best trial of a search as a job file for `unitune train`", export.add_arguments, export.run
    ),
    Command("submit", "run a search on a Ray cluster (Ray Jobs API)", submit.add_arguments, submit.run),
    Command("status", "status of a submitted search", status.add_arguments, status.run),
    Command("logs", "logs of a submitted search", logs.add_arguments, logs.run),
    Command("stop", "stop a submitted search", stop.add_arguments, stop.run),
    Command("ui", "browse a job's MLflow store in the MLflow UI", ui.add_arguments, ui.run),
    Command(
        "results",
        "a search's trials at the prompt (table, csv, json), or searches side by side",
        results.add_arguments,
        results.run,
    ),
]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="unitune",
        description="Hyperparameter search for vision-language retrieval with the unified loss.",
    )
    parser.add_argument("-V", "--version", action="version", version=f"unitune {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for command in COMMANDS:
        child = sub.add_parser(command.name, help=command.help, description=command.help)
        command.add_arguments(child)
        child.set_defaults(run=command.run)
    return parser


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    """Parse ``argv``; ``key=value`` overrides may come before or after options."""
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    overrides = [a for a in extra if OVERRIDE.match(a)]
    unknown = [a for a in extra if not OVERRIDE.match(a)]
    if unknown or (overrides and not hasattr(args, "overrides")):
        parser.error(f"unrecognized arguments: {' '.join(unknown or overrides)}")
    if overrides:
        args.overrides = list(args.overrides) + overrides
    return args


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``unitune`` console script; returns the exit code."""
    try:
        args = parse_args(argv)
        terminal.open_log(args.command)  # the libraries' chatter to a file, not the terminal
        code = args.run(args)
        log = terminal.close_log()
        if log is not None:
            print(f"unitune: library log: {log}", file=sys.stderr)
        return code
    except UserError as exc:
        print(f"unitune: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("unitune: interrupted", file=sys.stderr)
        return 130
    finally:
        terminal.close_log()
