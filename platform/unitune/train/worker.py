"""The per-worker training function, for Ray Train and for one plain process.

``_fit`` is the whole run of one worker: build data and model, open the feature cache
(``unitune.features``), resume, evaluate the untrained model (epoch 0), then per epoch
train, evaluate, checkpoint and report. A checkpoint holds the trainable state only
(``DualEncoder.trainable_state``: trainable parameters, their BatchNorm statistics, the
optimiser and schedule); the frozen weights are rebuilt from the job and checked against
the digest the checkpoint records. Two thin entry points feed it:

- :func:`train_loop_per_worker` for ``ray.train.torch.TorchTrainer`` (DDP through
  ``prepare_model``/``prepare_data_loader``, report and resume through ``ray.train``);
- :func:`run_training`, the same loop in the calling process with a report callback
  (no Ray import; the search runs its one-worker trials this way).
"""

from __future__ import annotations

import os
import random
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import DataLoader, Dataset, DistributedSampler

from unitune.config import JobSpec
from unitune.data import Collator, build_dataset, check_batch_size
from unitune.errors import UserError
from unitune.features import CachedCollator, CachedPairs, FeatureCache, augment, job_model, open_cache
from unitune.losses import LearnableScale
from unitune.models import DualEncoder, save_model
from unitune.ranks import FILE as RANKS_FILE
from unitune.ranks import QueryRanks
from unitune.train.loop import ContrastiveStep, evaluate_with_ranks, train_one_epoch
from unitune.train.optim import build_optimizer, build_scheduler

CHECKPOINT_FILE = "state.pt"
MODEL_DIR = "model"  # inside the last epoch's checkpoint: the trained model, save_model format
# Fault injection for the resume test: rank 0 exits once at the start of this epoch,
# leaving the marker file so that the retried worker does not exit again.
FAULT_EPOCH_ENV = "UNITUNE_FAULT_EPOCH"
FAULT_MARKER_ENV = "UNITUNE_FAULT_MARKER"

Report = Callable[[dict, "str | None"], None]


def save_checkpoint(directory: str | os.PathLike, state: dict) -> Path:
    """Write ``state`` to ``directory/state.pt`` atomically (temp file, then rename)."""
    path = Path(directory) / CHECKPOINT_FILE
    tmp = path.with_suffix(".tmp")
    torch.save(state, tmp)
    os.replace(tmp, path)
    return path


def load_checkpoint(directory: str | os.PathLike) -> dict:
    """Read a checkpoint written by :func:`save_checkpoint` (``weights_only=True``).

    Raises:
        UserError: ``directory`` holds no ``state.pt``.
    """
    path = Path(directory) / CHECKPOINT_FILE
    if not path.is_file():
        raise UserError(f"{path}: no unitune checkpoint here")
    return torch.load(path, map_location="cpu", weights_only=True)


def run_training(
    job: JobSpec,
    *,
    report: Report,
    checkpoint_dir: str | os.PathLike | None = None,
    resume_from: str | os.PathLike | None = None,
    evaluate_test: bool = False,
    save_final_model: bool = True,
    report_epoch_0: bool = True,
    on_step: Callable | None = None,
) -> dict:
    """Train ``job`` in this process: one worker, no Ray, no DDP.

    Args:
        job: the validated job.
        report: called as ``report(metrics, checkpoint)``: first for epoch 0 (the
            untrained model's validation metrics, ``checkpoint`` None; not when resuming),
            then once per epoch with the flat metrics dict (see docs/internals.md "Train")
            and a directory holding that epoch's checkpoint (``state.pt``; after the last
            epoch also ``model/`` when ``save_final_model``). Without ``checkpoint_dir``
            the directory is temporary: copy it during the call if you need it.
        checkpoint_dir: keep the latest checkpoint here (overwritten every epoch).
        resume_from: a checkpoint directory to continue from.
        evaluate_test: evaluate the test split after the last epoch (``test_*`` keys).
        save_final_model: write the whole trained model (``model/``, ``save_model``
            format) into the last checkpoint; a search trial does not need it.
        report_epoch_0: report the untrained model's evaluation first (epoch 0).
        on_step: ``on_step(epoch, step, steps, samples)`` after each training step (a
            :class:`unitune.progress.StepReporter`).

    Returns:
        The metrics of the last epoch.

    Raises:
        UserError: bad data or model settings; NonFiniteLossError: the loss diverged.
    """
    use_cuda = job.resources.use_gpu and torch.cuda.is_available()
    device = torch.device("cuda" if use_cuda else "cpu")
    resume = load_checkpoint(resume_from) if resume_from is not None else None
    return _fit(
        job,
        rank=0,
        world_size=1,
        device=device,
        report=report,
        resume=resume,
        checkpoint_dir=checkpoint_dir,
        evaluate_test=evaluate_test,
        save_final_model=save_final_model,
        report_epoch_0=report_epoch_0,
        on_step=on_step,
    )


