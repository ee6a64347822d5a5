"""``unitune validate JOB [--space FILE] [overrides]``: check a job and its search space
without running anything; print a summary. Imports no torch, Ray or MLflow."""

from __future__ import annotations

import argparse
import sys

from unitune.commands.jobargs import add_job_arguments, load_job_from_args, load_space_for
from unitune.errors import mask_uri, shorten


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_job_arguments(parser)


def run(args: argparse.Namespace) -> int:
    """Check a job (and its search space) without running anything; print a summary."""
    # the job schema (pydantic) and the data checks (PIL): when the command runs, not for --help
    from unitune.config import missing_inputs, space_warnings
    from unitune.preflight import preflight

    job = load_job_from_args(args)
    space = load_space_for(job)
    for line in summarize(job, space):
        print(shorten(line, 300))
    problems = missing_inputs(job)
    for problem in problems:
        print(f"unitune: warning: {job.source}: {problem} (needed to run this job)", file=sys.stderr)
    for warning in space_warnings(space) if space is not None else []:
        print(f"unitune: warning: {warning}", file=sys.stderr)
    if not problems:
        preflight(job)  # the data too, where it is on this machine: what train and search check first
    print("OK")
    return 0


def summarize(job, space) -> list[str]:
    """Short human summary of a job and its search space, one line per aspect."""
    data = job.data
    if data.format == "synthetic":
        s = data.synthetic
        where = f"{s.num_train}/{s.num_val}/{s.num_test} train/val/test items, {s.image_size}px"
    else:
        where = f"root {data.root}, annotations {data.annotations}"
    model = job.model
    what = {
        "tiny": f"preset {model.preset}",
        "clip": f"checkpoint {model.checkpoint}",
        "two_tower": f"{model.image_encoder} + {model.text_encoder}",
    }[model.name]
    res = job.resources
    device = f"{res.gpu_per_worker:g} GPU" if res.use_gpu else f"{res.cpu_per_worker:g} CPU"
    lines = [
        f"job:       {job.name} ({job.source})",
        f"data:      {data.format} {data.modality}: {where}",
        f"model:     {model.name} ({what}), embed_dim {model.embed_dim}",
        f"loss:      margin {job.loss.margin:g}, gamma {job.loss.gamma:g}, mining {job.loss.mining}",
        f"train:     {job.train.epochs} epochs, global batch {job.train.batch_size}, "
        f"{res.num_workers} worker(s) x {device}",
        f"ray:       {job.ray.address or 'local (127.0.0.1)'}",
        f"tracking:  {mask_uri(job.tracking.uri)} (experiment {job.experiment})",
    ]
    if space is None:
        lines.append("space:     none (search.space not set)")
        return lines
    conditional = sum(1 for p in space.params.values() if p.when)
    epochs = f" {space.asha.grace_period}..{space.asha.max_epochs} epochs" if space.asha else ""
    auto = " (auto)" if space.sampler == "auto" else ""
    scheduler = space.scheduler + (epochs if space.scheduler != "none" else "")
    searcher = f"sampler {space.sampler_name()}{auto}, scheduler {scheduler}"
    metrics, modes = space.objective_names()
    lines.append(
        f"space:     {space.source}: {len(space.params)} params ({conditional} conditional), "
        f"{len(space.fixed)} fixed; {space.num_trials} trials, {searcher}; "
        + ", ".join(f"{m} ({d})" for m, d in zip(metrics, modes))
    )
    return lines
