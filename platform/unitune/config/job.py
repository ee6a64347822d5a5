"""Typed job specs: what to run (data, model, loss, optimiser, budget, resources).

Every spec forbids unknown keys, so a typo in a job file is an error, not a silent default.
A job file holding only ``name: x`` is the embedded demo: synthetic images, the tiny model,
one CPU worker, local Ray and a sqlite MLflow store in the working directory.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    NonNegativeInt,
    PositiveInt,
    PrivateAttr,
    field_validator,
    model_validator,
)

from unitune.choices import (
    FREEZE_DEFAULTS,
    MODEL_DEFAULTS,
    NUM_FRAMES,
    SYNTHETIC_CACHE_DIR,
    SYNTHETIC_DEFAULTS,
    TINY_PRESET_NAMES,
    DataFormat,
    MiningMode,
    ModelName,
    PreflightMode,
    WarmupMode,
)
from unitune.errors import mask_uri, shorten
from unitune.stores import DEFAULT_ARTIFACTS, DEFAULT_STORE, default_artifacts
from unitune.tracking import unreachable_store

TINY_PRESETS = TINY_PRESET_NAMES

# Numbers where only a finite value makes sense (``.inf``/``.nan`` in YAML are refused).
PositiveFloat = Annotated[float, Field(gt=0, allow_inf_nan=False)]
NonNegativeFloat = Annotated[float, Field(ge=0, allow_inf_nan=False)]
FiniteFloat = Annotated[float, Field(allow_inf_nan=False)]
# Bounds on sizes: far above any real use, low enough that a typo fails here, not in a trial.
MAX_EMBED_DIM = 16384
MAX_IMAGE_SIZE = 4096  # pixels per side of a model input
MAX_SYNTHETIC_ITEMS = 100_000  # per split of the generated data set
MAX_SYNTHETIC_IMAGE_SIZE = 1024
MAX_FRAMES = 256
MAX_CAPTIONS_PER_ITEM = 100
MAX_BATCH = 65536
MAX_EPOCHS = 100_000
MAX_WORKERS = 4096
MAX_NAME_CHARS = 128  # the job name names MLflow experiments and Ray run directories


def shorten_repr(value: object, limit: int = 60) -> str:
    """``repr(value)`` on part of one line, credentials masked (for messages)."""
    return shorten(mask_uri(repr(value)), limit)


class FieldError(ValueError):
    """A cross-field check failed on ``field`` (a key inside the spec that raised it)."""

    def __init__(self, field: str, message: str):
        super().__init__(f"{field}: {message}")
        self.field = field
        self.message = message


class Spec(BaseModel):
    """Base of all specs: unknown keys are errors; values are checked on assignment too."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class SplitsSpec(Spec):
    """Names of the train/val/test splits inside the annotation file."""

    train: str = "train"
    val: str = "val"
    test: str = "test"


class SyntheticSpec(Spec):
    """The built-in generated data set (``data.format: synthetic``)."""

    num_train: int = Field(SYNTHETIC_DEFAULTS["num_train"], gt=0, le=MAX_SYNTHETIC_ITEMS)
    num_val: int = Field(SYNTHETIC_DEFAULTS["num_val"], gt=0, le=MAX_SYNTHETIC_ITEMS)
    num_test: int = Field(SYNTHETIC_DEFAULTS["num_test"], gt=0, le=MAX_SYNTHETIC_ITEMS)
    captions_per_item: int = Field(SYNTHETIC_DEFAULTS["captions_per_item"], gt=0, le=MAX_CAPTIONS_PER_ITEM)
    image_size: int = Field(SYNTHETIC_DEFAULTS["image_size"], ge=16, le=MAX_SYNTHETIC_IMAGE_SIZE)
    num_frames: int = Field(SYNTHETIC_DEFAULTS["num_frames"], ge=2, le=MAX_FRAMES)
    seed: NonNegativeInt = SYNTHETIC_DEFAULTS["seed"]
    # Relative to the working directory at load time, and made absolute then: Ray Tune
    # and Ray Train run trials and workers in directories of their own.
    cache_dir: Path = Field(Path(SYNTHETIC_CACHE_DIR), validate_default=True)

    @field_validator("cache_dir")
    @classmethod
    def _absolute_cache_dir(cls, value: Path) -> Path:
        path = value.expanduser().resolve()
        for parent in (path, *path.parents):  # the nearest existing one must be a folder
            if parent.exists():
                if not parent.is_dir():
                    where = "is" if parent == path else f"is under {parent}, which is"
                    raise ValueError(f"{path} {where} a file, not a folder")
                break
        return path


