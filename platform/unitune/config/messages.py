"""Pydantic validation errors in plain words: ``file: key.path: reason (got value)``."""

from __future__ import annotations

import difflib
import re
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ValidationError
from pydantic_core import ErrorDetails

from unitune.config.job import FieldError

# pydantic error type -> reason; "{…}" fields come from the error's ctx.
REASONS = {
    "missing": "required",
    "greater_than": "must be > {gt}",
    "greater_than_equal": "must be >= {ge}",
    "less_than": "must be < {lt}",
    "less_than_equal": "must be <= {le}",
    "literal_error": "must be one of {expected}",
    "string_too_short": "must not be empty",
    "string_too_long": "must be at most {max_length} characters",
    "model_type": "must be a mapping of keys",
    "model_attributes_type": "must be a mapping of keys",
    "dict_type": "must be a mapping",
    "list_type": "must be a list",
    "bool_type": "must be true or false",
    "bool_parsing": "must be true or false",
    "int_type": "must be an integer",
    "int_parsing": "must be an integer",
    "int_from_float": "must be an integer",
    "float_type": "must be a number",
    "float_parsing": "must be a number",
    "finite_number": "must be a finite number",
    "string_type": "must be a string",
    "path_type": "must be a path",
}
# Union members name themselves in pydantic's error locations; they are not keys.
UNION_TAG = re.compile(r"^(int|float|str|bool|none|list\[.*\]|dict\[.*\]|function-.*)$")


def _shown(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def describe_error(error: ErrorDetails, model: type[BaseModel]) -> tuple[str, str]:
    """One pydantic error -> (dotted key path, reason in plain words with the value given)."""
    loc = [str(part) for part in error["loc"] if not UNION_TAG.match(str(part))]
    kind, ctx = error["type"], error.get("ctx") or {}
    exc = ctx.get("error")
    if isinstance(exc, FieldError):
        return ".".join(loc + [exc.field]), exc.message
    if kind == "extra_forbidden":
        return ".".join(loc), "unknown key" + _suggest(model, loc)
    if kind in REASONS:
        words = {k: f"{v:g}" if isinstance(v, float) else v for k, v in ctx.items()}
        reason = REASONS[kind].format(**words)
        return ".".join(loc), reason if kind == "missing" else f"{reason} (got {_shown(error.get('input'))})"
    if kind == "value_error" and exc is not None:
        return ".".join(loc), str(exc)
    return ".".join(loc), f"{error['msg']} (got {_shown(error.get('input'))})"


def _suggest(model: type[BaseModel], loc: list[str]) -> str:
    """' (did you mean "x"?)' for a mistyped key, found by walking ``model``'s fields."""
    for part in loc[:-1]:
        field = model.model_fields.get(part)
        sub = getattr(field, "annotation", None) if field else None
        if not (isinstance(sub, type) and issubclass(sub, BaseModel)):
            return ""
        model = sub
    close = difflib.get_close_matches(loc[-1], list(model.model_fields), n=1)
    return f' (did you mean "{close[0]}"?)' if close else f" (allowed: {', '.join(model.model_fields)})"


def validation_message(exc: ValidationError, source: str | Path | None, model: type[BaseModel]) -> str:
    """All errors of ``exc``, one ``file: key.path: reason`` line each."""
    prefix = f"{source}: " if source is not None else ""
    lines: list[str] = []
    for error in exc.errors():
        key, reason = describe_error(error, model)
        line = f"{prefix}{key}: {reason}" if key else f"{prefix}{reason}"
        if not any(old.startswith(f"{prefix}{key}: ") for old in lines):  # one line per key
            lines.append(line)
    return "\n".join(lines)