def train_loop_per_worker(config: dict) -> None:
    """Ray Train worker function: ``config = {"job": job.model_dump(mode="json"),
    "evaluate_test": bool, "save_model": bool (default True), "report_epoch_0": bool
    (default False until every consumer of the reports takes an epoch 0 without training
    keys), "on_step": a step reporter for rank 0 (optional)}``. Resumes from
    ``ray.train.get_checkpoint()`` when Ray restarts the workers after a failure."""
    import ray.train
    import ray.train.torch

    job = JobSpec.model_validate(config["job"])
    context = ray.train.get_context()
    resume = None
    checkpoint = ray.train.get_checkpoint()
    if checkpoint is not None:
        with checkpoint.as_directory() as directory:
            resume = load_checkpoint(directory)

    def report(metrics: dict, directory: str | None) -> None:
        ckpt = ray.train.Checkpoint.from_directory(directory) if directory else None
        ray.train.report(metrics, checkpoint=ckpt)

    _fit(
        job,
        rank=context.get_world_rank(),
        world_size=context.get_world_size(),
        device=ray.train.torch.get_device(),
        report=report,
        resume=resume,
        evaluate_test=bool(config.get("evaluate_test", False)),
        save_final_model=bool(config.get("save_model", True)),
        report_epoch_0=bool(config.get("report_epoch_0", False)),
        on_step=config.get("on_step") if context.get_world_rank() == 0 else None,
        prepare_model=ray.train.torch.prepare_model,
        # Our loader already has its DistributedSampler (seeded by the job); Ray only
        # adds the host-to-device transfer.
        prepare_loader=lambda loader: ray.train.torch.prepare_data_loader(loader, add_dist_sampler=False),
    )


def enable_gradient_checkpointing(encoder: torch.nn.Module, model_name: str) -> int:
    """Turn on activation checkpointing in every backbone that supports it (Hugging Face
    ``PreTrainedModel`` towers): recompute activations in backward to save memory.

    Returns:
        The number of backbones switched.

    Raises:
        UserError: no backbone of the model supports it.
    """
    switched = 0
    for module in encoder.modules():
        if not getattr(module, "supports_gradient_checkpointing", False):
            continue
        # transformers 5 renamed the method; the old name warns and goes away in v6.
        enable = getattr(module, "activation_checkpointing_enable", None) or getattr(
            module, "gradient_checkpointing_enable", None
        )
        if enable is not None:
            enable()
            switched += 1
    if switched == 0:
        raise UserError(f"train.grad_checkpointing: no tower of model {model_name!r} supports it; set it to false")
    return switched


def _seed_epoch(seed: int, epoch: int, rank: int) -> None:
    """Seed torch and Python per (epoch, rank): augmentations differ between workers,
    and a resumed run redraws exactly what the uninterrupted run would have drawn, so
    no RNG state needs to travel in the checkpoint."""
    value = seed + 100_003 * epoch + rank
    torch.manual_seed(value)
    random.seed(value)


def _maybe_fault(epoch: int, rank: int) -> None:
    marker = os.environ.get(FAULT_MARKER_ENV)
    if rank == 0 and marker and os.environ.get(FAULT_EPOCH_ENV) == str(epoch) and not os.path.exists(marker):
        Path(marker).write_text(f"worker exited at epoch {epoch}\n")
        os._exit(1)


@dataclass
class _Setup:
    """What one worker trains with (built by :func:`_setup`)."""

    encoder: DualEncoder
    scale: LearnableScale | None
    step_module: torch.nn.Module  # ContrastiveStep, possibly DDP-wrapped
    loader: DataLoader
    sampler: DistributedSampler
    optimizer: torch.optim.Optimizer
    scheduler: Any
    cache: FeatureCache | None
    frozen_sha256: str


