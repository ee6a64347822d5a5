"""Errors a user can cause, and the text rules of every message shown to a user.

The CLI turns a ``UserError`` into one line and exit code 2. Every message is passed through
``redact`` when the error is made, so a password in a URI (``http://alice:pw@host``) or a
token in a query string never reaches a terminal or a log. ``shorten`` keeps an echoed value
to a part of one line.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable
from typing import Any

# scheme://user:password@host or scheme://token@host: the credentials part.
_USERINFO = re.compile(r"(?P<scheme>\b[A-Za-z][A-Za-z0-9+.\-]*://)(?P<user>[^\s/:@?#]*)(?::[^\s/@?#]*)?@")
# ?token=...&password=... in a query string (or a key=value list).
_SECRET_PARAM = re.compile(
    r"(?P<key>[?&;](?:password|passwd|pwd|token|access_token|secret|api_key|apikey|key|sig|signature)=)[^&\s#]+",
    re.IGNORECASE,
)
MASK = "***"


def redact(text: str) -> str:
    """``text`` with the credentials of every URI in it masked.

    ``http://alice:pw@h:5000`` -> ``http://alice:***@h:5000``; ``https://tok@h`` ->
    ``https://***@h``; ``...?token=abc`` -> ``...?token=***``. Idempotent.
    """

    def userinfo(match: re.Match) -> str:
        password = match.group(0)[len(match.group("scheme")) + len(match.group("user")) : -1]
        if password:  # user:password -> user:***
            return f"{match.group('scheme')}{match.group('user')}:{MASK}@"
        return f"{match.group('scheme')}{MASK}@" if match.group("user") not in ("", MASK) else match.group(0)

    return _SECRET_PARAM.sub(lambda m: m.group("key") + MASK, _USERINFO.sub(userinfo, str(text)))


def mask_uri(uri: str | None) -> str | None:
    """One URI (tracking store, artifact location, Ray address) as it may be printed."""
    return None if uri is None else redact(uri)


def shorten(text: object, limit: int = 60) -> str:
    """``text`` (``repr`` of non-strings is up to the caller) cut to ``limit`` characters with
    an ellipsis and its full length, on one line: no value is echoed longer than a line."""
    text = str(text).replace("\r", "\\r").replace("\n", "\\n")
    return text if len(text) <= limit else f"{text[: limit - 3]}... ({len(text)} characters)"


def first_line(exc: BaseException) -> str:
    """The first line of an exception's text (a library's error, quoted in a ``UserError``),
    or its type's name when it has no text."""
    lines = str(exc).strip().splitlines()
    return lines[0] if lines else type(exc).__name__


def redact_log_records() -> None:
    """From now on every log record of this process (MLflow's, Ray's, urllib3's...) carries
    its message with ``redact`` applied, whichever handler prints it. Idempotent."""
    previous = logging.getLogRecordFactory()
    if getattr(previous, "unitune_redacts", False):
        return
    logging.setLogRecordFactory(_RedactingFactory(previous))


class _RedactingFactory:
    """The log record factory ``previous``, with ``redact`` applied to each record's message."""

    unitune_redacts = True  # installed already: redact_log_records does nothing

    def __init__(self, previous: Callable[..., logging.LogRecord]):
        self.previous = previous

    def __call__(self, *args: Any, **kwargs: Any) -> logging.LogRecord:
        record = self.previous(*args, **kwargs)
        try:
            message = record.getMessage()
        except Exception:  # noqa: BLE001 - a malformed record is logging's to report
            return record
        if "@" in message or "=" in message:
            masked = redact(message)
            if masked != message:
                record.msg, record.args = masked, ()
        return record


class UserError(ValueError):
    """A mistake in user input: the message names the file and the key or path.

    The message is redacted (``redact``) when the error is made.
    """

    def __init__(self, message: object = "", *args: object):
        super().__init__(redact(str(message)), *args)
