"""``unitune eval JOB [--model PATH | --run RUN_ID] [--split test] [overrides]``: measure a
model without training.

Which model: ``--model PATH`` (a directory written by ``save_model``, e.g. a downloaded
``model`` artifact), ``--run RUN_ID`` (the ``model`` artifact of a ``unitune train`` run in
the job's MLflow store), or neither: the job's model as built before training (the
pretrained towers with fresh projections: the zero-shot point, epoch 0 of every curve).
Prints R@1/5/10 in both directions, RSUM, median and mean rank of the split; ``--ranks FILE``
writes its per-query ranks too (``unitune.ranks``: the table a study's final runs log).
"""

from __future__ import annotations

import argparse
import math
import os
import tempfile

from unitune.choices import RETRIEVAL_METRIC_KEYS
from unitune.errors import UserError
from unitune.terminal import text_table
from unitune.tracking import Tracker

SPLITS = ("train", "val", "test")
ROWS = RETRIEVAL_METRIC_KEYS


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("job", metavar="JOB", help="job file: its data, model and tracking store")
    which = parser.add_mutually_exclusive_group()
    which.add_argument("--model", metavar="PATH", help="saved model directory (model.json, model.pt)")
    which.add_argument("--run", dest="run_id", metavar="RUN_ID", help="MLflow run whose `model` artifact to measure")
    parser.add_argument("--split", choices=SPLITS, default="test", help="split to measure (default: test)")
    parser.add_argument(
        "--ranks",
        metavar="FILE",
        help="also write the split's per-query ranks (both directions, one CSV row per query) to FILE",
    )
    parser.add_argument("overrides", nargs="*", metavar="key.path=value", help="override job keys")


def load_for_eval(job, model_path: str | None = None, run_id: str | None = None):
    """The model to measure (see the module docstring).

    Raises:
        UserError: no saved model at ``model_path``; ``run_id`` unknown or without a model.
    """
    if run_id is not None:  # the store first: an unreachable one is refused before torch loads
        tracker = Tracker(job.tracking.uri)
        tracker.check()
    from unitune.models import build_model, load_model  # torch: when the command runs, not for --help

    if model_path is not None:
        return load_model(model_path)
    if run_id is not None:
        from mlflow.exceptions import MlflowException

        with tempfile.TemporaryDirectory(prefix="unitune-eval-") as tmp:
            try:
                # The plain artifact, or the MLflow model of that name (``unitune train``).
                local = tracker.download(f"runs:/{run_id}/model", tmp)
            except (MlflowException, OSError) as exc:
                raise UserError(
                    f"--run {run_id}: no `model` artifact in {tracker.uri} "
                    f"({str(exc).splitlines()[0] if str(exc) else type(exc).__name__})"
                ) from None
            return load_model(local)
    import torch

    from unitune.data import build_dataset  # torch: the data layer

    captions = build_dataset("train", **job.data.dataset_options(), train=False).captions  # the tiny model's vocabulary
    torch.manual_seed(job.seed)  # as training seeds it: the same initial model as epoch 0 of `unitune train`
    return build_model(job.model.model_dump(), captions=captions)


def measure(job, model, split: str = "test", ranks_file: str | None = None) -> dict:
    """Retrieval metrics of ``model`` on the job's ``split`` (``unitune.train.loop.evaluate``);
    the test split's ``folds_*`` means too when ``data.test_folds`` > 1. With ``ranks_file``
    the per-query ranks are written there (``unitune.ranks``)."""
    import torch

    # torch: the data layer and the evaluation loop
    from unitune.data import build_dataset
    from unitune.train.loop import evaluate_with_ranks

    device = torch.device("cuda" if job.resources.use_gpu and torch.cuda.is_available() else "cpu")
    dataset = build_dataset(
        split, **job.data.dataset_options(), transform=model.image_transform(train=False), train=False
    )
    metrics, ranks = evaluate_with_ranks(
        model.to(device),
        dataset,
        batch_size=job.train.eval_batch_size,
        device=device,
        precision=job.train.precision,
        folds=job.data.test_folds if split == "test" else 1,
    )
    if ranks_file is not None:
        ranks.write_csv(ranks_file)
    return metrics


def format_metrics(metrics: dict, split: str) -> str:
    """One row per metric; a second column of the fold means when ``metrics`` has them."""

    def cell(v):
        return f"{v:.2f}" if math.isfinite(v) else str(v)

    keys = [k for k in ROWS if k in metrics]
    prefixes = {split: ""}
    if any(f"folds_{k}" in metrics for k in keys):
        prefixes["fold mean"] = "folds_"
    rows = [[k, *(cell(metrics[prefix + k]) for prefix in prefixes.values())] for k in keys]
    return text_table(["metric", *prefixes], rows, [False] + [True] * len(prefixes))


def run(args: argparse.Namespace) -> int:
    from unitune.config import load_job, require_inputs  # the job schema (pydantic): not for --help

    job = load_job(args.job, args.overrides)
    require_inputs(job)
    if args.ranks is not None:
        folder = os.path.dirname(os.path.abspath(args.ranks))
        if not os.path.isdir(folder) or not os.access(folder, os.W_OK):
            raise UserError(f"--ranks {args.ranks}: {folder} is not a writable directory")
    model = load_for_eval(job, args.model, args.run_id)
    what = args.model or (f"run {args.run_id}" if args.run_id else "the job's model before training")
    print(f"{what} on the {args.split} split of {job.source}:")
    print(format_metrics(measure(job, model, args.split, args.ranks), args.split))
    if args.ranks is not None:
        print(f"per-query ranks: {args.ranks}")
    return 0