def _fit(
    job: JobSpec,
    *,
    rank: int,
    world_size: int,
    device: torch.device,
    report: Report,
    resume: dict | None = None,
    checkpoint_dir: str | os.PathLike | None = None,
    evaluate_test: bool = False,
    save_final_model: bool = True,
    report_epoch_0: bool = True,
    on_step: Callable | None = None,
    prepare_model: Callable = lambda module: module,
    prepare_loader: Callable = lambda loader: loader,
) -> dict:
    """One worker's whole run. Rank 0 evaluates, checkpoints and returns the metrics."""
    run = _setup(job, rank, world_size, device)
    start_epoch, train_time = 0, 0.0
    if resume is not None:
        _load_state(resume, run.encoder, run.scale, run.optimizer, run.scheduler, run.frozen_sha256)
        start_epoch, train_time = resume["epoch"], resume["train_time_s"]
    run.step_module, run.loader = prepare_model(run.step_module), prepare_loader(run.loader)
    validate = _metrics_only(_evaluator(job, "val", run, device)) if rank == 0 else None  # rank 0 evaluates
    metrics: dict = {}
    if start_epoch == 0 and report_epoch_0:
        metrics = _epoch_0(run, validate)
        report(metrics, None)
    for epoch in range(start_epoch + 1, job.train.epochs + 1):
        _maybe_fault(epoch, rank)
        _seed_epoch(job.seed, epoch, rank)
        run.sampler.set_epoch(epoch)
        started = time.perf_counter()
        stats = train_one_epoch(
            run.step_module,
            run.loader,
            run.optimizer,
            run.scheduler,
            job.loss,
            epoch,
            device=device,
            grad_clip=job.optim.grad_clip,
            precision=job.train.precision,
            on_step=on_step,
        )
        seconds = time.perf_counter() - started
        train_time += seconds
        last = epoch == job.train.epochs
        samples = stats.pop("num_samples")
        metrics = {"epoch": epoch, **stats, "samples_per_s": samples / seconds, "train_time_s": train_time}
        if validate is not None and (epoch % job.train.eval_every == 0 or last):
            metrics.update(validate())
        test, ranks = _evaluator(job, "test", run, device)() if rank == 0 and last and evaluate_test else ({}, None)
        metrics.update({f"test_{k}": v for k, v in test.items()})
        metrics["epoch_time_s"] = time.perf_counter() - started
        final_model = run.encoder if last and save_final_model else None
        _checkpoint_and_report(
            report, metrics, _state(run, epoch, train_time), final_model, rank, checkpoint_dir, ranks
        )
    return metrics


def _setup(job: JobSpec, rank: int, world_size: int, device: torch.device) -> _Setup:
    """The model (same seed on every worker: identical initial weights; DDP also broadcasts
    rank 0's), the feature cache, this worker's shard of the training data, the optimiser."""
    if device.type == "cpu":
        # As many threads as the job gives each worker: more threads than cores slow
        # small models down by an order of magnitude on a shared machine.
        torch.set_num_threads(max(1, int(job.resources.cpu_per_worker)))
    train_set, encoder = job_model(job)
    check_batch_size(train_set, job.train.batch_size)
    encoder.to(device)
    cache = open_cache(job, encoder)
    loader, sampler = _train_loader(job, train_set, encoder, cache, rank, world_size, device)
    if job.train.grad_checkpointing:
        enable_gradient_checkpointing(encoder, job.model.name)
    scale = LearnableScale(job.loss.gamma, job.loss.max_gamma) if job.loss.learnable_gamma else None
    # On the device before the optimiser exists, so that its loaded state lands there too.
    step_module = ContrastiveStep(encoder, scale).to(device)
    optimizer = build_optimizer(encoder, job.optim, scale)
    scheduler = build_scheduler(
        optimizer, warmup_epochs=job.optim.warmup_epochs, epochs=job.train.epochs, steps_per_epoch=len(loader)
    )
    return _Setup(encoder, scale, step_module, loader, sampler, optimizer, scheduler, cache, encoder.frozen_digest())


def _train_loader(
    job: JobSpec, train_set, encoder, cache: FeatureCache | None, rank: int, world_size: int, device: torch.device
) -> tuple[DataLoader, DistributedSampler]:
    """This worker's loader over the training pairs (cached prefixes when the cache is on)."""
    # Random crops / frames unless the cache is on (it holds one deterministic view) or
    # data.augment is false.
    random_views = cache is None and augment(job) is not False
    train_set.transform, train_set.train = encoder.image_transform(train=random_views), random_views
    # The collators hold only the tokenizer: a bound encoder.tokenize would pickle the
    # whole model into every DataLoader worker.
    train_data: Dataset
    collate: Callable[[list], dict]
    if cache is not None:
        train_data = CachedPairs(train_set, cache.load(encoder, train_set, device=device))
        collate = CachedCollator(encoder.tokenizer)
    else:
        train_data, collate = train_set, Collator(encoder.tokenizer)
    # Cached visual prefixes need no decoding: loader processes would only add start-up.
    cached_visual = cache is not None and cache.split["visual"] is not None
    num_workers = 0 if cached_visual else job.data.num_workers
    sampler: DistributedSampler = DistributedSampler(
        train_data, num_replicas=world_size, rank=rank, shuffle=True, seed=job.seed, drop_last=True
    )
    # drop_last: every worker needs the same local batch size for the gather, and a tiny
    # last batch would have too few negatives to be worth a step.
    loader = DataLoader(
        train_data,
        batch_size=job.train.batch_size // world_size,
        sampler=sampler,
        drop_last=True,
        collate_fn=collate,
        num_workers=num_workers,
        pin_memory=device.type == "cuda",
        persistent_workers=num_workers > 0,
    )
    return loader, sampler


