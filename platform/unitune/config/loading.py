"""Reading config files: YAML with line numbers, ``${VAR}`` expansion, one-line errors.

``load_job`` turns a job file into a validated ``JobSpec``; every mistake becomes one
``UserError`` whose first line names the file, the key path and the reason.

Bounded: a config file is at most ``MAX_FILE_BYTES`` (1 MiB), holds at most ``MAX_VALUES``
values once YAML aliases are followed (no "billion laughs"), and no string longer than
``MAX_STRING_CHARS``; ``${VAR}`` is expanded one level (a variable's value is used as is,
a ``${...}`` inside it is not expanded again).
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from unitune.config.job import JobSpec
from unitune.config.messages import validation_message
from unitune.errors import UserError, shorten

ENV_VAR = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")
JOB_FILE_PATHS = ("data.root", "data.annotations", "search.space")  # relative to the job file
OVERRIDE_KEY = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*$")
MAX_FILE_BYTES = 1024 * 1024  # a job or search-space file
MAX_VALUES = 20_000  # keys, list items and scalars, aliases followed
MAX_STRING_CHARS = 4096  # one value (the longest path Linux accepts)


class _StrictLoader(yaml.SafeLoader):
    """``yaml.SafeLoader`` that refuses a key given twice in one mapping."""


def _construct_mapping(loader: _StrictLoader, node: yaml.MappingNode, deep: bool = False) -> dict:
    seen = set()
    for key_node, _ in node.value:
        key = loader.construct_object(key_node, deep=deep)
        if key in seen:
            raise yaml.constructor.ConstructorError(None, None, f"duplicate key {key!r}", key_node.start_mark)
        seen.add(key)
    return loader.construct_mapping(node, deep=deep)


_StrictLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_mapping)


def read_yaml(path: str | Path) -> dict[str, Any]:
    """Parse a YAML file holding one mapping (an empty file is ``{}``).

    Raises ``UserError`` naming the file (and line:column for syntax errors) when the file
    is missing, is not valid YAML, or is not a mapping.
    """
    path = Path(path)
    try:
        size = path.stat().st_size
        if not path.is_file():
            raise UserError(f"{path}: not a file")
        if size > MAX_FILE_BYTES:
            raise UserError(
                f"{path}: {size / 2**20:.1f} MiB; a config file may hold at most {MAX_FILE_BYTES // 2**20} MiB"
            )
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise UserError(f"{path}: file not found") from None
    except UnicodeDecodeError as exc:
        line = exc.object[: exc.start].count(b"\n") + 1
        raise UserError(f"{path}:{line}: not UTF-8 text (byte {exc.object[exc.start]:#x})") from None
    except OSError as exc:
        raise UserError(f"{path}: cannot read: {exc.strerror or exc}") from None
    try:
        data = yaml.load(text, Loader=_StrictLoader)  # SafeLoader subclass: no arbitrary objects
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"{path}:{mark.line + 1}:{mark.column + 1}" if mark else str(path)
        problem = getattr(exc, "problem", None) or str(exc)
        raise UserError(f"{where}: invalid YAML: {problem}") from None
    except RecursionError:
        raise UserError(f"{path}: invalid YAML: nested too deeply") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise UserError(f"{path}: must be a mapping of keys (got {type(data).__name__})")
    try:
        check_size(data)
    except ValueError as exc:
        raise UserError(f"{path}: {exc}") from None
    return data


def check_size(data: Any, key: str = "") -> None:
    """Refuse a structure with more than ``MAX_VALUES`` values (YAML aliases counted at every
    use) or a string longer than ``MAX_STRING_CHARS``.

    Raises:
        ValueError: naming the key and the bound.
    """
    count = 0
    stack = [(key, data)]
    while stack:
        where, node = stack.pop()
        count += 1
        if count > MAX_VALUES:
            raise ValueError(
                f"more than {MAX_VALUES} values (YAML aliases counted at each use); a job needs a few hundred"
            )
        if isinstance(node, str) and len(node) > MAX_STRING_CHARS:
            raise ValueError(f"{where or 'value'}: {len(node)} characters; a value may hold at most {MAX_STRING_CHARS}")
        if isinstance(node, dict):
            stack.extend((f"{where}.{k}" if where else str(k), v) for k, v in node.items())
        elif isinstance(node, list):
            stack.extend((f"{where}[{i}]", v) for i, v in enumerate(node))


def expand_env(value: Any) -> Any:
    """Expand ``${VAR}`` and ``${VAR:-default}`` in every string of a nested structure.

    One level: the value of a variable (or a default) is inserted as is, never expanded
    again. An unset variable without default stays literally ``${VAR}``: ``missing_inputs``
    reports it when the job needs that value, so a job still validates where its data is absent.

    Raises:
        UserError: an expanded string is longer than ``MAX_STRING_CHARS``.
    """
    if isinstance(value, str):

        def sub(match: re.Match) -> str:
            name, default = match.group(1), match.group(2)
            got = os.environ.get(name)
            if got:
                return got
            return default if default is not None else match.group(0)

        expanded = ENV_VAR.sub(sub, value)
        if len(expanded) > MAX_STRING_CHARS:
            names = ", ".join(f"${{{name}}}" for name in dict.fromkeys(unset_vars(value)))
            raise UserError(
                f"{shorten(value)}: {len(expanded)} characters once {names} is expanded; "
                f"a value may hold at most {MAX_STRING_CHARS}"
            )
        return expanded
    if isinstance(value, dict):
        return {k: expand_env(v) for k, v in value.items()}
    if isinstance(value, list):
        return [expand_env(v) for v in value]
    return value


def read_config(path: str | Path) -> dict[str, Any]:
    """``read_yaml`` then ``expand_env``: a config file's mapping with variables expanded.

    Raises ``UserError`` naming the file (see both functions).
    """
    data = read_yaml(path)
    try:
        return expand_env(data)
    except UserError as exc:
        raise UserError(f"{path}: {exc}") from None


def unset_vars(value: str) -> list[str]:
    """Names of the ``${VAR}`` references left unexpanded in a string."""
    return [m.group(1) for m in ENV_VAR.finditer(value)]


def parse_override(text: str) -> tuple[str, Any]:
    """``"loss.margin=0.3"`` -> ``("loss.margin", 0.3)``; the value is parsed as YAML.

    Raises ``UserError`` when there is no ``=`` or the key is not a dotted name.
    """
    key, sep, raw = text.partition("=")
    key = key.strip()
    if not sep or not OVERRIDE_KEY.match(key):
        raise UserError(f"override {text!r}: expected key.path=value (e.g. loss.margin=0.3)")
    try:
        value = yaml.safe_load(raw) if raw.strip() else None
    except yaml.YAMLError:
        value = raw  # not YAML: take the text as a string
    return key, expand_env(value)


def set_dotted(data: dict[str, Any], key: str, value: Any) -> None:
    """Set ``data["a"]["b"] = value`` for ``key = "a.b"``, creating mappings on the way.

    Raises ``UserError`` when a part of the path holds a value that is not a mapping.
    """
    parts = key.split(".")
    node = data
    for i, part in enumerate(parts[:-1]):
        child = node.get(part)
        if child is None:
            child = node[part] = {}
        if not isinstance(child, dict):
            raise UserError(f"{'.'.join(parts[: i + 1])}: is a value, not a mapping (cannot set {key})")
        node = child
    node[parts[-1]] = value


def _override_items(overrides: Mapping[str, Any] | Iterable[str]) -> list[tuple[str, Any]]:
    if isinstance(overrides, Mapping):
        return [(k, expand_env(v)) for k, v in overrides.items()]
    return [parse_override(o) for o in overrides]


def validate_job(data: dict[str, Any], source: str | Path | None = None) -> JobSpec:
    """Validate a raw job mapping; raises ``UserError`` naming ``source``, key and reason."""
    try:
        job = JobSpec.model_validate(data)
    except ValidationError as exc:
        raise UserError(validation_message(exc, source, JobSpec)) from None
    job._source = Path(source) if source is not None else None
    return job


def _resolve_job_paths(data: dict[str, Any], base: Path) -> None:
    """Make the job's relative input paths relative to the job file's directory."""
    for key in JOB_FILE_PATHS:
        section, name = key.split(".")
        node = data.get(section)
        if not isinstance(node, dict) or not isinstance(node.get(name), str):
            continue
        value = node[name]
        if not value or unset_vars(value):
            continue  # an unset variable is reported by missing_inputs, not resolved here
        given = Path(value).expanduser()
        node[name] = str(given if given.is_absolute() else (base / given).resolve())


def load_job(path: str | Path, overrides: Mapping[str, Any] | Iterable[str] = ()) -> JobSpec:
    """Read, expand, override and validate a job file.

    ``overrides``: ``{"loss.margin": 0.3}`` or ``["loss.margin=0.3"]`` (paths in overrides
    are relative to the working directory). Raises ``UserError`` for a missing or invalid
    file, a bad key or value or a missing annotation file (a missing ``search.space`` is
    refused by the commands that read it, :func:`require_space`).
    """
    data = read_config(path)
    _resolve_job_paths(data, Path(path).parent)
    for key, value in _override_items(overrides):
        try:
            set_dotted(data, key, value)
        except UserError as exc:
            raise UserError(f"{path}: {exc}") from None
    job = validate_job(data, path)
    _check_files(job)
    return job


def apply_overrides(job: JobSpec, overrides: Mapping[str, Any] | Iterable[str]) -> JobSpec:
    """A new ``JobSpec`` with dotted keys replaced, validated again (``job`` is unchanged)."""
    data = job.model_dump()
    for key, value in _override_items(overrides):
        try:
            set_dotted(data, key, value)
        except UserError as exc:
            raise UserError(f"{job.source}: {exc}" if job.source else str(exc)) from None
    new = validate_job(data, job.source)
    _check_files(new)
    return new


def _check_files(job: JobSpec) -> None:
    """Files a job names explicitly must exist (unless they wait for an unset variable).
    ``search.space`` is checked where a space is read (``unitune search``, ``validate``,
    ``submit``: :func:`require_space`): training a job does not read it."""
    path = job.data.annotations
    if path is not None and not unset_vars(str(path)) and not path.is_file():
        raise UserError(f"{job.source or 'job'}: data.annotations: file not found: {path}")


def require_space(job: JobSpec) -> Path | None:
    """The job's ``search.space`` file (None when it names none).

    Raises:
        UserError: the file does not exist (and does not wait for an unset variable).
    """
    path = job.search.space
    if path is not None and not unset_vars(str(path)) and not path.is_file():
        raise UserError(f"{job.source or 'job'}: search.space: file not found: {path}")
    return path


def missing_inputs(job: JobSpec) -> list[str]:
    """What this job needs and this machine lacks: unset variables, absent data paths.

    Returns one message per problem (``[]`` when the job can run here). ``validate``
    prints them as warnings; ``require_inputs`` turns them into an error before a run.
    """
    users: dict[str, list[str]] = {}
    for key, value in _strings(job.model_dump(mode="json")):
        for name in unset_vars(value):
            users.setdefault(name, []).append(key)
    problems = [
        f"environment variable {name} is not set (used by {', '.join(keys)}); set it or override {keys[0]}=..."
        for name, keys in users.items()
    ]
    if job.data.format != "synthetic":
        for key in ("root", "annotations"):
            path = getattr(job.data, key)
            if path is not None and not unset_vars(str(path)) and not path.exists():
                problems.append(f"data.{key}: not found: {path}")
    return problems


def require_inputs(job: JobSpec) -> None:
    """Raise ``UserError`` listing ``missing_inputs(job)`` if there are any."""
    problems = missing_inputs(job)
    if problems:
        prefix = f"{job.source}: " if job.source else ""
        raise UserError("\n".join(prefix + p for p in problems))


def _strings(data: Any, key: str = "") -> Iterable[tuple[str, str]]:
    if isinstance(data, str):
        yield key, data
    elif isinstance(data, dict):
        for k, v in data.items():
            yield from _strings(v, f"{key}.{k}" if key else str(k))
    elif isinstance(data, list):
        for i, v in enumerate(data):
            yield from _strings(v, f"{key}[{i}]")
