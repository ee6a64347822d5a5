"""Typed search-space specs: what to search, the metric, the searcher, the ASHA budget.

Parameter keys are dotted job keys (``loss.margin``); a ``when`` condition makes a parameter
exist only for some values of another (``loss.topk`` only when ``loss.mining: topk``).
The metric and mode are declared here once; the scheduler, searcher and exporter read them.
"""

from __future__ import annotations

import functools
import itertools
import math
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Literal, cast

from pydantic import (
    BaseModel,
    Field,
    NonNegativeInt,
    PositiveInt,
    PrivateAttr,
    TypeAdapter,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

from unitune.choices import CONVERGENCE_METRICS, METRICS
from unitune.config.job import FieldError, FiniteFloat, JobSpec, Spec
from unitune.config.loading import apply_overrides, read_config
from unitune.config.messages import describe_error, validation_message
from unitune.errors import UserError, shorten

if TYPE_CHECKING:
    from typing_extensions import TypeForm  # pydantic's dependency; only named in a cast here

Scalar = str | int | float | bool | None
Mode = Literal["min", "max"]
MANY_TRIALS = 10_000  # more trials than any search on one cluster finishes: a warning
# Optuna's samplers by name (``unitune.search.space.make_sampler``); ``auto``: AUTO_SAMPLER.
SAMPLERS = ("tpe", "random", "qmc", "gp", "cmaes", "auto")
# Ray Tune's schedulers by name (``unitune.search.schedulers``); ``none``: every trial runs its budget.
SCHEDULERS = ("asha", "hyperband", "none")
AUTO_SAMPLER = "tpe"  # what ``sampler: auto`` runs (docs/search.md: the bench's winner)
# What each Optuna sampler cannot model (Optuna 5.0, its docs and source): CmaEsSampler samples
# categorical parameters at random and, in a dynamic search space (a ``when`` parameter),
# every parameter at random; QMCSampler fixes its space at the first trial; GPSampler models
# only the intersection of the trials' spaces; CmaEsSampler takes one objective only.
NO_CHOICE = ("cmaes",)
NO_CONDITION = ("cmaes", "qmc", "gp")
ONE_OBJECTIVE = ("cmaes",)


class ParamSpec(Spec):
    """One searched parameter. ``low``/``high`` for uniform, loguniform and int; ``values`` for choice.

    ``when``: ``{other_param: value}`` or ``{other_param: [values]}``; all keys must hold.
    ``log``: sample an ``int`` parameter on a log scale.
    """

    type: Literal["uniform", "loguniform", "int", "choice"]
    low: int | float | None = None
    high: int | float | None = None
    values: list[Scalar] | None = None
    log: bool = False
    when: dict[str, Scalar | list[Scalar]] | None = None

    @model_validator(mode="after")
    def _check_range(self) -> ParamSpec:
        if self.type == "choice":
            if self.low is not None or self.high is not None:
                raise FieldError("low" if self.low is not None else "high", "not used by type choice (use values)")
            if not self.values:
                raise FieldError("values", "must be a non-empty list")
            if len(set(map(repr, self.values))) != len(self.values):
                raise FieldError("values", f"has duplicates (got {shorten(self.values)})")
            return self
        if self.values is not None:
            raise FieldError("values", f"not used by type {self.type} (use low and high)")
        for key in ("low", "high"):
            value = getattr(self, key)
            if value is None:
                raise FieldError(key, f"required for type {self.type}")
            if self.type == "int" and not isinstance(value, int):
                raise FieldError(key, f"must be an integer for type int (got {value!r})")
            if not math.isfinite(value):
                raise FieldError(key, f"must be finite (got {value!r})")
        low, high = self.bounds()
        if low >= high:
            raise FieldError("high", f"empty range: high must be > low (got low={low}, high={high})")
        if self.log and self.type != "int":
            raise FieldError("log", f"only for type int (got type {self.type}; use loguniform for a log-scale float)")
        if (self.type == "loguniform" or self.log) and low <= 0:
            raise FieldError("low", f"must be > 0 on a log scale (got {low})")
        return self

    def bounds(self) -> tuple[int | float, int | float]:
        """``(low, high)`` of a uniform, loguniform or int parameter (validation requires both)."""
        if self.low is None or self.high is None:
            raise ValueError(f"a {self.type} parameter has no low/high (only choice parameters lack them)")
        return self.low, self.high

    def int_bounds(self) -> tuple[int, int]:
        """``(low, high)`` of an int parameter (validation requires integers)."""
        low, high = self.bounds()
        if not (isinstance(low, int) and isinstance(high, int)):
            raise ValueError(f"a {self.type} parameter has a non-integer bound (low={low!r}, high={high!r})")
        return low, high

    def choices(self) -> list[Scalar]:
        """``values`` of a choice parameter (validation requires them)."""
        if self.values is None:
            raise ValueError(f"a {self.type} parameter has no values (only choice parameters have them)")
        return self.values

    def condition(self) -> dict[str, list[Scalar]]:
        """``when`` with every value as a list: ``{parent: [accepted values]}``."""
        return {k: v if isinstance(v, list) else [v] for k, v in (self.when or {}).items()}

    def is_active(self, sampled: dict[str, Any]) -> bool:
        """Whether this parameter exists given the values sampled so far (a missing parent: no)."""
        return all(k in sampled and sampled[k] in v for k, v in self.condition().items())

    def candidates(self) -> list[Scalar]:
        """Values that probe the range: choices, or the ends and two inner points (an inner
        point off any round fraction shows a float range on an integer key)."""
        if self.type == "choice":
            return list(self.choices())
        low, high = self.bounds()
        inner: list[int | float] = [low + (high - low) * f for f in (0.5, 0.3183)]
        if self.type == "int":
            inner = [round(v) for v in inner]
        return [low, high, *inner]


class AshaSpec(Spec):
    """ASHA early stopping, in epochs. ``max_epochs: None`` means the job's ``train.epochs``."""

    max_epochs: PositiveInt | None = None
    grace_period: PositiveInt = 1
    reduction_factor: float = Field(2.0, gt=1, allow_inf_nan=False)

    @model_validator(mode="after")
    def _check_budget(self) -> AshaSpec:
        if self.max_epochs is not None and self.grace_period > self.max_epochs:
            raise FieldError("grace_period", f"must be <= max_epochs {self.max_epochs} (got {self.grace_period})")
        return self


class ObjectiveSpec(Spec):
    """A metric and its mode; ``mode: None`` takes the metric's own direction."""

    metric: str
    mode: Mode | None = Field(None, validate_default=True)

    @field_validator("mode")
    @classmethod
    def _default_mode(cls, mode: str | None, info: ValidationInfo) -> str | None:
        metric = info.data.get("metric")  # absent when the metric itself failed validation
        return (mode or (METRICS | CONVERGENCE_METRICS).get(metric)) if isinstance(metric, str) else mode

    def direction(self) -> Mode:
        """``mode``, filled in by validation from the metric's own direction."""
        if self.mode is None:
            raise ValueError(f"objective {self.metric} has no mode (an unknown metric)")
        return self.mode


class SearchSpaceSpec(ObjectiveSpec):
    """A whole search-space file. ``mode: None`` takes the metric's direction from ``METRICS``.

    ``target``: the metric value the study calls converged (convergence speed is measured to it).
    ``objectives``: two or more for a Pareto search; the first is the study metric (ASHA's).
    ``sampler``: one of :data:`SAMPLERS`; ``scheduler``: one of :data:`SCHEDULERS`, whose
    budget in epochs is the ``asha`` section (``asha: null`` is ``scheduler: none``).
    """

    metric: str = "rsum"
    num_trials: PositiveInt = 8
    max_concurrent: PositiveInt = 2
    seed: NonNegativeInt = 0
    target: FiniteFloat | None = None
    sampler: Literal["tpe", "random", "qmc", "gp", "cmaes", "auto"] = "auto"
    scheduler: Literal["asha", "hyperband", "none"] = "asha"
    asha: AshaSpec | None = AshaSpec()
    params: dict[str, ParamSpec] = {}
    fixed: dict[str, Any] = {}
    objectives: list[ObjectiveSpec] | None = None

    _source: Path | None = PrivateAttr(default=None)

    @property
    def source(self) -> Path | None:
        return self._source

    @model_validator(mode="after")
    def _check_space(self) -> SearchSpaceSpec:
        self._check_metrics()
        for key in self.params:
            if key in self.fixed:
                raise FieldError(f"fixed.{key}", "is also a searched parameter")
        for key, param in self.params.items():
            _check_job_key(f"params.{key}", key, param.candidates(), continuous=param.type != "choice")
            self._check_condition(key, param)
        for key, value in self.fixed.items():
            _check_job_key(f"fixed.{key}", key, [value], continuous=False)
        self.ordered_params()  # raises on a cycle of conditions
        self._check_searcher()
        return self

    def _check_searcher(self) -> None:
        if self.asha is None and self.scheduler != "none":
            if "scheduler" in self.model_fields_set:
                raise FieldError("scheduler", f"{self.scheduler} needs the asha section (its epochs); asha is null")
            self.scheduler = "none"  # asha: null, the older spelling
        name = self.sampler
        for key, param in self.params.items():
            if name in NO_CHOICE and param.type == "choice":
                raise FieldError(
                    "sampler", f"{name} cannot take choice parameter {key} (Optuna samples it at random); use tpe"
                )
            if name in NO_CONDITION and param.when:
                raise FieldError(
                    "sampler",
                    f"{name} cannot take conditional parameter {key} (when: Optuna's {name} sampler "
                    "has no dynamic search space); use tpe or random",
                )
        if name in ONE_OBJECTIVE and self.objectives is not None:
            raise FieldError("sampler", f"{name} takes one objective (got {len(self.objectives)}); use tpe")

    def sampler_name(self) -> str:
        """The sampler that runs: ``sampler``, with ``auto`` resolved (:data:`AUTO_SAMPLER`)."""
        return AUTO_SAMPLER if self.sampler == "auto" else self.sampler

    def _check_metrics(self) -> None:
        if self.metric not in METRICS:
            raise FieldError("metric", f"unknown metric {self.metric!r}; reported metrics: {', '.join(METRICS)}")
        if self.mode != METRICS[self.metric]:
            raise FieldError("mode", f"{self.metric} is better when {METRICS[self.metric]}imised (got {self.mode})")
        if self.objectives is None:
            return
        if len(self.objectives) < 2:
            raise FieldError("objectives", "a Pareto search needs at least 2 objectives (or leave it null)")
        known = METRICS | CONVERGENCE_METRICS
        for i, obj in enumerate(self.objectives):
            if obj.metric not in known:
                raise FieldError(f"objectives.{i}.metric", f"unknown metric {obj.metric!r}; known: {', '.join(known)}")
            if obj.mode != known[obj.metric]:
                raise FieldError(f"objectives.{i}.mode", f"{obj.metric} is better when {known[obj.metric]}imised")
            if obj.metric.endswith("_to_target") and self.target is None:
                raise FieldError("target", f"required by objective {obj.metric}")
        if (self.objectives[0].metric, self.objectives[0].mode) != (self.metric, self.mode):
            raise FieldError("objectives.0", f"must be the study metric ({self.metric}, {self.mode})")
        names = [obj.metric for obj in self.objectives]
        if len(set(names)) != len(names):
            raise FieldError("objectives", f"lists a metric twice (got {names})")

    def _check_condition(self, key: str, param: ParamSpec) -> None:
        for parent, accepted in param.condition().items():
            where = f"params.{key}.when.{parent}"
            if parent == key:
                raise FieldError(where, "a parameter cannot depend on itself")
            if parent not in self.params:
                raise FieldError(where, f"unknown parameter {parent!r}; searched: {', '.join(self.params)}")
            other = self.params[parent]
            if other.type == "choice":
                impossible = [v for v in accepted if v not in other.choices()]
                possible = f"one of {other.values}"
            elif other.type == "int":
                low, high = other.bounds()
                impossible = [v for v in accepted if not (isinstance(v, int) and low <= v <= high)]
                possible = f"an integer in [{low}, {high}]"
            else:
                raise FieldError(where, f"{parent} is continuous ({other.type}); condition on a choice or int")
            if impossible:
                raise FieldError(where, f"{parent} never takes {impossible[0]!r} (it is {possible})")

    def ordered_params(self) -> list[tuple[str, ParamSpec]]:
        """Parameters with every condition's parent before its children (define-by-run order)."""
        done: dict[str, ParamSpec] = {}

        def visit(key: str, path: tuple[str, ...]) -> None:
            if key in done:
                return
            if key in path:
                raise FieldError(f"params.{key}.when", f"conditions form a cycle: {' -> '.join(path + (key,))}")
            for parent in self.params[key].condition():
                visit(parent, path + (key,))
            done[key] = self.params[key]

        for key in self.params:
            visit(key, ())
        return list(done.items())

    def objective_names(self) -> tuple[list[str], list[Mode]]:
        """(metrics, modes) of the study: the objectives, or just the metric."""
        objs = self.objectives or [ObjectiveSpec(metric=self.metric, mode=self.mode)]
        return [o.metric for o in objs], [o.direction() for o in objs]


@functools.cache
def job_field_adapter(key: str) -> TypeAdapter:
    """Validator of one dotted job key (``loss.margin``) with its own constraints.

    Raises ``KeyError`` with the allowed keys when ``key`` is not a job field.
    """
    model: type[BaseModel] = JobSpec
    parts = key.split(".")
    for i, part in enumerate(parts):
        field = model.model_fields.get(part)
        if field is None:
            prefix = ".".join(parts[:i])
            allowed = ", ".join(f"{prefix}.{f}" if prefix else f for f in model.model_fields)
            raise KeyError(f"not a job key (allowed here: {allowed})")
        annotation = field.annotation
        section = annotation if isinstance(annotation, type) and issubclass(annotation, BaseModel) else None
        if i < len(parts) - 1:
            if section is None:
                raise KeyError(f"{'.'.join(parts[: i + 1])} is a value, not a section")
            model = section
        elif section is not None:
            raise KeyError(f"{key} is a section; name one of its keys (e.g. {key}.{next(iter(section.model_fields))})")
        elif annotation is None:  # a model field always has one (``x: None`` gives NoneType)
            raise KeyError(f"{key} has no type annotation")
        elif field.metadata:
            # Annotated[...] built at runtime: a type form, which mypy sees only as a special form
            return TypeAdapter(cast("TypeForm[Any]", Annotated[annotation, *field.metadata]))
        else:
            return TypeAdapter(annotation)
    raise AssertionError("unreachable: str.split gives at least one part")


def _check_job_key(where: str, key: str, values: list[Any], *, continuous: bool) -> None:
    try:
        adapter = job_field_adapter(key)
    except KeyError as exc:
        raise FieldError(where, exc.args[0]) from None
    for value in values:
        try:
            adapter.validate_python(value)
        except ValidationError as exc:
            _, reason = describe_error(exc.errors()[0], JobSpec)
            kind = "sampled value" if continuous else "value"
            raise FieldError(where, f"{kind} {value!r} is not valid for job key {key}: {reason}") from None


def load_space(path: str | Path, job: JobSpec | None = None) -> SearchSpaceSpec:
    """Read and validate a search-space file; with ``job``, also check it against that job.

    With a job, the job's ``search.target/num_trials/max_concurrent`` replace the file's,
    ``asha.max_epochs`` is filled in from ``train.epochs`` (it may not exceed it),
    and every combination of choices, with numeric parameters at their ends, must give a
    valid job (e.g. ``loss.mining: topk`` needs ``loss.topk`` searched, fixed or in the job).
    Raises ``UserError`` naming the file, the key and the reason.
    """
    data = read_config(path)
    try:
        space = SearchSpaceSpec.model_validate(data)
    except ValidationError as exc:
        raise UserError(validation_message(exc, path, SearchSpaceSpec)) from None
    space._source = Path(path)
    if job is not None:
        _fit_to_job(space, job)
    return space


def _fit_to_job(space: SearchSpaceSpec, job: JobSpec) -> None:
    where = f"{space.source}: "
    for key in ("target", "num_trials", "max_concurrent"):
        value = getattr(job.search, key)
        if value is not None:
            setattr(space, key, value)
    epochs = job.train.epochs
    if space.asha is not None:
        max_epochs = space.asha.max_epochs or epochs
        if max_epochs > epochs:
            raise UserError(f"{where}asha.max_epochs: must be <= train.epochs {epochs} of the job (got {max_epochs})")
        if space.asha.grace_period > max_epochs:
            raise UserError(
                f"{where}asha.grace_period: must be <= max_epochs {max_epochs} "
                f"(the job's train.epochs; got {space.asha.grace_period})"
            )
        space.asha.max_epochs = max_epochs
    bare = job.model_copy()
    bare._source = None  # errors below name the space file, not the job file
    for sampled in example_configs(space):
        try:
            apply_overrides(bare, {**space.fixed, **sampled})
        except UserError as exc:
            chosen = {k: v for k, v in sampled.items() if space.params[k].type == "choice"}
            raise UserError(
                f"{where}params: {chosen or sampled} gives an invalid job "
                f"({job.source or job.name}): {str(exc).splitlines()[0]}"
            ) from None


def space_warnings(space: SearchSpaceSpec) -> list[str]:
    """What is valid but almost surely not meant: one message per problem (the CLI prints
    them as warnings), each naming the file and key."""
    where = f"{space.source}: " if space.source else ""
    problems = []
    if not space.params and space.num_trials > 1:
        problems.append(
            f"{where}params: empty; all {space.num_trials} trials would train the same "
            "configuration (add params, or set num_trials: 1)"
        )
    if space.num_trials > MANY_TRIALS:
        problems.append(
            f"{where}num_trials: {space.num_trials} trials is more than {MANY_TRIALS}; "
            "the search would not end (Ctrl-C stops it; --resume continues)"
        )
    return problems


def example_configs(space: SearchSpaceSpec, limit: int = 256) -> list[dict[str, Any]]:
    """Sampled configs covering every combination of choices (at most ``limit``), numeric
    parameters at their low and at their high end, conditions applied."""
    ordered = space.ordered_params()
    choices = [(k, p.choices()) for k, p in ordered if p.type == "choice"]
    configs = []
    for combo in itertools.islice(itertools.product(*(v for _, v in choices)), limit):
        picked = dict(zip((k for k, _ in choices), combo))
        for end in ("low", "high"):
            sampled: dict[str, Any] = {}
            for key, param in ordered:
                if param.is_active(sampled):
                    sampled[key] = picked[key] if param.type == "choice" else getattr(param, end)
            if sampled not in configs:
                configs.append(sampled)
    return configs