def _evaluator(job: JobSpec, split: str, run: _Setup, device: torch.device) -> Callable[[], tuple[dict, QueryRanks]]:
    """``() -> (metrics, per-query ranks)`` of the model on ``split`` (``val``, or ``test``
    with ``data.test_folds``).

    Evaluation runs on rank 0 only, while the others wait in report() (a barrier):
    validation splits are a few thousand items, one forward pass each, and the metrics
    need the whole similarity matrix in one place anyway.
    """
    dataset = build_dataset(
        split, **job.data.dataset_options(), transform=run.encoder.image_transform(train=False), train=False
    )
    cached = run.cache.load(run.encoder, dataset, device=device) if run.cache is not None else None
    return lambda: evaluate_with_ranks(
        run.encoder,
        dataset,
        batch_size=job.train.eval_batch_size,
        device=device,
        precision=job.train.precision,
        cached=cached,
        folds=job.data.test_folds if split == "test" else 1,
    )


def _metrics_only(evaluate: Callable[[], tuple[dict, QueryRanks]]) -> Callable[[], dict]:
    return lambda: evaluate()[0]


def _epoch_0(run: _Setup, validate: Callable[[], dict] | None) -> dict:
    """Epoch 0: the untrained (pretrained) model, so every curve starts at the same point."""
    started = time.perf_counter()
    metrics: dict = {"epoch": 0, "train_time_s": 0.0}
    if validate is not None:  # rank 0
        metrics.update(validate())
        if run.cache is not None:
            metrics.update({k: run.cache.stats[k] for k in ("feature_cache_s", "entries_built", "entries_reused")})
    metrics["epoch_time_s"] = time.perf_counter() - started
    return metrics


def _state(run: _Setup, epoch: int, train_time: float) -> dict:
    """The checkpoint: the trainable state only (see the module docstring)."""
    return {
        "trainable": run.encoder.trainable_state(),
        "frozen_sha256": run.frozen_sha256,
        "scale": run.scale.state_dict() if run.scale is not None else None,
        "optimizer": run.optimizer.state_dict(),
        "scheduler": run.scheduler.state_dict(),
        "epoch": epoch,
        "train_time_s": train_time,
    }


def _load_state(resume: dict, encoder, scale, optimizer, scheduler, frozen_sha256: str) -> None:
    """Continue from a checkpoint of :func:`_fit`. Raises UserError when the frozen weights
    the job builds are not those the checkpoint was trained on, or the freeze policy differs."""
    if "trainable" not in resume:
        raise UserError("checkpoint: written by an older unitune (whole model state); start the run again")
    if resume["frozen_sha256"] != frozen_sha256:
        raise UserError(
            "checkpoint: the job's frozen weights differ from those it was trained on "
            "(model sources or seed changed); start the run again"
        )
    try:
        encoder.load_trainable_state(resume["trainable"])
    except ValueError as exc:
        raise UserError(f"checkpoint: {exc} (model.freeze changed?)") from None
    if scale is not None:
        scale.load_state_dict(resume["scale"])
    optimizer.load_state_dict(resume["optimizer"])
    scheduler.load_state_dict(resume["scheduler"])


def _checkpoint_and_report(
    report: Report,
    metrics: dict,
    state: dict,
    final_model,
    rank: int,
    checkpoint_dir: str | os.PathLike | None,
    test_ranks: QueryRanks | None = None,
) -> None:
    """Rank 0 writes the checkpoint (and, after the last epoch, the model and the test
    split's per-query ranks, ``test_ranks.csv``); all ranks report."""
    if rank != 0:
        report(metrics, None)
        return
    with tempfile.TemporaryDirectory(prefix="unitune-ckpt-") as tmp:
        directory = Path(checkpoint_dir) if checkpoint_dir is not None else Path(tmp)
        directory.mkdir(parents=True, exist_ok=True)
        save_checkpoint(directory, state)
        if final_model is not None:
            save_model(final_model, directory / MODEL_DIR)
        if test_ranks is not None:
            test_ranks.write_csv(directory / RANKS_FILE)
        report(metrics, str(directory))
