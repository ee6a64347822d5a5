"""Pydantic validation errors in plain words: ``file: key.path: reason (got value)``."""

from __future__ import annotations

import difflib
from pathlib import Path

from pydantic import BaseModel, ValidationError

from unitune.config.job import FieldError


def describe_error(error: dict, model: type[BaseModel]) -> tuple[str, str]:
    """One pydantic error -> (key path, reason in plain words)."""
    loc = [str(part) for part in error["loc"]]
    kind, ctx, got = error["type"], error.get("ctx") or {}, error.get("input")
    exc = ctx.get("error")
    if isinstance(exc, FieldError):
        return ".".join(loc + [exc.field]), exc.message
    if kind == "extra_forbidden":
        return ".".join(loc), "unknown key" + _suggest(model, loc)
    shown = f" (got {got!r})"
    reasons = {
        "missing": ("required", ""),
        "greater_than": (f"must be > {ctx.get('gt')}", shown),
        "greater_than_equal": (f"must be >= {ctx.get('ge')}", shown),
        "less_than": (f"must be < {ctx.get('lt')}", shown),
        "less_than_equal": (f"must be <= {ctx.get('le')}", shown),
        "literal_error": (f"must be one of {ctx.get('expected')}", shown),
        "string_too_short": ("must not be empty", ""),
        "model_type": ("must be a mapping of keys", shown),
        "model_attributes_type": ("must be a mapping of keys", shown),
        "dict_type": ("must be a mapping", shown),
        "list_type": ("must be a list", shown),
        "bool_type": ("must be true or false", shown),
        "bool_parsing": ("must be true or false", shown),
        "int_type": ("must be an integer", shown),
        "int_parsing": ("must be an integer", shown),
        "int_from_float": ("must be an integer", shown),
        "float_type": ("must be a number", shown),
        "float_parsing": ("must be a number", shown),
        "string_type": ("must be a string", shown),
        "path_type": ("must be a path", shown),
    }
    if kind in reasons:
        reason, tail = reasons[kind]
        return ".".join(loc), reason + tail
    if kind == "value_error" and exc is not None:
        return ".".join(loc), str(exc)
    return ".".join(loc), error["msg"] + shown


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
    lines = []
    for error in exc.errors():
        key, reason = describe_error(error, model)
        lines.append(f"{prefix}{key}: {reason}" if key else f"{prefix}{reason}")
    return "\n".join(lines)