class DataSpec(Spec):
    """Where the data is. ``annotations``/``root`` are relative to the job file.

    ``annotations``: the Karpathy JSON, the manifest (JSONL/CSV) or ``MSRVTT_data.json``;
    ``root``: the media directory (default: chosen by the format next to the annotations).
    ``splits``: the file's split names; join several with ``+`` (COCO: ``train+restval``).
    """

    format: DataFormat = "synthetic"
    modality: Literal["image", "video"] = "image"
    root: Path | None = None
    annotations: Path | None = None
    splits: SplitsSpec = SplitsSpec()
    num_frames: int = Field(NUM_FRAMES, gt=0, le=MAX_FRAMES)
    on_bad_sample: Literal["error", "skip"] = "error"
    # What ``unitune train/search`` check before the first trial: every media file decoded
    # (full), a sample of them (sample; every file's existence still), or nothing (off).
    preflight: PreflightMode = "full"
    num_workers: int = Field(0, ge=0, le=64)
    synthetic: SyntheticSpec = SyntheticSpec()
    # The test split is also scored on this many folds of consecutive items, averaged
    # (``test_folds_*``): COCO's 1K protocol is 5 folds of its 5K test split. 1: off.
    test_folds: int = Field(1, gt=0, le=100)

    def dataset_options(self) -> dict[str, Any]:
        """This section as the keyword arguments of ``unitune.data.build_dataset``."""
        return {
            "format": self.format,
            "modality": self.modality,
            "splits": self.splits.model_dump(),
            "num_frames": self.num_frames,
            "on_bad_sample": self.on_bad_sample,
            "annotations": self.annotations,
            "root": self.root,
            "synthetic": self.synthetic.model_dump() if self.format == "synthetic" else None,
        }

    @field_validator("preflight", mode="before")
    @classmethod
    def _yaml_off(cls, value):
        return {False: "off", True: "full"}.get(value, value) if isinstance(value, bool) else value

    # The frozen-prefix cache (docs/feature_cache.md): auto | off | a directory (made absolute
    # at load time). augment: random crops / frames (true), deterministic (false), or None:
    # random unless the cache is on.
    feature_cache: str = "auto"
    augment: bool | None = None

    @field_validator("feature_cache", mode="before")
    @classmethod
    def _absolute_feature_cache(cls, value):
        if isinstance(value, bool):  # YAML reads a bare off/on as a boolean
            value = "auto" if value else "off"
        if value in ("auto", "off") or not isinstance(value, str):
            return value
        if not value.strip():
            raise ValueError("must be auto, off or a directory")
        return str(Path(value).expanduser().resolve())

    @model_validator(mode="after")
    def _check_format(self) -> DataSpec:
        if self.format == "synthetic":
            return self
        if self.annotations is None:
            raise FieldError("annotations", f"required for format {self.format}")
        expected = {"karpathy": "image", "msrvtt": "video"}.get(self.format)
        if expected and self.modality != expected:
            raise FieldError("modality", f"format {self.format} holds {expected}s (got {self.modality})")
        return self


class FreezeSpec(Spec):
    """Which tower layers train. ``None`` trains the whole tower."""

    visual_trainable_layers: NonNegativeInt | None = FREEZE_DEFAULTS["visual_trainable_layers"]
    text_trainable_layers: NonNegativeInt | None = FREEZE_DEFAULTS["text_trainable_layers"]
    projections_only: bool = FREEZE_DEFAULTS["projections_only"]


