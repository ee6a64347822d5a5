"""Training: the plain loop (``loop``), global-batch gather (``distributed``), AdamW and
its schedule (``optim``), the per-worker function (``worker``) and ``unitune train`` (``run``).

Importing this package imports no Ray (only ``unitune.train.run`` does), and the worker
names load on first use, so that processes which only need the loop (the gloo test
workers) do not import the model and data stacks.
"""

from unitune.train.distributed import gather_batch
from unitune.train.loop import NonFiniteLossError, evaluate, train_one_epoch

_WORKER_NAMES = ("load_checkpoint", "run_training", "train_loop_per_worker")

__all__ = ["NonFiniteLossError", "evaluate", "gather_batch", "train_one_epoch", *_WORKER_NAMES]


def __getattr__(name: str):
    if name in _WORKER_NAMES:
        from unitune.train import worker  # Ray Train and the data layer: on first use (PEP 562)

        return getattr(worker, name)
    raise AttributeError(f"module 'unitune.train' has no attribute {name!r}")
