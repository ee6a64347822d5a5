"""The MLflow tag names unitune writes, and the trial state machine they record.

One place for them: the search driver writes them; ``unitune.record`` reads them (its
``Role`` and ``State`` enums are the values of ``ROLE`` and ``STATE``) for the summary,
``export``, ``results`` and the study. A trial's run moves through::

    (new) ──► running ──► completed | stopped_by_asha | failed | interrupted
                 ▲                                                   │
                 └──────────────────── resume ───────────────────────┘

MLflow's status follows what a user reads as success or failure (``STATUS_OF_STATE``).
"""

from __future__ import annotations

SEARCH = "unitune.search_id"
TRIAL = "unitune.trial_id"
ROLE = "unitune.role"  # unitune.record.Role: "search" (parent), "trial" (child), "study", "final"
STATE = "unitune.state"  # a key of STATUS_OF_STATE (unitune.record.State)
STOP_EPOCH = "unitune.stopped_at_epoch"
ERROR = "unitune.error"
EPOCHS_RUN = "unitune.epochs_run"
OPTUNA_TRIAL = "unitune.optuna_trial"  # the Optuna trial number of a child run
SEARCH_KEY = "unitune.search_key"  # hash of the job and the space (what --resume matches)
PREVIOUS_TRIAL_IDS = "unitune.previous_trial_ids"  # a trial continued under a new Tune id
RAY_NODES = "unitune.ray_nodes"  # the Ray node ids a trial ran on, in order, comma-separated
STUDY = "unitune.study_id"  # a study's runs: its study run, searches and final runs
FAMILY = "unitune.family"
REFERENCE_FAMILY = "unitune.reference_family"  # a study run's reference family
BEST_FAMILY = "unitune.best_family"  # a study run's winner
BEST_TRIAL = "unitune.best_trial"  # a search's best trial and its run
BEST_RUN = "unitune.best_run"
JOB_FILE = "unitune.job_file"  # the job (and space) files a search or study ran
SPACE_FILE = "unitune.space_file"
OPTUNA_STORAGE = "unitune.optuna_storage"  # where a search's Optuna study is
OPTUNA_STUDY = "unitune.optuna_study"
WARM_START_FROM = "unitune.warm_start_from"  # the search whose trials seeded this one
WARM_START_TRIALS = "unitune.warm_start_trials"
FEATURE_CACHE_DIR = "unitune.feature_cache_dir"
KIND = "unitune.kind"  # "train": a `unitune train` run
SOURCE_RUN = "unitune.source_run"  # the trial run a trained job was exported from
SEED = "unitune.seed"
SEARCH_REPEAT = "unitune.search_repeat"  # a study's search (and its final runs) of sampler seed space.seed + r
PARENT = "mlflow.parentRunId"  # MLflow's own: a trial's (or search's) parent run
EXPERIMENT_KIND = "mlflow.experimentKind"  # MLflow's own: which UI view an experiment opens on
INF_PREFIX = "unitune.inf."  # unitune.inf.<metric> = +inf|-inf (see unitune.tracking)
BASE_JOB_ARTIFACT = "search_job.yaml"  # the parent run's base job of every trial (export reads it)

STATUS_OF_STATE = {
    "running": "RUNNING",
    "completed": "FINISHED",
    "stopped_by_asha": "FINISHED",
    "failed": "FAILED",
    "interrupted": "KILLED",
}
DONE_STATES = ("completed", "stopped_by_asha", "failed")  # final: never trained again
FINISHED_STATES = ("completed", "stopped_by_asha")  # a trial with a result (export, Pareto)
TRANSITIONS = {
    None: ("running",),
    "running": ("completed", "stopped_by_asha", "failed", "interrupted"),
    "interrupted": ("running", "interrupted"),
}


def check_transition(old: str | None, new: str) -> None:
    """Raises ValueError for a move the state machine does not allow."""
    if new not in TRANSITIONS.get(old, ()):
        raise ValueError(f"trial state {old!r} -> {new!r} is not allowed")