class ModelSpec(Spec):
    """Dual encoder by registry name (``unitune.models.MODEL_REGISTRY``)."""

    name: ModelName = MODEL_DEFAULTS["name"]
    preset: str | None = MODEL_DEFAULTS["preset"]
    checkpoint: str | None = MODEL_DEFAULTS["checkpoint"]
    image_encoder: str | None = MODEL_DEFAULTS["image_encoder"]
    text_encoder: str | None = MODEL_DEFAULTS["text_encoder"]
    embed_dim: int = Field(MODEL_DEFAULTS["embed_dim"], gt=0, le=MAX_EMBED_DIM)
    video_pooling: Literal["mean", "seqTransf"] = MODEL_DEFAULTS["video_pooling"]
    # two_tower with a convolutional image tower: its input resolution (None: the tower's own,
    # e.g. 224). Small images such as the 64x64 emoji gain little from 224 and cost 8x more.
    image_size: Annotated[int, Field(ge=16, le=MAX_IMAGE_SIZE)] | None = None
    freeze: FreezeSpec = FreezeSpec()

    @model_validator(mode="after")
    def _check_towers(self) -> ModelSpec:
        if self.name == "tiny" and self.preset not in TINY_PRESETS:
            raise FieldError(
                "preset", f"unknown tiny preset {shorten_repr(self.preset)}; choose from {', '.join(TINY_PRESETS)}"
            )
        if self.name == "two_tower":
            for key in ("image_encoder", "text_encoder"):
                if getattr(self, key) is None:
                    raise FieldError(key, "required for model two_tower")
        elif self.image_size is not None:
            raise FieldError("image_size", f"only the two_tower model can change its input size (model {self.name})")
        return self


class LossSpec(Spec):
    """The unified loss (``unitune.losses.unified_loss``); gamma = 1/temperature."""

    margin: NonNegativeFloat = 0.2
    gamma: PositiveFloat = 20.0
    learnable_gamma: bool = False
    max_gamma: PositiveFloat = 100.0
    scale_by_gamma: bool = False
    mining: MiningMode = "all"
    topk: Annotated[int, Field(gt=0, le=MAX_BATCH)] | None = None
    warmup_epochs: int = Field(0, ge=0, le=MAX_EPOCHS)
    warmup_mining: WarmupMode = "all"  # see unitune.choices.WarmupMode

    @model_validator(mode="after")
    def _check_mining(self) -> LossSpec:
        if self.mining == "topk" and self.topk is None:
            raise FieldError("topk", "required when mining is topk")
        if self.learnable_gamma and self.gamma > self.max_gamma:
            raise FieldError("gamma", f"must be <= max_gamma {self.max_gamma} when learnable (got {self.gamma})")
        return self


class OptimSpec(Spec):
    """AdamW with per-tower learning rates; linear warm-up then cosine decay."""

    lr: PositiveFloat = 1.0e-3
    visual_lr: PositiveFloat | None = None
    text_lr: PositiveFloat | None = None
    weight_decay: NonNegativeFloat = 0.1
    warmup_epochs: NonNegativeFloat = 0.5
    grad_clip: PositiveFloat | None = 1.0


class TrainSpec(Spec):
    """Budget: epochs, global batch size, evaluation cadence, precision."""

    epochs: int = Field(6, gt=0, le=MAX_EPOCHS)
    final_epochs: int = Field(20, gt=0, le=MAX_EPOCHS)
    batch_size: int = Field(64, ge=2, le=MAX_BATCH)  # global batch; one item has no negatives
    eval_every: PositiveInt = 1
    eval_batch_size: int = Field(256, gt=0, le=MAX_BATCH)
    precision: Literal["auto", "fp32", "bf16"] = "auto"
    grad_checkpointing: bool = False
    max_failures: NonNegativeInt = 1


class ResourcesSpec(Spec):
    """Resources of one run (one trial): Ray Train workers and what each holds."""

    num_workers: int = Field(1, gt=0, le=MAX_WORKERS)
    use_gpu: bool = False
    cpu_per_worker: PositiveFloat = 1
    gpu_per_worker: PositiveFloat = 1


class RaySpec(Spec):
    """Ray cluster address; ``None`` starts a local Ray on 127.0.0.1."""

    address: str | None = None

    @field_validator("address")
    @classmethod
    def _empty_is_local(cls, value: str | None) -> str | None:
        return value or None


class TrackingSpec(Spec):
    """MLflow store. ``experiment: None`` uses the job name. ``source_run``: the MLflow run id
    of the search trial a job was exported from (``unitune export``); ``unitune train`` tags
    its run with it (``unitune.source_run``). ``register_as``: ``unitune train`` registers
    its model under this name in the store's model registry (a new version each run).
    ``artifact_location`` unset follows ``uri`` (``unitune.stores.default_artifacts``):
    ``mlartifacts`` beside a local store, the server's own (served) artifacts otherwise."""

    uri: str = DEFAULT_STORE
    artifact_location: str | None = DEFAULT_ARTIFACTS

    @model_validator(mode="before")
    @classmethod
    def _artifacts_follow_the_store(cls, data: Any) -> Any:
        if isinstance(data, dict) and "artifact_location" not in data:
            data = {**data, "artifact_location": default_artifacts(str(data.get("uri", DEFAULT_STORE)))}
        return data

    experiment: str | None = None
    source_run: str | None = None
    register_as: str | None = Field(None, min_length=1, max_length=MAX_NAME_CHARS)

    @field_validator("register_as")
    @classmethod
    def _model_name(cls, value: str | None) -> str | None:
        if value is not None and ("/" in value or ":" in value or value != value.strip()):
            # ``models:/NAME/VERSION`` must parse back to the name.
            raise ValueError("a registered model name holds no '/' or ':' and no outer spaces")
        return value


class SearchRef(Spec):
    """Which search-space file a search uses (relative to the job file), and the values of that
    file this job sets for itself (``None``: the file's): the target depends on the data, the
    number of trials and their concurrency on the cluster."""

    space: Path | None = None
    target: FiniteFloat | None = None
    num_trials: PositiveInt | None = None
    max_concurrent: PositiveInt | None = None
    # Where Ray Tune keeps the search's state (what --resume continues from): None is
    # .unitune/tune in the working directory; a submitted search that must be resumable
    # needs a path on the cluster's shared filesystem or a URI Ray accepts (s3://, gs://).
    storage: str | None = None


class StudySpec(Spec):
    """``unitune study``: the search-space files of the families compared (relative to the job
    file), the first round of final runs per family (seeds 0..seeds-1), the most seeds a
    comparison still open may get (rounds of ``seeds`` more; None: 3 × seeds), a wall-time
    budget for adding rounds, searches per family (sampler seeds ``seed``..``seed + R - 1``
    of each space), the metric that decides (None: the spaces' own, which must agree) and
    the final runs' epochs (None: ``train.final_epochs``). docs/study.md."""

    spaces: list[Path] = []
    seeds: PositiveInt = 3
    max_seeds: PositiveInt | None = None
    budget_minutes: PositiveFloat | None = None
    search_repeats: PositiveInt = 1
    metric: str | None = None
    final_epochs: PositiveInt | None = None

    @model_validator(mode="after")
    def _max_seeds_not_below_seeds(self) -> StudySpec:
        if self.max_seeds is not None and self.max_seeds < self.seeds:
            raise ValueError(f"max_seeds ({self.max_seeds}) is below seeds ({self.seeds}), the first round")
        return self


class JobSpec(Spec):
    """A whole job file. ``source`` is the file it was loaded from (None when built in code)."""

    name: str = Field(min_length=1, max_length=MAX_NAME_CHARS)
    seed: NonNegativeInt = 0
    data: DataSpec = DataSpec()
    model: ModelSpec = ModelSpec()
    loss: LossSpec = LossSpec()
    optim: OptimSpec = OptimSpec()
    train: TrainSpec = TrainSpec()
    resources: ResourcesSpec = ResourcesSpec()
    ray: RaySpec = RaySpec()
    tracking: TrackingSpec = TrackingSpec()
    search: SearchRef = SearchRef()
    study: StudySpec = StudySpec()

    _source: Path | None = PrivateAttr(default=None)

    @property
    def source(self) -> Path | None:
        return self._source

    @property
    def experiment(self) -> str:
        """MLflow experiment name: ``tracking.experiment`` or the job name."""
        return self.tracking.experiment or self.name

    @model_validator(mode="after")
    def _check_job(self) -> JobSpec:
        workers = self.resources.num_workers
        if self.train.batch_size % workers:
            raise FieldError(
                "train.batch_size",
                f"must be divisible by resources.num_workers {workers} (got {self.train.batch_size})",
            )
        if self.data.format == "synthetic" and self.train.batch_size > self.data.synthetic.num_train:
            raise FieldError(
                "train.batch_size",
                f"larger than the train split "
                f"(data.synthetic.num_train {self.data.synthetic.num_train}; got {self.train.batch_size})",
            )
        folds = self.data.test_folds
        if self.data.format == "synthetic" and self.data.synthetic.num_test % folds:
            raise FieldError(
                "data.test_folds",
                f"must divide the test split (data.synthetic.num_test {self.data.synthetic.num_test}; got {folds})",
            )
        reason = unreachable_store(self.tracking.uri, self.ray.address)
        if reason is not None:
            raise FieldError("tracking.uri", reason)
        return self
